//! Does the store keep its promises on conditional writes? Every writer that shares a store
//! with another (the audit log's entries, a keyring created once, and the manifests and
//! leases of replicas) relies on two: a put with `If-None-Match: *` has exactly one winner,
//! and a put with `If-Match` on a stale ETag is refused. A store that ignores either header
//! loses writes silently; this probe finds out with a few throwaway objects under `_probe/`,
//! removed afterwards.

use bytes::Bytes;
use futures::future::join_all;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;

use super::{BlobStore, store_error};
use crate::error::Result;

/// Writers racing in the concurrent checks.
const RACERS: usize = 8;
/// Where the probe's objects go.
const PROBE_PREFIX: &str = "_probe";

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The store kept the promise.
    Passed,
    /// The store broke it.
    Failed,
    /// The backend has no such conditional write (the local backend has no `If-Match`).
    Unsupported,
}

/// One named check of [`BlobStore::check_conditional_writes`].
#[derive(Clone, Debug, Serialize)]
pub struct WriteCheck {
    /// `create-race`, `create-existing`, `update-stale`, `update-current` or `update-race`.
    pub name: &'static str,
    /// What it found.
    pub outcome: Outcome,
    /// What was done and seen, in a sentence.
    pub detail: String,
}

/// The probe's findings for one store.
#[derive(Clone, Debug, Serialize)]
pub struct WriteChecks {
    /// The store, as [`BlobStore::describe`] gives it.
    pub store: String,
    /// The checks, in the order they ran.
    pub checks: Vec<WriteCheck>,
}

impl WriteChecks {
    /// The first failed check among those named `create-*`: what makes a store unsafe for
    /// any two writers (the audit log of a node and a command-line run already are two).
    pub fn create_failure(&self) -> Option<&WriteCheck> {
        self.failure("create-")
    }

    /// The first check named `update-*` that failed or that the backend cannot do: what
    /// makes a store unfit for replicas, whose leases are conditional updates.
    pub fn update_failure(&self) -> Option<&WriteCheck> {
        self.checks
            .iter()
            .find(|c| c.name.starts_with("update-") && c.outcome != Outcome::Passed)
    }

    fn failure(&self, prefix: &str) -> Option<&WriteCheck> {
        self.checks
            .iter()
            .find(|c| c.name.starts_with(prefix) && c.outcome == Outcome::Failed)
    }

    /// Whether every check passed.
    pub fn all_passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome == Outcome::Passed)
    }
}

impl BlobStore {
    /// Checks the store's conditional writes with throwaway objects under `_probe/` (raw
    /// bytes, not sealed: they hold nothing), removed afterwards. A store error (unreachable,
    /// no permission to write) is an `Err`; a store that answers but breaks a promise is a
    /// failed check in the report.
    pub async fn check_conditional_writes(&self) -> Result<WriteChecks> {
        let run = random_hex();
        let create_key = probe_path(&run, "create")?;
        let update_key = probe_path(&run, "update")?;
        let mut checks = Vec::new();
        let outcome = async {
            self.check_create(&create_key, &mut checks).await?;
            self.check_update(&update_key, &mut checks).await
        }
        .await;
        for key in [&create_key, &update_key] {
            if let Err(e) = self.inner.delete(key).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %key, error = %e, "removing a probe object failed");
            }
        }
        outcome?;
        Ok(WriteChecks {
            store: self.describe.to_string(),
            checks,
        })
    }

    async fn check_create(&self, key: &Path, checks: &mut Vec<WriteCheck>) -> Result<()> {
        let (outcome, detail, held) = self
            .race(
                key,
                || PutMode::Create,
                "concurrent creates of one key",
                "(If-None-Match: *): {n} succeeded; the store ignores the condition and writers overwrite each other",
            )
            .await?;
        checks.push(WriteCheck {
            name: "create-race",
            outcome,
            detail,
        });

        let before = held;
        let again = put(
            &*self.inner,
            key,
            Bytes::from(random_hex()),
            PutMode::Create,
        )
        .await;
        let after = self.raw_get(key).await?;
        let (outcome, detail) = match again {
            Ok(_) => (
                Outcome::Failed,
                "a create of a key that exists succeeded (If-None-Match: * ignored)".to_owned(),
            ),
            Err(e) if lost(&e) && after == before => (
                Outcome::Passed,
                "a create of a key that exists was refused and left it unchanged".to_owned(),
            ),
            Err(e) if lost(&e) => (
                Outcome::Failed,
                "a create of a key that exists was refused, but the object changed".to_owned(),
            ),
            Err(e) => return Err(store_error(key.as_ref(), e)),
        };
        checks.push(WriteCheck {
            name: "create-existing",
            outcome,
            detail,
        });
        Ok(())
    }

    async fn check_update(&self, key: &Path, checks: &mut Vec<WriteCheck>) -> Result<()> {
        let first = put(
            &*self.inner,
            key,
            Bytes::from(random_hex()),
            PutMode::Overwrite,
        )
        .await
        .map_err(|e| store_error(key.as_ref(), e))?;
        let second_bytes = Bytes::from(random_hex());
        let second = put(&*self.inner, key, second_bytes.clone(), PutMode::Overwrite)
            .await
            .map_err(|e| store_error(key.as_ref(), e))?;
        let (Some(stale), Some(current)) = (first.e_tag, second.e_tag) else {
            for name in ["update-stale", "update-current", "update-race"] {
                checks.push(WriteCheck {
                    name,
                    outcome: Outcome::Unsupported,
                    detail: "the store returns no ETag on a put".to_owned(),
                });
            }
            return Ok(());
        };

        let stale_try = put(&*self.inner, key, Bytes::from(random_hex()), update(&stale)).await;
        if let Err(object_store::Error::NotImplemented { .. }) = stale_try {
            for name in ["update-stale", "update-current", "update-race"] {
                checks.push(WriteCheck {
                    name,
                    outcome: Outcome::Unsupported,
                    detail: format!(
                        "{} has no conditional update (If-Match): it serves one node",
                        self.describe
                    ),
                });
            }
            return Ok(());
        }
        let held = self.raw_get(key).await?;
        let (outcome, detail) = match stale_try {
            Ok(_) => (
                Outcome::Failed,
                "an update naming a stale ETag succeeded (If-Match ignored): a lease or manifest could be taken twice".to_owned(),
            ),
            Err(e) if lost(&e) && held.as_ref() == Some(&second_bytes) => (
                Outcome::Passed,
                "an update naming a stale ETag was refused and left the object unchanged"
                    .to_owned(),
            ),
            Err(e) if lost(&e) => (
                Outcome::Failed,
                "an update naming a stale ETag was refused, but the object changed".to_owned(),
            ),
            Err(e) => return Err(store_error(key.as_ref(), e)),
        };
        checks.push(WriteCheck {
            name: "update-stale",
            outcome,
            detail,
        });

        // The current ETag: re-read it, in case the stale update changed the object after all.
        let current = match self.inner.head(key).await {
            Ok(meta) => meta.e_tag.unwrap_or(current),
            Err(e) => return Err(store_error(key.as_ref(), e)),
        };
        let third_bytes = Bytes::from(random_hex());
        let (outcome, detail, next) =
            match put(&*self.inner, key, third_bytes.clone(), update(&current)).await {
                Ok(r) if self.raw_get(key).await?.as_ref() == Some(&third_bytes) => (
                    Outcome::Passed,
                    "an update naming the current ETag succeeded".to_owned(),
                    r.e_tag,
                ),
                Ok(_) => (
                    Outcome::Failed,
                    "an update naming the current ETag succeeded, but its bytes are not there"
                        .to_owned(),
                    None,
                ),
                Err(e) if lost(&e) => (
                    Outcome::Failed,
                    "an update naming the current ETag was refused".to_owned(),
                    None,
                ),
                Err(e) => return Err(store_error(key.as_ref(), e)),
            };
        checks.push(WriteCheck {
            name: "update-current",
            outcome,
            detail,
        });

        let Some(current) = next else {
            checks.push(WriteCheck {
                name: "update-race",
                outcome: Outcome::Failed,
                detail: "not run: an update naming the current ETag did not succeed".to_owned(),
            });
            return Ok(());
        };
        let (outcome, detail, _) = self
            .race(
                key,
                || update(&current),
                "concurrent updates naming one ETag",
                "(If-Match): {n} succeeded; two lease holders would both believe they won",
            )
            .await?;
        checks.push(WriteCheck {
            name: "update-race",
            outcome,
            detail,
        });
        Ok(())
    }

    /// [`RACERS`] writers put distinct bytes at `key` at once, each with `mode()`: passed when
    /// exactly one succeeds and its bytes are there. `many` describes more than one winner
    /// (`{n}` is their number). Also gives what the key holds afterwards.
    async fn race(
        &self,
        key: &Path,
        mode: impl Fn() -> PutMode,
        what: &str,
        many: &str,
    ) -> Result<(Outcome, String, Option<Bytes>)> {
        let payloads: Vec<Bytes> = (0..RACERS).map(|_| Bytes::from(random_hex())).collect();
        let results = join_all(
            payloads
                .iter()
                .map(|p| put(&*self.inner, key, p.clone(), mode())),
        )
        .await;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(_) => winners.push(i),
                Err(e) if lost(&e) => {}
                Err(e) => return Err(store_error(key.as_ref(), e)),
            }
        }
        let held = self.raw_get(key).await?;
        let (outcome, detail) = match winners.as_slice() {
            [w] if held.as_ref() == Some(&payloads[*w]) => (
                Outcome::Passed,
                format!("{RACERS} {what}: one succeeded and its bytes are there"),
            ),
            [_] => (
                Outcome::Failed,
                format!("{RACERS} {what}: one succeeded, but the key holds other bytes"),
            ),
            [] => (Outcome::Failed, format!("{RACERS} {what}: none succeeded")),
            n => (
                Outcome::Failed,
                format!(
                    "{RACERS} {what} {}",
                    many.replace("{n}", &n.len().to_string())
                ),
            ),
        };
        Ok((outcome, detail, held))
    }

    async fn raw_get(&self, key: &Path) -> Result<Option<Bytes>> {
        match self.inner.get(key).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(|e| store_error(key.as_ref(), e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(key.as_ref(), e)),
        }
    }
}

async fn put(
    store: &dyn ObjectStore,
    key: &Path,
    bytes: Bytes,
    mode: PutMode,
) -> object_store::Result<object_store::PutResult> {
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    store
        .put_opts(key, PutPayload::from_bytes(bytes), opts)
        .await
}

fn update(e_tag: &str) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(e_tag.to_owned()),
        version: None,
    })
}

/// Whether a conditional put lost (the condition held against it), as opposed to failing.
fn lost(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

fn probe_path(run: &str, name: &str) -> Result<Path> {
    super::path(&format!("{PROBE_PREFIX}/{run}/{name}"))
}

/// 16 random bytes as hex: a probe run's name and the payloads (distinct payloads, so that
/// stores which derive the ETag from the content give every write its own).
fn random_hex() -> String {
    let mut b = [0u8; 16];
    // invariant: the OS random source is available wherever hearth runs (keys need it too).
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_backend_creates_once_and_has_no_conditional_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let report = store.check_conditional_writes().await.unwrap();
        let outcome = |n: &str| report.checks.iter().find(|c| c.name == n).unwrap().outcome;
        assert_eq!(outcome("create-race"), Outcome::Passed, "{report:?}");
        assert_eq!(outcome("create-existing"), Outcome::Passed, "{report:?}");
        for n in ["update-stale", "update-current", "update-race"] {
            assert_eq!(outcome(n), Outcome::Unsupported, "{report:?}");
        }
        assert!(report.create_failure().is_none());
        assert_eq!(report.update_failure().unwrap().name, "update-stale");
        // The probe leaves nothing behind.
        assert!(store.list("").await.unwrap().is_empty());
    }
}
