//! Several writers over one store, coordinated by the store alone: a [`Lease`] (one holder at
//! a time, renewed and taken over with `If-Match` writes) and [`Generations`] (a sequence of
//! immutable objects, each committed with `If-None-Match: *`, so that two writers can never
//! both commit one generation). Neither trusts a clock shared between machines: a contender
//! takes a lease over only after it has seen the same version of it, unrenewed, for the
//! holder's whole term, measured on its own monotonic clock.
//!
//! The lease says who should write; the generations make it safe when two writers both
//! believe they should (a holder paused past its term, a network partition): the one whose
//! commit of generation N+1 loses must read again before writing again. Both rest on the store
//! keeping its conditional writes, which `BlobStore::check_conditional_writes` verifies.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::BlobStore;
use crate::error::{IndexError, Result};

/// What a lease object holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    /// Incremented by every acquisition: a fencing token for what the holder writes.
    epoch: u64,
    /// The holder's term: how long a renewal stays valid.
    term_ms: u64,
    /// Counts the holder's writes, so that every renewal changes the bytes: stores that
    /// derive the ETag from the content (SeaweedFS, S3 without multipart) would otherwise give
    /// a renewal the version contenders already saw, and they would take a live lease over.
    beat: u64,
    /// Given up by its holder: anyone may take it at once.
    #[serde(default)]
    released: bool,
}

/// Where a [`Lease`] stands after [`Lease::tick`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// This contender holds the lease until `until` (its own clock) unless it renews: past
    /// that instant it must stop writing, whatever it believes.
    Held {
        /// The acquisition's number, higher than every earlier holder's.
        epoch: u64,
        /// When the hold lapses without a renewal.
        until: Instant,
    },
    /// Another contender holds it.
    Taken {
        /// Who.
        holder: String,
        /// Its acquisition's number.
        epoch: u64,
    },
}

/// One contender for a lease object at `key`. Call [`Lease::tick`] at least every third of
/// the term: it takes a free or expired lease, renews a held one, or reports the holder.
#[derive(Debug)]
pub struct Lease {
    store: BlobStore,
    key: String,
    holder: String,
    term: Duration,
    /// The version of the lease last seen held by another, and since when (our clock).
    seen: Option<(String, Instant)>,
    /// Our version while we hold it, and our epoch.
    held: Option<(String, u64)>,
    /// Our writes so far (see `LeaseBody::beat`).
    beats: u64,
}

impl Lease {
    /// A contender named `holder` (unique per process: two processes under one name would
    /// both believe they hold it) for the lease at `key`, renewing for `term` at a time.
    pub fn new(
        store: BlobStore,
        key: impl Into<String>,
        holder: impl Into<String>,
        term: Duration,
    ) -> Self {
        Self {
            store,
            key: key.into(),
            holder: holder.into(),
            term,
            seen: None,
            held: None,
            beats: 0,
        }
    }

    /// Takes, renews or observes the lease (a read and at most one conditional write).
    pub async fn tick(&mut self) -> Result<LeaseStatus> {
        let start = Instant::now();
        if let Some((tag, epoch)) = self.held.take() {
            let body = self.body(epoch, false);
            if let Some(tag) = self.store.put_if_tag(&self.key, body, &tag).await? {
                self.held = Some((tag, epoch));
                return Ok(LeaseStatus::Held {
                    epoch,
                    until: start + self.term,
                });
            }
            tracing::warn!(key = %self.key, holder = %self.holder, epoch, "the lease was taken over");
        }
        let Some((current, tag)) = self.read().await? else {
            return self.claim(None, 1, start).await;
        };
        let term = Duration::from_millis(current.term_ms);
        let expired = match &self.seen {
            _ if current.released => true,
            Some((seen, since)) if *seen == tag => since.elapsed() >= term,
            _ => {
                self.seen = Some((tag.clone(), start));
                false
            }
        };
        if expired {
            return self.claim(Some(&tag), current.epoch + 1, start).await;
        }
        Ok(LeaseStatus::Taken {
            holder: current.holder,
            epoch: current.epoch,
        })
    }

    /// Gives the lease up (if held), so that another contender takes it at its next tick.
    pub async fn release(&mut self) -> Result<()> {
        if let Some((tag, epoch)) = self.held.take() {
            let body = self.body(epoch, true);
            self.store.put_if_tag(&self.key, body, &tag).await?;
        }
        Ok(())
    }

    /// Writes our claim: a create where there is no lease, an update of version `over`.
    async fn claim(
        &mut self,
        over: Option<&str>,
        epoch: u64,
        start: Instant,
    ) -> Result<LeaseStatus> {
        let body = self.body(epoch, false);
        let won = match over {
            None => self.store.put_new_tagged(&self.key, body).await?,
            Some(tag) => self.store.put_if_tag(&self.key, body, tag).await?,
        };
        match won {
            Some(tag) => {
                self.seen = None;
                self.held = Some((tag, epoch));
                tracing::info!(key = %self.key, holder = %self.holder, epoch, "lease acquired");
                Ok(LeaseStatus::Held {
                    epoch,
                    until: start + self.term,
                })
            }
            // Another contender was faster.
            None => {
                let (holder, epoch) = match self.read().await? {
                    Some((b, _)) => (b.holder, b.epoch),
                    None => (String::new(), epoch),
                };
                Ok(LeaseStatus::Taken { holder, epoch })
            }
        }
    }

    async fn read(&self) -> Result<Option<(LeaseBody, String)>> {
        let Some((bytes, tag)) = self.store.get_tagged(&self.key).await? else {
            return Ok(None);
        };
        let body = serde_json::from_slice(&bytes).map_err(|e| IndexError::Corrupt {
            key: self.key.clone(),
            detail: e.to_string(),
        })?;
        Ok(Some((body, tag)))
    }

    fn body(&mut self, epoch: u64, released: bool) -> Bytes {
        self.beats += 1;
        let body = LeaseBody {
            holder: self.holder.clone(),
            epoch,
            term_ms: u64::try_from(self.term.as_millis()).unwrap_or(u64::MAX),
            beat: self.beats,
            released,
        };
        // invariant: strings and integers always serialise.
        serde_json::to_vec(&body).expect("lease serialises").into()
    }
}

/// A sequence of immutable objects `{prefix}{generation:020}` (generation 1, 2, ...), each
/// committed with a conditional create: of two writers committing one generation, exactly one
/// succeeds, and the other learns that it must read the newer state first.
#[derive(Clone, Debug)]
pub struct Generations {
    store: BlobStore,
    prefix: String,
}

impl Generations {
    /// The generations under `prefix` (a folder-like prefix ending in `/`).
    pub fn new(store: BlobStore, prefix: impl Into<String>) -> Self {
        Self {
            store,
            prefix: prefix.into(),
        }
    }

    fn key(&self, generation: u64) -> String {
        format!("{}{generation:020}", self.prefix)
    }

    /// The generations present, ascending (one listing).
    pub async fn list(&self) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = self
            .store
            .list(&self.prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&self.prefix)?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The newest generation and its bytes, or `None` before the first commit.
    pub async fn latest(&self) -> Result<Option<(u64, Bytes)>> {
        // A generation pruned between the listing and the read: list again (bounded).
        for _ in 0..8 {
            let Some(&g) = self.list().await?.last() else {
                return Ok(None);
            };
            if let Some(bytes) = self.store.get_opt(&self.key(g)).await? {
                return Ok(Some((g, bytes)));
            }
        }
        Err(IndexError::Conflict(format!(
            "the newest generation under {} kept vanishing while read",
            self.prefix
        )))
    }

    /// The bytes of one generation, if present.
    pub async fn get(&self, generation: u64) -> Result<Option<Bytes>> {
        self.store.get_opt(&self.key(generation)).await
    }

    /// Commits `bytes` as `generation`: `Ok(false)`, and nothing written, when another writer
    /// committed it first.
    pub async fn commit(&self, generation: u64, bytes: Bytes) -> Result<bool> {
        if generation == 0 {
            return Err(IndexError::InvalidInput("generations start at 1".into()));
        }
        self.store.put_new(&self.key(generation), bytes).await
    }

    /// Deletes the generations below `keep_from` (readers of an old one list again).
    pub async fn prune(&self, keep_from: u64) -> Result<usize> {
        let old: Vec<u64> = self
            .list()
            .await?
            .into_iter()
            .filter(|g| *g < keep_from)
            .collect();
        for g in &old {
            self.store.delete(&self.key(*g)).await?;
        }
        Ok(old.len())
    }
}
