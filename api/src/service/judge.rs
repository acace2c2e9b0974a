//! The generator as a judge: does this text answer this question? One prompt, one generated
//! token, and the model's own probabilities of "yes" and "no" for it.
//!
//! Quoted answers pick sentences by the question's meaning and words (see [`super::quote`]),
//! which cannot tell a passage on the question's subject from one that answers it: every
//! not-covered question of the labelled set finds a passage on its subject. The judge reads
//! the chosen quote with the question and says whether it answers; a low probability of "yes"
//! turns the answer into "the documents do not say".

use futures::StreamExt;
use hearth_engine::{ChatMessage, GenerationEvent, Generator, Prompt, SamplingParams};

use crate::error::{Result, ServiceError};

/// What the judge is told.
const SYSTEM: &str = "You check whether a text from a document answers a question. \
    Reply with one word: yes if the text answers the question, no if it does not.";

/// Characters of the text shown to the judge (a quote is at most ~900; a longer text is cut).
const MAX_TEXT_CHARS: usize = 2_000;

/// Alternatives read at the one generated position: "yes" and "no" in their spellings
/// ("Yes", " yes", "YES", ...) are among the 20 most likely whenever the model follows the
/// instruction.
const ALTERNATIVES: usize = 20;

/// The probability that `text` answers `question`, by the generator: `P(yes) / (P(yes) +
/// P(no))` over the first token of its reply, or 0 when neither word is among the likely
/// first tokens. `context` is a follow-up's previous user turn. `scope` is the caller's
/// prompt-cache scope (the prompt holds document text and the question).
pub(crate) async fn answers(
    generator: &Generator,
    question: &str,
    context: &str,
    text: &str,
    scope: u64,
) -> Result<f32> {
    let text: String = text.chars().take(MAX_TEXT_CHARS).collect();
    let mut asked = String::new();
    if !context.trim().is_empty() {
        asked.push_str("Earlier question: ");
        asked.push_str(&generator.escape_markers(context.trim()));
        asked.push('\n');
    }
    asked.push_str("Question: ");
    asked.push_str(&generator.escape_markers(question.trim()));
    let user = format!(
        "{asked}\n\nText:\n{}\n\nDoes the text answer the question? Reply yes or no.",
        generator.escape_markers(text.trim())
    );
    let prompt = Prompt::Chat(vec![
        ChatMessage {
            role: "system".into(),
            content: SYSTEM.into(),
        },
        ChatMessage {
            role: "user".into(),
            content: user,
        },
    ]);
    let params = SamplingParams {
        max_tokens: 1,
        logprobs: Some(ALTERNATIVES),
        ..SamplingParams::default()
    };
    let mut generation = generator.submit_scoped(&prompt, params, None, scope)?;
    let mut first = None;
    while let Some(event) = generation.next().await {
        match event {
            GenerationEvent::Logprobs(l) if first.is_none() => first = Some(l),
            GenerationEvent::Failed(e) => return Err(e.into()),
            GenerationEvent::Done(_) => break,
            GenerationEvent::Text(_) | GenerationEvent::Logprobs(_) => {}
        }
    }
    let first = first.ok_or_else(|| {
        ServiceError::Internal("the judge's generation ended without a token".into())
    })?;
    let (mut yes, mut no) = (0f32, 0f32);
    for t in &first.top {
        match t.text.trim().to_lowercase().as_str() {
            "yes" => yes += t.logprob.exp(),
            "no" => no += t.logprob.exp(),
            _ => {}
        }
    }
    Ok(if yes + no > 0.0 {
        yes / (yes + no)
    } else {
        0.0
    })
}
