//! Evaluation on labelled questions: how well a collection answers, measured the way a user
//! judges it. A question set is JSON Lines, one question per line:
//!
//! ```text
//! {"id": "q1", "question": "How do I convert an image to qcow2?", "relevant": ["qemu-img.html"], "facts": ["qemu-img convert", ["-O qcow2", "-O=qcow2"]]}
//! {"id": "q2", "question": "Does it support VHDX compression?", "not_covered": true}
//! {"id": "q3", "question": "and the other way round?", "history": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}], "relevant": ["qemu-img.html"], "facts": ["-O raw"], "standalone": "q7"}
//! ```
//!
//! For each question the report gives:
//! - **retrieval** (questions with `relevant`): recall@k, reciprocal rank and nDCG@10 over the
//!   ranking of distinct source files (by file name) of the top hits;
//! - **correctness** (questions with `facts`): every fact is in the answer, matched on words
//!   with case, punctuation, accents and number formats ignored (`1,000` = `1000`, `five` = `5`);
//!   a fact given as a list is satisfied by any one of its alternatives;
//! - **citation support**: each sentence that cites passage `[n]` is checked against it: the
//!   passage must come from a relevant file (when the question names them) and contain every
//!   checkable term of the sentence (numbers, identifiers such as `-O`, `--force-share`,
//!   `/dev/zero`, `asn1_write_value`, text in backquotes), or, for a sentence without such
//!   terms, share a content word with it. Citation precision is the share of supported ones;
//! - **abstention** (questions with `not_covered`): whether the answer says the documents do
//!   not cover the question instead of answering;
//! - TTFT (retrieval plus time to the first token), latency and token counts.
//!
//! Follow-up questions (with `history`) are scored like the others and also summarised apart,
//! with the standalone questions they name beside them, so the cost of a conversation shows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use hearth_engine::{ChatMessage, SamplingParams};
use hearth_index::{Reader, SearchMode};
use serde::{Deserialize, Serialize};

use super::answer::{Answer, AnswerMode, SearchHit};
use super::ask::AskRequest;
use super::cite::{markers, sentences};
use super::search::SearchQuery;
use super::text::{checkable_terms, contains, declines, strip_markers, words};
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// Most questions one evaluation may hold.
pub const MAX_EVAL_QUESTIONS: usize = 10_000;

/// Hits retrieved to rank sources for the retrieval figures (nDCG is taken at 10).
const RETRIEVAL_DEPTH: usize = 10;

/// A required fact: one string, or alternatives of which any one will do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Fact {
    /// This text must appear.
    One(String),
    /// One of these must appear.
    AnyOf(Vec<String>),
}

impl Fact {
    fn alternatives(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::AnyOf(v) => v,
        }
    }

    /// The fact as a report shows it (alternatives joined by " | ").
    fn label(&self) -> String {
        self.alternatives().join(" | ")
    }
}

/// One labelled question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalQuestion {
    /// A name for the question (default: `line N`).
    #[serde(default)]
    pub id: String,
    /// The question, in the user's words.
    pub question: String,
    /// File names (last path component of the source) that answer it.
    #[serde(default)]
    pub relevant: Vec<String>,
    /// What a correct answer must contain.
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// True when the documents do not answer it: the right answer says so.
    #[serde(default)]
    pub not_covered: bool,
    /// Earlier turns, oldest first: the question is a follow-up.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<ChatMessage>,
    /// For a follow-up: the id of the question that asks the same thing on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standalone: Option<String>,
    /// Free text (where the answer is); not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// Reads a question set from JSON Lines. Blank lines are skipped; every error names its line.
pub fn parse_questions(text: &str) -> Result<Vec<EvalQuestion>> {
    let bad = |line: usize, msg: String| ServiceError::InvalidInput(format!("line {line}: {msg}"));
    let mut out: Vec<EvalQuestion> = Vec::new();
    let mut ids = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        if out.len() == MAX_EVAL_QUESTIONS {
            return Err(bad(
                line,
                format!("more than {MAX_EVAL_QUESTIONS} questions"),
            ));
        }
        let mut q: EvalQuestion =
            serde_json::from_str(raw).map_err(|e| bad(line, e.to_string()))?;
        if q.id.is_empty() {
            q.id = format!("line {line}");
        }
        if q.question.trim().is_empty() {
            return Err(bad(line, "the question is empty".into()));
        }
        if q.not_covered && !q.facts.is_empty() {
            return Err(bad(line, "a not_covered question cannot have facts".into()));
        }
        if !q.not_covered && q.facts.is_empty() && q.relevant.is_empty() {
            return Err(bad(
                line,
                "give facts and/or relevant sources, or \"not_covered\": true".into(),
            ));
        }
        for f in &q.facts {
            let alts = f.alternatives();
            if alts.is_empty() || alts.iter().any(|a| words(a).is_empty()) {
                return Err(bad(
                    line,
                    format!(
                        "fact {:?} has nothing to match (letters or digits)",
                        f.label()
                    ),
                ));
            }
        }
        if let Some(m) = q
            .history
            .iter()
            .find(|m| !matches!(m.role.as_str(), "user" | "assistant"))
        {
            return Err(bad(
                line,
                format!(
                    "history roles are \"user\" or \"assistant\", got {:?}",
                    m.role
                ),
            ));
        }
        if let Some(s) = &q.standalone
            && !ids.contains(s)
        {
            return Err(bad(
                line,
                format!("standalone {s:?} is not the id of an earlier question"),
            ));
        }
        if !ids.insert(q.id.clone()) {
            return Err(bad(line, format!("id {:?} is used twice", q.id)));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(ServiceError::InvalidInput(
            "the question set has no questions".into(),
        ));
    }
    Ok(out)
}

/// How to run an evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The cut-off of recall (recall@k).
    pub k: usize,
    /// Passages an answer may use (default `ask.top_k`).
    pub top_k: Option<usize>,
    /// Retrieval mode.
    pub mode: SearchMode,
    /// Most tokens per answer (default `ask.max_tokens`).
    pub max_tokens: Option<usize>,
    /// Answer strictly, without unsupported sentences (default `ask.strict`).
    pub strict: Option<bool>,
    /// Quote or generate (default `ask.answer`).
    pub answer: Option<AnswerMode>,
    /// Whose cached prompt prefixes the answers may share (see [`AskRequest::cache_scope`]).
    pub cache_scope: u64,
    /// Who the questions are asked as (the default reads only documents open to everyone).
    pub reader: Reader,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            k: 5,
            top_k: None,
            mode: SearchMode::Hybrid,
            max_tokens: None,
            strict: None,
            answer: None,
            cache_scope: 0,
            reader: Reader::default(),
        }
    }
}

/// Retrieval figures of one question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetrievalScore {
    /// Share of the relevant files among the first k distinct files.
    pub recall_at_k: f64,
    /// 1 / rank of the first relevant file (0 when none is in the first 10).
    pub reciprocal_rank: f64,
    /// nDCG@10 with binary relevance.
    pub ndcg_at_10: f64,
    /// The distinct files of the first hits, best first.
    pub ranked: Vec<String>,
}

/// A checked citation: a sentence of the answer and the passage it cites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CitationCheck {
    /// The passage number.
    pub n: usize,
    /// The sentence (without its markers).
    pub sentence: String,
    /// The passage's file name.
    pub source: String,
    /// Whether the passage supports the sentence.
    pub supported: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The outcome of one question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuestionResult {
    /// The question's id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Whether it carried history.
    pub follow_up: bool,
    /// Whether the documents do not cover it.
    pub not_covered: bool,
    /// Retrieval figures (questions with relevant files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalScore>,
    /// The answer given (empty on error).
    pub answer: String,
    /// Whether the answer says the documents do not cover the question.
    pub abstained: bool,
    /// Every fact present (questions with facts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// Facts the answer lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_facts: Vec<String>,
    /// The answer's cited sentences, checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<CitationCheck>,
    /// Retrieval plus time to the first token, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// From the request to the finished answer, in milliseconds.
    pub latency_ms: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Answer tokens.
    pub completion_tokens: usize,
    /// Why the question could not be answered (counts as wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A mean over the questions it applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mean {
    /// The mean (0 when `of` is 0).
    pub value: f64,
    /// How many values it is the mean of.
    pub of: usize,
}

impl Mean {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let (mut sum, mut n) = (0.0, 0usize);
        for v in values {
            sum += v;
            n += 1;
        }
        Self {
            value: if n == 0 { 0.0 } else { sum / n as f64 },
            of: n,
        }
    }

    fn share(flags: impl IntoIterator<Item = bool>) -> Self {
        Self::of(flags.into_iter().map(|b| if b { 1.0 } else { 0.0 }))
    }
}

/// Median and 95th percentile, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p95: at(0.95),
        }
    }
}

/// The totals of an evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalSummary {
    /// Questions run.
    pub questions: usize,
    /// The recall cut-off.
    pub k: usize,
    /// Mean recall@k over questions with relevant files.
    pub recall_at_k: Mean,
    /// Mean reciprocal rank.
    pub mrr: Mean,
    /// Mean nDCG@10.
    pub ndcg_at_10: Mean,
    /// Share of questions with facts answered with all of them.
    pub correctness: Mean,
    /// Correctness of the questions without history.
    pub correctness_standalone: Mean,
    /// Correctness of the follow-ups.
    pub correctness_follow_up: Mean,
    /// Correctness of the standalone questions that follow-ups name, for comparison.
    pub correctness_of_named_standalone: Mean,
    /// Share of checked citations whose passage supports the sentence.
    pub citation_precision: Mean,
    /// Share of not-covered questions where the answer said so.
    pub abstention_accuracy: Mean,
    /// Covered questions (with facts) where the answer wrongly said the documents do not say.
    pub false_abstentions: usize,
    /// Questions that failed with an error.
    pub errors: usize,
    /// Retrieval plus time to the first token (answers the model wrote).
    pub ttft_ms: Percentiles,
    /// Whole answers.
    pub latency_ms: Percentiles,
    /// Mean prompt tokens.
    pub prompt_tokens: Mean,
    /// Mean answer tokens.
    pub completion_tokens: Mean,
}

/// What an evaluation found: every question, and the totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalReport {
    /// The totals.
    pub summary: EvalSummary,
    /// One entry per question, in the order given.
    pub questions: Vec<QuestionResult>,
}

impl Service {
    /// Runs every question against the collection (one at a time, so the timings are those of
    /// an unloaded node) and scores the answers. `progress` sees each result as it is made.
    /// Fails up front when no generator is loaded; a question that fails is reported with its
    /// error and counts as wrong.
    pub async fn eval(
        &self,
        col: &Arc<Collection>,
        questions: &[EvalQuestion],
        opts: &EvalOptions,
        mut progress: impl FnMut(&QuestionResult) + Send,
    ) -> Result<EvalReport> {
        let for_model = opts.answer.is_none() && opts.max_tokens.is_some();
        if self.ask.answer_mode(opts.answer, for_model)? == AnswerMode::Generate {
            self.generator()?;
        }
        if !(1..=RETRIEVAL_DEPTH).contains(&opts.k) {
            return Err(ServiceError::InvalidInput(format!(
                "k must be between 1 and {RETRIEVAL_DEPTH}, got {}",
                opts.k
            )));
        }
        let sampling = opts.max_tokens.map(|m| SamplingParams {
            max_tokens: m,
            repetition_penalty: self.ask.repetition_penalty,
            ..SamplingParams::default()
        });
        let mut results = Vec::with_capacity(questions.len());
        for q in questions {
            let r = self.eval_one(col, q, opts, sampling.clone()).await;
            progress(&r);
            results.push(r);
        }
        Ok(EvalReport {
            summary: summarise(questions, &results, opts.k),
            questions: results,
        })
    }

    async fn eval_one(
        &self,
        col: &Arc<Collection>,
        q: &EvalQuestion,
        opts: &EvalOptions,
        sampling: Option<SamplingParams>,
    ) -> QuestionResult {
        let mut r = QuestionResult {
            id: q.id.clone(),
            question: q.question.clone(),
            follow_up: !q.history.is_empty(),
            not_covered: q.not_covered,
            retrieval: None,
            answer: String::new(),
            abstained: false,
            correct: (!q.facts.is_empty()).then_some(false),
            missing_facts: Vec::new(),
            citations: Vec::new(),
            ttft_ms: None,
            latency_ms: 0.0,
            prompt_tokens: 0,
            completion_tokens: 0,
            error: None,
        };
        if !q.relevant.is_empty() {
            // Retrieved as an answer is: a follow-up with its history.
            let found = self
                .retrieve_turn(
                    col,
                    &q.question,
                    &q.history,
                    SearchQuery {
                        text: q.question.clone(),
                        mode: opts.mode,
                        top_k: RETRIEVAL_DEPTH,
                        filter: None,
                        fusion: None,
                        reader: opts.reader.clone(),
                    },
                )
                .await;
            match found {
                Ok(found) => {
                    let hits = SearchHit::ranked(&found.hits);
                    r.retrieval = Some(retrieval_score(&hits, &q.relevant, opts.k));
                }
                Err(e) => {
                    r.error = Some(e.to_string());
                    return r;
                }
            }
        }
        let started = Instant::now();
        let answer = match self
            .ask(
                col,
                AskRequest {
                    question: q.question.clone(),
                    history: q.history.clone(),
                    mode: opts.mode,
                    top_k: opts.top_k,
                    // Quotes take no sampling settings.
                    sampling: sampling.filter(|_| opts.answer != Some(AnswerMode::Quote)),
                    strict: opts.strict,
                    answer: opts.answer,
                    cache_scope: opts.cache_scope,
                    reader: opts.reader.clone(),
                    ..AskRequest::default()
                },
            )
            .await
        {
            Ok(stream) => stream.finish().await,
            Err(e) => Err(e),
        };
        r.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                r.error = Some(e.to_string());
                return r;
            }
        };
        score_answer(&mut r, q, &answer);
        r
    }
}

/// Fills in what the answer earns: facts, abstention, citations, timings.
fn score_answer(r: &mut QuestionResult, q: &EvalQuestion, a: &Answer) {
    r.answer = a.answer.clone();
    r.abstained = abstains(a);
    // A quoted answer arrives whole: its first text comes when its quotes are chosen.
    r.ttft_ms = a
        .timings
        .ttft_ms
        .or(a.timings.quote_ms)
        .map(|t| t + a.timings.retrieval_ms);
    r.prompt_tokens = a.usage.prompt_tokens;
    r.completion_tokens = a.usage.completion_tokens;
    if !q.facts.is_empty() {
        let said = words(&a.answer);
        r.missing_facts = q
            .facts
            .iter()
            .filter(|f| {
                !f.alternatives()
                    .iter()
                    .any(|alt| contains(&said, &words(alt)))
            })
            .map(Fact::label)
            .collect();
        r.correct = Some(r.missing_facts.is_empty());
    }
    r.citations = check_citations(&a.answer, &a.passages, &q.relevant);
}

/// The ranking of distinct file names among the hits.
fn ranked_files(hits: &[SearchHit]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hits {
        let name = h.file_name();
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

fn retrieval_score(hits: &[SearchHit], relevant: &[String], k: usize) -> RetrievalScore {
    let ranked = ranked_files(hits);
    let is_relevant = |name: &String| relevant.iter().any(|r| r == name);
    let found = relevant
        .iter()
        .filter(|r| ranked.iter().take(k).any(|d| d == *r))
        .count();
    let reciprocal_rank = ranked
        .iter()
        .take(RETRIEVAL_DEPTH)
        .position(is_relevant)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64);
    let gain = |i: usize| 1.0 / (i as f64 + 2.0).log2();
    let dcg: f64 = ranked
        .iter()
        .take(RETRIEVAL_DEPTH)
        .enumerate()
        .filter(|(_, d)| is_relevant(d))
        .map(|(i, _)| gain(i))
        .sum();
    let ideal: f64 = (0..relevant.len().min(RETRIEVAL_DEPTH)).map(gain).sum();
    RetrievalScore {
        recall_at_k: found as f64 / relevant.len() as f64,
        reciprocal_rank,
        ndcg_at_10: if ideal > 0.0 { dcg / ideal } else { 0.0 },
        ranked,
    }
}

/// Whether an answer declines: nothing relevant was retrieved, or the model said the documents
/// do not cover the question.
pub(crate) fn abstains(a: &Answer) -> bool {
    if !a.grounded {
        return true;
    }
    declines(&a.answer)
}

/// Checks every cited sentence of an answer against the passages it cites.
fn check_citations(
    answer: &str,
    passages: &[SearchHit],
    relevant: &[String],
) -> Vec<CitationCheck> {
    let mut out = Vec::new();
    // Each cited passage is split into words once, however many sentences cite it.
    let mut passage_words: Vec<Option<Vec<String>>> = vec![None; passages.len()];
    for sentence in sentences(answer) {
        let cited = markers(sentence, passages.len());
        if cited.is_empty() {
            continue;
        }
        let bare = strip_markers(sentence);
        for n in cited {
            let p = &passages[n - 1];
            let words_of_p = passage_words[n - 1].get_or_insert_with(|| words(&p.text));
            let (supported, reason) = supports(&bare, p, words_of_p, relevant);
            out.push(CitationCheck {
                n,
                sentence: bare.trim().to_owned(),
                source: p.file_name().to_owned(),
                supported,
                reason,
            });
        }
    }
    out
}

/// Words too common to show that a sentence draws on a passage.
const COMMON: [&str; 40] = [
    "the", "and", "that", "this", "with", "from", "have", "has", "are", "was", "were", "for",
    "not", "you", "your", "can", "will", "which", "their", "there", "they", "them", "into", "also",
    "when", "what", "where", "should", "would", "could", "must", "may", "use", "used", "using",
    "its", "been", "than", "then", "other",
];

/// Whether passage `p` (split into `passage` words) supports `sentence`: it comes from a relevant file (when the question
/// names them) and contains the sentence's checkable terms, or, with none, a content word.
fn supports(
    sentence: &str,
    p: &SearchHit,
    passage: &[String],
    relevant: &[String],
) -> (bool, Option<String>) {
    if !relevant.is_empty() && !relevant.iter().any(|r| r == p.file_name()) {
        return (
            false,
            Some(format!("{} is not a relevant source", p.file_name())),
        );
    }
    let terms = checkable_terms(sentence);
    let with_terms = !terms.is_empty();
    let missing: Vec<String> = terms
        .into_iter()
        .filter(|t| !contains(passage, &words(t)))
        .collect();
    if !missing.is_empty() {
        return (
            false,
            Some(format!("the passage lacks {}", missing.join(", "))),
        );
    }
    if !with_terms {
        let shared = words(sentence)
            .into_iter()
            .filter(|w| w.chars().count() >= 4 && !COMMON.contains(&w.as_str()))
            .any(|w| passage.contains(&w));
        if !shared {
            return (
                false,
                Some("no word of the sentence is in the passage".into()),
            );
        }
    }
    (true, None)
}

/// The totals over the questions and their results (same order).
fn summarise(questions: &[EvalQuestion], results: &[QuestionResult], k: usize) -> EvalSummary {
    let scored = || results.iter().filter_map(|r| r.retrieval.as_ref());
    let correct_where = |keep: &dyn Fn(&QuestionResult) -> bool| {
        Mean::share(results.iter().filter(|r| keep(r)).filter_map(|r| r.correct))
    };
    let named: HashSet<&str> = questions
        .iter()
        .filter_map(|q| q.standalone.as_deref())
        .collect();
    let answered = || results.iter().filter(|r| r.error.is_none());
    EvalSummary {
        questions: results.len(),
        k,
        recall_at_k: Mean::of(scored().map(|s| s.recall_at_k)),
        mrr: Mean::of(scored().map(|s| s.reciprocal_rank)),
        ndcg_at_10: Mean::of(scored().map(|s| s.ndcg_at_10)),
        correctness: correct_where(&|_| true),
        correctness_standalone: correct_where(&|r| !r.follow_up),
        correctness_follow_up: correct_where(&|r| r.follow_up),
        correctness_of_named_standalone: correct_where(&|r| named.contains(r.id.as_str())),
        citation_precision: Mean::share(
            results
                .iter()
                .filter(|r| !r.not_covered)
                .flat_map(|r| r.citations.iter().map(|c| c.supported)),
        ),
        abstention_accuracy: Mean::share(
            results
                .iter()
                .filter(|r| r.not_covered)
                .map(|r| r.abstained && r.error.is_none()),
        ),
        false_abstentions: results
            .iter()
            .filter(|r| r.correct.is_some() && r.abstained)
            .count(),
        errors: results.iter().filter(|r| r.error.is_some()).count(),
        ttft_ms: Percentiles::of(answered().filter_map(|r| r.ttft_ms).collect()),
        latency_ms: Percentiles::of(answered().map(|r| r.latency_ms).collect()),
        prompt_tokens: Mean::of(answered().map(|r| r.prompt_tokens as f64)),
        completion_tokens: Mean::of(answered().map(|r| r.completion_tokens as f64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::cite::tests::hit;

    fn w(s: &str) -> Vec<String> {
        words(s)
    }

    fn found(fact: &str, answer: &str) -> bool {
        contains(&w(answer), &w(fact))
    }

    #[test]
    fn facts_match_across_case_punctuation_accents_and_number_formats() {
        assert!(found(
            "-O qcow2",
            "Run `qemu-img convert -O QCOW2 in.raw out.qcow2`."
        ));
        assert!(found(
            "qemu-img convert",
            "use qemu-img's convert... no: qemu-img convert"
        ));
        assert!(found("1000", "up to 1,000 entries"));
        assert!(found("1,000", "up to 1000 entries"));
        assert!(found("5000", "a limit of 5 000 bytes"));
        assert!(found("1000000", "1.000.000 Zeilen"));
        assert!(found("2.5", "2,5 Prozent"));
        assert!(found("5", "within five working days"));
        assert!(found("five", "within 5 working days"));
        assert!(found("30", "30.0 EUR"));
        assert!(found("Genève", "the office in Geneve"));
        assert!(found("sha256", "a SHA256 digest"));
        assert!(found("72 hours", "72-hours embargo"));
        // Whole words and whole numbers only.
        assert!(!found("5", "15 days"));
        assert!(!found("5", "5.5 days"));
        assert!(!found("qcow", "qcow2"));
        assert!(!found("sha", "sha256"));
        assert!(!found("1000", "1,0000"));
        assert!(!found("-O qcow2", "qcow2 -O"));
    }

    #[test]
    fn number_forms() {
        assert_eq!(
            w("1,000.5 and 1.000,5 and 007 and 3. and 30.00"),
            [
                "1000.5", "and", "1000.5", "and", "7", "and", "3", "and", "30"
            ]
        );
        assert_eq!(
            w("sections 4.1 and 4.10"),
            ["sections", "4.1", "and", "4.10"]
        );
        assert_eq!(w("a 64bit build"), ["a", "64bit", "build"]);
        assert_eq!(w("v2 of x86_64"), ["v2", "of", "x86", "64"]);
    }

    #[test]
    fn broken_lines_are_named() {
        let ok = r#"{"question": "q?", "facts": ["a"]}"#;
        let err = |text: &str| parse_questions(text).unwrap_err().to_string();
        assert!(err(&format!("{ok}\n\n{{\"question\": ")).contains("line 3"));
        assert!(
            err(&format!(
                "{ok}\n{{\"question\": \"x\", \"facts\": [\"a\"], \"typo\": 1}}"
            ))
            .contains("line 2")
        );
        assert!(err(r#"{"question": "x"}"#).contains("not_covered"));
        assert!(
            err(r#"{"question": "x", "not_covered": true, "facts": ["a"]}"#).contains("line 1")
        );
        assert!(err(r#"{"question": "x", "facts": ["..."]}"#).contains("nothing to match"));
        assert!(err(r#"{"question": "x", "facts": ["a"], "standalone": "b"}"#).contains("earlier"));
        assert!(
            err(concat!(
                r#"{"id": "a", "question": "x", "facts": ["a"]}"#,
                "\n",
                r#"{"id": "a", "question": "y", "facts": ["a"]}"#
            ))
            .contains("twice")
        );
        assert!(err(r#"{"question": "x", "facts": ["a"], "history": [{"role": "system", "content": "x"}]}"#).contains("roles"));
        assert!(err("\n\n").contains("no questions"));
        let qs = parse_questions(&format!(
            "{ok}\n{{\"question\": \"y\", \"facts\": [[\"b\", \"c\"]]}}"
        ))
        .unwrap();
        assert_eq!(qs[0].id, "line 1");
        assert_eq!(qs[1].facts, [Fact::AnyOf(vec!["b".into(), "c".into()])]);
    }

    fn shown(source: &str, text: &str) -> SearchHit {
        let mut h = hit(text);
        h.source = format!("docs/{source}");
        SearchHit::ranked(&[h]).remove(0)
    }

    #[test]
    fn retrieval_figures_rank_distinct_files() {
        let hits = [
            shown("a.pdf", "x"),
            shown("a.pdf", "y"),
            shown("b.html", "z"),
            shown("c.md", "w"),
        ];
        let s = retrieval_score(&hits, &["b.html".into()], 1);
        assert_eq!(s.ranked, ["a.pdf", "b.html", "c.md"]);
        assert_eq!(s.recall_at_k, 0.0);
        assert_eq!(s.reciprocal_rank, 0.5);
        assert!((s.ndcg_at_10 - 1.0 / 3f64.log2()).abs() < 1e-12);
        let s = retrieval_score(&hits, &["c.md".into(), "z.txt".into()], 5);
        assert_eq!(s.recall_at_k, 0.5);
        assert!((s.reciprocal_rank - 1.0 / 3.0).abs() < 1e-12);
        let none = retrieval_score(&hits, &["z.txt".into()], 5);
        assert_eq!(
            (none.recall_at_k, none.reciprocal_rank, none.ndcg_at_10),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn citations_need_the_terms_the_sentence_states() {
        let p = shown(
            "qemu-img.html",
            "convert [-c] [-f fmt] [-O output_fmt] filename output_filename: convert the disk \
             image filename to disk image output_filename using format output_fmt (qcow2).",
        );
        let passages = vec![p];
        let relevant = vec!["qemu-img.html".to_owned()];
        let ok = check_citations(
            "Use qemu-img convert with -O qcow2 [1].",
            &passages,
            &relevant,
        );
        assert_eq!(ok.len(), 1);
        assert!(ok[0].supported, "{ok:?}");
        // The answer the issue quotes: invented paths with a citation.
        let bad = check_citations(
            "Run `sudo qemu-img > /dev/zero` [1]. Then `cd /dev/zero` creates a new device named zero [1].",
            &passages,
            &relevant,
        );
        assert_eq!(bad.len(), 2);
        assert!(bad.iter().all(|c| !c.supported), "{bad:?}");
        assert!(bad[0].reason.as_deref().unwrap().contains("/dev/zero"));
        // Right words, wrong file.
        let elsewhere = check_citations("Use -O qcow2 [1].", &passages, &["other.pdf".into()]);
        assert!(!elsewhere[0].supported);
        // A sentence with nothing checkable needs a shared content word.
        let vague = check_citations("Bananas are yellow [1].", &passages, &relevant);
        assert!(!vague[0].supported);
        let fine = check_citations("It converts the disk image [1].", &passages, &relevant);
        assert!(fine[0].supported, "{fine:?}");
        // Unmarked sentences are not checked.
        assert!(check_citations("No markers here.", &passages, &relevant).is_empty());
    }

    #[test]
    fn terms_worth_checking() {
        assert_eq!(
            checkable_terms(
                "Pass `-U` or --force-share to qemu-img (see url.parse() and 90 days)."
            ),
            ["-U", "--force-share", "url.parse", "90"]
        );
        assert!(checkable_terms("It keeps the files safe, e.g. read-only ones.").is_empty());
        assert_eq!(strip_markers("Yes [1, 2], see [x] [3]."), "Yes , see [x] .");
    }

    fn answer(text: &str, grounded: bool) -> Answer {
        Answer {
            answer: text.into(),
            grounded,
            mode: AnswerMode::Generate,
            citations: Vec::new(),
            sentences: Vec::new(),
            strict: false,
            passages: Vec::new(),
            finish_reason: None,
            usage: Default::default(),
            timings: Default::default(),
            search_query: None,
            conversation_id: None,
        }
    }

    #[test]
    fn abstentions_are_recognised() {
        assert!(abstains(&answer("anything", false)));
        assert!(abstains(&answer("The documents do not say which.", true)));
        assert!(abstains(&answer("The passages don’t mention VHDX.", true)));
        assert!(abstains(&answer("Die Dokumente: nicht erwähnt.", true)));
        assert!(abstains(&answer(
            "I can't find that in the documents.",
            true
        )));
        assert!(abstains(&answer(
            "Les documents ne disent pas combien.",
            true
        )));
        assert!(!abstains(&answer("Use qemu-img convert [1].", true)));
    }

    fn result(
        id: &str,
        follow_up: bool,
        correct: Option<bool>,
        not_covered: bool,
        abstained: bool,
    ) -> QuestionResult {
        QuestionResult {
            id: id.into(),
            question: String::new(),
            follow_up,
            not_covered,
            retrieval: None,
            answer: String::new(),
            abstained,
            correct,
            missing_facts: Vec::new(),
            citations: Vec::new(),
            ttft_ms: Some(10.0),
            latency_ms: 100.0,
            prompt_tokens: 10,
            completion_tokens: 5,
            error: None,
        }
    }

    #[test]
    fn totals() {
        let q = |id: &str, standalone: Option<&str>| EvalQuestion {
            id: id.into(),
            question: "q".into(),
            relevant: Vec::new(),
            facts: vec![Fact::One("x".into())],
            not_covered: false,
            history: Vec::new(),
            standalone: standalone.map(str::to_owned),
            notes: None,
        };
        let questions = [q("a", None), q("b", None), q("c", Some("a")), q("d", None)];
        let results = [
            result("a", false, Some(true), false, false),
            result("b", false, Some(false), false, true),
            result("c", true, Some(false), false, false),
            result("d", false, None, true, true),
        ];
        let s = summarise(&questions, &results, 5);
        assert_eq!(
            s.correctness,
            Mean {
                value: 1.0 / 3.0,
                of: 3
            }
        );
        assert_eq!(s.correctness_standalone, Mean { value: 0.5, of: 2 });
        assert_eq!(s.correctness_follow_up, Mean { value: 0.0, of: 1 });
        assert_eq!(
            s.correctness_of_named_standalone,
            Mean { value: 1.0, of: 1 }
        );
        assert_eq!(s.abstention_accuracy, Mean { value: 1.0, of: 1 });
        assert_eq!(s.false_abstentions, 1);
        assert_eq!(
            s.latency_ms,
            Percentiles {
                p50: 100.0,
                p95: 100.0
            }
        );
    }
}
