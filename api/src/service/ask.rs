//! Grounded answers: the question is searched, the relevant hits become numbered passages in
//! a prompt that fits the model's context, the generator answers from them, and the `[n]`
//! markers of the answer are mapped back to the passages.
//!
//! Text from documents and from the user is escaped before it enters the prompt, so that a
//! document cannot open or close a turn of the chat template (see
//! [`hearth_engine::Generator::escape_markers`]).

use std::sync::Arc;
use std::time::Instant;

use hearth_engine::{ChatMessage, Generator, Priority, Prompt, Role, SamplingParams};
use hearth_index::{Filter, Hit, Reader, SearchMode};
use serde::Deserialize;

use super::answer::{AnswerMode, AnswerStream, Source};
use super::ingest::embedding_text;
use super::quote::{min_cosine, passage_units, score, select};
use super::search::{Retrieved, SearchQuery};
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
    /// Remove the sentences of an answer that no passage supports; an answer with none
    /// supported says that the documents do not say (for regulated deployments). A request
    /// may set it for itself.
    pub strict: bool,
    /// How answers are made: `quote` (the passages' own sentences, the generator is not
    /// called) or `generate` (the generator writes, each sentence is checked). A request may
    /// choose for itself.
    pub answer: AnswerMode,
    /// Seconds a conversation is kept after its last turn (`conversation_id` of an ask); then
    /// it is deleted.
    pub conversation_ttl_secs: u64,
    /// Most conversations one key (or identity) may hold in one collection at once.
    pub max_conversations: usize,
    /// Quoted answers are read by the generator with the question before they are given, and
    /// a quote it judges not to answer becomes "the documents do not say" (needs the
    /// generator loaded; see `service/judge.rs`).
    pub judge: bool,
    /// The judge's least probability of "yes" for a quote to be given.
    pub judge_min: f32,
    /// An embedding model of this node (`engine.embedders`) that re-scores the first
    /// `rerank_depth` candidates of retrieval before they are quoted or shown to the generator
    /// (see `service/rerank.rs`); none by default. Collections made with that model are not
    /// reranked.
    pub rerank: Option<String>,
    /// Candidates of the first stage the reranker re-scores.
    pub rerank_depth: usize,
    /// Weight of the reranker's order against the first stage's (1: its order alone).
    pub rerank_weight: f32,
    /// Every exact term the question names (an option, a path, a function, an identifier, a
    /// file name, a mixed-case or all-capitals name) must be in a passage: one that is not is
    /// looked for by BM25, and one that no passage the reader may read has makes the
    /// answer say that the documents do not mention it (see `service/named.rs`).
    pub named_terms: bool,
}

/// Longest a conversation may be kept: a year.
const MAX_CONVERSATION_TTL_SECS: u64 = 365 * 24 * 3600;

impl Default for AskConfig {
    fn default() -> Self {
        Self {
            top_k: 4,
            min_similarity: 0.2,
            max_tokens: 256,
            repetition_penalty: 1.1,
            strict: false,
            answer: AnswerMode::Quote,
            conversation_ttl_secs: 24 * 3600,
            max_conversations: 100,
            judge: false,
            judge_min: 0.5,
            rerank: None,
            rerank_depth: 20,
            rerank_weight: 1.0,
            named_terms: true,
        }
    }
}

impl AskConfig {
    /// How a request is answered: as it asks, else generated when it carries settings for the
    /// model (`for_model`: sampling or an adapter), else `answer`. Asking for quotes with
    /// settings for the model is an error.
    pub fn answer_mode(
        &self,
        requested: Option<AnswerMode>,
        for_model: bool,
    ) -> Result<AnswerMode> {
        match requested {
            Some(AnswerMode::Quote) if for_model => Err(ServiceError::InvalidInput(
                "sampling and adapter apply to generated answers, not to answer \"quote\"".into(),
            )),
            Some(m) => Ok(m),
            None if for_model => Ok(AnswerMode::Generate),
            None => Ok(self.answer),
        }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.max_conversations == 0 {
            return Err(ServiceError::InvalidInput(
                "ask.max_conversations must be at least 1".into(),
            ));
        }
        if !(1..=MAX_CONVERSATION_TTL_SECS).contains(&self.conversation_ttl_secs) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.conversation_ttl_secs must be between 1 and {MAX_CONVERSATION_TTL_SECS}, got {}",
                self.conversation_ttl_secs
            )));
        }
        if !(1..=MAX_ASK_TOP_K).contains(&self.top_k) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.top_k must be between 1 and {MAX_ASK_TOP_K}, got {}",
                self.top_k
            )));
        }
        if !(1..=MAX_ASK_TOP_K).contains(&self.rerank_depth) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.rerank_depth must be between 1 and {MAX_ASK_TOP_K}, got {}",
                self.rerank_depth
            )));
        }
        if !(0.0..=1.0).contains(&self.rerank_weight) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.rerank_weight must be between 0 and 1, got {}",
                self.rerank_weight
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
        if !(0.0..=1.0).contains(&self.judge_min) {
            return Err(ServiceError::InvalidInput(format!(
                "ask.judge_min must be between 0 and 1, got {}",
                self.judge_min
            )));
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
    /// Remove unsupported sentences (default `ask.strict`).
    pub strict: Option<bool>,
    /// Quote or generate (default `ask.answer`; `generate` when `sampling` or `adapter` is
    /// set).
    pub answer: Option<AnswerMode>,
    /// Whose cached prompt prefixes the answer may share: requests of different scopes never
    /// share (the HTTP API gives each key its own; see `Generator::submit_scoped`).
    pub cache_scope: u64,
    /// Who is asking: the answer uses only passages of documents this reader may read (the
    /// default reads only documents open to everyone).
    pub reader: Reader,
}

impl Service {
    /// The grounded-answer settings.
    pub fn ask_config(&self) -> &AskConfig {
        &self.ask
    }

    /// The generator, or an error saying that this process did not load one.
    pub(crate) fn generator(&self) -> Result<&Generator> {
        self.generator.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("this process has not loaded a generator".into())
        })
    }

    /// Retrieves passages for a question and starts the answer: the stream gives the passages,
    /// the text as it is generated, and the finished answer with its citations. Fails before
    /// anything is generated on bad input, an unknown adapter or a full generation queue.
    pub async fn ask(&self, col: &Arc<Collection>, req: AskRequest) -> Result<AnswerStream> {
        let cfg = &self.ask;
        let for_model = req.sampling.is_some() || req.adapter.is_some();
        let mode = cfg.answer_mode(req.answer, for_model)?;
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
        let asked_in = super::language::of_question(&req.question);
        let min_similarity = req.min_similarity.unwrap_or(cfg.min_similarity);
        if !min_similarity.is_finite() {
            return Err(ServiceError::InvalidInput(
                "min_similarity must be a finite number".into(),
            ));
        }
        let generator = match mode {
            AnswerMode::Generate => Some(self.generator()?),
            AnswerMode::Quote => None,
        };
        let sampling = req.sampling.clone().unwrap_or_else(|| SamplingParams {
            max_tokens: cfg.max_tokens,
            repetition_penalty: cfg.repetition_penalty,
            ..SamplingParams::default()
        });
        if let Some(generator) = generator {
            sampling.validate(generator.info().vocab)?;
            if let Some(a) = &req.adapter {
                // Fails now, before retrieval, for a name that is not registered.
                if !generator.adapters().iter().any(|i| &i.name == a) {
                    return Err(ServiceError::Engine(
                        hearth_engine::EngineError::UnknownAdapter(a.clone()),
                    ));
                }
            }
        }
        let found = self
            .retrieve_turn(
                col,
                &req.question,
                &req.history,
                SearchQuery {
                    text: req.question.clone(),
                    mode: req.mode,
                    top_k,
                    filter: req.filter.clone(),
                    fusion: None,
                    reader: req.reader.clone(),
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
        // hearth's own answer, in the question's language, without passages or the model.
        let declined = |text: std::borrow::Cow<'static, str>| {
            AnswerStream::new(Vec::new(), retrieval_ms, Source::Fixed(text, mode), false)
                .with_language(asked_in)
                .with_search_query(follow_up_query(&req.question, &req.history))
        };
        if relevant.is_empty() {
            return Ok(declined(super::language::nothing_relevant(asked_in).into()));
        }
        let (relevant, unnamed) = self.named_terms(col, &req, relevant).await?;
        if !unnamed.is_empty() {
            // The terms come from the question: they stay out of the log.
            tracing::debug!(terms = unnamed.len(), "named terms in no passage");
            return Ok(declined(
                super::language::not_mentioned(asked_in, &unnamed).into(),
            ));
        }
        let Some(generator) = generator else {
            let started = Instant::now();
            let quotes = self.quotes(col, &req, &relevant).await?;
            tracing::debug!(
                quotes = quotes.len(),
                quote_ms = started.elapsed().as_secs_f64() * 1e3,
                "quoted answer chosen"
            );
            return Ok(AnswerStream::new(
                relevant,
                retrieval_ms,
                Source::Quoted(quotes, started.elapsed().as_secs_f64() * 1e3),
                false,
            )
            .with_language(asked_in)
            .with_search_query(follow_up_query(&req.question, &req.history)));
        };
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
        let instructions = match super::language::instruction(
            asked_in,
            relevant.iter().map(|h| h.chunk.text.as_str()),
        ) {
            Some(line) => format!("{INSTRUCTIONS} {line}"),
            None => INSTRUCTIONS.to_owned(),
        };
        let (prompt, passages) = build_prompt(generator, &req, relevant, budget, &instructions)?;
        tracing::debug!(
            passages = passages.len(),
            prompt_ms = started.elapsed().as_secs_f64() * 1e3,
            "ask prompt built"
        );
        let generation =
            generator.submit_scoped(&prompt, sampling, req.adapter.as_deref(), req.cache_scope)?;
        Ok(AnswerStream::new(
            passages,
            retrieval_ms,
            Source::Generated(generation),
            req.strict.unwrap_or(cfg.strict),
        )
        .with_language(asked_in)
        .with_search_query(follow_up_query(&req.question, &req.history)))
    }
}

/// Hits of each BM25 search for a named term that no passage has (the question's words, then
/// the term alone), among which one that has it is looked for.
const NAMED_TERM_DEPTH: usize = 20;

impl Service {
    /// The passages an answer is made from, and the terms the question names that none of
    /// them has (see `service/named.rs`): for a term missing from `hits`, the first passage
    /// that has it among BM25's hits for the question's words (a short option such as `-l`
    /// is found beside the tool it belongs to), else for the term alone, with the request's
    /// filter and reader, joins them; a term that stays missing is returned.
    async fn named_terms(
        &self,
        col: &Arc<Collection>,
        req: &AskRequest,
        mut hits: Vec<Hit>,
    ) -> Result<(Vec<Hit>, Vec<String>)> {
        if !self.ask.named_terms {
            return Ok((hits, Vec::new()));
        }
        let named = super::named::terms(&req.question);
        if named.is_empty() {
            // Most questions: no passage text is folded for nothing.
            return Ok((hits, Vec::new()));
        }
        let hay = |hits: &[Hit]| {
            super::named::Haystack::new(
                hits.iter()
                    .flat_map(|h| std::iter::once(h.chunk.text.as_str()).chain(h.title.as_deref())),
            )
        };
        let missing: Vec<String> = super::named::missing(&named, &hay(&hits))
            .into_iter()
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            return Ok((hits, Vec::new()));
        }
        let bm25 = |text: &str| {
            self.retrieve(
                col,
                SearchQuery {
                    text: text.to_owned(),
                    mode: SearchMode::Bm25,
                    top_k: NAMED_TERM_DEPTH,
                    filter: req.filter.clone(),
                    fusion: None,
                    reader: req.reader.clone(),
                },
            )
        };
        let by_question = bm25(&req.question).await?.hits;
        let mut unnamed = Vec::new();
        for term in missing {
            // A passage joined for an earlier term may have this one too.
            if hay(&hits).has(&term) {
                continue;
            }
            let first_with = |found: &[Hit], hits: &[Hit]| {
                found
                    .iter()
                    .find(|h| {
                        !hits.iter().any(|k| k.chunk.id() == h.chunk.id())
                            && hay(std::slice::from_ref(h)).has(&term)
                    })
                    .cloned()
            };
            let has = match first_with(&by_question, &hits) {
                Some(h) => Some(h),
                None => first_with(&bm25(&term).await?.hits, &hits),
            };
            match has {
                Some(h) => hits.push(h),
                None => unnamed.push(term),
            }
        }
        Ok((hits, unnamed))
    }

    /// The units of the passages that answer the question (see [`super::quote`]); a follow-up's
    /// previous user turn counts too, at half weight for words.
    async fn quotes(
        &self,
        col: &Collection,
        req: &AskRequest,
        hits: &[Hit],
    ) -> Result<Vec<super::quote::Quote>> {
        let model = self.quote_embedder(col);
        let embedder = &model.embedder;
        let units = passage_units(hits);
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let context = previous_turn(&req.history).unwrap_or_default();
        let asked = format!("{}\n{}", context.trim(), req.question.trim());
        let texts = units.iter().map(|u| embedding_text(&u.text)).collect();
        // Both at query priority: someone is waiting; the batcher runs them in one batch.
        let (q, v) = futures::try_join!(
            embedder.embed(
                vec![embedding_text(asked.trim())],
                Role::Query,
                Priority::Query
            ),
            embedder.embed(texts, Role::Passage, Priority::Query),
        )?;
        let q = q.row(0);
        let cosines: Vec<f32> = v
            .iter()
            .map(|p| p.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect();
        let scored = score(&units, &cosines, &req.question, &context);
        let quotes = select(&units, &scored, min_cosine(&model.name));
        if quotes.is_empty() || !self.ask.judge {
            return Ok(quotes);
        }
        let quoted = quotes
            .iter()
            .map(|q| q.text(hits))
            .collect::<Vec<_>>()
            .join("\n");
        let p = super::judge::answers(
            self.generator()?,
            &req.question,
            &context,
            &quoted,
            req.cache_scope,
        )
        .await?;
        // The question stays out of the log: only the judge's figure.
        tracing::debug!(p_yes = p, "judged");
        Ok(if p >= self.ask.judge_min {
            quotes
        } else {
            Vec::new()
        })
    }
}

/// Characters of the previous user turn that a follow-up's second search carries.
const CONTEXT_CHARS: usize = 600;

/// The first [`CONTEXT_CHARS`] characters of the last user turn of `history`: what a follow-up
/// is searched and quoted with.
fn previous_turn(history: &[ChatMessage]) -> Option<String> {
    let previous = history.iter().rev().find(|m| m.role == "user")?;
    Some(previous.content.chars().take(CONTEXT_CHARS).collect())
}

/// A follow-up's second search: the question after the previous user turn; `None` without one.
fn follow_up_query(question: &str, history: &[ChatMessage]) -> Option<String> {
    let context = previous_turn(history)?;
    Some(format!("{}\n{}", context.trim(), question.trim()))
}

/// Weight of rank r in reciprocal-rank fusion of a follow-up's two searches: 1 / (K + r).
const FOLLOW_UP_RRF_K: f32 = 60.0;

impl Service {
    /// Retrieval for one turn of a conversation. A question with earlier user turns is searched
    /// twice, as it is and after the previous user turn (a follow-up such as "and the backups?"
    /// names nothing the documents can be found by); the two rankings are fused by reciprocal
    /// rank, so a follow-up that stands alone loses nothing.
    pub(crate) async fn retrieve_turn(
        &self,
        col: &Arc<Collection>,
        question: &str,
        history: &[ChatMessage],
        q: SearchQuery,
    ) -> Result<Retrieved> {
        // With a reranker, the first stage returns its candidates and the reranker the
        // `top_k`; its time counts as embedding time.
        let top_k = q.top_k;
        let q = SearchQuery {
            top_k: self.rerank_depth(col, top_k),
            ..q
        };
        let follow_up = follow_up_query(question, history);
        let mut found = match &follow_up {
            None => self.retrieve(col, q).await?,
            Some(text) => self.retrieve_follow_up(col, text, q).await?,
        };
        // A follow-up is reranked by both of its texts, as it was searched.
        let queries: Vec<&str> = std::iter::once(question)
            .chain(follow_up.as_deref())
            .collect();
        let (hits, rerank_ms) = self.rerank(col, &queries, found.hits, top_k).await?;
        found.hits = hits;
        found.embed_ms += rerank_ms;
        Ok(found)
    }

    /// A follow-up searched alone and after the previous user turn (`text`), the two rankings
    /// fused by rank.
    async fn retrieve_follow_up(
        &self,
        col: &Arc<Collection>,
        text: &str,
        q: SearchQuery,
    ) -> Result<Retrieved> {
        let with_context = SearchQuery {
            text: text.to_owned(),
            ..q.clone()
        };
        let alone = self.retrieve(col, q).await?;
        let joined = self.retrieve(col, with_context).await?;
        let top_k = alone.hits.len().max(joined.hits.len());
        let mut fused: Vec<(f32, Hit)> = Vec::new();
        for hits in [alone.hits, joined.hits] {
            for (rank, h) in hits.into_iter().enumerate() {
                let w = 1.0 / (FOLLOW_UP_RRF_K + rank as f32 + 1.0);
                match fused.iter_mut().find(|(_, f)| f.chunk.id() == h.chunk.id()) {
                    Some((score, _)) => *score += w,
                    None => fused.push((w, h)),
                }
            }
        }
        fused.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(Retrieved {
            hits: fused
                .into_iter()
                .take(top_k)
                .map(|(score, h)| Hit { score, ..h })
                .collect(),
            embed_ms: alone.embed_ms + joined.embed_ms,
            search_ms: alone.search_ms + joined.search_ms,
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
    instructions: &str,
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
    let header = format!("{instructions}\n\nPassages:\n\n");
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
        system = format!("{instructions}\n\nPassages:\n\n");
        for (i, h) in passages.iter().enumerate() {
            system.push_str(&passage_block(g, i + 1, h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::cite::tests::hit;

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
    fn settings_for_the_model_ask_for_generation() {
        let cfg = AskConfig::default();
        assert_eq!(cfg.answer_mode(None, false).unwrap(), AnswerMode::Quote);
        assert_eq!(cfg.answer_mode(None, true).unwrap(), AnswerMode::Generate);
        let g = Some(AnswerMode::Generate);
        assert_eq!(cfg.answer_mode(g, false).unwrap(), AnswerMode::Generate);
        assert!(cfg.answer_mode(Some(AnswerMode::Quote), true).is_err());
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
