//! The audit log: append-only, hash-chained entries in the object store.
//!
//! Entry `n` lives at `audit/{n:020}.json` and holds the SHA-256 of entry `n − 1` (`prev`) and
//! its own hash over every other field (`hash`). `audit/HEAD.json` names the last entry and its
//! hash, so removing the newest entries is caught too. [`AuditLog::verify`] walks the chain and
//! reports the first entry that was edited, removed, inserted or reordered.
//!
//! What it proves: nobody changed the recorded history without also rewriting every later entry
//! and the head. Someone who can write to the store can still cut the chain back and point the
//! head at an older entry; two anchors outside the store catch that: the node's own witness of
//! the last entry it wrote (`{data_dir}/audit/witness.json`, checked by every verify on the
//! node), and a head signed with the node's Ed25519 key (`hearth audit head`) kept elsewhere and
//! given back to `hearth audit verify --expect`. A store that holds collections or keys but no
//! audit log is reported too: the log was deleted.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_index::BlobStore;
use hearth_index::keys::COLLECTIONS_PREFIX;
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
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

/// Appends to and verifies the audit chain. Appends are serialised by an internal lock within
/// a process and by a conditional put of each entry across processes (a CLI command beside a
/// running server, two nodes on one store): a writer that loses the race for entry `n` reloads
/// the tip and writes `n + 1`, so no entry is ever overwritten.
pub struct AuditLog {
    store: BlobStore,
    tip: tokio::sync::Mutex<Option<Tip>>,
    /// The node's own audit folder (`{data_dir}/audit`): the witness of the last entry this
    /// node wrote, and the key that signs heads.
    local: Option<PathBuf>,
}

/// The result of [`AuditLog::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// The first problem, if any.
    pub problem: Option<String>,
}

/// The chain's head, signed with the node's Ed25519 key, to keep outside the store (`hearth
/// audit head`); `hearth audit verify --expect` then detects a chain cut back below it, even
/// with `audit/HEAD.json` rewritten to match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The last entry's sequence number.
    pub seq: u64,
    /// The last entry's hash.
    pub hash: String,
    /// When the head was signed, in ms since the Unix epoch.
    pub signed_ms: u64,
    /// The store the chain is in.
    pub store: String,
    /// The signing key's public half, hex.
    pub public_key: String,
    /// Ed25519 signature, hex, of the UTF-8 text `hearth audit head\n{seq}\n{hash}\n{signed_ms}\n{store}\n`
    /// (anyone holding the public key can check it).
    pub signature: String,
}

impl SignedHead {
    fn message(&self) -> Vec<u8> {
        format!(
            "hearth audit head\n{}\n{}\n{}\n{}\n",
            self.seq, self.hash, self.signed_ms, self.store
        )
        .into_bytes()
    }

    /// Parses a head printed by `hearth audit head` and checks its signature against its own
    /// public key (whether that key is this node's is [`AuditLog::verify_expecting`]'s check).
    pub fn parse(text: &str) -> Result<Self> {
        let h: Self = serde_json::from_str(text.trim()).map_err(|e| {
            ServiceError::InvalidInput(format!(
                "the expected head is not what `hearth audit head` prints: {e}"
            ))
        })?;
        let key = hex::decode(&h.public_key).ok();
        let sig = hex::decode(&h.signature).ok();
        let ok = match (key, sig) {
            (Some(k), Some(s)) => UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(&h.message(), &s)
                .is_ok(),
            _ => false,
        };
        if ok {
            Ok(h)
        } else {
            Err(ServiceError::InvalidInput(
                "the expected head's signature does not match its content: it was altered".into(),
            ))
        }
    }
}

/// A point the chain must pass through: entry `seq` with `hash`, and where that claim comes from.
struct Anchor {
    seq: u64,
    hash: String,
    from: String,
}

/// Most attempts at appending when other writers keep winning the race.
const APPEND_TRIES: usize = 64;

impl AuditLog {
    /// The audit log in `store`, without a node folder (no witness, no signing).
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            tip: tokio::sync::Mutex::new(None),
            local: None,
        }
    }

    /// The audit log in `store`, with this node's audit folder `dir` (`{data_dir}/audit`).
    pub fn with_local_dir(store: BlobStore, dir: PathBuf) -> Self {
        Self {
            local: Some(dir),
            ..Self::new(store)
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

    /// The tip as the store has it: the head, then any entries written past it (by a writer
    /// that has not yet moved the head, or crashed before it could).
    async fn load_tip(&self) -> Result<Tip> {
        let mut t = match self.head().await? {
            Some(h) => Tip {
                next: h.seq + 1,
                last: h.hash,
            },
            None => Tip {
                next: 0,
                last: GENESIS.into(),
            },
        };
        while let Some(b) = self.store.get_opt(&entry_key(t.next)).await? {
            let e: AuditEntry = serde_json::from_slice(&b).map_err(|err| {
                ServiceError::Index(hearth_index::IndexError::Corrupt {
                    key: entry_key(t.next),
                    detail: format!("{err} (run `hearth audit verify`)"),
                })
            })?;
            t.next = e.seq + 1;
            t.last = e.hash;
        }
        Ok(t)
    }

    /// Appends an entry: the entry by a conditional put, then the head, then this node's
    /// witness. A crash after the entry leaves it past the head; the next append adopts it.
    pub async fn append(&self, ev: AuditEvent) -> Result<AuditEntry> {
        let mut tip = self.tip.lock().await;
        for _ in 0..APPEND_TRIES {
            let t = match tip.take() {
                Some(t) => t,
                None => self.load_tip().await?,
            };
            let mut e = AuditEntry {
                seq: t.next,
                time_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                actor: ev.actor.clone(),
                action: ev.action.clone(),
                target: ev.target.clone(),
                collection: ev.collection.clone(),
                document: ev.document.clone(),
                outcome: ev.outcome,
                query: ev.query.clone(),
                prev: t.last.clone(),
                hash: String::new(),
            };
            e.hash = entry_hash(&e);
            // invariant: strings and integers always serialise.
            let json = serde_json::to_vec(&e).expect("audit entry serialises");
            if !self.store.put_new(&entry_key(e.seq), json.into()).await? {
                // Another writer took this number: reload (tip stays None) and go again.
                continue;
            }
            let head = Head {
                seq: e.seq,
                hash: e.hash.clone(),
            };
            // invariant: as above.
            let head_json = serde_json::to_vec(&head).expect("audit head serialises");
            self.store.put(HEAD, head_json.into()).await?;
            if let Some(dir) = &self.local
                && let Err(err) = write_witness(dir, &head)
            {
                tracing::warn!(error = %err, "writing the audit witness failed");
            }
            *tip = Some(Tip {
                next: e.seq + 1,
                last: e.hash.clone(),
            });
            return Ok(e);
        }
        Err(ServiceError::Internal(format!(
            "the audit log: {APPEND_TRIES} attempts lost the race for the next entry to other writers"
        )))
    }

    /// Walks the whole chain: every entry parses, its hash is its content's, it follows its
    /// predecessor (sequence and `prev`), the last one is the head, the chain reaches the last
    /// entry this node wrote (its witness), and a store that holds data holds an audit log.
    pub async fn verify(&self) -> Result<Verified> {
        self.verify_expecting(None).await
    }

    /// As [`Self::verify`], and the chain must also reach `expected`, a head kept outside the
    /// store, signed by this node's key (when the node has one).
    pub async fn verify_expecting(&self, expected: Option<&SignedHead>) -> Result<Verified> {
        let mut anchors = Vec::new();
        if let Some(h) = expected {
            if let Some(own) = self.public_key()?
                && own != h.public_key
            {
                return Ok(Verified {
                    entries: 0,
                    problem: Some(
                        "the expected head was signed by another key than this node's".into(),
                    ),
                });
            }
            anchors.push(Anchor {
                seq: h.seq,
                hash: h.hash.clone(),
                from: format!("the expected head (signed at {} ms)", h.signed_ms),
            });
        }
        if let Some(w) = self.witness()? {
            anchors.push(Anchor {
                seq: w.seq,
                hash: w.hash,
                from: "this node's witness of the last entry it wrote".into(),
            });
        }
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
            if let Some(a) = anchors.iter().find(|a| a.seq == i && a.hash != e.hash) {
                return Ok(fail(format!(
                    "entry {i} is not the one {} names: the history was rewritten",
                    a.from
                )));
            }
            prev = e.hash;
            n = i + 1;
        }
        let mut problem = match head {
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
        if problem.is_none()
            && let Some(a) = anchors.iter().find(|a| a.seq >= n)
        {
            problem = Some(format!(
                "{} names entry {}, but the chain has {n} entries: the newest entries were removed (and the head rewritten to match)",
                a.from, a.seq
            ));
        }
        if problem.is_none() && n == 0 {
            let mut holds = Vec::new();
            for (prefix, what) in [(COLLECTIONS_PREFIX, "collections"), ("keys/", "API keys")] {
                if !self.store.is_empty_under(prefix).await? {
                    holds.push(what);
                }
            }
            if !holds.is_empty() {
                problem = Some(format!(
                    "the store holds {} but no audit log: the log was deleted",
                    holds.join(" and ")
                ));
            }
        }
        Ok(Verified {
            entries: n,
            problem,
        })
    }

    /// The verified chain's head, signed with this node's key (created on first use in the
    /// node's audit folder, readable by its owner only). Refused when the chain is broken.
    pub async fn signed_head(&self) -> Result<SignedHead> {
        let v = self.verify().await?;
        if let Some(p) = v.problem {
            return Err(ServiceError::InvalidInput(format!(
                "the audit log is broken after {} good entries, so its head is not signed: {p}",
                v.entries
            )));
        }
        let Some(head) = self.head().await? else {
            return Err(ServiceError::InvalidInput(
                "the audit log is empty: there is no head to sign yet".into(),
            ));
        };
        let key = self
            .signing_key(true)?
            .ok_or_else(|| ServiceError::Internal("no signing key after creating one".into()))?;
        let mut h = SignedHead {
            seq: head.seq,
            hash: head.hash,
            signed_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            store: self.store.describe().to_owned(),
            public_key: hex::encode(key.public_key().as_ref()),
            signature: String::new(),
        };
        h.signature = hex::encode(key.sign(&h.message()).as_ref());
        Ok(h)
    }

    fn public_key(&self) -> Result<Option<String>> {
        Ok(self
            .signing_key(false)?
            .map(|k| hex::encode(k.public_key().as_ref())))
    }

    /// This node's Ed25519 key (PKCS#8 in `{dir}/signing.key`), created when `create` is set.
    fn signing_key(&self, create: bool) -> Result<Option<Ed25519KeyPair>> {
        let Some(dir) = &self.local else {
            return if create {
                Err(ServiceError::InvalidInput(
                    "signing the audit head needs the node's data directory".into(),
                ))
            } else {
                Ok(None)
            };
        };
        let path = dir.join(SIGNING_KEY);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| {
                        ServiceError::Internal("generating the audit signing key".into())
                    })?;
                write_private(&path, pkcs8.as_ref())?;
                pkcs8.as_ref().to_vec()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, &e)),
        };
        Ed25519KeyPair::from_pkcs8(&bytes).map(Some).map_err(|_| {
            ServiceError::InvalidInput(format!("{} is not an Ed25519 key", path.display()))
        })
    }

    fn witness(&self) -> Result<Option<Head>> {
        let Some(dir) = &self.local else {
            return Ok(None);
        };
        let path = dir.join(WITNESS);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                ServiceError::InvalidInput(format!("{} does not parse: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, &e)),
        }
    }
}

/// In the node's audit folder: the last entry this node wrote, and its signing key.
const WITNESS: &str = "witness.json";
const SIGNING_KEY: &str = "signing.key";

fn io_error(path: &Path, e: &std::io::Error) -> ServiceError {
    ServiceError::Internal(format!("{}: {e}", path.display()))
}

/// Replaces the witness atomically (a file of its own per writer, synced, renamed into place),
/// so a crash leaves the old witness or the new one, never a torn one.
fn write_witness(dir: &Path, head: &Head) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // invariant: as in entry_hash.
    tmp.write_all(&serde_json::to_vec(head).expect("audit head serialises"))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(WITNESS)).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `path` with `bytes`, readable and writable by its owner only; fails if it exists.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| io_error(path, &e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(path, &e))
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
