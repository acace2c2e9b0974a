//! Authentication, authorisation and per-key limits.
//!
//! Every `/v1/*` and `/metrics` request carries `Authorization: Bearer <key>` (401 without a
//! valid one): an API key (`hth_...`), or with `server.oidc` an access token from the
//! identity provider, whose claims give the user, groups, role and collections (see `oidc`).
//! The key's role and collections decide what it may do (403 otherwise); each key has a
//! request rate and a concurrency limit (429 with Retry-After), and a key of a tenant shares
//! the tenant's rate with its other keys. In open mode (only on a
//! loopback address, and only when asked for) every request acts as an admin, under the same
//! limits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hearth_index::{CollectionName, Reader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::error::ApiError;
use crate::keys::{KeyRecord, Role};
use crate::tenants::TenantRecord;

/// Who is calling: a key, or the open mode's implicit admin.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    key: Option<KeyRecord>,
    /// The tenant the key belongs to, as read at authentication.
    tenant: Option<Arc<TenantRecord>>,
}

impl Caller {
    /// The caller's tenant, when it has one.
    pub fn tenant(&self) -> Option<&TenantRecord> {
        self.tenant.as_deref()
    }

    /// Whether the caller administers the whole node: open mode, or an admin key for every
    /// collection and of no tenant.
    pub fn is_node_admin(&self) -> bool {
        match &self.key {
            None => true,
            Some(k) => k.role == Role::Admin && k.all_collections() && k.tenant.is_none(),
        }
    }

    pub(super) fn role(&self) -> Role {
        self.key.as_ref().map_or(Role::Admin, |k| k.role)
    }

    /// The key id, or `open`.
    pub fn id(&self) -> &str {
        self.key.as_ref().map_or("open", |k| k.id.as_str())
    }

    /// The generator's cache scope of this caller: each key's prompts share cached prefixes
    /// only with that key's (a reader of one collection learns nothing from cache hits about
    /// prompts built from another's passages). Open mode is one scope.
    pub fn cache_scope(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(self.id().as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        // Scope 0 is the CLI's and the library default's; keys never share it.
        u64::from_le_bytes(b) | 1
    }

    /// Who this caller reads documents as: an admin (open mode included) reads every
    /// document of the collections it may touch; others read those whose access lists name
    /// their user or one of their groups, or everyone.
    pub fn reader(&self) -> Reader {
        match &self.key {
            Some(k) if k.role < Role::Admin => Reader::member(k.user.as_deref(), &k.groups),
            _ => Reader::Everything,
        }
    }

    /// The user and groups documents are matched against, for messages.
    pub fn principals(&self) -> String {
        let Some(k) = &self.key else {
            return "every document".into();
        };
        let mut p: Vec<String> = k.user.iter().map(|u| format!("user:{u}")).collect();
        p.extend(k.groups.iter().map(|g| format!("group:{g}")));
        if p.is_empty() {
            "no user or groups".into()
        } else {
            p.join(", ")
        }
    }

    /// Requires at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role() >= role {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this key is a {}; this needs a {} key",
                self.role().as_str(),
                role.as_str()
            )))
        }
    }

    /// Requires an admin key that reaches every collection: for what the whole node shares
    /// (adapters every collection's answers use, the residency report naming every store and
    /// model). An admin scoped to some collections administers those only.
    pub fn require_node_admin(&self) -> Result<(), ApiError> {
        self.require(Role::Admin)?;
        if self.is_node_admin() {
            Ok(())
        } else {
            Err(forbidden(
                "this admin key is scoped to some collections or a tenant; this needs an admin key for every collection (`hearth keys create --role admin`, collection *, no tenant)"
                    .to_owned(),
            ))
        }
    }

    /// Requires at least `role` on collection `c`.
    pub fn require_on(&self, role: Role, c: &CollectionName) -> Result<(), ApiError> {
        self.require(role)?;
        if self.sees(c) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this key has no access to collection {c}"
            )))
        }
    }

    /// Parses a collection name from the request (400 when invalid) and requires at least
    /// `role` on it (403).
    pub fn collection(&self, raw: &str, role: Role) -> Result<CollectionName, ApiError> {
        let c = CollectionName::new(raw).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.require_on(role, &c)?;
        Ok(c)
    }

    /// Whether the caller may see collection `c` at all.
    pub fn sees(&self, c: &CollectionName) -> bool {
        self.key.as_ref().is_none_or(|k| k.allows(c.as_str()))
    }
}

fn forbidden(m: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", m)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "route is not behind authentication",
            )
        })
    }
}

/// Per-key request rate and concurrency.
pub(crate) struct Limits {
    default_rate: u32,
    default_concurrency: u32,
    keys: Mutex<HashMap<String, Limiter>>,
    /// Each tenant's rate, shared by its keys.
    tenants: Mutex<HashMap<String, (NonZeroU32, DefaultDirectRateLimiter)>>,
}

/// One key's limits. The rate is a GCRA limiter that allows `rate` requests in a burst and
/// then one every `60 / rate` seconds: a bucket of `rate` tokens refilled over a minute.
struct Limiter {
    rate: NonZeroU32,
    bucket: DefaultDirectRateLimiter,
    concurrency: Arc<Semaphore>,
}

impl Limiter {
    fn new(rate: NonZeroU32, concurrency: u32) -> Self {
        Self {
            rate,
            bucket: RateLimiter::direct(Quota::per_minute(rate)),
            concurrency: Arc::new(Semaphore::new(concurrency as usize)),
        }
    }
}

impl Limits {
    pub fn new(default_rate: u32, default_concurrency: u32) -> Self {
        Self {
            default_rate,
            default_concurrency,
            keys: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a concurrency slot and one request's worth of rate, or says how long to wait.
    /// A request refused for its concurrency does not use up rate.
    fn admit(&self, caller: &Caller) -> Result<OwnedSemaphorePermit, ApiError> {
        let rate = caller
            .key
            .as_ref()
            .and_then(|k| k.rate_per_minute)
            .unwrap_or(self.default_rate);
        // Configuration and key creation refuse 0; treat one that slips through as 1.
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let conc = caller
            .key
            .as_ref()
            .and_then(|k| k.concurrency)
            .unwrap_or(self.default_concurrency);
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let l = keys
            .entry(caller.id().to_owned())
            .or_insert_with(|| Limiter::new(rate, conc));
        if l.rate != rate {
            // The key's record changed: a fresh bucket at the new rate, the same slots.
            l.rate = rate;
            l.bucket = RateLimiter::direct(Quota::per_minute(rate));
        }
        let permit = l.concurrency.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this key may have {conc} requests in flight at once"),
            )
            .retry_after(1)
        })?;
        if let Err(not_until) = l.bucket.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this key may make {rate} requests per minute"),
            )
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
        }
        drop(keys);
        if let Some(t) = caller.tenant()
            && let Some(rate) = t.rate_per_minute.and_then(NonZeroU32::new)
        {
            let mut tenants = self
                .tenants
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (r, bucket) = tenants
                .entry(t.name.clone())
                .or_insert_with(|| (rate, RateLimiter::direct(Quota::per_minute(rate))));
            if *r != rate {
                *r = rate;
                *bucket = RateLimiter::direct(Quota::per_minute(rate));
            }
            if let Err(not_until) = bucket.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "tenant {} may make {rate} requests per minute, all its keys together",
                        t.name
                    ),
                )
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
            }
        }
        Ok(permit)
    }
}

/// The middleware: authenticates, applies the key's limits, and holds its concurrency slot
/// until the response body (a stream included) is finished.
pub(crate) async fn authenticate(
    state: axum::extract::State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let key = if state.config.open {
        None
    } else {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return unauthorized(
                "missing API key: send Authorization: Bearer <key> (create keys with `hearth keys create`)",
            );
        };
        match &state.oidc {
            // Not an API key: a token from the identity provider.
            Some(oidc) if !token.starts_with("hth_") => match oidc.verify(token).await {
                Ok(id) => Some(KeyRecord {
                    id: format!("oidc:{}", id.user),
                    name: id.user.clone(),
                    role: id.role,
                    collections: id.collections,
                    user: Some(id.user),
                    groups: id.groups,
                    tenant: id.tenant,
                    rate_per_minute: None,
                    concurrency: None,
                    sha256: String::new(),
                    created_ms: 0,
                }),
                Err(why) => return unauthorized(&format!("identity token refused: {why}")),
            },
            _ => match state.keys.verify(token).await {
                Ok(Some(k)) => Some(k),
                Ok(None) => return unauthorized("invalid or revoked API key"),
                Err(e) => return ApiError::from(e).into_response(),
            },
        }
    };
    // The tenant is read as the request starts: a tenant deleted since the key was made
    // leaves the key without one's quotas, so it is refused.
    let tenant = match key.as_ref().and_then(|k| k.tenant.as_deref()) {
        None => None,
        Some(name) => match state.tenants.get(name).await {
            Ok(Some(t)) => Some(Arc::new(t)),
            Ok(None) => {
                return forbidden(format!("this key's tenant {name} does not exist"))
                    .into_response();
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let caller = Caller { key, tenant };
    let permit = match state.limits.admit(&caller) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    // For the audit log, which sees the response.
    resp.extensions_mut().insert(caller);
    resp.map(|body| {
        Body::new(Guarded {
            inner: body,
            _permit: permit,
        })
    })
}

fn unauthorized(m: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// A response body that holds a concurrency slot until it is finished or dropped.
struct Guarded {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_refusals_say_when_to_retry() {
        let limits = Limits::new(3, 1);
        let open = Caller {
            key: None,
            tenant: None,
        };
        // The slot is held: refused for concurrency, which costs no rate.
        let held = limits.admit(&open).unwrap();
        let e = limits.admit(&open).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("in flight"), "{}", e.message);
        assert_eq!(e.retry_after, Some(1));
        drop(held);
        for _ in 0..2 {
            drop(limits.admit(&open).unwrap());
        }
        // Three a minute: the fourth waits about 20 s for its token.
        let e = limits.admit(&open).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("3 requests per minute"), "{}", e.message);
        assert!(
            matches!(e.retry_after, Some(19..=20)),
            "{:?}",
            e.retry_after
        );
    }
}
