//! `/v1/collections/{c}/documents`: upload (multipart or a raw body), list, status, download,
//! change of access, delete.
//!
//! Each document has an access list; a caller who may not read a document finds it nowhere:
//! not in listings, and "not found" for its status, bytes, deletion and access change.
//!
//! An upload is stored and recorded before the response (202): from then on it survives a
//! crash. Extraction, chunking, embedding and indexing run in the background; the status URL
//! tells where the document is.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_index::{Access, CollectionName, DocId};
use hearth_ingest::{DocRecord, DocState, Metadata, OcrSummary, Submission, Submitted};
use serde::{Deserialize, Serialize};

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ErrorBody, json, multipart_error, parse_json};
use super::upload_body::{Held, read_limited, read_part};
use crate::keys::Role;

/// Longest accepted source name, in bytes.
const MAX_SOURCE_BYTES: usize = 1024;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    /// The document's name (raw uploads; multipart takes the file name).
    source: Option<String>,
    /// User metadata as a JSON object (raw uploads; multipart has a `metadata` field).
    metadata: Option<String>,
    /// Who may read the document, comma-separated: group names, `user:NAME`, or `*` for
    /// everyone who reads the collection (default: the collection's `default_access`).
    access: Option<String>,
}

/// A document as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct DocOut<'a> {
    id: String,
    collection: &'a str,
    source: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    kind: &'static str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pages: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<u32>,
    /// The engine that produced the text when it is not the format's first (a PDF that
    /// pdf-extract could not read, read by poppler's pdftotext).
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<&'a str>,
    /// What OCR read, when it read any page: `{pages, words, confidence}` (mean word
    /// confidence, 0-100).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    ocr: Option<&'a OcrSummary>,
    /// How far a long extraction has come, while it runs ("OCR: 12 of 5000 pages recognised").
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    /// PII matches redacted (collections with redaction).
    #[serde(skip_serializing_if = "Option::is_none")]
    redactions: Option<u32>,
    /// The original bytes are not kept (collections with redaction).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    original_discarded: bool,
    #[schema(value_type = Object)]
    metadata: &'a Metadata,
    /// Who may read it: `group:NAME` and `user:NAME` entries, or `["*"]` (everyone who reads
    /// the collection).
    access: &'a [String],
    /// Replicas: the newest generation of the collection's published index, once it holds
    /// the document as it now is (`min_generation` of a search through another replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// Documents found inside this one (an e-mail's attachments, a mailbox's messages): their
    /// ids; each has metadata `parent` naming this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<String>,
    created_ms: u64,
    updated_ms: u64,
    status_url: String,
}

fn status_url(c: &CollectionName, d: &DocId) -> String {
    format!("/v1/collections/{c}/documents/{d}")
}

fn doc_out(r: &DocRecord) -> DocOut<'_> {
    DocOut {
        id: r.doc_id.to_hex(),
        collection: r.collection.as_str(),
        source: &r.source,
        status: r.state.as_str(),
        reason: r.reason.as_deref(),
        kind: kind_name(r),
        size: r.size,
        title: r.title.as_deref(),
        pages: r.pages,
        chunks: r.chunks,
        engine: r.engine.as_deref(),
        ocr: r.ocr.as_ref(),
        progress: r.progress.as_deref(),
        warnings: &r.warnings,
        redactions: r.original_discarded.then_some(r.redactions),
        original_discarded: r.original_discarded,
        metadata: &r.metadata,
        access: r.access.entries(),
        generation: None,
        children: r.children.iter().map(DocId::to_hex).collect(),
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
        status_url: status_url(&r.collection, &r.doc_id),
    }
}

fn kind_name(r: &DocRecord) -> &'static str {
    r.kind.as_str()
}

fn doc_id(raw: &str) -> Result<DocId, ApiError> {
    raw.parse::<DocId>()
        .map_err(|_| ApiError::invalid(format!("{raw:?} is not a document id (64 hex digits)")))
}

/// An access list as a form field or query parameter gives it: a JSON list of strings or a
/// comma-separated list.
fn access_list(raw: &str) -> Result<Access, ApiError> {
    let raw = raw.trim();
    let parsed = if raw.starts_with('[') {
        let entries: Vec<String> = parse_json(raw.as_bytes())
            .map_err(|e| ApiError::invalid(format!("access: {}", e.message)))?;
        Access::parse(&entries)
    } else {
        Access::parse_list(raw)
    };
    parsed.map_err(|e| ApiError::invalid(e.to_string()))
}

/// The access an upload gets (its own, else the collection's default), which a caller who is
/// not an admin must be among: a writer cannot hide what it writes from itself, nor replace
/// (same name, same access) documents it may not read.
async fn upload_access(
    s: &State,
    caller: &Caller,
    col: &crate::Collection,
    asked: Option<Access>,
) -> Result<Access, ApiError> {
    let access = match asked {
        Some(a) => a,
        None => s.service.default_access(col).await?,
    };
    if !caller.reader().may_read(&access) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a document readable by {access} would not be readable with this key; give it an access list that names this key's user or one of its groups ({}), or ask an admin",
                caller.principals()
            ),
        ));
    }
    Ok(access)
}

fn metadata(raw: &[u8]) -> Result<Metadata, ApiError> {
    parse_json::<Metadata>(raw).map_err(|e| ApiError::invalid(format!("metadata: {}", e.message)))
}

fn source_name(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ApiError::invalid("the document name is empty"));
    }
    if s.len() > MAX_SOURCE_BYTES || s.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "the document name must be at most {MAX_SOURCE_BYTES} bytes without control characters"
        )));
    }
    Ok(s.to_owned())
}

/// A multipart document upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct UploadForm {
    /// The document; its file name is the document name.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// User metadata, a JSON object of strings and numbers.
    metadata: Option<String>,
    /// A document name other than the file name.
    source: Option<String>,
    /// Who may read it: a JSON list or comma-separated group names, `user:NAME`, or `*`
    /// (default: the collection's `default_access`).
    access: Option<String>,
}

/// Uploads a document (multipart, or a raw body with `?source=`); it is stored before the 202
/// and processed in the background.
#[utoipa::path(post, path = "/v1/collections/{c}/documents", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), UploadQuery),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 202, description = "stored and queued: `{id, status_url, ...}`", body = Object),
        (status = 200, description = "the same bytes are already there", body = DocOut),
        (status = 413, description = "too large", body = ErrorBody),
        (status = 415, description = "unsupported format", body = ErrorBody),
        (status = 503, description = "ingestion backlog full", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn upload(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Writer)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let length = content_length(req.headers());
    // A raw body over the document limit may be a mailbox, streamed; anything else is refused
    // by its length before any byte is read.
    let large = length.is_some_and(|n| n > s.max_document_bytes);
    let mailbox_limit = s.config.max_mailbox_mib.saturating_mul(1 << 20);
    if let Some(len) = length
        && len > mailbox_limit.max(s.max_document_bytes)
    {
        return Err(ApiError::too_large(format!(
            "the upload is {len} bytes; documents may be at most {} bytes, mailboxes {mailbox_limit} (server.max_mailbox_mib)",
            s.max_document_bytes
        )));
    }
    if let Some(len) = length
        && (multipart || query.source.is_none())
        && len > s.max_document_bytes.saturating_add(1 << 20)
    {
        return Err(ApiError::too_large(format!(
            "the upload is {len} bytes; documents may be at most {} bytes",
            s.max_document_bytes
        )));
    }
    let col = s.service.open_existing(&c).await?;
    if s.service.ingest_backlog() >= s.config.ingest_backlog {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} documents are already waiting for ingestion",
                s.config.ingest_backlog
            ),
        )
        .retry_after(5));
    }
    // The upload's share of the node's upload memory, held until it is stored.
    let (sub, _held) = if multipart {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        read_multipart(mp, query, &s).await?
    } else {
        let source = query
            .source
            .as_deref()
            .map(source_name)
            .transpose()?
            .ok_or_else(|| {
                ApiError::invalid("a raw upload needs ?source=<document name> (or use multipart)")
            })?;
        let meta = match &query.metadata {
            Some(m) => metadata(m.as_bytes())?,
            None => Metadata::default(),
        };
        let read_error =
            |e: axum::Error| ApiError::invalid(format!("could not read the request body: {e}"));
        let mut body = req.into_body().into_data_stream();
        let head = if large {
            read_head(&mut body, read_error).await?
        } else {
            Bytes::new()
        };
        if large {
            if !matches!(
                hearth_ingest::sniff(&head, &source),
                Ok(hearth_ingest::DocKind::Mbox)
            ) {
                return Err(ApiError::too_large(format!(
                    "the upload is {} bytes; documents may be at most {} bytes (only a mailbox may be larger)",
                    length.unwrap_or_default(),
                    s.max_document_bytes
                )));
            }
            let sub = Submission {
                source,
                bytes: Bytes::new(),
                metadata: meta,
                access: query.access.as_deref().map(access_list).transpose()?,
            };
            return upload_mailbox(
                &s,
                &caller,
                &col,
                sub,
                head,
                body,
                length.unwrap_or_default(),
            )
            .await;
        }
        let (bytes, held) = read_limited(
            body,
            s.max_document_bytes,
            length,
            &s.upload_memory,
            read_error,
        )
        .await?;
        let sub = Submission {
            source,
            bytes,
            metadata: meta,
            access: query.access.as_deref().map(access_list).transpose()?,
        };
        (sub, held)
    };
    let mut sub = sub;
    sub.access = Some(upload_access(&s, &caller, &col, sub.access.take()).await?);
    super::tenants::check_storage(&s, &c, sub.bytes.len() as u64).await?;
    let submitted = s.service.submit(&col, sub).await?;
    submitted_response(&s, &caller, &c, submitted, serde_json::Map::new())
}

/// The answer to a stored upload: 202 with its id and status URL (and `extra` fields), the
/// document queued; or for bytes already there, 200 with their record if the key may read it,
/// else 409 (the record of a document the key may not read is not shown).
fn submitted_response(
    s: &State,
    caller: &Caller,
    c: &CollectionName,
    submitted: Submitted,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<Response, ApiError> {
    match submitted {
        Submitted::Accepted(id) => {
            if let Err(e) = s.service.enqueue(c, id) {
                // Stored and recorded as queued: the next start picks it up.
                tracing::warn!(collection = %c, doc = %id, error = %e, "upload stored but not queued");
            }
            let url = status_url(c, &id);
            let mut out = serde_json::json!({
                "id": id.to_hex(),
                "collection": c.as_str(),
                "status": DocState::Queued.as_str(),
                "status_url": url,
                "duplicate": false,
            });
            if let Some(o) = out.as_object_mut() {
                o.extend(extra);
            }
            let mut resp = json(StatusCode::ACCEPTED, &out);
            if let Ok(v) = HeaderValue::from_str(&url) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Submitted::Duplicate(rec) if !caller.reader().may_read(&rec.access) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate",
            format!(
                "these bytes are already in collection {c} as a document this key may not read; ask an admin to share it"
            ),
        )),
        Submitted::Duplicate(rec) => {
            let mut out = serde_json::to_value(doc_out(&rec))
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            out["duplicate"] = serde_json::Value::Bool(true);
            Ok(json(StatusCode::OK, &out))
        }
    }
}

/// Bytes read to tell what a large upload is.
const HEAD_BYTES: usize = 64 * 1024;

/// The first [`HEAD_BYTES`] of a body (fewer if it ends first).
async fn read_head<S>(
    body: &mut S,
    read_error: impl Fn(axum::Error) -> ApiError,
) -> Result<Bytes, ApiError>
where
    S: futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    use futures::StreamExt;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    while head.len() < HEAD_BYTES {
        match body.next().await {
            Some(frame) => head.extend_from_slice(&frame.map_err(&read_error)?),
            None => break,
        }
    }
    Ok(Bytes::from(head))
}

/// A mailbox over the document size limit: written to the spool as it arrives (its declared
/// length, no more), then split into its messages, each stored as a document, and the mailbox
/// a listing of them; the spooled file is removed when this returns. Answers as an upload does.
async fn upload_mailbox<S>(
    s: &State,
    caller: &Caller,
    col: &std::sync::Arc<crate::Collection>,
    mut sub: Submission,
    head: Bytes,
    mut body: S,
    length: u64,
) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let c = col.name().clone();
    sub.access = Some(upload_access(s, caller, col, sub.access.take()).await?);
    super::tenants::check_storage(s, &c, length).await?;
    let dir = s.service.spool_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::from(crate::ServiceError::Internal(format!("spool: {e}"))))?;
    let spooled = tempfile::Builder::new()
        .prefix("mailbox-")
        .tempfile_in(&dir)
        .map_err(|e| ApiError::from(crate::ServiceError::Internal(format!("spool: {e}"))))?;
    let path = spooled.path().to_owned();
    let mut file = tokio::fs::File::from_std(
        spooled
            .reopen()
            .map_err(|e| ApiError::from(crate::ServiceError::Internal(format!("spool: {e}"))))?,
    );
    let spool_error =
        |e: std::io::Error| ApiError::from(crate::ServiceError::Internal(format!("spool: {e}")));
    let mut written = head.len() as u64;
    file.write_all(&head).await.map_err(spool_error)?;
    while let Some(frame) = body.next().await {
        let frame = frame
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        written += frame.len() as u64;
        if written > length {
            return Err(ApiError::invalid(format!(
                "the body is longer than its Content-Length ({length} bytes)"
            )));
        }
        file.write_all(&frame).await.map_err(spool_error)?;
    }
    file.flush().await.map_err(spool_error)?;
    drop(file);
    let done = s.service.submit_mailbox(col, &path, sub).await?;
    drop(spooled);
    for w in &done.skipped {
        tracing::warn!(collection = %c, "{w}");
    }
    let mut extra = serde_json::Map::new();
    extra.insert("messages".into(), done.messages.into());
    extra.insert("skipped".into(), done.skipped.into());
    submitted_response(s, caller, &c, done.submitted, extra)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads a multipart upload: one `file` part (its file name is the document name unless a
/// `source` part says otherwise) and an optional `metadata` part holding a JSON object.
async fn read_multipart(
    mut mp: Multipart,
    query: UploadQuery,
    s: &super::AppState,
) -> Result<(Submission, Held), ApiError> {
    let mut file: Option<(Option<String>, Bytes, Held)> = None;
    let mut source = query.source;
    let mut meta = query.metadata.map(String::into_bytes);
    let mut access = query.access;
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::invalid(
                        "one document per upload: the form has two file parts",
                    ));
                }
                let fname = field.file_name().map(str::to_owned);
                let (bytes, held) = read_part(field, s).await?;
                file = Some((fname, bytes, held));
            }
            Some("metadata") => {
                let (bytes, _) =
                    read_limited(field, 1 << 20, None, &s.upload_memory, multipart_error).await?;
                meta = Some(bytes.to_vec());
            }
            Some("source") => {
                source = Some(field.text().await.map_err(multipart_error)?);
            }
            Some("access") => {
                let (bytes, _) =
                    read_limited(field, 64 << 10, None, &s.upload_memory, multipart_error).await?;
                access = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected form field {:?}: expected file, metadata, source or access",
                    other.unwrap_or("")
                )));
            }
        }
    }
    let (fname, bytes, held) =
        file.ok_or_else(|| ApiError::invalid("the form has no \"file\" part"))?;
    let source = source.or(fname).ok_or_else(|| {
        ApiError::invalid("the file part has no file name and no source was given")
    })?;
    let metadata = match meta {
        Some(m) => metadata(&m)?,
        None => Metadata::default(),
    };
    let sub = Submission {
        source: source_name(&source)?,
        bytes,
        metadata,
        access: access.as_deref().map(access_list).transpose()?,
    };
    Ok((sub, held))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only documents in this state: queued, extracting, chunked, embedded, indexed, failed.
    status: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<usize>,
    /// The id of the last document of the previous page.
    after: Option<String>,
}

/// Lists documents by id, 1-1000 per page (`after` = the last id of the previous page).
#[utoipa::path(get, path = "/v1/collections/{c}/documents", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), ListQuery),
    responses((status = 200, description = "`{documents: [...], next_after}`", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn list(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(raw) => Some(parse_state(raw)?),
    };
    let after = q.after.as_deref().map(doc_id).transpose()?;
    let col = s.service.open_existing(&c).await?;
    let records = s.service.documents(&col).await?;
    let reader = caller.reader();
    let mut page: Vec<&DocRecord> = records
        .iter()
        .filter(|r| reader.may_read(&r.access))
        .filter(|r| after.is_none_or(|a| r.doc_id > a))
        .filter(|r| status.is_none_or(|st| r.state == st))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|r| r.doc_id.to_hex()))
        .flatten();
    let docs: Vec<DocOut<'_>> = page.into_iter().map(doc_out).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"documents": docs, "next_after": next}),
    ))
}

fn parse_state(raw: &str) -> Result<DocState, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(format!(
            "status must be queued, extracting, chunked, embedded, indexed or failed, got {raw:?}"
        ))
    })
}

/// A document the caller may read; one it may not is "not found", as if it were not there.
async fn record(
    s: &State,
    caller: &Caller,
    c: &str,
    id: &str,
    role: Role,
) -> Result<(std::sync::Arc<crate::Collection>, DocRecord), ApiError> {
    let c = caller.collection(c, role)?;
    let id = doc_id(id)?;
    let col = s.service.open_existing(&c).await?;
    let rec = s
        .service
        .document(&col, &id)
        .await?
        .filter(|r| caller.reader().may_read(&r.access))
        .ok_or_else(|| ApiError::not_found(format!("document {id} does not exist in {c}")))?;
    Ok((col, rec))
}

/// A document's status (with the reason when it failed) and details.
#[utoipa::path(get, path = "/v1/collections/{c}/documents/{id}", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), ("id" = String, Path, description = "document id: SHA-256 of its bytes, 64 hex digits")),
    responses((status = 200, description = "the document", body = DocOut),
        (status = 404, description = "no such document", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn get(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (col, rec) = record(&s, &caller, &c, &id, Role::Reader).await?;
    let mut out = doc_out(&rec);
    out.generation = s.service.published_generation(&col, &rec).await?;
    Ok(json(StatusCode::OK, &out))
}

/// Downloads a document's original bytes.
#[utoipa::path(get, path = "/v1/collections/{c}/documents/{id}/raw", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), ("id" = String, Path, description = "document id: SHA-256 of its bytes, 64 hex digits")),
    responses((status = 200, description = "the bytes, with the detected media type", content_type = "application/octet-stream"),
        (status = 404, description = "no such document", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn raw(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, rec) = record(&s, &caller, &c, &id, Role::Reader).await?;
    if rec.original_discarded {
        return Err(ApiError::new(
            StatusCode::GONE,
            "original_discarded",
            format!(
                "collection {} redacts PII and keeps no unredacted original of document {id}; its redacted text is searchable",
                rec.collection
            ),
        ));
    }
    let bytes = s
        .service
        .original(&rec)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("the bytes of document {id} are gone")))?;
    let file = rec.source.rsplit(['/', '\\']).next().unwrap_or("document");
    let ascii: String = file
        .chars()
        .map(|ch| {
            if ch.is_ascii_graphic() && ch != '"' && ch != '\\' || ch == ' ' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let mut resp = Body::from(bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rec.kind.media_type()),
    );
    h.insert(
        header::HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Deletes a document: its bytes, chunks and vectors.
#[utoipa::path(delete, path = "/v1/collections/{c}/documents/{id}", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), ("id" = String, Path, description = "document id: SHA-256 of its bytes, 64 hex digits")),
    responses((status = 204, description = "deleted"),
        (status = 409, description = "replicas: the document is still being processed by the replica that indexes the collection", body = ErrorBody),
        (status = 404, description = "no such document", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn delete(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // A writer deletes only what it may read.
    let (col, rec) = record(&s, &caller, &c, &id, Role::Writer).await?;
    if s.service.delete_document(&col, &rec.doc_id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "document {} does not exist in {}",
            rec.doc_id, rec.collection
        )))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    /// Who may read the document (and the documents found inside it): group names,
    /// `user:NAME`, or `["*"]` for everyone who reads the collection.
    access: Vec<String>,
}

/// Changes who may read a document and the documents found inside it (admin of the
/// collection). Searches see the change at once.
#[utoipa::path(patch, path = "/v1/collections/{c}/documents/{id}", tag = "documents",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), ("id" = String, Path, description = "document id: SHA-256 of its bytes, 64 hex digits")),
    request_body = PatchBody,
    responses((status = 200, description = "the document", body = DocOut),
        (status = 404, description = "no such document", body = ErrorBody),
        (status = 409, description = "still being processed", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn patch(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Admin)?;
    let id = doc_id(&id)?;
    let access = Access::parse(&body.access).map_err(|e| ApiError::invalid(e.to_string()))?;
    let col = s.service.open_existing(&c).await?;
    let rec = s
        .service
        .set_document_access(&col, &id, access)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("document {id} does not exist in {c}")))?;
    Ok(json(StatusCode::OK, &doc_out(&rec)))
}
