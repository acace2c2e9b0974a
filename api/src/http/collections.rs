//! `/v1/collections`: create, list, inspect, delete.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use hearth_index::CollectionName;
use serde::{Deserialize, Serialize};

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, json};
use crate::keys::Role;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
}

#[derive(Serialize)]
struct CollectionOut {
    name: String,
    documents: usize,
    chunks: usize,
}

/// Parses a collection name from a path or body (400 when invalid).
pub(super) fn name(raw: &str) -> Result<CollectionName, ApiError> {
    CollectionName::new(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

pub(super) async fn create(
    s: State,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let c = name(&body.name)?;
    caller.require_on(Role::Writer, &c)?;
    let existed = s.service.collections().await?.contains(&c);
    let col = s.service.open(&c).await?;
    let st = col.stats();
    let out = CollectionOut {
        name: c.to_string(),
        documents: st.docs,
        chunks: st.live_chunks,
    };
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &out))
}

pub(super) async fn list(s: State, caller: Caller) -> Result<Response, ApiError> {
    let names = s.service.collections().await?;
    let out: Vec<serde_json::Value> = names
        .iter()
        .filter(|n| caller.sees(n))
        .map(|n| serde_json::json!({"name": n.as_str()}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"collections": out}),
    ))
}

pub(super) async fn get(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
) -> Result<Response, ApiError> {
    let c = name(&c)?;
    caller.require_on(Role::Reader, &c)?;
    let col = s.service.open_existing(&c).await?;
    let st = col.stats();
    Ok(json(
        StatusCode::OK,
        &CollectionOut {
            name: c.to_string(),
            documents: st.docs,
            chunks: st.live_chunks,
        },
    ))
}

pub(super) async fn delete(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
) -> Result<Response, ApiError> {
    let c = name(&c)?;
    caller.require_on(Role::Admin, &c)?;
    if s.service.delete_collection(&c).await? {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"deleted": c.as_str()}),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "collection {c} does not exist"
        )))
    }
}
