//! Sampling: turning one row of logits into the next token.

use serde::{Deserialize, Serialize};

/// How a request picks its tokens. The defaults are greedy decoding with no penalties and
/// 256 new tokens at most.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`;
    /// `1` turns it off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; `0` turns
    /// it off.
    pub min_p: f32,
    /// Multiplicative penalty (CTRL-style) on the logits of tokens already in the prompt or
    /// the output; `1` turns it off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token that already appeared in the output.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it already appeared in the output.
    pub frequency_penalty: f32,
    /// Seed of the request's random generator: the same seed, prompt and parameters give the
    /// same output. `None` draws one.
    pub seed: Option<u64>,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; the string itself is not returned.
    pub stop: Vec<String>,
    /// Generation stops at any of these token ids (in addition to the model's end tokens).
    pub stop_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
        }
    }
}
