//! The HTTP API: an axum router over the same [`Service`] methods the CLI calls.
//!
//! Every error is `{"error": {"code", "message"}}` with the matching status (see [`ApiError`]).
//! JSON bodies are capped at `server.max_json_bytes`, uploads at the document limit; requests
//! that do not stream are cut off after `server.request_timeout_secs` (504).

mod adapters;
mod audit;
mod auth;
mod collections;
mod documents;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod health;
mod metrics;
mod openai;
mod origin;
mod qa;
mod residency;
mod tenants;
mod upload_body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

use crate::Service;
use crate::audit::AuditLog;
use crate::error::{Result, ServiceError};
use crate::keys::KeyStore;
use crate::residency::Residency;

/// Settings of `hearth serve` (`[server]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: usize,
    /// Requests that do not stream fail with 504 after this many seconds.
    pub request_timeout_secs: u64,
    /// Most uploaded documents that may wait for ingestion; more get 503.
    pub ingest_backlog: usize,
    /// Seconds that shutdown waits for requests in flight before it stops anyway.
    pub shutdown_grace_secs: u64,
    /// Seconds a connection may take to send a request's headers, and may sit idle between
    /// requests, before it is closed (a slow-headers client holds no connection for longer).
    pub header_timeout_secs: u64,
    /// Serve without API keys, every caller an admin. Only allowed on a loopback address.
    pub open: bool,
    /// Requests per minute per key (a key's own limit overrides it).
    pub rate_per_minute: u32,
    /// Requests in flight at once per key, streams included (a key's own limit overrides it).
    pub concurrency_per_key: u32,
    /// Record the query text of searches and questions in the audit log.
    pub audit_queries: bool,
    /// MiB that all uploads in flight may hold in memory at once (raised to one largest
    /// document if smaller); an upload that would pass it gets 503 with Retry-After.
    pub upload_memory_mib: u64,
    /// Largest mailbox (mbox) a raw upload may send, in MiB. A mailbox over
    /// `ingest.max_document_bytes` is written to `{data_dir}/uploads` as it arrives and split
    /// into its messages there; it needs a Content-Length.
    pub max_mailbox_mib: u64,
    /// Access tokens from an identity provider, beside API keys (`[server.oidc]`).
    pub oidc: Option<crate::oidc::OidcConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_json_bytes: 1 << 20,
            request_timeout_secs: 300,
            ingest_backlog: 10_000,
            shutdown_grace_secs: 30,
            header_timeout_secs: 30,
            open: false,
            rate_per_minute: 600,
            concurrency_per_key: 32,
            audit_queries: false,
            upload_memory_mib: 1024,
            max_mailbox_mib: 16 * 1024,
            oidc: None,
        }
    }
}

impl ServerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let addr = self.bind.parse::<SocketAddr>().map_err(|e| {
            ServiceError::InvalidInput(format!(
                "server.bind {:?} is not an address like 127.0.0.1:8080: {e}",
                self.bind
            ))
        })?;
        let bad = |m: &str| Err(ServiceError::InvalidInput(m.into()));
        if self.open && !addr.ip().is_loopback() {
            return Err(ServiceError::InvalidInput(format!(
                "server.open (no API keys) is only allowed on a loopback address, not {}",
                self.bind
            )));
        }
        if self.rate_per_minute == 0 || self.concurrency_per_key == 0 {
            return bad("server.rate_per_minute and server.concurrency_per_key must be at least 1");
        }
        if self.max_json_bytes < 1024 {
            return bad("server.max_json_bytes must be at least 1024");
        }
        if self.request_timeout_secs == 0 {
            return bad("server.request_timeout_secs must be at least 1");
        }
        if self.header_timeout_secs == 0 {
            return bad("server.header_timeout_secs must be at least 1");
        }
        if self.ingest_backlog == 0 {
            return bad("server.ingest_backlog must be at least 1");
        }
        if self.upload_memory_mib == 0 {
            return bad("server.upload_memory_mib must be at least 1");
        }
        Ok(())
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub service: Arc<Service>,
    pub keys: KeyStore,
    pub tenants: crate::tenants::TenantStore,
    pub tokens: crate::tenants::TokenUsage,
    pub metrics: metrics::Metrics,
    pub audit: AuditLog,
    /// Keyless requests refused lately, written to the audit log as a count.
    pub refused: audit::RefusedTally,
    pub limits: auth::Limits,
    pub config: ServerConfig,
    /// Largest accepted document, in bytes.
    pub max_document_bytes: u64,
    /// What uploads in flight may hold in memory.
    pub upload_memory: upload_body::UploadMemory,
    /// The name `/v1/models` lists for the generator.
    pub model_id: String,
    /// The name `/v1/models` lists for the embedding model.
    pub embedding_model_id: String,
    /// The residency report's static part.
    pub residency: Arc<Residency>,
    /// Verifies identity-provider tokens, when `server.oidc` is set.
    pub oidc: Option<Arc<crate::oidc::OidcVerifier>>,
}

type State = axum::extract::State<Arc<AppState>>;

/// What the router is built from.
pub struct ServerParts {
    /// The service.
    pub service: Arc<Service>,
    /// Settings.
    pub config: ServerConfig,
    /// Largest accepted document, in bytes (`ingest.max_document_bytes`).
    pub max_document_bytes: u64,
    /// Model names for the OpenAI-compatible endpoints.
    pub model_id: String,
    /// Embedding model name for the OpenAI-compatible endpoints.
    pub embedding_model_id: String,
    /// Jurisdiction, storage, models, encryption, build: for `/v1/residency`.
    pub residency: Arc<Residency>,
    /// Verifies identity-provider tokens, when `server.oidc` is set.
    pub oidc: Option<Arc<crate::oidc::OidcVerifier>>,
}

/// The whole API as a router.
pub fn router(parts: ServerParts) -> Router {
    let upload_limit = usize::try_from(parts.max_document_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    let json_limit = parts.config.max_json_bytes;
    let timeout = Duration::from_secs(parts.config.request_timeout_secs);
    let state = Arc::new(AppState {
        keys: parts.service.storage().keys(),
        tenants: parts.service.storage().tenants(),
        tokens: crate::tenants::TokenUsage::default(),
        metrics: metrics::Metrics::default(),
        audit: parts.service.storage().audit(),
        refused: audit::RefusedTally::default(),
        limits: auth::Limits::new(
            parts.config.rate_per_minute,
            parts.config.concurrency_per_key,
        ),
        service: parts.service,
        upload_memory: upload_body::UploadMemory::new(
            parts
                .config
                .upload_memory_mib
                .saturating_mul(1 << 20)
                .max(upload_limit as u64),
        ),
        config: parts.config,
        max_document_bytes: parts.max_document_bytes,
        model_id: parts.model_id,
        embedding_model_id: parts.embedding_model_id,
        residency: parts.residency,
        oidc: parts.oidc,
    });
    let uploads = OpenApiRouter::new()
        .routes(routes!(documents::upload, documents::list))
        .routes(routes!(adapters::upload, adapters::delete))
        .layer(DefaultBodyLimit::max(upload_limit));
    let api = OpenApiRouter::new()
        .routes(routes!(collections::create, collections::list))
        .routes(routes!(
            collections::get,
            collections::delete,
            collections::patch
        ))
        .routes(routes!(collections::reembed))
        .routes(routes!(documents::get, documents::delete, documents::patch))
        .routes(routes!(documents::raw))
        .routes(routes!(qa::search))
        .routes(routes!(qa::ask))
        .routes(routes!(qa::conversation, qa::delete_conversation))
        .routes(routes!(qa::eval))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(openai::embeddings))
        .routes(routes!(openai::models))
        .routes(routes!(adapters::list))
        .routes(routes!(metrics::metrics))
        .routes(routes!(residency::residency))
        .routes(routes!(tenants::list))
        .layer(DefaultBodyLimit::max(json_limit));
    let protected = api
        .merge(uploads)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz));
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(public)
        .split_for_parts();
    let doc: Arc<str> = doc.to_pretty_json().unwrap_or_default().into();
    router
        .route("/", get(web_page))
        .route("/docs", get(docs_page))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(
            move |r: Response| async move { timed_out(timeout, r) },
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::guard,
        ))
        .with_state(state)
}

/// The OpenAPI document's frame; the paths come from the handlers' annotations, collected by
/// the same router that serves them.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hearth",
        description = "A residency-bound RAG appliance: documents, hybrid search, grounded answers with citations, OpenAI-compatible endpoints. Every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "collections"), (name = "documents"), (name = "search", description = "search and grounded answers"),
        (name = "openai", description = "OpenAI-compatible endpoints"), (name = "adapters", description = "LoRA adapters"),
        (name = "operations"),
    )
)]
struct ApiDoc;

/// Declares the bearer-key scheme and requires it everywhere (health checks opt out).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
    }
}

/// A page that renders `/openapi.json` (no external resources).
async fn docs_page() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/html; charset=utf-8",
            ),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        include_str!("web/docs.html"),
    )
        .into_response()
}

/// The web page: one self-contained HTML file compiled into the binary.
async fn web_page() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/html; charset=utf-8",
            ),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("web/index.html"),
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Gives the timeout layer's bare 504 the API's error body. The layer cuts off a request whose
/// response has not started within `limit`, dropping (and so cancelling) its handler; streams
/// that have started are not affected, as only producing the response head is timed. Every
/// response the handlers make has a content type, the layer's has none.
fn timed_out(limit: Duration, r: Response) -> Response {
    if r.status() == StatusCode::GATEWAY_TIMEOUT
        && !r.headers().contains_key(axum::http::header::CONTENT_TYPE)
    {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response();
    }
    r
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits up to `grace` for the
/// requests in flight (streams included) to finish. A connection that takes longer than
/// `header_timeout` to send a request's headers, or sits idle that long between requests, is
/// closed: hyper's HTTP/1 header timer, which `axum::serve` leaves off (a slow-headers client
/// could hold a connection, and its memory, for ever).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    header_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: the connections in flight go on; wait
                    // for some to close instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "requests still in flight after the grace period; stopping");
        }
    }
    Ok(())
}
