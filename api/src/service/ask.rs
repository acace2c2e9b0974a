//! Grounded answers: the question is searched, the relevant hits become numbered passages in
//! a prompt that fits the model's context, the generator answers from them, and the `[n]`
//! markers of the answer are mapped back to the passages.
//!
//! Text from documents and from the user is escaped before it enters the prompt, so that a
//! document cannot open or close a turn of the chat template (see
//! [`hearth_engine::Generator::escape_markers`]).

use std::sync::Arc;
use std::time::Instant;

use hearth_engine::{ChatMessage, Generation, Generator, Prompt, SamplingParams};
use hearth_index::{Filter, Hit, SearchMode};
use serde::Deserialize;

use super::search::SearchQuery;
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// The answer given, without calling the model, when retrieval finds nothing relevant.
pub const NOTHING_RELEVANT: &str =
    "I could not find anything about this in the documents of this collection.";

/// Most passages one question may retrieve.
const MAX_ASK_TOP_K: usize = 64;

/// Most earlier turns an ask request may carry.
pub const MAX_HISTORY: usize = 32;

/// Settings of grounded answering (`[ask]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AskConfig {
    /// Passages retrieved for a question when the request does not say.
    pub top_k: usize,
    /// Lowest cosine similarity between question and passage for the passage to count as
    /// relevant (dense and hybrid modes). With none left, the answer says nothing was found.
    pub min_similarity: f32,
    /// Tokens the answer may take when the request does not say.
    pub max_tokens: usize,
    /// Repetition penalty of the default (greedy) sampling: small models loop without one.
    pub repetition_penalty: f32,
}

impl Default for AskConfig {
    fn default() -> Self {
        Self {
            top_k: 4,
            min_similarity: 0.2,
            max_tokens: 256,
            repetition_penalty: 1.1,
        }
    }
}

impl AskConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_ASK_TOP_K).contains(&self.top_k) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.top_k must be between 1 and {MAX_ASK_TOP_K}, got {}",
                self.top_k
            )));
        }
        if !(-1.0..=1.0).contains(&self.min_similarity) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.min_similarity must be between -1 and 1, got {}",
                self.min_similarity
            )));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            )));
        }
        if self.max_tokens == 0 {
            return Err(ServiceError::InvalidInput(
                "ask.max_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A question to answer from a collection.
#[derive(Clone, Debug, Default)]
pub struct AskRequest {
    /// The question.
    pub question: String,
    /// Earlier turns (`user` / `assistant`), oldest first; dropped from the oldest when the
    /// prompt would not fit.
    pub history: Vec<ChatMessage>,
    /// Retrieval mode.
    pub mode: SearchMode,
    /// Passages to retrieve (default `ask.top_k`).
    pub top_k: Option<usize>,
    /// Only documents that match.
    pub filter: Option<Filter>,
    /// Lowest similarity of a relevant passage (default `ask.min_similarity`).
    pub min_similarity: Option<f32>,
    /// A registered LoRA adapter to answer with.
    pub adapter: Option<String>,
    /// Sampling; `None` is greedy with `ask.max_tokens`.
    pub sampling: Option<SamplingParams>,
}

/// A question under way: the passages the model was shown, and the answer's events.
pub struct Answering {
    /// The passages, numbered from 1 in this order.
    pub passages: Vec<Hit>,
    /// Query embedding and index time, in milliseconds.
    pub retrieval_ms: f64,
    /// The answer.
    pub answer: AnswerSource,
}

/// Where the answer's text comes from.
pub enum AnswerSource {
    /// Nothing relevant was retrieved: this fixed text, the model was not called.
    Fixed(&'static str),
    /// The model's stream.
    Generated(Generation),
}

impl Service {
    /// The generator, or an error saying that this process did not load one.
    pub fn generator(&self) -> Result<&Generator> {
        self.generator.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("this process has not loaded a generator".into())
        })
    }

    /// Retrieves passages for a question and starts the answer. Fails before anything is
    /// generated on bad input, an unknown adapter or a full generation queue.
    pub async fn ask(&self, col: &Arc<Collection>, req: AskRequest) -> Result<Answering> {
        let generator = self.generator()?;
        let cfg = &self.ask;
        let top_k = req.top_k.unwrap_or(cfg.top_k);
        if !(1..=MAX_ASK_TOP_K).contains(&top_k) {
            return Err(ServiceError::InvalidInput(format!(
                "top_k must be between 1 and {MAX_ASK_TOP_K}, got {top_k}"
            )));
        }
        if req.history.len() > MAX_HISTORY {
            return Err(ServiceError::InvalidInput(format!(
                "at most {MAX_HISTORY} history messages are allowed, got {}",
                req.history.len()
            )));
        }
        if let Some(m) = req
            .history
            .iter()
            .find(|m| !matches!(m.role.as_str(), "user" | "assistant"))
        {
            return Err(ServiceError::InvalidInput(format!(
                "history roles must be \"user\" or \"assistant\", got {:?}",
                m.role
            )));
        }
        let min_similarity = req.min_similarity.unwrap_or(cfg.min_similarity);
        if !min_similarity.is_finite() {
            return Err(ServiceError::InvalidInput(
                "min_similarity must be a finite number".into(),
            ));
        }
        let sampling = req.sampling.clone().unwrap_or_else(|| SamplingParams {
            max_tokens: cfg.max_tokens,
            repetition_penalty: cfg.repetition_penalty,
            ..SamplingParams::default()
        });
        sampling.validate(generator.info().vocab)?;
        if let Some(a) = &req.adapter {
            // Fails now, before retrieval, for a name that is not registered.
            if !generator.adapters().iter().any(|i| &i.name == a) {
                return Err(ServiceError::Engine(
                    hearth_engine::EngineError::UnknownAdapter(a.clone()),
                ));
            }
        }
        let found = self
            .search(
                col,
                SearchQuery {
                    text: req.question.clone(),
                    mode: req.mode,
                    top_k,
                    filter: req.filter.clone(),
                    fusion: None,
                },
            )
            .await?;
        let retrieval_ms = found.embed_ms + found.search_ms;
        let relevant: Vec<Hit> = found
            .hits
            .into_iter()
            .filter(|h| match req.mode {
                SearchMode::Bm25 => true,
                SearchMode::Dense | SearchMode::Hybrid => relevant(h, min_similarity),
            })
            .collect();
        if relevant.is_empty() {
            return Ok(Answering {
                passages: Vec::new(),
                retrieval_ms,
                answer: AnswerSource::Fixed(NOTHING_RELEVANT),
            });
        }
        let started = Instant::now();
        let budget = generator
            .info()
            .context
            .checked_sub(sampling.max_tokens)
            .ok_or_else(|| {
                ServiceError::InvalidInput(format!(
                    "max_tokens ({}) exceeds the model's context of {} tokens",
                    sampling.max_tokens,
                    generator.info().context
                ))
            })?;
        let (prompt, passages) = build_prompt(generator, &req, relevant, budget)?;
        tracing::debug!(
            passages = passages.len(),
            prompt_ms = started.elapsed().as_secs_f64() * 1e3,
            "ask prompt built"
        );
        let generation =
            generator.submit_with_adapter(&prompt, sampling, req.adapter.as_deref())?;
        Ok(Answering {
            passages,
            retrieval_ms,
            answer: AnswerSource::Generated(generation),
        })
    }
}

/// Whether a hit is relevant enough to be shown to the model: its question cosine reaches
/// `min_similarity`, or both retrievers rank it among their best three and its cosine reaches
/// half of `min_similarity` (a passage that says the same thing in other words than the
/// question, found by its words, scores lower with a small embedding model).
fn relevant(h: &Hit, min_similarity: f32) -> bool {
    match (h.dense, h.bm25) {
        (Some((_, cos)), _) if cos >= min_similarity => true,
        (Some((dense_rank, cos)), Some((bm25_rank, _))) => {
            dense_rank <= 3 && bm25_rank <= 3 && cos >= min_similarity / 2.0
        }
        _ => false,
    }
}

const INSTRUCTIONS: &str = "You answer questions using only the numbered passages from the \
user's documents below. Cite the passage each fact comes from by its number in square \
brackets, like [1]. If the passages do not answer the question, say that the documents do not \
say. Answer briefly.";

/// One passage as the model sees it: its number, where it comes from, its text.
fn passage_block(g: &Generator, n: usize, h: &Hit) -> String {
    let mut label = h.title.clone().unwrap_or_else(|| {
        h.source
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(&h.source)
            .to_owned()
    });
    match (h.chunk.page_start, h.chunk.page_end) {
        (Some(a), Some(b)) if a != b => label.push_str(&format!(", pages {a}-{b}")),
        (Some(a), _) => label.push_str(&format!(", page {a}")),
        _ if !h.chunk.heading.is_empty() => {
            label.push_str(", section ");
            label.push_str(&h.chunk.heading.join(" > "));
        }
        _ => {}
    }
    g.escape_markers(&format!("[{n}] ({label})\n{}\n\n", h.chunk.text))
}

fn messages(system: String, history: &[ChatMessage], question: &str) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(history.len() + 2);
    out.push(ChatMessage {
        role: "system".into(),
        content: system,
    });
    out.extend(history.iter().cloned());
    out.push(ChatMessage {
        role: "user".into(),
        content: question.to_owned(),
    });
    out
}

/// The chat prompt with as many passages (best first) as fit in `budget` tokens, after the
/// oldest history turns are dropped if even the question alone would not fit.
fn build_prompt(
    g: &Generator,
    req: &AskRequest,
    hits: Vec<Hit>,
    budget: usize,
) -> Result<(Prompt, Vec<Hit>)> {
    let question = g.escape_markers(req.question.trim());
    let history: Vec<ChatMessage> = req
        .history
        .iter()
        .map(|m| ChatMessage {
            role: m.role.clone(),
            content: g.escape_markers(&m.content),
        })
        .collect();
    let count = |system: &str, history: &[ChatMessage]| -> Result<usize> {
        Ok(g.tokenize(&Prompt::Chat(messages(
            system.to_owned(),
            history,
            &question,
        )))?
        .len())
    };
    let header = format!("{INSTRUCTIONS}\n\nPassages:\n\n");
    let mut keep_from = 0;
    let mut base = count(&header, &history)?;
    while base > budget && keep_from < history.len() {
        keep_from += 1;
        base = count(&header, &history[keep_from..])?;
    }
    if base > budget {
        return Err(ServiceError::InvalidInput(format!(
            "the question alone takes {base} tokens; the model's context leaves {budget} for the prompt"
        )));
    }
    let history = &history[keep_from..];
    // Passages are measured one by one (a block's tokens barely depend on its neighbours),
    // with a small margin each; the whole prompt is measured again at the end.
    let mut system = header;
    let mut used = base;
    let mut passages = Vec::new();
    for h in hits {
        let block = passage_block(g, passages.len() + 1, &h);
        let cost = g.tokenize(&Prompt::Text(block.clone()))?.len() + 2;
        if used + cost > budget {
            break;
        }
        used += cost;
        system.push_str(&block);
        passages.push(h);
    }
    loop {
        let prompt = Prompt::Chat(messages(system.trim_end().to_owned(), history, &question));
        if passages.is_empty() || g.tokenize(&prompt)?.len() <= budget {
            return Ok((prompt, passages));
        }
        passages.pop();
        system = format!("{INSTRUCTIONS}\n\nPassages:\n\n");
        for (i, h) in passages.iter().enumerate() {
            system.push_str(&passage_block(g, i + 1, h));
        }
    }
}

/// The passage numbers an answer cites, in order of first citation, each once: `[2]`,
/// `[1, 3]`, `[1][2]` and `[1-3]` forms; numbers outside `1..=passages` are ignored.
pub fn cited(answer: &str, passages: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = answer;
    // Each `]` closes the nearest `[` before it, so `[[2]]` is a citation of 2.
    while let Some(close) = rest.find(']') {
        let head = &rest[..close];
        rest = &rest[close + 1..];
        let Some(open) = head.rfind('[') else {
            continue;
        };
        let inner = &head[open + 1..];
        if inner.is_empty()
            || inner.len() > 32
            || !inner
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ',' | ' ' | '-' | '–'))
        {
            continue;
        }
        for part in inner.split(',') {
            let part = part.trim();
            let range = part
                .split_once(['-', '–'])
                .map(|(a, b)| (a.trim().parse::<usize>(), b.trim().parse::<usize>()));
            let (a, b) = match range {
                Some((Ok(a), Ok(b))) if a <= b && b - a < 64 => (a, b),
                Some(_) => continue,
                None => match part.parse::<usize>() {
                    Ok(n) => (n, n),
                    Err(_) => continue,
                },
            };
            for n in a..=b {
                if (1..=passages).contains(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// A citation of an answer: passage `n` (from 1), and whether the model wrote the marker or
/// hearth attributed a sentence to the passage ([`cite`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Citation {
    /// The passage number.
    pub n: usize,
    /// True when hearth matched an unmarked sentence to the passage.
    pub attributed: bool,
}

/// The answer's citations. The markers the model wrote count first ([`cited`]); when it wrote
/// none, each sentence of the answer that shares enough distinctive words with a passage is
/// attributed to the best such passage and gets its marker appended, so the answer still
/// carries `[n]` markers that lead to sources. Returns the answer (with any added markers) and
/// the citations in order of first appearance.
pub fn cite(answer: &str, passages: &[Hit]) -> (String, Vec<Citation>) {
    let marked = cited(answer, passages.len());
    if !marked.is_empty() {
        let c = marked
            .into_iter()
            .map(|n| Citation {
                n,
                attributed: false,
            })
            .collect();
        return (answer.to_owned(), c);
    }
    let vocab: Vec<std::collections::HashSet<String>> = passages
        .iter()
        .map(|h| content_words(&h.chunk.text))
        .collect();
    let mut out = String::with_capacity(answer.len() + 16);
    let mut citations: Vec<Citation> = Vec::new();
    for sentence in sentences(answer) {
        let words = content_words(sentence);
        let best = vocab
            .iter()
            .enumerate()
            .map(|(i, v)| (words.iter().filter(|w| v.contains(*w)).count(), i))
            .max_by_key(|&(shared, i)| (shared, std::cmp::Reverse(i)));
        let trimmed = sentence.trim_end();
        match best {
            Some((shared, i)) if shared >= 3 || (shared >= 2 && shared * 2 >= words.len()) => {
                let n = i + 1;
                // The marker goes before the sentence's closing punctuation and whitespace.
                let body = trimmed.trim_end_matches(['.', '!', '?', ':', ';', ',']);
                out.push_str(body);
                out.push_str(&format!(" [{n}]"));
                out.push_str(&trimmed[body.len()..]);
                out.push_str(&sentence[trimmed.len()..]);
                if !citations.iter().any(|c| c.n == n) {
                    citations.push(Citation {
                        n,
                        attributed: true,
                    });
                }
            }
            _ => out.push_str(sentence),
        }
    }
    (out, citations)
}

/// Splits text after sentence ends (`.`, `!`, `?` followed by whitespace) and line breaks,
/// keeping every character.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_ws = chars.peek().is_none_or(|(_, n)| n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && next_ws) {
            // Swallow the whitespace that follows into this sentence.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if !n.is_whitespace() {
                    break;
                }
                end = j + n.len_utf8();
                chars.next();
            }
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Lower-cased words of at least four characters (or containing a digit) that are not common
/// function words: the words that make two texts about the same thing.
fn content_words(text: &str) -> std::collections::HashSet<String> {
    const COMMON: &[&str] = &[
        "about",
        "after",
        "also",
        "been",
        "before",
        "being",
        "between",
        "both",
        "could",
        "does",
        "each",
        "from",
        "have",
        "here",
        "into",
        "just",
        "like",
        "make",
        "many",
        "more",
        "most",
        "much",
        "must",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "very",
        "want",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
        "following",
        "example",
        "using",
        "used",
        "use",
        "can",
    ];
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| {
            (w.chars().count() >= 4 || (w.len() >= 2 && w.chars().any(|c| c.is_ascii_digit())))
                && !COMMON.contains(&w.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citation_markers() {
        assert_eq!(cited("Paris [2]. Also [1, 3] and [1][4].", 4), [2, 1, 3, 4]);
        assert_eq!(cited("see [2-4]", 5), [2, 3, 4]);
        assert_eq!(cited("[0] [7] [x] [1 2] [", 3), Vec::<usize>::new());
        assert_eq!(cited("a[1]b[1]c", 1), [1]);
        assert_eq!(cited("[[2]]", 2), [2]);
        assert_eq!(cited("[3-1] [1-999999]", 3), Vec::<usize>::new());
        assert!(cited("", 3).is_empty());
    }

    fn hit(text: &str) -> Hit {
        Hit {
            chunk: hearth_index::Chunk {
                doc_id: hearth_index::DocId::of_bytes(text.as_bytes()),
                ordinal: 0,
                text: text.into(),
                page_start: None,
                page_end: None,
                heading: Vec::new(),
                span_start: 0,
                span_end: 0,
                token_count: 0,
                embedding: None,
            },
            source: "s".into(),
            title: None,
            metadata: Default::default(),
            score: 0.0,
            dense: None,
            bm25: None,
        }
    }

    #[test]
    fn unmarked_sentences_are_attributed_to_the_passage_they_draw_on() {
        let passages = [
            hit("The kitchen closes at six in the evening on weekdays."),
            hit("qemu-img convert -O qcow2 input.raw output.qcow2 converts a disk image."),
        ];
        let answer = "Run qemu-img convert with -O qcow2 to convert the disk image. \
                      Bananas are yellow.\nThe kitchen closes at six!";
        let (text, c) = cite(answer, &passages);
        assert_eq!(
            text,
            "Run qemu-img convert with -O qcow2 to convert the disk image [2]. \
             Bananas are yellow.\nThe kitchen closes at six [1]!"
        );
        assert_eq!(
            c,
            [
                Citation {
                    n: 2,
                    attributed: true
                },
                Citation {
                    n: 1,
                    attributed: true
                }
            ]
        );
        // Markers written by the model win, and nothing is added then.
        let (text, c) = cite("It converts images [2].", &passages);
        assert_eq!(text, "It converts images [2].");
        assert_eq!(
            c,
            [Citation {
                n: 2,
                attributed: false
            }]
        );
        // Nothing in common: no citation.
        assert_eq!(cite("Bananas are yellow.", &passages).1, []);
        assert_eq!(sentences("a. b\n\nc"), ["a. ", "b\n\n", "c"]);
    }

    #[test]
    fn relevance_needs_similarity_or_agreement() {
        let with = |dense: Option<(u32, f32)>, bm25: Option<(u32, f32)>| Hit {
            dense,
            bm25,
            ..hit("x")
        };
        assert!(relevant(&with(Some((1, 0.3)), None), 0.2));
        assert!(!relevant(&with(Some((1, 0.15)), None), 0.2));
        assert!(relevant(&with(Some((3, 0.15)), Some((1, 9.0))), 0.2));
        assert!(!relevant(&with(Some((4, 0.15)), Some((1, 9.0))), 0.2));
        assert!(!relevant(&with(Some((2, 0.05)), Some((1, 9.0))), 0.2));
        assert!(!relevant(&with(None, Some((1, 9.0))), 0.2));
    }

    #[test]
    fn config_ranges() {
        assert!(AskConfig::default().validate().is_ok());
        for bad in [
            AskConfig {
                top_k: 0,
                ..AskConfig::default()
            },
            AskConfig {
                min_similarity: 2.0,
                ..AskConfig::default()
            },
            AskConfig {
                max_tokens: 0,
                ..AskConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
