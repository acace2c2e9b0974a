//! Tenants: a name, the collections that are theirs (names, or prefixes as `acme-*`), and
//! quotas on stored bytes, documents, requests per minute and generated tokens per day. Keys
//! (and identity-provider tokens, by a claim) belong to a tenant; its requests count against
//! its quotas beside the key's own limits.
//!
//! Records live in the object store (`tenants/{name}.json`) and are read again at most every
//! 2 s, like keys. Stored bytes and documents are those of the tenant's collections (the
//! originals' sizes, every document counted whatever its state), checked at upload; generated
//! tokens are counted per UTC day by this node (they start again at a restart).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_index::{BlobStore, CollectionName};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};

const PREFIX: &str = "tenants/";
/// How long tenant records are trusted before they are read again.
const RECHECK: Duration = Duration::from_secs(2);

/// A tenant and its quotas (`None`: no limit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// 1-64 characters of `a-z 0-9 _ -`.
    pub name: String,
    /// Its collections: names, or prefixes ending in `*` (`acme-*`).
    pub collections: Vec<String>,
    /// Most bytes of original documents its collections may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Most documents its collections may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<u64>,
    /// Requests per minute of all its keys together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Generated (completion) tokens per UTC day, answers and chat together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

impl TenantRecord {
    /// Whether collection `c` is the tenant's.
    pub fn owns(&self, c: &str) -> bool {
        self.collections.iter().any(|p| matches_pattern(p, c))
    }
}

/// Whether a collection pattern (a name, `prefix*` or `*`) matches a name.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Checks a collection pattern: `*`, a collection name, or a name's start followed by `*`.
pub fn check_pattern(p: &str) -> Result<()> {
    let stem = p.strip_suffix('*').unwrap_or(p);
    if stem.is_empty() && p == "*" {
        return Ok(());
    }
    let ok = !stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        && stem.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidInput(format!(
            "{p:?} is not a collection name or prefix (a-z, 0-9, '-', '_', optionally ending in *)"
        )))
    }
}

fn check_name(name: &str) -> Result<()> {
    CollectionName::new(name).map(|_| ()).map_err(|_| {
        ServiceError::InvalidInput(format!(
            "tenant name {name:?} is invalid: use 1-64 characters of a-z, 0-9, '-' or '_'"
        ))
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tenants in the object store, with a short-lived cache.
pub struct TenantStore {
    store: BlobStore,
    cache: Mutex<Option<(Instant, Vec<TenantRecord>)>>,
}

impl TenantStore {
    /// Tenants in `store`.
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            cache: Mutex::new(None),
        }
    }

    /// Creates or replaces a tenant. Its collection patterns may not overlap another tenant's.
    pub async fn put(&self, mut t: TenantRecord) -> Result<TenantRecord> {
        check_name(&t.name)?;
        if t.collections.is_empty() {
            return Err(ServiceError::InvalidInput(
                "a tenant has at least one collection or prefix (acme-*)".into(),
            ));
        }
        for p in &t.collections {
            check_pattern(p)?;
        }
        if t.rate_per_minute == Some(0) {
            return Err(ServiceError::InvalidInput(
                "a tenant's rate_per_minute must be at least 1".into(),
            ));
        }
        for other in self.list().await? {
            if other.name == t.name {
                continue;
            }
            for p in &t.collections {
                for q in &other.collections {
                    if overlap(p, q) {
                        return Err(ServiceError::InvalidInput(format!(
                            "collections {p:?} overlap tenant {}'s {q:?}",
                            other.name
                        )));
                    }
                }
            }
        }
        if t.created_ms == 0 {
            t.created_ms = now_ms();
        }
        // invariant: strings and numbers always serialise.
        let json = serde_json::to_vec_pretty(&t).expect("tenant record serialises");
        self.store
            .put(&format!("{PREFIX}{}.json", t.name), json.into())
            .await?;
        *self.lock() = None;
        Ok(t)
    }

    /// Deletes a tenant; false when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let key = format!("{PREFIX}{name}.json");
        let existed = self.store.exists(&key).await?;
        self.store.delete(&key).await?;
        *self.lock() = None;
        Ok(existed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<TenantRecord>)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every tenant, by name (read again when the cache is older than 2 s).
    pub async fn list(&self) -> Result<Vec<TenantRecord>> {
        if let Some((at, list)) = self.lock().as_ref()
            && at.elapsed() < RECHECK
        {
            return Ok(list.clone());
        }
        let mut out = Vec::new();
        for key in self.store.list(PREFIX).await? {
            let bytes = self.store.get(&key).await?;
            let t: TenantRecord = serde_json::from_slice(&bytes).map_err(|e| {
                ServiceError::Index(hearth_index::IndexError::Corrupt {
                    key: key.clone(),
                    detail: e.to_string(),
                })
            })?;
            out.push(t);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        *self.lock() = Some((Instant::now(), out.clone()));
        Ok(out)
    }

    /// A tenant by name.
    pub async fn get(&self, name: &str) -> Result<Option<TenantRecord>> {
        Ok(self.list().await?.into_iter().find(|t| t.name == name))
    }

    /// The tenant a collection belongs to, if any.
    pub async fn of_collection(&self, c: &str) -> Result<Option<TenantRecord>> {
        Ok(self.list().await?.into_iter().find(|t| t.owns(c)))
    }
}

/// Whether two patterns can match the same name.
fn overlap(p: &str, q: &str) -> bool {
    match (p.strip_suffix('*'), q.strip_suffix('*')) {
        (Some(a), Some(b)) => a.starts_with(b) || b.starts_with(a),
        (Some(a), None) => q.starts_with(a),
        (None, Some(b)) => p.starts_with(b),
        (None, None) => p == q,
    }
}

/// Generated tokens per tenant and UTC day, on this node.
#[derive(Default)]
pub struct TokenUsage {
    days: Mutex<HashMap<String, (u64, u64)>>,
}

/// Today's number (days since the Unix epoch, UTC) and the seconds left of it.
fn today() -> (u64, u64) {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (s / 86_400, 86_400 - s % 86_400)
}

impl TokenUsage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.days
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tokens the tenant generated today.
    pub fn today(&self, tenant: &str) -> u64 {
        let (day, _) = today();
        self.lock()
            .get(tenant)
            .filter(|(d, _)| *d == day)
            .map_or(0, |(_, n)| *n)
    }

    /// Counts generated tokens.
    pub fn add(&self, tenant: &str, tokens: u64) {
        let (day, _) = today();
        let mut days = self.lock();
        let e = days.entry(tenant.to_owned()).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 = e.1.saturating_add(tokens);
    }

    /// `Err(seconds until tomorrow)` when the tenant has used its day's tokens.
    pub fn check(&self, t: &TenantRecord) -> std::result::Result<(), u64> {
        match t.tokens_per_day {
            Some(max) if self.today(&t.name) >= max => Err(today().1),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_and_overlap() {
        assert!(matches_pattern("acme-*", "acme-docs") && !matches_pattern("acme-*", "acm"));
        assert!(matches_pattern("docs", "docs") && !matches_pattern("docs", "docs2"));
        assert!(matches_pattern("*", "anything"));
        assert!(overlap("acme-*", "acme-docs") && overlap("acme-*", "acme-x*"));
        assert!(!overlap("acme-*", "beta-*") && !overlap("a", "b"));
        for bad in ["", "A*", "-x", "a b", "a/b*"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        check_pattern("acme-*").unwrap();
    }

    #[tokio::test]
    async fn tenants_are_stored_and_may_not_share_collections() {
        let dir = tempfile::tempdir().unwrap();
        let t = TenantStore::new(BlobStore::local(dir.path()).unwrap());
        let acme = TenantRecord {
            name: "acme".into(),
            collections: vec!["acme-*".into()],
            max_bytes: Some(10),
            max_documents: None,
            rate_per_minute: Some(5),
            tokens_per_day: None,
            created_ms: 0,
        };
        t.put(acme.clone()).await.unwrap();
        let clash = TenantRecord {
            name: "beta".into(),
            collections: vec!["acme-x".into()],
            ..acme.clone()
        };
        assert!(t.put(clash).await.is_err());
        assert_eq!(
            t.of_collection("acme-docs").await.unwrap().unwrap().name,
            "acme"
        );
        assert!(t.of_collection("other").await.unwrap().is_none());
        assert!(t.delete("acme").await.unwrap());
        assert!(t.list().await.unwrap().is_empty());
    }

    #[test]
    fn tokens_are_counted_per_tenant_and_day() {
        let u = TokenUsage::default();
        let t = TenantRecord {
            name: "acme".into(),
            collections: vec!["acme".into()],
            max_bytes: None,
            max_documents: None,
            rate_per_minute: None,
            tokens_per_day: Some(10),
            created_ms: 0,
        };
        u.add("acme", 6);
        assert!(u.check(&t).is_ok());
        u.add("acme", 4);
        let wait = u.check(&t).unwrap_err();
        assert!((1..=86_400).contains(&wait));
        assert_eq!(u.today("other"), 0);
    }
}
