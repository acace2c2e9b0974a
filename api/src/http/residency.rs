//! `GET /v1/residency`: where data lives and what may leave the node (admin keys).

use axum::http::StatusCode;
use axum::response::Response;

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, json};
use crate::residency::ResidencyReport;

/// The residency report: jurisdiction, storage endpoints and their jurisdictions, the egress
/// allowlist, SHA-256 of every loaded model and adapter file, encryption at rest, the build.
#[utoipa::path(get, path = "/v1/residency", tag = "operations",
    responses((status = 200, description = "the report", body = ResidencyReport),
        (status = 401, description = "no or wrong API key", body = ErrorBody),
        (status = 403, description = "not an admin key", body = ErrorBody)))]
pub(super) async fn residency(s: State, caller: Caller) -> Result<Response, ApiError> {
    caller.require_node_admin()?;
    let adapters = s.service.adapter_files().await;
    let residency = s.residency.clone();
    let report = tokio::task::spawn_blocking(move || residency.report(adapters))
        .await
        .map_err(|e| crate::error::ServiceError::Internal(format!("residency task: {e}")))??;
    Ok(json(StatusCode::OK, &report))
}
