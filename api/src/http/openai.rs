//! OpenAI-compatible endpoints: `/v1/chat/completions` (streaming and not), `/v1/embeddings`
//! and `/v1/models`, so that existing clients and SDKs work unchanged. `model` names the
//! generator, or `generator:adapter` for a registered LoRA adapter.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use hearth_engine::{ChatMessage, GenerationEvent, Prompt, SamplingParams};
use serde::Deserialize;

use super::State;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ErrorBody, json};

/// Most texts one embeddings request may carry.
const MAX_EMBED_INPUTS: usize = 2048;
/// Longest text one embeddings input may be, in characters.
const MAX_EMBED_CHARS: usize = 32_768;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-{:x}{n:06x}", now_secs())
}

fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!("no model named {model:?}; GET /v1/models lists them"),
    )
}

/// The generator, each `generator:adapter`, and the embedding models (the default first).
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "OpenAI model list", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn models(s: State) -> Response {
    let created = now_secs();
    let entry = |id: &str| serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": "hearth"});
    let mut data = Vec::new();
    if let Ok(g) = s.service.generator() {
        data.push(entry(&s.model_id));
        for a in g.adapters() {
            data.push(entry(&format!("{}:{}", s.model_id, a.name)));
        }
    }
    for (name, _) in s.service.embedders() {
        data.push(entry(&name));
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The request body. Fields OpenAI defines that hearth has no use for (`user`, ...) are
/// ignored; ones it cannot honour (`n` > 1, `tools`) are refused by name.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ChatBody {
    /// The generator's id, or `generator:adapter`.
    model: String,
    /// `[{"role": "system"|"developer"|"user"|"assistant", "content": text or text parts}]`.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<MessageIn>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    stream_options: Option<StreamOptions>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    #[schema(value_type = Option<Object>)]
    stop: Option<Stop>,
    n: Option<u32>,
    /// Return each generated token's log-probability (`choices[].logprobs.content`).
    #[serde(default)]
    logprobs: Option<bool>,
    /// With `logprobs`, also the 0 to 20 most likely tokens at each position.
    top_logprobs: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tools: Option<serde_json::Value>,
}

fn message(g: &hearth_engine::Generator, m: MessageIn, i: usize) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(format!(
                "messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"
            )));
        }
    };
    let text = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => out.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].content[{j}]: only text parts are supported, got {kind:?}"
                        )));
                    }
                }
            }
            out
        }
    };
    Ok(ChatMessage {
        role: role.into(),
        content: g.escape_markers(&text),
    })
}

impl ChatBody {
    pub(super) fn sampling(&self) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "n: only 1 choice per request is supported",
            ));
        }
        let logprobs = match (self.logprobs == Some(true), self.top_logprobs) {
            (true, n) => Some(n.unwrap_or(0)),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::invalid("top_logprobs needs logprobs set to true"));
            }
        };
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid("tools are not supported"));
        }
        let d = SamplingParams::default();
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(d.max_tokens),
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            stop_token_ids: Vec::new(),
            logprobs,
        })
    }
}

/// One entry of `logprobs.content`, as OpenAI writes it (`bytes`: the token's UTF-8).
fn token_logprobs(l: &hearth_engine::TokenLogprobs) -> serde_json::Value {
    let entry = |t: &hearth_engine::TokenLogprob| serde_json::json!({"token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes()});
    let mut e = entry(&l.chosen);
    e["top_logprobs"] = l.top.iter().map(entry).collect();
    e
}

/// OpenAI chat completions, streamed (`stream: true`) or not.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatBody,
    responses((status = 200, description = "`chat.completion`, or `chat.completion.chunk` events then `[DONE]`", body = Object),
        (status = 404, description = "unknown model or adapter", body = ErrorBody),
        (status = 503, description = "generation queue full", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn chat_completions(
    s: State,
    caller: Caller,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let g = s.service.generator()?;
    let adapter = match body.model.split_once(':') {
        None if body.model == s.model_id => None,
        Some((base, a)) if base == s.model_id => Some(a.to_owned()),
        _ => return Err(model_not_found(&body.model)),
    };
    if body.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty"));
    }
    let params = body.sampling()?;
    let asked_logprobs = params.logprobs.is_some();
    super::tenants::check_tokens(&s, &caller)?;
    let tenant = caller.tenant().map(|t| t.name.clone());
    let include_usage = body
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let (stream, model) = (body.stream, body.model.clone());
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(g, m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut generation = g.submit_scoped(
        &Prompt::Chat(messages),
        params,
        adapter.as_deref(),
        caller.cache_scope(),
    )?;
    let id = completion_id();
    let created = now_secs();
    if stream {
        let state = s.0.clone();
        let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            })
        };
        let first = chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        );
        let events = futures::stream::unfold(
            (generation, Some(first), false),
            move |(mut g, first, ended)| {
                let chunk = chunk.clone();
                let state = state.clone();
                let tenant = tenant.clone();
                async move {
                    if let Some(f) = first {
                        return Some((vec![data(&f)], (g, None, false)));
                    }
                    if ended {
                        return None;
                    }
                    match g.next().await {
                        Some(GenerationEvent::Text(t)) => Some((
                            vec![data(&chunk(serde_json::json!({"content": t}), None))],
                            (g, None, false),
                        )),
                        Some(GenerationEvent::Logprobs(l)) => {
                            let mut c = chunk(serde_json::json!({}), None);
                            c["choices"][0]["logprobs"] =
                                serde_json::json!({"content": [token_logprobs(&l)]});
                            Some((vec![data(&c)], (g, None, false)))
                        }
                        Some(GenerationEvent::Done(c)) => {
                            super::tenants::generated(&state, "chat", tenant.as_deref(), &c);
                            let mut out = vec![data(&chunk(
                                serde_json::json!({}),
                                Some(crate::AnswerEnd::from(c.finish_reason).as_str()),
                            ))];
                            if include_usage {
                                let mut u = chunk(serde_json::json!({}), None);
                                u["choices"] = serde_json::json!([]);
                                u["usage"] = usage(&c.usage);
                                out.push(data(&u));
                            }
                            out.push(Ok(Event::default().data("[DONE]")));
                            Some((out, (g, None, true)))
                        }
                        Some(GenerationEvent::Failed(e)) => {
                            Some((vec![data(&ApiError::from(e).body())], (g, None, true)))
                        }
                        None => None,
                    }
                }
            },
        )
        .flat_map(futures::stream::iter);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = generation.next().await {
        match ev {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Logprobs(l) => logprobs.push(token_logprobs(&l)),
            GenerationEvent::Done(c) => {
                super::tenants::generated(&s, "chat", tenant.as_deref(), &c);
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "id": id, "object": "chat.completion", "created": created,
                        "model": model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": crate::AnswerEnd::from(c.finish_reason).as_str(),
                            "logprobs": if asked_logprobs {
                                serde_json::json!({"content": logprobs})
                            } else {
                                serde_json::Value::Null
                            },
                        }],
                        "usage": usage(&c.usage),
                    }),
                ));
            }
            GenerationEvent::Failed(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the generator stopped without finishing",
    ))
}

fn usage(u: &hearth_engine::Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

fn data(v: &serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(v.to_string()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct EmbedBody {
    /// The embedding model's id.
    model: String,
    /// A text or a list of up to 2048 texts.
    #[schema(value_type = Object)]
    input: EmbedInput,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// OpenAI embeddings (`float` or `base64`).
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbedBody,
    responses((status = 200, description = "OpenAI embedding list", body = Object),
        (status = 404, description = "unknown model", body = ErrorBody), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no or wrong API key", body = ErrorBody), (status = 403, description = "role or collection not allowed", body = ErrorBody)))]
pub(super) async fn embeddings(
    s: State,
    ApiJson(body): ApiJson<EmbedBody>,
) -> Result<Response, ApiError> {
    let Some((model, dim)) = s
        .service
        .embedders()
        .into_iter()
        .find(|(name, _)| *name == body.model)
    else {
        return Err(model_not_found(&body.model));
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format must be \"float\" or \"base64\", got {other:?}"
            )));
        }
    };
    if body.dimensions.is_some_and(|d| d != dim) {
        return Err(ApiError::invalid(format!(
            "dimensions: this model's embeddings have exactly {dim} dimensions"
        )));
    }
    let texts = match body.input {
        EmbedInput::One(t) => vec![t],
        EmbedInput::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(format!(
            "input must hold 1 to {MAX_EMBED_INPUTS} texts, got {}",
            texts.len()
        )));
    }
    if let Some(i) = texts
        .iter()
        .position(|t| t.is_empty() || t.chars().count() > MAX_EMBED_CHARS)
    {
        return Err(ApiError::invalid(format!(
            "input[{i}] must be 1 to {MAX_EMBED_CHARS} characters"
        )));
    }
    let crate::Embedded { vectors, tokens } = s.service.embed(texts, Some(&model)).await?;
    let data: Vec<serde_json::Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                serde_json::Value::String(embedding_base64(v))
            } else {
                serde_json::json!(v)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

/// An embedding as OpenAI's `base64` format has it: the little-endian `f32`s, in standard
/// base64 with padding.
fn embedding_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        assert_eq!(embedding_base64(&[]), "");
        // 1.0 is 00 00 80 3f; -2.0 is 00 00 00 c0.
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
        assert_eq!(embedding_base64(&[1.0, -2.0]), "AACAPwAAAMA=");
        let v = [0.25f32, -0.5, 3.0e-5];
        let bytes = BASE64.decode(embedding_base64(&v)).unwrap();
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
    }
}
