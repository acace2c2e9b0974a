//! Tenants over HTTP: the quota checks the routes make (stored bytes and documents at upload,
//! generated tokens before a generation) and `GET /v1/tenants`, each tenant's quotas and usage.

use axum::http::StatusCode;
use axum::response::Response;
use hearth_engine::Completion;
use hearth_index::CollectionName;
use serde::Serialize;

use super::AppState;
use super::State;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, json};
use crate::keys::Role;
use crate::tenants::TenantRecord;

fn quota(m: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", m)
}

/// Documents and bytes stored in a tenant's collections.
async fn stored(s: &AppState, t: &TenantRecord) -> Result<(u64, u64), ApiError> {
    let (mut docs, mut bytes) = (0, 0);
    for c in s.service.collections().await? {
        if t.owns(c.as_str()) {
            let (d, b) = s.service.stored_usage(&c).await?;
            docs += d;
            bytes += b;
        }
    }
    Ok((docs, bytes))
}

/// Refuses (403 `quota_exceeded`) a document of `bytes` bytes that would take the tenant of
/// collection `c` past its stored documents or bytes. Uploads at the same moment may each
/// pass the check: the quota holds to within the uploads in flight.
pub(super) async fn check_storage(
    s: &AppState,
    c: &CollectionName,
    bytes: u64,
) -> Result<(), ApiError> {
    let Some(t) = s.tenants.of_collection(c.as_str()).await? else {
        return Ok(());
    };
    if t.max_bytes.is_none() && t.max_documents.is_none() {
        return Ok(());
    }
    let (docs, used) = stored(s, &t).await?;
    if let Some(max) = t.max_documents
        && docs + 1 > max
    {
        return Err(quota(format!(
            "tenant {} holds {docs} documents, its quota is {max}; delete some first",
            t.name
        )));
    }
    if let Some(max) = t.max_bytes
        && used.saturating_add(bytes) > max
    {
        return Err(quota(format!(
            "tenant {} stores {used} bytes; this document of {bytes} bytes would pass its quota of {max}",
            t.name
        )));
    }
    Ok(())
}

/// Refuses (429 with Retry-After until the next UTC day) a generation when the caller's
/// tenant has used its tokens of the day.
pub(super) fn check_tokens(s: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Some(t) = caller.tenant() else {
        return Ok(());
    };
    s.tokens.check(t).map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "tenant {} has generated its {} tokens for today (UTC)",
                t.name,
                t.tokens_per_day.unwrap_or_default()
            ),
        )
        .retry_after(wait)
    })
}

/// Records a finished generation: the metrics, and the tokens of the caller's tenant.
pub(super) fn generated(
    s: &AppState,
    endpoint: &'static str,
    tenant: Option<&str>,
    c: &Completion,
) {
    s.metrics.generation(endpoint, c);
    if let Some(t) = tenant {
        s.tokens.add(t, c.usage.completion_tokens as u64);
    }
}

/// A tenant's quotas and what it uses.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TenantOut {
    #[serde(flatten)]
    tenant: TenantRecord,
    usage: UsageOut,
}

/// What a tenant uses now.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct UsageOut {
    /// Documents in its collections.
    documents: u64,
    /// Bytes of their originals.
    stored_bytes: u64,
    /// Tokens generated today (UTC), on this node.
    generated_tokens_today: u64,
}

/// Every tenant's usage, for `/metrics`: (name, documents, bytes, tokens today) of the
/// tenants the caller may see (all for the node's admin, its own for a tenant's admin).
pub(super) async fn visible_usage(
    s: &AppState,
    caller: &Caller,
) -> Result<Vec<(String, u64, u64, u64)>, ApiError> {
    let mut out = Vec::new();
    for t in visible(s, caller).await? {
        let (docs, bytes) = stored(s, &t).await?;
        out.push((t.name.clone(), docs, bytes, s.tokens.today(&t.name)));
    }
    Ok(out)
}

async fn visible(s: &AppState, caller: &Caller) -> Result<Vec<TenantRecord>, ApiError> {
    if caller.is_node_admin() {
        return Ok(s.tenants.list().await?);
    }
    Ok(match caller.tenant() {
        Some(t) if caller.require(Role::Admin).is_ok() => vec![t.clone()],
        _ => Vec::new(),
    })
}

/// Tenants with their quotas and usage: every tenant for the node's admin, its own for a
/// tenant's admin.
#[utoipa::path(get, path = "/v1/tenants", tag = "operations",
    responses((status = 200, description = "`{tenants: [{name, collections, max_bytes, max_documents, rate_per_minute, tokens_per_day, usage: {documents, stored_bytes, generated_tokens_today}}]}`", body = Object),
        (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "not an admin", body = ErrorBody)))]
pub(super) async fn list(s: State, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let mut out = Vec::new();
    for t in visible(&s, &caller).await? {
        let (documents, stored_bytes) = stored(&s, &t).await?;
        let generated_tokens_today = s.tokens.today(&t.name);
        out.push(TenantOut {
            tenant: t,
            usage: UsageOut {
                documents,
                stored_bytes,
                generated_tokens_today,
            },
        });
    }
    Ok(json(StatusCode::OK, &serde_json::json!({"tenants": out})))
}
