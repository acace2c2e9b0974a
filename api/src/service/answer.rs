//! The types every surface shows: one search hit, one answer, one stream of answer events.
//! The HTTP API serialises them as they are (JSON bodies and Server-Sent Events), the CLI
//! prints or serialises the same values, and `hearth ask --server` reads them back with
//! [`AnswerEvent::from_sse`]; so the three cannot drift apart.
//!
//! An answer is a stream: [`AnswerEvent::Passages`] first (what the model is shown), then
//! [`AnswerEvent::Token`]s as text arrives, then one [`AnswerEvent::Done`] holding the finished
//! [`Answer`] with its citations. [`AnswerStream::finish`] drains it for callers that want the
//! whole answer at once.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use hearth_engine::{Completion, FinishReason, Generation, GenerationEvent};
use hearth_index::{Hit, Metadata};
use serde::{Deserialize, Serialize};

use super::quote::Quote;
use super::verify::{Checked, SentenceVerdict, check};
use crate::error::{Result, ServiceError};

/// A chunk as search results, passages and citations show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// Position in the results (for passages: the passage number), from 1.
    pub rank: usize,
    /// The fused (or single-retriever) score; higher is better.
    pub score: f32,
    /// The document's id (64 hex digits).
    pub doc_id: String,
    /// The chunk's id.
    pub chunk_id: String,
    /// The chunk's position in its document, from 0.
    pub ordinal: u32,
    /// The document's external name (file path or upload name).
    pub source: String,
    /// The document's title, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// First page of the chunk (paged formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_start: Option<u32>,
    /// Last page of the chunk (paged formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_end: Option<u32>,
    /// Headings above the chunk, outermost first.
    #[serde(default)]
    pub heading: Vec<String>,
    /// Start and end of the passage in the document's text, in characters.
    pub span: [u64; 2],
    /// The chunk's text.
    pub text: String,
    /// The document's metadata.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// Where the dense retriever ranked it, and the question-passage cosine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<DenseMatch>,
    /// Where BM25 ranked it, and its BM25 score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm25: Option<Bm25Match>,
}

/// The dense retriever's view of a hit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DenseMatch {
    /// Rank among the dense candidates, from 1.
    pub rank: u32,
    /// Cosine similarity between question and chunk.
    pub similarity: f32,
}

/// BM25's view of a hit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bm25Match {
    /// Rank among the BM25 candidates, from 1.
    pub rank: u32,
    /// BM25 score.
    pub score: f32,
}

impl SearchHit {
    /// The hit at position `rank` (from 1).
    fn new(rank: usize, h: &Hit) -> Self {
        Self {
            rank,
            score: h.score,
            doc_id: h.chunk.doc_id.to_hex(),
            chunk_id: h.chunk.id().to_string(),
            ordinal: h.chunk.ordinal,
            source: h.source.clone(),
            title: h.title.clone(),
            page_start: h.chunk.page_start,
            page_end: h.chunk.page_end,
            heading: h.chunk.heading.clone(),
            span: [h.chunk.span_start, h.chunk.span_end],
            text: h.chunk.text.clone(),
            metadata: h.metadata.clone(),
            dense: h
                .dense
                .map(|(rank, similarity)| DenseMatch { rank, similarity }),
            bm25: h.bm25.map(|(rank, score)| Bm25Match { rank, score }),
        }
    }

    /// The hits of a ranking, numbered from 1.
    pub(crate) fn ranked(hits: &[Hit]) -> Vec<Self> {
        hits.iter()
            .enumerate()
            .map(|(i, h)| Self::new(i + 1, h))
            .collect()
    }

    /// The file name of the source (its last path component).
    pub fn file_name(&self) -> &str {
        self.source
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(&self.source)
    }
}

/// A citation of an answer: the passage, whether the model wrote the marker or hearth
/// attributed a sentence to the passage, and whether the passage says what the sentences that
/// cite it state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Citation {
    /// The passage number, from 1 (the `[n]` of the answer).
    pub n: usize,
    /// True when hearth matched an unmarked sentence to the passage.
    pub attributed: bool,
    /// Whether the passage supports a sentence that cites it.
    #[serde(default)]
    pub supported: bool,
    /// The supporting text: `[start, end)` in characters of the passage's `text`, one per
    /// supported sentence (without repeats).
    #[serde(default)]
    pub support: Vec<[usize; 2]>,
    /// The passage.
    #[serde(flatten)]
    pub passage: SearchHit,
}

/// One sentence of an answer, checked against the passages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnswerSentence {
    /// `[start, end)` of the sentence in `answer`, in characters.
    pub span: [usize; 2],
    /// The passages it cites (its `[n]` markers).
    pub cites: Vec<usize>,
    /// Whether a passage supports it: it holds every identifier, option, path, number and
    /// quoted term of the sentence and, in one stretch, most of its content words. Absent
    /// when the sentence states nothing to check ("Here is how:").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported: Option<bool>,
    /// Where passages support it, cited passages first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub support: Vec<Support>,
}

/// Where a passage supports a sentence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Support {
    /// The passage number, from 1.
    pub n: usize,
    /// `[start, end)` in characters of the passage's `text`.
    pub span: [usize; 2],
}

/// How an answer is made from the passages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMode {
    /// The sentences of the passages that answer the question, quoted word for word with
    /// their citations; "the documents do not say" when none does. The generator is not
    /// called.
    #[default]
    Quote,
    /// The generator writes the answer from the passages; each sentence is then checked.
    Generate,
}

impl AnswerMode {
    /// The name, as configuration and requests write it (`quote`, `generate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quote => "quote",
            Self::Generate => "generate",
        }
    }
}

impl std::str::FromStr for AnswerMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "quote" => Ok(Self::Quote),
            "generate" => Ok(Self::Generate),
            _ => Err(format!(
                "answer must be \"quote\" or \"generate\", got {s:?}"
            )),
        }
    }
}

/// Token counts of an answer (zero when the model was not called).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnswerUsage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// Where an answer's time went, in milliseconds (generation fields absent when the model was
/// not called).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnswerTimings {
    /// Query embedding and index time.
    pub retrieval_ms: f64,
    /// Waiting for the generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// From submission to the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// From the first token to the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    /// Tokens after the first, per second of decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// From submission to the end of generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_ms: Option<f64>,
    /// Choosing the quotes of a quoted answer (embedding and scoring the passages' sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_ms: Option<f64>,
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerEnd {
    /// An end token or a stop string.
    Stop,
    /// The token limit.
    Length,
}

impl AnswerEnd {
    /// The name, as the APIs write it (`stop`, `length`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

impl From<FinishReason> for AnswerEnd {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Stop => Self::Stop,
            FinishReason::Length => Self::Length,
        }
    }
}

/// A finished answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// The answer, with `[n]` markers (including any that hearth attributed).
    pub answer: String,
    /// Whether the answer came from retrieved passages, generated over them or quoted from
    /// them (false: nothing relevant was found, or no passage answered the question, and a
    /// fixed answer was given).
    pub grounded: bool,
    /// How it was made.
    #[serde(default)]
    pub mode: AnswerMode,
    /// The passages the answer cites, in order of first citation.
    pub citations: Vec<Citation>,
    /// The answer's sentences, each checked against the passages.
    #[serde(default)]
    pub sentences: Vec<AnswerSentence>,
    /// Sentences that no passage supports were removed (`ask.strict`); when none was
    /// supported the answer says that the documents do not say.
    #[serde(default)]
    pub strict: bool,
    /// The passages the model was shown, numbered from 1.
    pub passages: Vec<SearchHit>,
    /// Why generation ended (absent when the model was not called).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<AnswerEnd>,
    /// Token counts.
    pub usage: AnswerUsage,
    /// Timings.
    pub timings: AnswerTimings,
    /// A follow-up's second search: the question after the previous user turn (it is also
    /// searched as it is, and the two rankings fused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_query: Option<String>,
    /// The conversation this turn was added to (`conversation` or `conversation_id` of the
    /// request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// The passages shown to the model, before any text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassagesShown {
    /// Numbered from 1.
    pub passages: Vec<SearchHit>,
    /// Query embedding and index time, in milliseconds.
    pub retrieval_ms: f64,
}

/// A piece of the answer's text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextPiece {
    /// The text, whole characters.
    pub text: String,
}

/// One event of an answer under way.
#[derive(Clone, Debug, PartialEq)]
pub enum AnswerEvent {
    /// First: the passages.
    Passages(PassagesShown),
    /// Text as it is generated.
    Token(TextPiece),
    /// Last: the finished answer.
    Done(Box<Answer>),
}

impl AnswerEvent {
    /// The Server-Sent Events name of this event.
    pub fn sse_name(&self) -> &'static str {
        match self {
            Self::Passages(_) => "passages",
            Self::Token(_) => "token",
            Self::Done(_) => "done",
        }
    }

    /// The Server-Sent Events data of this event (JSON).
    pub fn sse_data(&self) -> String {
        let json = match self {
            Self::Passages(p) => serde_json::to_string(p),
            Self::Token(t) => serde_json::to_string(t),
            Self::Done(a) => serde_json::to_string(a),
        };
        // invariant: these types hold only strings, numbers and maps with string keys.
        json.expect("answer events serialise")
    }

    /// Reads an event back from its Server-Sent Events name and data. `Ok(None)` for a name
    /// that is not an answer event (such as `error`, which the caller handles).
    pub fn from_sse(name: &str, data: &str) -> serde_json::Result<Option<Self>> {
        Ok(Some(match name {
            "passages" => Self::Passages(serde_json::from_str(data)?),
            "token" => Self::Token(serde_json::from_str(data)?),
            "done" => Self::Done(Box::new(serde_json::from_str(data)?)),
            _ => return Ok(None),
        }))
    }
}

/// Where the answer's text comes from.
pub(crate) enum Source {
    /// Nothing relevant was retrieved, or the question names a term no passage has: this
    /// fixed text, the model was not called.
    Fixed(Cow<'static, str>, AnswerMode),
    /// The model's stream.
    Generated(Generation),
    /// Quoted from the passages (none: no passage answers the question), chosen in this many
    /// milliseconds.
    Quoted(Vec<Quote>, f64),
}

/// What a strict answer says when no sentence of the generated one is supported.
pub const NOT_SUPPORTED: &str = "The documents do not say: no statement of the generated answer is supported by the passages found.";

type Observer = Box<dyn FnOnce(&Completion) + Send>;

/// An answer under way: a stream of [`AnswerEvent`]s ending with [`AnswerEvent::Done`] or an
/// error. Dropping it cancels the generation. A strict answer sends its text in one piece
/// after it has been checked.
pub struct AnswerStream {
    head: Option<PassagesShown>,
    hits: Vec<Hit>,
    /// The hits as shown, numbered from 1 (built once, for the head and the end).
    shown: Vec<SearchHit>,
    retrieval_ms: f64,
    source: Source,
    strict: bool,
    fixed_sent: bool,
    text: String,
    /// Events ready to send (a strict answer's text and its end).
    ready: VecDeque<AnswerEvent>,
    ended: bool,
    observer: Option<Observer>,
    /// Set on the finished answer.
    search_query: Option<String>,
    conversation_id: Option<String>,
    /// The language of the question, for what hearth says itself (declines).
    language: Option<whatlang::Lang>,
}

impl AnswerStream {
    pub(crate) fn new(hits: Vec<Hit>, retrieval_ms: f64, source: Source, strict: bool) -> Self {
        let shown = SearchHit::ranked(&hits);
        Self {
            head: Some(PassagesShown {
                passages: shown.clone(),
                retrieval_ms,
            }),
            hits,
            shown,
            retrieval_ms,
            source,
            strict,
            fixed_sent: false,
            text: String::new(),
            ready: VecDeque::new(),
            ended: false,
            observer: None,
            search_query: None,
            conversation_id: None,
            language: None,
        }
    }

    /// Declines in the question's language (see `language.rs`).
    pub(crate) fn with_language(mut self, lang: Option<whatlang::Lang>) -> Self {
        self.language = lang;
        self
    }

    /// Names the follow-up search the answer's passages were also found by.
    pub(crate) fn with_search_query(mut self, q: Option<String>) -> Self {
        self.search_query = q;
        self
    }

    /// Names the conversation the answer belongs to, on the finished answer.
    pub fn in_conversation(mut self, id: String) -> Self {
        self.conversation_id = Some(id);
        self
    }

    /// Calls `f` with the engine's account of the generation when it finishes (for metrics).
    pub fn on_completion(mut self, f: impl FnOnce(&Completion) + Send + 'static) -> Self {
        self.observer = Some(Box::new(f));
        self
    }

    /// Waits for the whole answer.
    pub async fn finish(mut self) -> Result<Answer> {
        while let Some(ev) = self.next().await {
            if let AnswerEvent::Done(a) = ev? {
                return Ok(*a);
            }
        }
        Err(stopped_early())
    }

    fn done(&mut self, c: Option<&Completion>) -> AnswerEvent {
        self.ended = true;
        let (text, strict) = match &self.source {
            Source::Fixed(t, _) => (t.as_ref(), false),
            Source::Generated(_) => (self.text.as_str(), self.strict),
            Source::Quoted(q, ms) => {
                let mut answer = quoted(
                    q,
                    &self.hits,
                    &self.shown,
                    self.retrieval_ms,
                    super::language::not_found(self.language),
                );
                answer.timings.quote_ms = Some(*ms);
                answer.search_query = self.search_query.take();
                answer.conversation_id = self.conversation_id.take();
                self.ready.push_back(AnswerEvent::Token(TextPiece {
                    text: answer.answer.clone(),
                }));
                return AnswerEvent::Done(Box::new(answer));
            }
        };
        let decline = strict.then(|| super::language::not_supported(self.language));
        let mut answer = finished(text, &self.hits, &self.shown, self.retrieval_ms, c, decline);
        answer.search_query = self.search_query.take();
        answer.conversation_id = self.conversation_id.take();
        if let Source::Fixed(_, mode) = self.source {
            answer.mode = mode;
        }
        if strict {
            self.ready.push_back(AnswerEvent::Token(TextPiece {
                text: answer.answer.clone(),
            }));
        }
        AnswerEvent::Done(Box::new(answer))
    }
}

fn stopped_early() -> ServiceError {
    ServiceError::Internal("the generator stopped without finishing the answer".into())
}

impl Stream for AnswerStream {
    type Item = Result<AnswerEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(p) = this.head.take() {
            return Poll::Ready(Some(Ok(AnswerEvent::Passages(p))));
        }
        if let Some(ev) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(ev)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            let ev = match &mut this.source {
                Source::Fixed(t, _) if !this.fixed_sent => {
                    this.fixed_sent = true;
                    AnswerEvent::Token(TextPiece {
                        text: t.clone().into_owned(),
                    })
                }
                Source::Fixed(..) => this.done(None),
                // A quoted answer is whole at once: its text, then its end.
                Source::Quoted(..) => {
                    let done = this.done(None);
                    this.ready.push_back(done);
                    match this.ready.pop_front() {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                Source::Generated(g) => match g.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(GenerationEvent::Text(t))) => {
                        this.text.push_str(&t);
                        if this.strict {
                            continue;
                        }
                        AnswerEvent::Token(TextPiece { text: t })
                    }
                    // Answers do not ask for them.
                    Poll::Ready(Some(GenerationEvent::Logprobs(_))) => continue,
                    Poll::Ready(Some(GenerationEvent::Done(c))) => {
                        if let Some(f) = this.observer.take() {
                            f(&c);
                        }
                        let done = this.done(Some(&c));
                        // A strict answer's text goes first, then its end.
                        this.ready.push_back(done);
                        match this.ready.pop_front() {
                            Some(ev) => ev,
                            None => continue,
                        }
                    }
                    Poll::Ready(Some(GenerationEvent::Failed(e))) => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(None) => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(stopped_early())));
                    }
                },
            };
            return Poll::Ready(Some(Ok(ev)));
        }
    }
}

/// The finished answer: sentences checked, citations mapped to passages with their supporting
/// spans, usage and timings. Strict (`Some(decline)`): unsupported sentences are removed
/// first, and an answer with none supported becomes `decline`.
fn finished(
    text: &str,
    hits: &[Hit],
    shown: &[SearchHit],
    retrieval_ms: f64,
    done: Option<&Completion>,
    strict: Option<&'static str>,
) -> Answer {
    let checked = if done.is_some() {
        check(text, hits)
    } else {
        Checked {
            text: text.to_owned(),
            sentences: Vec::new(),
        }
    };
    let Checked {
        text: answer,
        sentences: verdicts,
    } = match strict {
        Some(decline) => keep_supported(checked, decline),
        None => checked,
    };
    let mut citations: Vec<Citation> = Vec::new();
    for v in &verdicts {
        for &n in &v.cites {
            let support = v.evidence.iter().find(|e| e.n == n).map(|e| e.span);
            let c = match citations.iter_mut().position(|c| c.n == n) {
                Some(i) => &mut citations[i],
                None => {
                    citations.push(Citation {
                        n,
                        attributed: v.attributed,
                        supported: false,
                        support: Vec::new(),
                        passage: shown[n - 1].clone(),
                    });
                    citations.last_mut().expect("pushed")
                }
            };
            if let Some(span) = support {
                c.supported = true;
                if !c.support.contains(&span) {
                    c.support.push(span);
                }
            }
        }
    }
    let sentences = verdicts
        .into_iter()
        .map(|v| AnswerSentence {
            span: v.span,
            cites: v.cites,
            supported: v.supported,
            support: v
                .evidence
                .iter()
                .map(|e| Support {
                    n: e.n,
                    span: e.span,
                })
                .collect(),
        })
        .collect();
    let (usage, timings) = match done {
        Some(c) => (
            AnswerUsage {
                prompt_tokens: c.usage.prompt_tokens,
                completion_tokens: c.usage.completion_tokens,
                cached_prompt_tokens: c.usage.cached_prompt_tokens,
            },
            AnswerTimings {
                retrieval_ms,
                queue_ms: Some(c.timings.queue_ms),
                ttft_ms: Some(c.timings.ttft_ms),
                decode_ms: Some(c.timings.decode_ms),
                tokens_per_s: Some(c.timings.decode_tokens_per_s),
                generation_ms: Some(c.timings.total_ms),
                quote_ms: None,
            },
        ),
        None => (
            AnswerUsage::default(),
            AnswerTimings {
                retrieval_ms,
                ..AnswerTimings::default()
            },
        ),
    };
    Answer {
        answer,
        grounded: done.is_some(),
        mode: AnswerMode::Generate,
        citations,
        sentences,
        strict: strict.is_some(),
        passages: shown.to_vec(),
        finish_reason: done.map(|c| c.finish_reason.into()),
        usage,
        timings,
        search_query: None,
        conversation_id: None,
    }
}

/// The text of a quoted answer and each quote's span in it, in characters.
fn quoted_lines(quotes: &[Quote], hits: &[Hit], not_found: &str) -> (String, Vec<[usize; 2]>) {
    if quotes.is_empty() {
        return (not_found.to_owned(), Vec::new());
    }
    let mut text = String::new();
    let mut spans = Vec::with_capacity(quotes.len());
    let mut at = 0;
    for q in quotes {
        let line = format!("“{}” [{}]\n", q.text(hits), q.n);
        let len = line.chars().count();
        spans.push([at, at + len - 1]);
        at += len;
        text.push_str(&line);
    }
    text.pop();
    (text, spans)
}

/// The finished quoted answer: every sentence is a quote, supported by the span it was taken
/// from.
/// `not_found` (`NOT_FOUND` in the question's language) is the answer when nothing is quoted.
fn quoted(
    quotes: &[Quote],
    hits: &[Hit],
    shown: &[SearchHit],
    retrieval_ms: f64,
    not_found: &str,
) -> Answer {
    let (answer, spans) = quoted_lines(quotes, hits, not_found);
    let mut citations: Vec<Citation> = Vec::new();
    for q in quotes {
        match citations.iter_mut().find(|c| c.n == q.n) {
            Some(c) => c.support.push(q.span),
            None => citations.push(Citation {
                n: q.n,
                attributed: false,
                supported: true,
                support: vec![q.span],
                passage: shown[q.n - 1].clone(),
            }),
        }
    }
    let sentences = quotes
        .iter()
        .zip(spans)
        .map(|(q, span)| AnswerSentence {
            span,
            cites: vec![q.n],
            supported: Some(true),
            support: vec![Support {
                n: q.n,
                span: q.span,
            }],
        })
        .collect();
    Answer {
        answer,
        grounded: !quotes.is_empty(),
        mode: AnswerMode::Quote,
        citations,
        sentences,
        strict: false,
        passages: shown.to_vec(),
        finish_reason: None,
        usage: AnswerUsage::default(),
        timings: AnswerTimings {
            retrieval_ms,
            ..AnswerTimings::default()
        },
        search_query: None,
        conversation_id: None,
    }
}

/// The supported sentences of a checked answer (and those that state nothing to check, when
/// any is supported), with their spans in the shortened text; `decline` ([`NOT_SUPPORTED`] in
/// the question's language) when none is.
fn keep_supported(c: Checked, decline: &str) -> Checked {
    if !c.sentences.iter().any(|v| v.supported == Some(true)) {
        return Checked {
            text: decline.to_owned(),
            sentences: Vec::new(),
        };
    }
    let chars: Vec<char> = c.text.chars().collect();
    let mut text = String::with_capacity(c.text.len());
    let mut at = 0;
    let mut kept: Vec<SentenceVerdict> = Vec::new();
    // A sentence that states nothing to check goes with what it introduces: an introduction
    // ("Steps:") stays when a checked sentence after it, up to the next introduction, stays;
    // anything else (a code fence, "Done.") goes with the next checked sentence, or, at the
    // end, with the last one.
    let piece = |v: &SentenceVerdict| -> String { chars[v.span[0]..v.span[1]].iter().collect() };
    let intro = |v: &SentenceVerdict| v.supported.is_none() && piece(v).trim_end().ends_with(':');
    let keep: Vec<bool> = (0..c.sentences.len())
        .map(|i| {
            let v = &c.sentences[i];
            let after = &c.sentences[i + 1..];
            match v.supported {
                Some(s) => s,
                None if intro(v) => after
                    .iter()
                    .take_while(|w| !intro(w))
                    .any(|w| w.supported == Some(true)),
                None => after
                    .iter()
                    .find_map(|w| w.supported)
                    .or_else(|| c.sentences[..i].iter().rev().find_map(|w| w.supported))
                    .unwrap_or(false),
            }
        })
        .collect();
    for (mut v, keep) in c.sentences.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        let piece: String = chars[v.span[0]..v.span[1]].iter().collect();
        let len = v.span[1] - v.span[0];
        text.push_str(&piece);
        v.span = [at, at + len];
        at += len;
        kept.push(v);
    }
    Checked {
        text,
        sentences: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::cite::tests::hit;
    use crate::service::quote::NOT_FOUND;

    const QEMU: &str = "The -O option sets the output format, for example qcow2.";

    fn keep_supported_en(c: Checked) -> Checked {
        keep_supported(c, NOT_SUPPORTED)
    }

    #[test]
    fn strict_keeps_supported_sentences_and_their_introductions() {
        let p = [hit(QEMU)];
        let c = keep_supported_en(check(
            "Steps:\n1. Run `sudo qemu-img` now.\n2. The -O option sets the output format.",
            &p,
        ));
        assert_eq!(
            c.text,
            "Steps:\n2. The -O option sets the output format [1]."
        );
        let spans: Vec<String> = c
            .sentences
            .iter()
            .map(|s| {
                c.text
                    .chars()
                    .skip(s.span[0])
                    .take(s.span[1] - s.span[0])
                    .collect()
            })
            .collect();
        assert_eq!(
            spans,
            ["Steps:\n", "2. The -O option sets the output format [1]."]
        );
        let none = keep_supported_en(check("Run `sudo qemu-img > /dev/zero` [1].", &p));
        assert_eq!(none.text, NOT_SUPPORTED);
        assert!(none.sentences.is_empty());
    }

    #[test]
    fn a_quoted_answer_cites_the_span_each_quote_comes_from() {
        let p = [hit("Unrelated words here."), hit(QEMU)];
        let quotes = [Quote {
            n: 2,
            span: [4, 13],
        }];
        let shown = SearchHit::ranked(&p);
        let a = quoted(&quotes, &p, &shown, 1.0, NOT_FOUND);
        assert_eq!(a.answer, "“-O option” [2]");
        assert_eq!(a.mode, AnswerMode::Quote);
        assert!(a.grounded);
        assert_eq!(a.citations.len(), 1);
        assert_eq!(a.citations[0].support, vec![[4, 13]]);
        assert_eq!(a.sentences[0].supported, Some(true));
        let chars: Vec<char> = a.answer.chars().collect();
        let s = a.sentences[0].span;
        assert_eq!(chars[s[0]..s[1]].iter().collect::<String>(), a.answer);
        let none = quoted(&[], &p, &shown, 1.0, NOT_FOUND);
        assert_eq!(none.answer, NOT_FOUND);
        assert!(!none.grounded && none.citations.is_empty());
    }
}
