//! Errors as the API reports them: `{"error": {"code", "message"}}` with the matching status,
//! and the JSON extractor that turns malformed bodies into such errors.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_engine::EngineError;
use hearth_index::IndexError;
use hearth_ingest::{IngestError, Rejection};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ServiceError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds after which a retry may succeed (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// Adds a Retry-After.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidInput(m) => Self::invalid(m),
            ServiceError::NotFound(m) => Self::not_found(format!("{m} does not exist")),
            ServiceError::Overloaded(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", m).retry_after(1)
            }
            ServiceError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ServiceError::Ingest(e) => e.into(),
            ServiceError::Index(e) => e.into(),
            ServiceError::Engine(e) => e.into(),
            ServiceError::Internal(m) => internal(m),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::InvalidInput(m) => Self::invalid(m),
            IngestError::Rejected(
                r @ (Rejection::TooLarge { .. } | Rejection::ImageTooLarge(_)),
            ) => Self::too_large(r.to_string()),
            IngestError::Rejected(r @ Rejection::Unsupported(_)) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                r.to_string(),
            ),
            IngestError::Rejected(r @ Rejection::Empty) => Self::invalid(r.to_string()),
            IngestError::NotFound(m) => Self::not_found(format!("{m} does not exist")),
            IngestError::Index(e) => e.into(),
            IngestError::Internal(m) => internal(m),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::InvalidInput(m) => Self::invalid(m),
            IndexError::NotFound(m) => Self::not_found(format!("{m} does not exist")),
            IndexError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            e @ (IndexError::Store { .. }
            | IndexError::Io { .. }
            | IndexError::Corrupt { .. }
            | IndexError::Internal(_)) => internal(e.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidInput(m) => Self::invalid(m),
            EngineError::Overloaded(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", m).retry_after(1)
            }
            EngineError::UnknownAdapter(name) => Self::new(
                StatusCode::NOT_FOUND,
                "adapter_not_found",
                format!("no adapter named {name:?} is registered"),
            ),
            e @ EngineError::InvalidAdapter { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_adapter",
                e.to_string(),
            ),
            EngineError::Unsupported(m) => Self::new(StatusCode::BAD_REQUEST, "unsupported", m),
            e @ EngineError::ModelMissing { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            e @ (EngineError::Io { .. }
            | EngineError::Internal(_)
            | EngineError::Corrupt { .. }) => internal(e.to_string()),
        }
    }
}

fn internal(m: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: invalid_request, unauthorized, forbidden, not_found,
    /// payload_too_large, unsupported_media_type, rate_limited, overloaded, ...
    pub code: String,
    /// For people.
    pub message: String,
}

/// A JSON body: `Content-Type: application/json` required (415 otherwise), the size limit of
/// the route applies (413), and a body that does not parse names the offending field (400).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if json != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid(format!("invalid JSON body at {path}: {inner}"))
        }
    })
}

/// Maps a failure to read a body: over the limit is 413, anything else 400.
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the request body is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!(
            "could not read the request body: {}",
            e.body_text()
        ))
    }
}

/// Maps a failure to read a multipart part: over the limit is 413, anything else 400.
pub fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the upload is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}
