//! Search and grounded answers: `POST /v1/collections/{c}/search` and `.../ask` (JSON, or
//! Server-Sent Events with `stream: true`), and `.../eval` (a labelled question set, scored).
//!
//! Filters are a JSON object over document metadata, all conditions required:
//! `{"team": "ops", "lang": {"in": ["en", "de"]}, "year": {"gte": 2020, "lt": 2025},
//! "doc_id": ["<id>", ...]}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use hearth_engine::{ChatMessage, SamplingParams};
use hearth_index::{Condition, DocId, Filter, MetaValue, SearchMode};
use serde::Deserialize;

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ErrorBody, body_error, json};
use crate::keys::Role;
use crate::{AnswerEvent, AnswerMode, AskRequest, EvalOptions, SearchQuery, parse_questions};

/// A filter as the API takes it: metadata key → value, `{"in": [...]}` or a range.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub(super) struct FilterIn(serde_json::Map<String, serde_json::Value>);

impl FilterIn {
    pub(super) fn into_filter(self) -> Result<Option<Filter>, ApiError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let mut conditions = Vec::new();
        for (key, v) in self.0 {
            conditions.push(condition(key, v)?);
        }
        let f = Filter::new(conditions);
        f.validate()
            .map_err(|e| ApiError::invalid(format!("filter: {e}")))?;
        Ok(Some(f))
    }
}

fn meta_value(key: &str, v: &serde_json::Value) -> Result<MetaValue, ApiError> {
    match v {
        serde_json::Value::String(s) => Ok(MetaValue::Text(s.clone())),
        serde_json::Value::Number(n) => n
            .as_f64()
            .map(MetaValue::Number)
            .ok_or_else(|| ApiError::invalid(format!("filter {key:?}: number out of range"))),
        other @ (serde_json::Value::Null
        | serde_json::Value::Bool(_)
        | serde_json::Value::Array(_)
        | serde_json::Value::Object(_)) => Err(ApiError::invalid(format!(
            "filter {key:?}: values are strings or numbers, got {other}"
        ))),
    }
}

fn condition(key: String, v: serde_json::Value) -> Result<Condition, ApiError> {
    if key == "doc_id" {
        let ids = match &v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("filter doc_id: a list of document ids"))?,
            serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Object(_) => {
                return Err(ApiError::invalid("filter doc_id: a list of document ids"));
            }
        };
        let ids = ids
            .iter()
            .map(|s| {
                s.parse::<DocId>()
                    .map_err(|_| ApiError::invalid(format!("filter doc_id: {s:?} is not an id")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition::DocIds(ids));
    }
    let serde_json::Value::Object(ops) = &v else {
        let value = meta_value(&key, &v)?;
        return Ok(Condition::Eq { key, value });
    };
    if let Some(values) = ops.get("in") {
        if ops.len() != 1 {
            return Err(ApiError::invalid(format!(
                "filter {key:?}: \"in\" cannot be combined with other operators"
            )));
        }
        let values = values
            .as_array()
            .ok_or_else(|| ApiError::invalid(format!("filter {key:?}: \"in\" takes a list")))?
            .iter()
            .map(|x| meta_value(&key, x))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition::In { key, values });
    }
    let bound = |op: &str| -> Result<Option<f64>, ApiError> {
        ops.get(op)
            .map(|x| {
                x.as_f64().ok_or_else(|| {
                    ApiError::invalid(format!("filter {key:?}: {op:?} takes a number"))
                })
            })
            .transpose()
    };
    let (gt, gte, lt, lte) = (bound("gt")?, bound("gte")?, bound("lt")?, bound("lte")?);
    if let Some(op) = ops
        .keys()
        .find(|k| !matches!(k.as_str(), "gt" | "gte" | "lt" | "lte"))
    {
        return Err(ApiError::invalid(format!(
            "filter {key:?}: unknown operator {op:?} (use in, gt, gte, lt, lte)"
        )));
    }
    Ok(Condition::Range {
        key,
        gt,
        gte,
        lt,
        lte,
    })
}

fn default_top_k() -> usize {
    10
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchBody {
    /// What to look for, in the user's words.
    query: String,
    /// Hits wanted, 1-1000 (default 10).
    #[serde(default = "default_top_k")]
    top_k: usize,
    /// `dense`, `bm25` or `hybrid` (default).
    #[serde(default)]
    #[schema(value_type = String)]
    mode: SearchMode,
    /// Metadata conditions, all required: `{"key": value, "key": {"in": [..]}, "key": {"gte": n}, "doc_id": [..]}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(super) filter: FilterIn,
    /// Read your writes across replicas: answer only from generation `min_generation` of the
    /// collection's published index or a later one (a document's `generation` once its change
    /// is published), waiting for this node to load it (at most `cluster.read_wait_ms`; 503
    /// after). The generation answered from is in the `Hearth-Generation` header.
    min_generation: Option<u64>,
}

/// The `Hearth-Generation` header: the generation of the collection's published index the
/// answering node holds.
const GENERATION_HEADER: &str = "hearth-generation";

/// Ranked chunks for a query: hybrid (default), dense or BM25, with metadata filters.
#[utoipa::path(post, path = "/v1/collections/{c}/search", tag = "search", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = SearchBody,
    responses((status = 200, description = "`{hits: [chunk + rank, score, dense, bm25], timings}`", body = crate::SearchResults),
        (status = 503, description = "`min_generation`: not loaded within `cluster.read_wait_ms`", body = ErrorBody),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn search(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    ApiJson(body): ApiJson<SearchBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let filter = body.filter.into_filter()?;
    let col = s.service.open_existing(&c).await?;
    if let Some(min) = body.min_generation {
        s.service.await_generation(&col, min).await?;
    }
    let generation = s.service.loaded_generation(&col);
    let r = s
        .service
        .search(
            &col,
            SearchQuery {
                text: body.query,
                mode: body.mode,
                top_k: body.top_k,
                filter,
                fusion: None,
                reader: caller.reader(),
            },
        )
        .await?;
    Ok(stamped(json(StatusCode::OK, &r), generation))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AskBody {
    /// The question.
    question: String,
    /// Earlier turns, `[{"role": "user"|"assistant", "content"}]`, oldest first.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    history: Vec<ChatMessage>,
    /// Passages to retrieve (default `ask.top_k`), 1-64.
    top_k: Option<usize>,
    /// `dense`, `bm25` or `hybrid` (default).
    #[serde(default)]
    #[schema(value_type = String)]
    mode: SearchMode,
    /// Metadata conditions, as in search.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(super) filter: FilterIn,
    /// Lowest question-passage cosine of a relevant passage (default `ask.min_similarity`).
    min_similarity: Option<f32>,
    /// A registered LoRA adapter to answer with.
    adapter: Option<String>,
    /// temperature, top_k, top_p, min_p, repetition/presence/frequency penalties, seed,
    /// max_tokens, stop, stop_token_ids (default: greedy, `ask.max_tokens`).
    #[schema(value_type = Option<Object>)]
    pub(super) sampling: Option<SamplingParams>,
    /// Remove the sentences no passage supports (default `ask.strict`); a strict answer's
    /// text arrives in one `token` event, after it has been checked.
    strict: Option<bool>,
    /// `quote` (the passages' own sentences that answer, with citations) or `generate` (the
    /// model writes the answer); default `ask.answer`, or `generate` when `sampling` or
    /// `adapter` is given.
    #[schema(value_type = Option<String>)]
    answer: Option<AnswerMode>,
    /// Server-Sent Events: `passages`, `token`..., then `done` or `error`.
    #[serde(default)]
    stream: bool,
    /// Start a conversation with this question: the answer carries its `conversation_id`.
    #[serde(default)]
    conversation: bool,
    /// Continue a conversation of this key's: its turns are the history (instead of
    /// `history`), and this turn is added to it.
    conversation_id: Option<String>,
    /// Read your writes across replicas, as in search.
    min_generation: Option<u64>,
}

/// A grounded answer with `[n]` citations mapped to the passages it was given.
#[utoipa::path(post, path = "/v1/collections/{c}/ask", tag = "search", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = AskBody,
    responses((status = 200, description = "`{answer, grounded, citations, passages, finish_reason, usage, timings}`, or with `stream: true` an event stream", body = crate::Answer),
        (status = 404, description = "no such collection, adapter or conversation", body = ErrorBody),
        (status = 409, description = "`conversation`: this key holds the most conversations allowed in the collection", body = ErrorBody),
        (status = 503, description = "generation queue full", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn ask(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    ApiJson(body): ApiJson<AskBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let filter = body.filter.into_filter()?;
    let for_model = body.sampling.is_some() || body.adapter.is_some();
    if s.service.ask_config().answer_mode(body.answer, for_model)? == AnswerMode::Generate {
        super::tenants::check_tokens(&s, &caller)?;
    }
    let col = s.service.open_existing(&c).await?;
    if let Some(min) = body.min_generation {
        s.service.await_generation(&col, min).await?;
    }
    let generation = s.service.loaded_generation(&col);
    let conversation = match (body.conversation, body.conversation_id) {
        (_, Some(_)) | (true, _) if !body.history.is_empty() => {
            return Err(ApiError::invalid(
                "give either history or a conversation, not both",
            ));
        }
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "conversation starts a new conversation; conversation_id continues one: give one of them",
            ));
        }
        (false, Some(id)) => Some(
            s.service
                .conversation(&col, &id, caller.id(), &caller.reader())
                .await?,
        ),
        (true, None) => Some(s.service.new_conversation(&col, caller.id()).await?),
        (false, None) => None,
    };
    let history = match &conversation {
        Some(conv) => conv.history(),
        None => body.history,
    };
    let question = body.question;
    let state = s.0.clone();
    let tenant = caller.tenant().map(|t| t.name.clone());
    let answer = s
        .service
        .ask(
            &col,
            AskRequest {
                question: question.clone(),
                history,
                mode: body.mode,
                top_k: body.top_k,
                filter,
                min_similarity: body.min_similarity,
                adapter: body.adapter,
                sampling: body.sampling,
                strict: body.strict,
                answer: body.answer,
                cache_scope: caller.cache_scope(),
                reader: caller.reader(),
            },
        )
        .await?
        .on_completion(move |c| super::tenants::generated(&state, "ask", tenant.as_deref(), c));
    let Some(conv) = conversation else {
        if body.stream {
            return Ok(stamped(
                Sse::new(ask_events(answer))
                    .keep_alive(KeepAlive::default())
                    .into_response(),
                generation,
            ));
        }
        return Ok(stamped(
            json(StatusCode::OK, &answer.finish().await?),
            generation,
        ));
    };
    let answer = answer.in_conversation(conv.id.clone());
    if body.stream {
        // The turn is stored before `done` is sent: a follow-up sent on `done` finds it.
        let turn = Arc::new((s.service.clone(), col, conv, question));
        let events = answer.then(move |ev| {
            let turn = turn.clone();
            async move {
                let (service, col, conv, question) = &*turn;
                if let Ok(AnswerEvent::Done(a)) = &ev {
                    service.add_turn(col, conv, question, a).await?;
                }
                ev
            }
        });
        return Ok(stamped(
            Sse::new(ask_events(events))
                .keep_alive(KeepAlive::default())
                .into_response(),
            generation,
        ));
    }
    let a = answer.finish().await?;
    s.service.add_turn(&col, &conv, &question, &a).await?;
    Ok(stamped(json(StatusCode::OK, &a), generation))
}

/// The response with the `Hearth-Generation` header, when the node holds a generation.
fn stamped(mut response: Response, generation: Option<u64>) -> Response {
    if let Some(g) = generation {
        response
            .headers_mut()
            .insert(GENERATION_HEADER, header::HeaderValue::from(g));
    }
    response
}

/// A conversation of this key's: its turns, oldest first, with answers that drew on a document
/// since deleted or no longer readable to the key withheld.
#[utoipa::path(get, path = "/v1/collections/{c}/conversations/{id}", tag = "search",
    params(("c" = String, Path, description = "collection name"), ("id" = String, Path, description = "conversation id: 32 hex digits")),
    responses((status = 200, description = "`{id, collection, created_ms, expires_ms, turns: [{question, answer, documents, time_ms, withheld?}]}`", body = crate::Conversation),
        (status = 404, description = "no such collection, or no such conversation of this key's (expired, deleted, another's)", body = ErrorBody),
        (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn conversation(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let col = s.service.open_existing(&c).await?;
    let conv = s
        .service
        .conversation(&col, &id, caller.id(), &caller.reader())
        .await?;
    Ok(json(StatusCode::OK, &conv.shown()))
}

/// Deletes a conversation of this key's at once (it would expire `ask.conversation_ttl_secs`
/// after its last turn).
#[utoipa::path(delete, path = "/v1/collections/{c}/conversations/{id}", tag = "search",
    params(("c" = String, Path, description = "collection name"), ("id" = String, Path, description = "conversation id: 32 hex digits")),
    responses((status = 204, description = "deleted"),
        (status = 404, description = "no such collection, or no such conversation of this key's", body = ErrorBody),
        (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn delete_conversation(
    s: State,
    caller: Caller,
    Path((c, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let col = s.service.open_existing(&c).await?;
    s.service
        .delete_conversation(&col, &id, caller.id())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The SSE stream of an answer: `passages` first, then `token` events with text as it comes,
/// then `done` (answer, citations, usage, timings) or `error`.
fn ask_events(
    answer: impl Stream<Item = crate::Result<AnswerEvent>> + Send,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    answer.map(|ev| {
        Ok(match ev {
            Ok(ev) => Event::default().event(ev.sse_name()).data(ev.sse_data()),
            Err(e) => Event::default().event("error").data(
                serde_json::to_string(&ApiError::from(e).body()).unwrap_or_else(|_| "{}".into()),
            ),
        })
    })
}

/// Settings of an evaluation run, as query parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct EvalParams {
    /// The cut-off of recall@k, 1-10 (default 5).
    #[serde(default = "default_eval_k")]
    k: usize,
    /// Passages per answer (default `ask.top_k`).
    top_k: Option<usize>,
    /// `dense`, `bm25` or `hybrid` (default).
    #[serde(default)]
    #[param(value_type = String)]
    mode: SearchMode,
    /// Most tokens per answer (default `ask.max_tokens`).
    max_tokens: Option<usize>,
    /// Answer strictly, without unsupported sentences (default `ask.strict`).
    strict: Option<bool>,
    /// `quote` or `generate` (default `ask.answer`).
    #[param(value_type = Option<String>)]
    answer: Option<AnswerMode>,
    /// Server-Sent Events: a `progress` event per question, then `done` (the report) or
    /// `error`. Without it the report comes as one JSON body, within the request timeout.
    #[serde(default)]
    stream: bool,
}

fn default_eval_k() -> usize {
    5
}

/// Content types an evaluation body may have (JSON Lines).
const JSONL_TYPES: [&str; 3] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
];

/// Aborts the evaluation task when the event stream is dropped (the client went away).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a labelled question set (JSON Lines: `{question, relevant, facts | not_covered,
/// history?, standalone?}` per line) against the collection and scores the answers: retrieval
/// recall@k, MRR and nDCG@10, answer correctness, citation precision, abstention, timings.
/// Admins only; one question at a time.
#[utoipa::path(post, path = "/v1/collections/{c}/eval", tag = "search",
    params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}"), EvalParams),
    request_body(content = String, content_type = "application/x-ndjson", description = "one question per line"),
    responses((status = 200, description = "`{summary, questions}`, or with `stream=true` an event stream", body = crate::EvalReport),
        (status = 404, description = "no such collection", body = ErrorBody), (status = 400, description = "bad input (names the line)", body = ErrorBody),
        (status = 415, description = "not JSON Lines", body = ErrorBody), (status = 503, description = "no generator loaded", body = ErrorBody),
        (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "not an admin of this collection", body = ErrorBody)))]
pub(super) async fn eval(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<EvalParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Admin)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !ctype.as_deref().is_some_and(|t| JSONL_TYPES.contains(&t)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body is JSON Lines: send Content-Type: {}",
                JSONL_TYPES[0]
            ),
        ));
    }
    let body = body.map_err(body_error)?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not UTF-8: {e}")))?;
    let questions = parse_questions(text)?;
    let col = s.service.open_existing(&c).await?;
    let opts = EvalOptions {
        k: params.k,
        top_k: params.top_k,
        mode: params.mode,
        max_tokens: params.max_tokens,
        strict: params.strict,
        answer: params.answer,
        cache_scope: caller.cache_scope(),
        reader: caller.reader(),
    };
    if !params.stream {
        let report = s.service.eval(&col, &questions, &opts, |_| {}).await?;
        return Ok(json(StatusCode::OK, &report));
    }
    let total = questions.len();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Event>();
    let state = s.0.clone();
    let task = tokio::spawn(async move {
        let mut done = 0;
        let progress = tx.clone();
        let report = state
            .service
            .eval(&col, &questions, &opts, move |r| {
                done += 1;
                let data = serde_json::json!({
                    "done": done, "total": total, "id": r.id, "correct": r.correct,
                    "abstained": r.abstained, "error": r.error,
                });
                let _ = progress
                    .unbounded_send(Event::default().event("progress").data(data.to_string()));
            })
            .await;
        let last = match report {
            Ok(r) => Event::default()
                .event("done")
                .data(serde_json::to_string(&r).unwrap_or_else(|_| "{}".into())),
            Err(e) => Event::default().event("error").data(
                serde_json::to_string(&ApiError::from(e).body()).unwrap_or_else(|_| "{}".into()),
            ),
        };
        let _ = tx.unbounded_send(last);
    });
    let guard = AbortOnDrop(task.abort_handle());
    let events = rx.map(move |ev| {
        let _ = &guard;
        Ok::<_, Infallible>(ev)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
