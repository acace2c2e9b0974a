//! `/v1/adapters`: upload (PEFT files, multipart), list, delete LoRA adapters. An adapter is
//! used with `"adapter": NAME` in an ask, or `"model": "BASE:NAME"` in a chat completion.

use axum::extract::{Multipart, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_engine::AdapterInfo;

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, json, multipart_error};
use crate::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

fn info_json(model: &str, a: &AdapterInfo) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "model": format!("{model}:{}", a.name),
        "rank": a.rank,
        "alpha": a.alpha,
        "modules": a.modules,
        "parameters": a.parameters,
        "base_model": a.base_model,
        "resident": a.resident,
    })
}

/// The registered LoRA adapters.
#[utoipa::path(get, path = "/v1/adapters", tag = "adapters",
    responses((status = 200, description = "`{adapters: [{name, model, rank, alpha, modules, parameters, base_model, resident}]}`", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn list(s: State) -> Result<Response, ApiError> {
    let mut list = s.service.adapters()?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let out: Vec<_> = list.iter().map(|a| info_json(&s.model_id, a)).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"adapters": out})))
}

/// The two PEFT files of an adapter.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct AdapterForm {
    /// `adapter_config.json`.
    #[schema(value_type = String, format = Binary)]
    adapter_config: Vec<u8>,
    /// `adapter_model.safetensors`.
    #[schema(value_type = String, format = Binary)]
    adapter_model: Vec<u8>,
}

/// Multipart with two file parts, `adapter_config.json` and `adapter_model.safetensors` (the
/// part names or their file names say which is which).
#[utoipa::path(put, path = "/v1/adapters/{name}", tag = "adapters",
    params(("name" = String, Path, description = "1-64 of A-Z a-z 0-9 . _ -, not starting with .")),
    request_body(content = AdapterForm, content_type = "multipart/form-data"),
    responses((status = 201, description = "registered", body = Object),
        (status = 200, description = "replaced", body = Object),
        (status = 422, description = "does not fit the model", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn upload(
    s: State,
    caller: Caller,
    Path(name): Path<String>,
    mut mp: Multipart,
) -> Result<Response, ApiError> {
    caller.require_node_admin()?;
    let mut config: Option<Bytes> = None;
    let mut weights: Option<Bytes> = None;
    // The parts' shares of the node's upload memory, held until the adapter is installed.
    let mut held = Vec::new();
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let label = field.file_name().or(field.name()).unwrap_or("").to_owned();
        let slot = match label.as_str() {
            ADAPTER_CONFIG | "config" => &mut config,
            ADAPTER_WEIGHTS | "weights" => &mut weights,
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected part {other:?}: send {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
                )));
            }
        };
        let (bytes, share) = super::upload_body::read_part(field, &s).await?;
        held.push(share);
        *slot = Some(bytes);
    }
    // Checked after the body is read, so that the client gets this answer rather than a
    // connection closed under its upload.
    crate::check_adapter_name(&name)?;
    let (Some(config), Some(weights)) = (config, weights) else {
        return Err(ApiError::invalid(format!(
            "an adapter upload needs both {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )));
    };
    let existed = s.service.adapters()?.iter().any(|a| a.name == name);
    let info = s.service.install_adapter(&name, config, weights).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &info_json(&s.model_id, &info)))
}

/// Unregisters an adapter and deletes its files (admin).
#[utoipa::path(delete, path = "/v1/adapters/{name}", tag = "adapters",
    params(("name" = String, Path, description = "adapter name")),
    responses((status = 204, description = "deleted"),
        (status = 404, description = "no such adapter", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn delete(
    s: State,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_node_admin()?;
    if s.service.delete_adapter(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "adapter_not_found",
            format!("no adapter named {name:?}"),
        ))
    }
}
