//! `/v1/collections`: create, list, inspect, delete.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use hearth_index::{Access, Redaction, RedactionPattern};
use serde::{Deserialize, Serialize};

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ErrorBody, json};
use crate::keys::Role;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    /// PII redaction for the collection's documents, fixed at creation (off when absent).
    #[serde(default)]
    redaction: Option<RedactionBody>,
    /// Tesseract languages OCR reads the collection's scans and images in (`eng`, `deu`,
    /// `fra`, ...; each installed on the node), fixed at creation. Absent: the node's default.
    #[serde(default)]
    ocr_languages: Vec<String>,
    /// Who may read a document uploaded without an access list: group names, `user:NAME`,
    /// or `["*"]` (the default: everyone who reads the collection). An admin may change it.
    #[serde(default)]
    default_access: Option<Vec<String>>,
    /// The embedding model, by name (`GET /v1/models` lists them), fixed at creation.
    /// Absent: the node's default.
    #[serde(default)]
    embedder: Option<String>,
}

/// What a collection redacts before its text is chunked, embedded or stored.
#[derive(Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RedactionBody {
    /// Built-in kinds: email, phone, iban, card, ip.
    #[serde(default)]
    kinds: Vec<String>,
    /// Named regular expressions; matches become `[REDACTED:NAME]`.
    #[serde(default)]
    patterns: Vec<PatternBody>,
}

#[derive(Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatternBody {
    name: String,
    regex: String,
}

impl From<RedactionBody> for Redaction {
    fn from(b: RedactionBody) -> Self {
        Redaction {
            kinds: b.kinds,
            patterns: b
                .patterns
                .into_iter()
                .map(|p| RedactionPattern {
                    name: p.name,
                    regex: p.regex,
                })
                .collect(),
        }
    }
}

impl From<Redaction> for RedactionBody {
    fn from(r: Redaction) -> Self {
        RedactionBody {
            kinds: r.kinds,
            patterns: r
                .patterns
                .into_iter()
                .map(|p| PatternBody {
                    name: p.name,
                    regex: p.regex,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct CollectionOut {
    name: String,
    documents: usize,
    chunks: usize,
    /// Present when the collection redacts PII.
    #[serde(skip_serializing_if = "Option::is_none")]
    redaction: Option<RedactionBody>,
    /// The languages OCR reads its scans and images in.
    ocr_languages: Vec<String>,
    /// The access list of documents uploaded without one.
    default_access: Vec<String>,
    /// The embedding model its passages and questions are embedded with.
    embedder: String,
    /// Most tokens per chunk (the model's tokens), fixed when the collection was made: the
    /// configured length, shortened to what its model reads.
    chunk_tokens: u32,
    /// Tokens neighbouring chunks share.
    chunk_overlap: u32,
    /// A re-embedding into another model: running, failed or interrupted (present only
    /// then, and to admins of the collection).
    #[serde(skip_serializing_if = "Option::is_none")]
    reembed: Option<ReembedOut>,
}

/// Where a re-embedding stands.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ReembedOut {
    /// The model it moves the collection to.
    embedder: String,
    /// `running`, `failed` (`error` says why) or `interrupted` (the node stopped; start it
    /// again to resume).
    state: &'static str,
    /// Documents done and to do, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl CollectionOut {
    /// The collection as `caller` sees it: the counts are of the documents it may read.
    async fn of(s: &State, col: &crate::Collection, caller: &Caller) -> Result<Self, ApiError> {
        let (documents, chunks) = col.readable_counts(&caller.reader());
        // The model first: a re-embedding switches the model a moment before it clears its
        // mark, and one already switched to is not said to be running.
        let embedder = s.service.embedder_name(col).to_owned();
        let reembed = if caller.role() == Role::Admin {
            reembed_state(s, col)
                .await?
                .filter(|r| !(r.state == "running" && r.embedder == embedder))
        } else {
            None
        };
        // One read of the stored settings for everything below.
        let settings = s.service.settings(col).await?;
        let redaction = Some(settings.redaction)
            .filter(|r| !r.is_off())
            .map(RedactionBody::from);
        Ok(Self {
            name: col.name().to_string(),
            documents,
            chunks,
            redaction,
            ocr_languages: settings.ocr_languages,
            default_access: settings.default_access.into(),
            embedder,
            chunk_tokens: settings.chunk_tokens,
            chunk_overlap: settings.chunk_overlap,
            reembed,
        })
    }
}

async fn reembed_state(s: &State, col: &crate::Collection) -> Result<Option<ReembedOut>, ApiError> {
    if let Some(r) = col.reembedding() {
        let running = r.error.is_none();
        return Ok(Some(ReembedOut {
            embedder: r.embedder,
            state: if running { "running" } else { "failed" },
            done: running.then_some(r.done),
            total: running.then_some(r.total),
            error: r.error,
        }));
    }
    Ok(s.service
        .pending_reembed(col)
        .await?
        .map(|embedder| ReembedOut {
            embedder,
            state: "interrupted",
            done: None,
            total: None,
            error: None,
        }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReembedBody {
    /// The embedding model to move the collection to (`GET /v1/models` lists them).
    embedder: String,
}

/// Re-embeds a collection with another embedding model (admin of the collection). It keeps
/// serving searches and uploads from its current model meanwhile and switches in one step
/// when the new vectors are built; `GET /v1/collections/{c}` shows progress. Started again
/// after an interruption, it resumes.
#[utoipa::path(post, path = "/v1/collections/{c}/reembed", tag = "collections", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = ReembedBody,
    responses((status = 202, description = "started", body = CollectionOut),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "unknown model, or the one the collection uses", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody),
        (status = 409, description = "a re-embedding of the collection is already running", body = ErrorBody)))]
pub(super) async fn reembed(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    ApiJson(body): ApiJson<ReembedBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Admin)?;
    let col = s.service.open_existing(&c).await?;
    s.service.check_reembed(&col, &body.embedder)?;
    let service = s.service.clone();
    let (col2, embedder) = (col.clone(), body.embedder.clone());
    tokio::spawn(async move {
        match service.reembed(&col2, &embedder, &|_, _| {}).await {
            Ok(r) => {
                tracing::info!(collection = %col2.name(), embedder = %r.embedder, documents = r.documents, "re-embedding finished")
            }
            Err(e) => {
                tracing::error!(collection = %col2.name(), %embedder, error = %e, "re-embedding failed");
                col2.note_reembed_failure(&embedder, e.to_string());
            }
        }
    });
    // The task marks itself running at once; give it that moment so the answer shows it.
    for _ in 0..50 {
        if col.reembedding().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(json(
        StatusCode::ACCEPTED,
        &CollectionOut::of(&s, &col, &caller).await?,
    ))
}

/// Creates a collection (200 when it already exists).
#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateBody,
    responses((status = 201, description = "created", body = CollectionOut),
        (status = 200, description = "already there", body = CollectionOut), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody),
        (status = 409, description = "there with other settings, or deleted moments ago and work on its documents is still finishing", body = ErrorBody)))]
pub(super) async fn create(
    s: State,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&body.name, Role::Writer)?;
    let existed = s.service.exists(&c).await?;
    let redaction: Redaction = body.redaction.unwrap_or_default().into();
    let default_access = match &body.default_access {
        Some(a) => access(a)?,
        None => Access::everyone(),
    };
    let col = s
        .service
        .create(
            &c,
            &redaction,
            &body.ocr_languages,
            &default_access,
            body.embedder.as_deref(),
        )
        .await?;
    let out = CollectionOut::of(&s, &col, &caller).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &out))
}

fn access(entries: &[String]) -> Result<Access, ApiError> {
    Access::parse(entries).map_err(|e| ApiError::invalid(e.to_string()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    /// Who may read a document uploaded from now on without an access list of its own.
    default_access: Vec<String>,
}

/// Changes a collection's default access (admin of the collection); documents keep theirs.
#[utoipa::path(patch, path = "/v1/collections/{c}", tag = "collections", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = PatchBody,
    responses((status = 200, description = "the collection", body = CollectionOut),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn patch(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Admin)?;
    let default_access = access(&body.default_access)?;
    let col = s.service.open_existing(&c).await?;
    s.service.set_default_access(&col, default_access).await?;
    Ok(json(
        StatusCode::OK,
        &CollectionOut::of(&s, &col, &caller).await?,
    ))
}

/// Lists the collections this key may see.
#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, description = "`{\"collections\": [{\"name\"}]}`", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
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

/// A collection's document and chunk counts.
#[utoipa::path(get, path = "/v1/collections/{c}", tag = "collections", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    responses((status = 200, description = "the collection", body = CollectionOut),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn get(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let col = s.service.open_existing(&c).await?;
    Ok(json(
        StatusCode::OK,
        &CollectionOut::of(&s, &col, &caller).await?,
    ))
}

/// Deletes a collection and everything under it (admin).
#[utoipa::path(delete, path = "/v1/collections/{c}", tag = "collections", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    responses((status = 200, description = "deleted", body = Object),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn delete(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Admin)?;
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
