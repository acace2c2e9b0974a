//! API keys: a role (admin, writer, reader), the collections the key may touch, and optional
//! per-key limits. Keys live in the object store (`keys/{id}.json`), hashed: the secret part
//! of a token is shown once, at creation, and never stored.
//!
//! A token reads `hth_{id}_{secret}`: the id (12 hex digits) finds the record, the SHA-256 of
//! the whole token is compared with the stored hash in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_index::BlobStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Result, ServiceError};

const PREFIX: &str = "keys/";
/// How long a verified key is trusted before its record is read again (so a revocation takes
/// effect within this time on every server sharing the store).
const RECHECK: Duration = Duration::from_secs(2);

/// What a key may do. Each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search, ask, list and download documents, chat and embeddings.
    Reader,
    /// Also upload and delete documents, create collections.
    Writer,
    /// Also delete collections, manage adapters, read metrics of everything.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(ServiceError::InvalidInput(format!(
                "role must be admin, writer or reader, got {other:?}"
            ))),
        }
    }
}

/// A stored key (without its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The public id (12 hex digits), part of the token.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Collections the key may touch; `["*"]` for all.
    pub collections: Vec<String>,
    /// The user the key acts for, matched by documents' `user:NAME` access entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Groups the key's user is in, matched by documents' `group:NAME` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The tenant whose quotas the key's requests count against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Requests per minute (None: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Requests at once (None: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// SHA-256 of the whole token, hex.
    pub sha256: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

impl KeyRecord {
    /// Whether the key may touch collection `c` (a name, a prefix such as `acme-*`, or `*`).
    pub fn allows(&self, c: &str) -> bool {
        self.collections
            .iter()
            .any(|x| crate::tenants::matches_pattern(x, c))
    }

    /// Whether the key reaches every collection.
    pub fn all_collections(&self) -> bool {
        self.collections.iter().any(|x| x == "*")
    }
}

/// What a new key is.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Collections, or `*`.
    pub collections: Vec<String>,
    /// The user it acts for.
    pub user: Option<String>,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The tenant (which must exist).
    pub tenant: Option<String>,
    /// Requests per minute.
    pub rate_per_minute: Option<u32>,
    /// Requests at once.
    pub concurrency: Option<u32>,
}

/// The keys in the object store, with a short-lived cache of verified ones.
pub struct KeyStore {
    store: BlobStore,
    cache: Mutex<HashMap<String, (KeyRecord, Instant)>>,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| ServiceError::Internal(format!("no randomness available: {e}")))?;
    Ok(hex::encode(buf))
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn key_path(id: &str) -> String {
    format!("{PREFIX}{id}.json")
}

fn valid_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl KeyStore {
    /// Keys in `store`.
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a key; returns its record and the token (shown only now).
    pub async fn create(&self, k: NewKey) -> Result<(KeyRecord, String)> {
        let name = k.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ServiceError::InvalidInput(
                "the key name must be 1-128 characters without control characters".into(),
            ));
        }
        if k.collections.is_empty() {
            return Err(ServiceError::InvalidInput(
                "name at least one collection, or * for all".into(),
            ));
        }
        for c in &k.collections {
            crate::tenants::check_pattern(c)?;
        }
        let bad_name = |what: &str, n: &str, why: String| {
            ServiceError::InvalidInput(format!(
                "{what} {:?} is invalid: {why}",
                n.chars().take(80).collect::<String>()
            ))
        };
        if let Some(u) = &k.user {
            hearth_index::check_name(u).map_err(|why| bad_name("user", u, why))?;
        }
        if k.groups.len() > hearth_index::MAX_ACCESS_ENTRIES {
            return Err(ServiceError::InvalidInput(format!(
                "a key has at most {} groups",
                hearth_index::MAX_ACCESS_ENTRIES
            )));
        }
        for g in &k.groups {
            hearth_index::check_name(g).map_err(|why| bad_name("group", g, why))?;
        }
        let mut groups = k.groups;
        groups.sort_unstable();
        groups.dedup();
        if k.rate_per_minute == Some(0) || k.concurrency == Some(0) {
            return Err(ServiceError::InvalidInput(
                "rate and concurrency limits must be at least 1".into(),
            ));
        }
        let id = random_hex(6)?;
        let token = format!("hth_{id}_{}", random_hex(24)?);
        let rec = KeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            role: k.role,
            collections: k.collections,
            user: k.user,
            groups,
            tenant: k.tenant,
            rate_per_minute: k.rate_per_minute,
            concurrency: k.concurrency,
            sha256: sha256_hex(&token),
            created_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        // invariant: strings, numbers and enums always serialise.
        let json = serde_json::to_vec_pretty(&rec).expect("key record serialises");
        self.store.put(&key_path(&id), json.into()).await?;
        Ok((rec, token))
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<KeyRecord>> {
        let mut out = Vec::new();
        for key in self.store.list(PREFIX).await? {
            let bytes = self.store.get(&key).await?;
            out.push(decode(&key, &bytes)?);
        }
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Whether any key exists.
    pub async fn any(&self) -> Result<bool> {
        Ok(!self.store.list(PREFIX).await?.is_empty())
    }

    /// Deletes a key by id; false when there was none.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        if !valid_id(id) {
            return Err(ServiceError::InvalidInput(format!(
                "{id:?} is not a key id (12 hex digits, as `hearth keys list` shows)"
            )));
        }
        let existed = self.store.exists(&key_path(id)).await?;
        self.store.delete(&key_path(id)).await?;
        self.lock().remove(id);
        Ok(existed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (KeyRecord, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key a token belongs to, or `None` for a malformed, unknown, revoked or wrong token.
    pub async fn verify(&self, token: &str) -> Result<Option<KeyRecord>> {
        let Some((id, _)) = token
            .strip_prefix("hth_")
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        if !valid_id(id) {
            return Ok(None);
        }
        let hash = sha256_hex(token);
        let cached = self
            .lock()
            .get(id)
            .filter(|(_, at)| at.elapsed() < RECHECK)
            .map(|(r, _)| r.clone());
        let rec = match cached {
            Some(r) => r,
            None => {
                let key = key_path(id);
                let Some(bytes) = self.store.get_opt(&key).await? else {
                    self.lock().remove(id);
                    return Ok(None);
                };
                let r = decode(&key, &bytes)?;
                self.lock()
                    .insert(id.to_owned(), (r.clone(), Instant::now()));
                r
            }
        };
        // Constant time in the contents; the lengths (64 hex digits each) are no secret.
        let same: bool = rec.sha256.as_bytes().ct_eq(hash.as_bytes()).into();
        Ok(same.then_some(rec))
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<KeyRecord> {
    serde_json::from_slice(bytes).map_err(|e| {
        ServiceError::Index(hearth_index::IndexError::Corrupt {
            key: key.to_owned(),
            detail: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_stored_hashed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let keys = KeyStore::new(store.clone());
        assert!(!keys.any().await.unwrap());
        let (rec, token) = keys
            .create(NewKey {
                name: "ci".into(),
                role: Role::Writer,
                collections: vec!["docs".into()],
                user: Some("ci@example.com".into()),
                groups: vec!["legal".into(), "build".into(), "legal".into()],
                tenant: None,
                rate_per_minute: None,
                concurrency: Some(2),
            })
            .await
            .unwrap();
        assert!(token.starts_with(&format!("hth_{}_", rec.id)));
        assert_eq!(rec.groups, ["build", "legal"]);
        for (user, groups) in [(Some("a b"), vec![]), (None, vec!["x,y".to_owned()])] {
            let e = keys
                .create(NewKey {
                    name: "bad".into(),
                    role: Role::Reader,
                    collections: vec!["*".into()],
                    user: user.map(str::to_owned),
                    groups,
                    tenant: None,
                    rate_per_minute: None,
                    concurrency: None,
                })
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::InvalidInput(_)), "{e}");
        }
        // The secret is not in the store.
        let secret = token.rsplit('_').next().unwrap();
        for k in store.list("keys/").await.unwrap() {
            let bytes = store.get(&k).await.unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(secret));
        }
        assert_eq!(keys.verify(&token).await.unwrap(), Some(rec.clone()));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('0') { '1' } else { '0' });
        assert_eq!(keys.verify(&wrong).await.unwrap(), None);
        for junk in [
            "",
            "hth_",
            "Bearer x",
            "hth_zzzzzzzzzzzz_00",
            "hth_../../etc_x",
        ] {
            assert_eq!(keys.verify(junk).await.unwrap(), None, "{junk}");
        }
        assert!(rec.allows("docs") && !rec.allows("other"));
        assert_eq!(keys.list().await.unwrap(), std::slice::from_ref(&rec));
        assert!(keys.revoke(&rec.id).await.unwrap());
        assert_eq!(keys.verify(&token).await.unwrap(), None);
        assert!(!keys.revoke(&rec.id).await.unwrap());
        assert!(keys.revoke("../x").await.is_err());
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Admin > Role::Writer && Role::Writer > Role::Reader);
        assert_eq!("writer".parse::<Role>().unwrap(), Role::Writer);
        assert!("root".parse::<Role>().is_err());
    }
}
