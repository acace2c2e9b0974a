//! Search and grounded answers: `POST /v1/collections/{c}/search` and `.../ask` (JSON, or
//! Server-Sent Events with `stream: true`).
//!
//! Filters are a JSON object over document metadata, all conditions required:
//! `{"team": "ops", "lang": {"in": ["en", "de"]}, "year": {"gte": 2020, "lt": 2025},
//! "doc_id": ["<id>", ...]}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use hearth_engine::{ChatMessage, Completion, FinishReason, GenerationEvent, SamplingParams};
use hearth_index::{Condition, DocId, Filter, Hit, MetaValue, SearchMode};
use serde::{Deserialize, Serialize};

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ErrorBody, json};
use crate::keys::Role;
use crate::{AnswerSource, Answering, AskRequest, SearchQuery, cite};

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
}

/// A chunk as search and citations show it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct HitOut<'a> {
    doc_id: String,
    chunk_id: String,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_start: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_end: Option<u32>,
    heading: &'a [String],
    /// Start and end of the passage in the document's text, in characters.
    span: [u64; 2],
    text: &'a str,
    #[schema(value_type = Object)]
    metadata: &'a hearth_index::Metadata,
}

fn hit_out(h: &Hit) -> HitOut<'_> {
    HitOut {
        doc_id: h.chunk.doc_id.to_hex(),
        chunk_id: h.chunk.id().to_string(),
        source: &h.source,
        title: h.title.as_deref(),
        page_start: h.chunk.page_start,
        page_end: h.chunk.page_end,
        heading: &h.chunk.heading,
        span: [h.chunk.span_start, h.chunk.span_end],
        text: &h.chunk.text,
        metadata: &h.metadata,
    }
}

/// Ranked chunks for a query: hybrid (default), dense or BM25, with metadata filters.
#[utoipa::path(post, path = "/v1/collections/{c}/search", tag = "search", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = SearchBody,
    responses((status = 200, description = "`{hits: [chunk + rank, score, dense, bm25], timings}`", body = Object),
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
            },
        )
        .await?;
    let hits: Vec<serde_json::Value> = r
        .hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut v = serde_json::to_value(hit_out(h)).unwrap_or_default();
            v["rank"] = (i + 1).into();
            v["score"] = f64::from(h.score).into();
            if let Some((rank, sim)) = h.dense {
                v["dense"] = serde_json::json!({"rank": rank, "similarity": sim});
            }
            if let Some((rank, score)) = h.bm25 {
                v["bm25"] = serde_json::json!({"rank": rank, "score": score});
            }
            v
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "hits": hits,
            "timings": {"embed_ms": r.embed_ms, "search_ms": r.search_ms},
        }),
    ))
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
    /// Server-Sent Events: `passages`, `token`..., then `done` or `error`.
    #[serde(default)]
    stream: bool,
}

/// The end of an answer: its citations, the passages shown, usage and timings.
#[derive(Serialize)]
struct Finished<'a> {
    /// The answer, with `[n]` markers (including any that hearth attributed).
    answer: String,
    /// Whether the answer came from the model over retrieved passages (false: nothing
    /// relevant was found and the fixed answer was given).
    grounded: bool,
    citations: Vec<serde_json::Value>,
    passages: Vec<HitOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    usage: serde_json::Value,
    timings: serde_json::Value,
}

fn finished<'a>(
    answer: &'a str,
    passages: &'a [Hit],
    retrieval_ms: f64,
    done: Option<&Completion>,
) -> Finished<'a> {
    let (answer, cites) = cite(answer, passages);
    let citations = cites
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(hit_out(&passages[c.n - 1])).unwrap_or_default();
            v["n"] = c.n.into();
            v["attributed"] = c.attributed.into();
            v
        })
        .collect();
    let (usage, timings, finish_reason) = match done {
        Some(c) => (
            serde_json::json!({
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "cached_prompt_tokens": c.usage.cached_prompt_tokens,
            }),
            serde_json::json!({
                "retrieval_ms": retrieval_ms,
                "queue_ms": c.timings.queue_ms,
                "ttft_ms": c.timings.ttft_ms,
                "decode_ms": c.timings.decode_ms,
                "tokens_per_s": c.timings.decode_tokens_per_s,
                "generation_ms": c.timings.total_ms,
            }),
            Some(finish_name(c.finish_reason)),
        ),
        None => (
            serde_json::json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0}),
            serde_json::json!({"retrieval_ms": retrieval_ms}),
            None,
        ),
    };
    Finished {
        answer,
        grounded: done.is_some(),
        citations,
        passages: passages.iter().map(hit_out).collect(),
        finish_reason,
        usage,
        timings,
    }
}

pub(super) fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// A grounded answer with `[n]` citations mapped to the passages it was given.
#[utoipa::path(post, path = "/v1/collections/{c}/ask", tag = "search", params(("c" = String, Path, description = "collection name: [a-z0-9][a-z0-9_-]{0,63}")),
    request_body = AskBody,
    responses((status = 200, description = "`{answer, grounded, citations, passages, finish_reason, usage, timings}`, or with `stream: true` an event stream", body = Object),
        (status = 404, description = "no such collection or adapter", body = ErrorBody),
        (status = 503, description = "generation queue full", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn ask(
    s: State,
    caller: Caller,
    Path(c): Path<String>,
    ApiJson(body): ApiJson<AskBody>,
) -> Result<Response, ApiError> {
    let c = caller.collection(&c, Role::Reader)?;
    let filter = body.filter.into_filter()?;
    let col = s.service.open_existing(&c).await?;
    let answering = s
        .service
        .ask(
            &col,
            AskRequest {
                question: body.question,
                history: body.history,
                mode: body.mode,
                top_k: body.top_k,
                filter,
                min_similarity: body.min_similarity,
                adapter: body.adapter,
                sampling: body.sampling,
            },
        )
        .await?;
    if body.stream {
        return Ok(Sse::new(ask_events(s.0.clone(), answering))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let Answering {
        passages,
        retrieval_ms,
        answer,
    } = answering;
    match answer {
        AnswerSource::Fixed(text) => Ok(json(
            StatusCode::OK,
            &finished(text, &passages, retrieval_ms, None),
        )),
        AnswerSource::Generated(mut g) => {
            let mut text = String::new();
            while let Some(ev) = g.next().await {
                match ev {
                    GenerationEvent::Text(t) => text.push_str(&t),
                    GenerationEvent::Done(done) => {
                        s.metrics.generation("ask", &done);
                        return Ok(json(
                            StatusCode::OK,
                            &finished(&text, &passages, retrieval_ms, Some(&done)),
                        ));
                    }
                    GenerationEvent::Failed(e) => return Err(e.into()),
                }
            }
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the generator stopped without finishing the answer",
            ))
        }
    }
}

fn event(name: &str, data: &impl Serialize) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into())))
}

/// The SSE stream of an answer: `passages` first, then `token` events with text as it comes,
/// then `done` (answer, citations, usage, timings) or `error`.
fn ask_events(
    state: Arc<super::AppState>,
    a: Answering,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let Answering {
        passages,
        retrieval_ms,
        answer,
    } = a;
    let passages = Arc::new(passages);
    let head = {
        let p: Vec<HitOut<'_>> = passages.iter().map(hit_out).collect();
        event(
            "passages",
            &serde_json::json!({"passages": p, "retrieval_ms": retrieval_ms}),
        )
    };
    let body: futures::stream::BoxStream<'static, Result<Event, Infallible>> = match answer {
        AnswerSource::Fixed(text) => {
            let done = event("done", &finished(text, &passages, retrieval_ms, None));
            futures::stream::iter([event("token", &serde_json::json!({"text": text})), done])
                .boxed()
        }
        AnswerSource::Generated(g) => {
            let state0 = (g, String::new(), passages, false);
            futures::stream::unfold(state0, move |(mut g, mut text, passages, ended)| {
                let state = state.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let ev = match g.next().await {
                        Some(GenerationEvent::Text(t)) => {
                            let e = event("token", &serde_json::json!({"text": t}));
                            text.push_str(&t);
                            return Some((e, (g, text, passages, false)));
                        }
                        Some(GenerationEvent::Done(done)) => {
                            state.metrics.generation("ask", &done);
                            event(
                                "done",
                                &finished(&text, &passages, retrieval_ms, Some(&done)),
                            )
                        }
                        Some(GenerationEvent::Failed(e)) => {
                            event("error", &ApiError::from(e).body())
                        }
                        None => event(
                            "error",
                            &ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal",
                                "the generator stopped without finishing the answer",
                            )
                            .body(),
                        ),
                    };
                    Some((ev, (g, text, passages, true)))
                }
            })
            .boxed()
        }
    };
    futures::stream::iter([head]).chain(body)
}
