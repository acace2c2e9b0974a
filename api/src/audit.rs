//! The audit log: append-only, hash-chained entries in the object store.
//!
//! Entry `n` lives at `audit/{n:020}.json` and holds the SHA-256 of entry `n − 1` (`prev`) and
//! its own hash over every other field (`hash`). `audit/HEAD.json` names the last entry and its
//! hash, so removing the newest entries is caught too. [`AuditLog::verify`] walks the chain and
//! reports the first entry that was edited, removed, inserted or reordered.
//!
//! What it proves: nobody changed the recorded history without also rewriting every later entry
//! and the head. Someone who can rewrite the whole store can rewrite the whole chain; anchoring
//! the head's hash outside the store (printing it into a ticket, a second system) closes that.

use std::time::{SystemTime, UNIX_EPOCH};

use hearth_index::BlobStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, ServiceError};

const PREFIX: &str = "audit/";
const HEAD: &str = "audit/HEAD.json";
/// The `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One recorded action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When, in ms since the Unix epoch.
    pub time_ms: u64,
    /// Who: an API key id, `open` (open mode) or `cli`.
    pub actor: String,
    /// What: `upload`, `delete`, `search`, `ask`, `chat`, `embed`, `admin`, ...
    pub action: String,
    /// The request (method and route template, or the command).
    pub target: String,
    /// The collection, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// The document, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// The HTTP status (or 0 / 1 for a command's success / failure).
    pub outcome: u16,
    /// The query text, only when `audit.include_queries` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Hash of the previous entry.
    pub prev: String,
    /// SHA-256 of this entry with `hash` empty.
    pub hash: String,
}

/// What an entry records, before it is chained.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent {
    /// See [`AuditEntry::actor`].
    pub actor: String,
    /// See [`AuditEntry::action`].
    pub action: String,
    /// See [`AuditEntry::target`].
    pub target: String,
    /// See [`AuditEntry::collection`].
    pub collection: Option<String>,
    /// See [`AuditEntry::document`].
    pub document: Option<String>,
    /// See [`AuditEntry::outcome`].
    pub outcome: u16,
    /// See [`AuditEntry::query`].
    pub query: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

fn entry_key(seq: u64) -> String {
    format!("{PREFIX}{seq:020}.json")
}

fn entry_hash(e: &AuditEntry) -> String {
    let mut unhashed = e.clone();
    unhashed.hash = String::new();
    // invariant: strings and integers always serialise.
    let bytes = serde_json::to_vec(&unhashed).expect("audit entry serialises");
    hex::encode(Sha256::digest(&bytes))
}

/// The chain's tip: the next sequence number and the last hash.
struct Tip {
    next: u64,
    last: String,
}

/// Appends to and verifies the audit chain. Appends are serialised by an internal lock.
pub struct AuditLog {
    store: BlobStore,
    tip: tokio::sync::Mutex<Option<Tip>>,
}

/// The result of [`AuditLog::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// The first problem, if any.
    pub problem: Option<String>,
}

impl AuditLog {
    /// The audit log in `store`.
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            tip: tokio::sync::Mutex::new(None),
        }
    }

    async fn head(&self) -> Result<Option<Head>> {
        match self.store.get_opt(HEAD).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                ServiceError::Index(hearth_index::IndexError::Corrupt {
                    key: HEAD.into(),
                    detail: e.to_string(),
                })
            }),
        }
    }

    /// Appends an entry (entry first, then the head: a crash between the two leaves an entry
    /// past the head, which the next append overwrites and `verify` reports until then).
    pub async fn append(&self, ev: AuditEvent) -> Result<AuditEntry> {
        let mut tip = self.tip.lock().await;
        if tip.is_none() {
            *tip = Some(match self.head().await? {
                Some(h) => Tip {
                    next: h.seq + 1,
                    last: h.hash,
                },
                None => Tip {
                    next: 0,
                    last: GENESIS.into(),
                },
            });
        }
        let Some(t) = tip.as_mut() else {
            return Err(ServiceError::Internal("audit tip missing".into()));
        };
        let mut e = AuditEntry {
            seq: t.next,
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            actor: ev.actor,
            action: ev.action,
            target: ev.target,
            collection: ev.collection,
            document: ev.document,
            outcome: ev.outcome,
            query: ev.query,
            prev: t.last.clone(),
            hash: String::new(),
        };
        e.hash = entry_hash(&e);
        // invariant: as in entry_hash.
        let json = serde_json::to_vec(&e).expect("audit entry serialises");
        self.store.put(&entry_key(e.seq), json.into()).await?;
        let head = serde_json::to_vec(&Head {
            seq: e.seq,
            hash: e.hash.clone(),
        })
        .expect("audit head serialises");
        self.store.put(HEAD, head.into()).await?;
        t.next = e.seq + 1;
        t.last = e.hash.clone();
        Ok(e)
    }

    /// Walks the whole chain: every entry parses, its hash is its content's, it follows its
    /// predecessor (sequence and `prev`), and the last one is the head.
    pub async fn verify(&self) -> Result<Verified> {
        let keys: Vec<String> = self
            .store
            .list(PREFIX)
            .await?
            .into_iter()
            .filter(|k| k != HEAD)
            .collect();
        let head = self.head().await?;
        let mut prev = GENESIS.to_owned();
        let mut n = 0u64;
        for (i, key) in keys.iter().enumerate() {
            let i = i as u64;
            let fail = |m: String| Verified {
                entries: i,
                problem: Some(m),
            };
            if *key != entry_key(i) {
                return Ok(fail(format!(
                    "entry {i} is missing (found {key} in its place): entries were removed or inserted"
                )));
            }
            let bytes = match self.store.get(key).await {
                Ok(b) => b,
                // An encrypted store refuses an altered object outright.
                Err(hearth_index::IndexError::Corrupt { detail, .. }) => {
                    return Ok(fail(format!("entry {i} was edited: {detail}")));
                }
                Err(e) => return Err(e.into()),
            };
            let e: AuditEntry = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(err) => return Ok(fail(format!("entry {i} does not parse: {err}"))),
            };
            if e.seq != i {
                return Ok(fail(format!("entry {i} says it is entry {}", e.seq)));
            }
            if entry_hash(&e) != e.hash {
                return Ok(fail(format!(
                    "entry {i} was edited: its hash does not match its content"
                )));
            }
            if e.prev != prev {
                return Ok(fail(format!(
                    "entry {i} does not follow entry {}: the chain was reordered or an entry replaced",
                    i.wrapping_sub(1)
                )));
            }
            prev = e.hash;
            n = i + 1;
        }
        let problem = match head {
            None if n == 0 => None,
            None => Some("the head is missing".to_owned()),
            Some(h) if n == 0 => Some(format!("the head names entry {} but there are none", h.seq)),
            Some(h) if h.seq + 1 != n || h.hash != prev => Some(format!(
                "the head names entry {} but the chain ends at entry {}: the newest entries were removed or the head rewritten",
                h.seq,
                n - 1
            )),
            Some(_) => None,
        };
        Ok(Verified {
            entries: n,
            problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            actor: format!("key{i}"),
            action: "search".into(),
            target: "POST /v1/collections/{c}/search".into(),
            collection: Some("docs".into()),
            outcome: 200,
            ..AuditEvent::default()
        }
    }

    async fn chain(n: usize) -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let log = AuditLog::new(store.clone());
        for i in 0..n {
            log.append(event(i)).await.unwrap();
        }
        (dir, store)
    }

    async fn verify(store: &BlobStore) -> Verified {
        AuditLog::new(store.clone()).verify().await.unwrap()
    }

    #[tokio::test]
    async fn an_intact_chain_verifies_and_continues_after_a_restart() {
        let (_d, store) = chain(3).await;
        assert_eq!(
            verify(&store).await,
            Verified {
                entries: 3,
                problem: None
            }
        );
        // A new process continues the same chain.
        let e = AuditLog::new(store.clone()).append(event(9)).await.unwrap();
        assert_eq!(e.seq, 3);
        assert_eq!(
            verify(&store).await,
            Verified {
                entries: 4,
                problem: None
            }
        );
        let empty = tempfile::tempdir().unwrap();
        let s = BlobStore::local(empty.path()).unwrap();
        assert_eq!(
            verify(&s).await,
            Verified {
                entries: 0,
                problem: None
            }
        );
    }

    #[tokio::test]
    async fn a_flipped_byte_in_an_encrypted_store_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek");
        std::fs::write(&kek, "42".repeat(32)).unwrap();
        let cfg = hearth_index::StorageConfig {
            data_dir: dir.path().join("data"),
            encryption: hearth_index::EncryptionConfig {
                kek_file: Some(kek),
                kek_env: None,
            },
            ..Default::default()
        };
        let store = BlobStore::open(&cfg).await.unwrap();
        let log = AuditLog::new(store.clone());
        for i in 0..3 {
            log.append(event(i)).await.unwrap();
        }
        assert_eq!(verify(&store).await.problem, None);
        let file = dir.path().join("data/store").join(entry_key(1));
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let v = verify(&store).await;
        assert_eq!(v.entries, 1);
        assert!(v.problem.unwrap().contains("entry 1 was edited"));
    }

    #[tokio::test]
    async fn a_flipped_byte_is_found() {
        let (_d, store) = chain(4).await;
        let key = entry_key(2);
        let mut bytes = store.get(&key).await.unwrap().to_vec();
        let at = String::from_utf8_lossy(&bytes).find("key2").unwrap() + 3;
        bytes[at] = b'7';
        store.put(&key, bytes.into()).await.unwrap();
        let v = verify(&store).await;
        assert!(
            v.problem.as_deref().unwrap().contains("entry 2 was edited"),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn removed_and_reordered_entries_are_found() {
        let (_d, store) = chain(5).await;
        store.delete(&entry_key(1)).await.unwrap();
        let v = verify(&store).await;
        assert!(
            v.problem.as_deref().unwrap().contains("entry 1 is missing"),
            "{v:?}"
        );

        let (_d, store) = chain(5).await;
        store.delete(&entry_key(4)).await.unwrap();
        let v = verify(&store).await;
        assert!(
            v.problem
                .as_deref()
                .unwrap()
                .contains("newest entries were removed"),
            "{v:?}"
        );

        let (_d, store) = chain(5).await;
        let a = store.get(&entry_key(1)).await.unwrap();
        let b = store.get(&entry_key(2)).await.unwrap();
        store.put(&entry_key(1), b).await.unwrap();
        store.put(&entry_key(2), a).await.unwrap();
        let v = verify(&store).await;
        assert!(v.problem.is_some(), "{v:?}");
    }
}
