//! What a generation stream reports: its events, and the usage and timings of a finished
//! request. The scheduler produces them; [`super::Generation`] hands them to the caller.

use crate::error::EngineError;

/// One item of a [`Generation`](super::Generation) stream.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The next piece of text (whole characters; stop strings already removed).
    Text(String),
    /// One generated token's log-probability and its most likely alternatives, when the
    /// request asked for them ([`SamplingParams::logprobs`](super::SamplingParams::logprobs)).
    /// Sent for every generated token, end tokens included, before any text it completes.
    Logprobs(TokenLogprobs),
    /// The request finished; always the last event of a successful generation.
    Done(Completion),
    /// The request failed; the last event.
    Failed(EngineError),
}

/// A token and its log-probability (natural log) under the model.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub token: u32,
    /// The token's text on its own, leading space included (a piece of a character is
    /// U+FFFD).
    pub text: String,
    /// `ln p`, `<= 0`.
    pub logprob: f32,
}

/// What [`GenerationEvent::Logprobs`] reports for one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The token generated.
    pub chosen: TokenLogprob,
    /// The most likely tokens at its position, most likely first (as many as asked for).
    pub top: Vec<TokenLogprob>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token, or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including a final end token).
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// Where a finished request's time went, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timings {
    /// From submission to the first step that worked on it.
    pub queue_ms: f64,
    /// From that step to the first token (prompt processing).
    pub prefill_ms: f64,
    /// From submission to the first token.
    pub ttft_ms: f64,
    /// From the first token to the last.
    pub decode_ms: f64,
    /// Tokens after the first, per second of `decode_ms`.
    pub decode_tokens_per_s: f64,
    /// From submission to the end.
    pub total_ms: f64,
}

/// The final event of a generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
}
