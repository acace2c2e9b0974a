//! `/healthz` (the process answers) and `/readyz` (models loaded, object store reachable).

use axum::http::StatusCode;
use axum::response::Response;

use super::State;
use super::error::{ApiError, ErrorBody, json};

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub(super) async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Models loaded and the object store reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "ready", body = Object),
        (status = 503, description = "not ready", body = ErrorBody)))]
pub(super) async fn readyz(s: State) -> Result<Response, ApiError> {
    let generator = s
        .service
        .generator()
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    let collections = s.service.collections().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the object store is not reachable: {e}"),
        )
    })?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ready",
            "generator": generator.info().name,
            "embedding_model": s.embedding_model_id,
            "collections": collections.len(),
            "ingest_backlog": s.service.ingest_backlog(),
        }),
    ))
}
