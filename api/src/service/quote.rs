//! Quoted answers: the sentences of the retrieved passages that answer the question, quoted
//! word for word with their passage number and span. Every statement is then the documents'
//! own, so a user who acts on it acts on what the documents say; the generator is not called.
//!
//! A passage is cut into units (sentences, list items, with a heading joined to what follows
//! it); each unit is scored against the question by meaning (cosine of the embedder's vectors)
//! and by words (the question's content words it holds, weighted by how rare they are among
//! the units). The best unit, and the few that score nearly as well, are the answer, each with
//! its neighbours. When even the best unit is far from the question, the documents do not say.

use std::collections::HashMap;

use hearth_index::Hit;

use super::verify::content_tokens;

/// What a quoted answer says when no passage comes close to the question.
pub const NOT_FOUND: &str = "The documents do not say: no passage found answers this question.";

/// Most units quoted in one answer.
const MAX_QUOTES: usize = 3;

/// Most characters of all quotes together (a unit is never cut; the first always goes in).
const MAX_QUOTED_CHARS: usize = 900;

/// A unit shorter than this (a heading, a page number) is joined to the one after it.
const MIN_UNIT_CHARS: usize = 40;

/// A unit longer than this is cut at its sentence ends where it has them.
const MAX_UNIT_CHARS: usize = 400;

/// Weight of meaning (cosine) against words in a unit's score. Tuned on the shipped labelled
/// set (testdata/eval, answer correctness at the same length of quotes): 0.3 gave 0.585,
/// 0.5 0.615, 0.7 0.63, 0.9 0.595.
const DENSE_WEIGHT: f32 = 0.7;

/// Added to the score of the units of passage n, divided by n: retrieval's ranking of the
/// passages breaks near ties.
const RANK_PRIOR: f32 = 0.05;

/// A unit scoring at least this share of the best is quoted too (0.85: 0.63; 0.7: 0.675).
const NEAR_BEST: f32 = 0.7;

/// Units before and after a chosen unit that its quote includes (0/0: 0.45, 0/1: 0.555,
/// 1/1: 0.59, 0/2: 0.605, 1/2: 0.615, at a weight of 0.5).
const BEFORE: usize = 1;
const AFTER: usize = 2;

/// Weight of the words of a follow-up's previous turn against the question's own (0.5: 0.553
/// of the follow-ups correct, 0.25: 0.605, 0.1: 0.526, 1: 0.5).
const CONTEXT_WEIGHT: f32 = 0.25;

/// Least cosine between question and best unit for the question to count as answered. The
/// cosine and the share of the question's weighted words separate answered from not-covered
/// questions poorly (ROC areas 0.65 and 0.58 on the labelled set). Measured: cosine >= 0.3
/// alone declines 2 of 33 not-covered questions and 8 of 200 answerable ones (correctness
/// 0.70); adding a share >= 0.05 declines 6 and 23 (0.655); >= 0.1, 8 and 36 (0.645). Quotes
/// state only what the documents say, so a question declined wrongly costs more than an
/// unrelated quote.
const MIN_COSINE: f32 = 0.3;

/// [`MIN_COSINE`] for EmbeddingGemma-300M, whose cosines run higher: on an EmbeddingGemma
/// collection of the labelled set, 0.30 declines 2 of 33 not-covered questions, 0.40 declines 5
/// and loses no right answer (correctness 0.780 either way), 0.44 declines 7 and loses 5.
const MIN_COSINE_GEMMA: f32 = 0.4;

/// The least cosine of the best unit for the embedding model named `model` (as
/// `engine.embedders` names it) to count a question as answered.
pub(crate) fn min_cosine(model: &str) -> f32 {
    match model {
        "embeddinggemma-300m" => MIN_COSINE_GEMMA,
        _ => MIN_COSINE,
    }
}

/// One quoted stretch of a passage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quote {
    /// The passage number, from 1.
    pub n: usize,
    /// `[start, end)` in characters of the passage text.
    pub span: [usize; 2],
}

impl Quote {
    /// The quoted text, whitespace collapsed, from the passages `hits` it was chosen from.
    pub(crate) fn text(&self, hits: &[Hit]) -> String {
        let body: Vec<char> = hits[self.n - 1]
            .chunk
            .text
            .chars()
            .skip(self.span[0])
            .take(self.span[1] - self.span[0])
            .collect();
        collapse(&body)
    }
}

/// A unit of a passage, as candidates for quoting.
#[derive(Clone, Debug)]
pub(crate) struct Unit {
    /// The passage number, from 1.
    pub n: usize,
    /// `[start, end)` in characters of the passage text.
    pub span: [usize; 2],
    /// The unit's text, whitespace collapsed.
    pub text: String,
}

/// The units of the passages, in passage order.
pub(crate) fn passage_units(hits: &[Hit]) -> Vec<Unit> {
    let mut out = Vec::new();
    for (i, h) in hits.iter().enumerate() {
        let chars: Vec<char> = h.chunk.text.chars().collect();
        for span in units(&chars) {
            out.push(Unit {
                n: i + 1,
                span,
                text: collapse(&chars[span[0]..span[1]]),
            });
        }
    }
    out
}

/// Text with every run of whitespace made one space.
pub(crate) fn collapse(chars: &[char]) -> String {
    let mut out = String::with_capacity(chars.len());
    for &c in chars {
        if c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// Spans of the units of a text: paragraphs (blank lines) cut at bullets and at sentence ends,
/// short pieces joined to the next one.
fn units(chars: &[char]) -> Vec<[usize; 2]> {
    let mut pieces: Vec<[usize; 2]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let push = |pieces: &mut Vec<[usize; 2]>, a: usize, b: usize| {
        let (mut a, mut b) = (a, b);
        while a < b && chars[a].is_whitespace() {
            a += 1;
        }
        while b > a && chars[b - 1].is_whitespace() {
            b -= 1;
        }
        if a < b {
            pieces.push([a, b]);
        }
    };
    while i < chars.len() {
        let c = chars[i];
        // A blank line ends a paragraph.
        if c == '\n' && blank_line_after(chars, i) {
            push(&mut pieces, start, i);
            start = i + 1;
        } else if matches!(c, '•' | '◦' | '▪' | '‣') {
            // A bullet starts an item.
            push(&mut pieces, start, i);
            start = i + 1;
        } else if matches!(c, '.' | '!' | '?') && sentence_end(chars, i) {
            push(&mut pieces, start, i + 1);
            start = i + 1;
        }
        i += 1;
    }
    push(&mut pieces, start, chars.len());
    // Short pieces go with a neighbour: a short sentence with the piece before it, a heading
    // or a number with the piece after it (a last one with the piece before).
    let mut out: Vec<[usize; 2]> = Vec::new();
    let mut pending: Option<usize> = None;
    for p in pieces {
        let from = pending.take().unwrap_or(p[0]);
        if p[1] - from >= MIN_UNIT_CHARS {
            out.push([from, p[1]]);
        } else if matches!(chars[p[1] - 1], '.' | '!' | '?')
            && let Some(last) = out.last_mut()
        {
            last[1] = p[1];
        } else {
            pending = Some(from);
        }
    }
    if let Some(from) = pending {
        let end = trimmed_end(chars);
        match out.last_mut() {
            Some(last) => last[1] = end,
            None => out.push([from, end]),
        }
    }
    out.retain(|u| u[1] > u[0]);
    // Very long units are cut again where a sentence ends with a line break after it.
    out.into_iter().flat_map(|u| split_long(chars, u)).collect()
}

/// Whether the line after the line break at `i` holds only whitespace.
fn blank_line_after(chars: &[char], i: usize) -> bool {
    chars[i + 1..]
        .iter()
        .find(|c| **c == '\n' || !c.is_whitespace())
        .is_some_and(|c| *c == '\n')
}

fn trimmed_end(chars: &[char]) -> usize {
    let mut b = chars.len();
    while b > 0 && chars[b - 1].is_whitespace() {
        b -= 1;
    }
    b
}

/// Whether the full stop at `i` ends a sentence: whitespace follows, then an upper-case letter,
/// a digit, a quote or a bracket, and the word before it is not an abbreviation.
fn sentence_end(chars: &[char], i: usize) -> bool {
    if !chars.get(i + 1).is_some_and(|c| c.is_whitespace()) {
        return false;
    }
    let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
    if !next.is_some_and(|c| c.is_uppercase() || c.is_ascii_digit() || "\"'“‘([".contains(*c)) {
        return false;
    }
    let word: String = chars[..i]
        .iter()
        .rev()
        .take_while(|c| !c.is_whitespace())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .to_lowercase();
    let abbreviation = matches!(
        word.as_str(),
        "e.g" | "i.e" | "etc" | "vs" | "cf" | "fig" | "no" | "sec" | "z.b" | "bzw" | "ca"
    );
    // An initial ("J. Smith").
    let initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    !abbreviation && !initial
}

/// A unit over [`MAX_UNIT_CHARS`] cut at line breaks that follow a sentence end or a colon.
fn split_long(chars: &[char], u: [usize; 2]) -> Vec<[usize; 2]> {
    if u[1] - u[0] <= MAX_UNIT_CHARS {
        return vec![u];
    }
    let mut out = Vec::new();
    let mut start = u[0];
    for i in u[0]..u[1] {
        if chars[i] == '\n'
            && i > start
            && i - start >= MIN_UNIT_CHARS
            && matches!(chars[i - 1], '.' | ':' | ';')
        {
            out.push([start, i]);
            start = i + 1;
        }
    }
    out.push([start, u[1]]);
    out
}

/// How well each unit answers a question: `cosines` are question-unit cosines, in unit order;
/// `question` the question's text (words), `context` earlier words that count less (a
/// follow-up's previous turn).
pub(crate) struct Scored {
    /// Per unit: (words share, cosine, score).
    pub scores: Vec<(f32, f32, f32)>,
}

/// Scores the units against the question.
pub(crate) fn score(units: &[Unit], cosines: &[f32], question: &str, context: &str) -> Scored {
    let unit_terms: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            let mut t: Vec<String> = content_tokens(&u.text)
                .into_iter()
                .map(|(w, _)| w)
                .collect();
            t.sort();
            t.dedup();
            t
        })
        .collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for t in &unit_terms {
        for w in t {
            *df.entry(w.as_str()).or_default() += 1;
        }
    }
    let n = units.len() as f32;
    let idf = |w: &str| ((n + 1.0) / (df.get(w).copied().unwrap_or(0) as f32 + 0.5)).ln();
    let mut wanted: Vec<(String, f32)> = Vec::new();
    for (text, weight) in [(question, 1.0f32), (context, CONTEXT_WEIGHT)] {
        for (w, _) in content_tokens(text) {
            if !wanted.iter().any(|(x, _)| *x == w) {
                let i = idf(&w);
                wanted.push((w, weight * i));
            }
        }
    }
    let total: f32 = wanted.iter().map(|(_, w)| w).sum();
    let scores: Vec<(f32, f32, f32)> = unit_terms
        .iter()
        .zip(cosines)
        .zip(units)
        .map(|((terms, &cos), u)| {
            let held: f32 = wanted
                .iter()
                .filter(|(w, _)| terms.binary_search(w).is_ok())
                .map(|(_, x)| x)
                .sum();
            let share = if total > 0.0 { held / total } else { 0.0 };
            (
                share,
                cos,
                DENSE_WEIGHT * cos + (1.0 - DENSE_WEIGHT) * share + RANK_PRIOR / u.n as f32,
            )
        })
        .collect();
    Scored { scores }
}

/// The units to quote, best first, each with the units around it in its passage (the answer
/// to a question often follows the sentence that names its subject); empty when even the best
/// unit is too far from the question: its cosine is under `floor` ([`min_cosine`]).
pub(crate) fn select(units: &[Unit], scored: &Scored, floor: f32) -> Vec<Quote> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| scored.scores[b].2.total_cmp(&scored.scores[a].2));
    let Some(&best) = order.first() else {
        return Vec::new();
    };
    let (share, cos, top) = scored.scores[best];
    tracing::debug!(share, cos, score = top, "best unit");
    if cos < floor {
        return Vec::new();
    }
    // Windows of units [first, last], in order of their centre's score.
    let mut windows: Vec<[usize; 2]> = Vec::new();
    let mut chars = 0;
    for &i in &order {
        if windows.len() >= MAX_QUOTES || scored.scores[i].2 < NEAR_BEST * top {
            break;
        }
        if windows.iter().any(|w| (w[0]..=w[1]).contains(&i)) {
            continue;
        }
        let same = |j: usize| units[j].n == units[i].n;
        let mut first = i;
        while first > 0 && i - first < BEFORE && same(first - 1) {
            first -= 1;
        }
        let mut last = i;
        while last + 1 < units.len() && last - i < AFTER && same(last + 1) {
            last += 1;
        }
        let len: usize = (first..=last).map(|j| units[j].text.chars().count()).sum();
        if !windows.is_empty() && chars + len > MAX_QUOTED_CHARS {
            continue;
        }
        chars += len;
        // A window that touches one already taken joins it.
        match windows
            .iter_mut()
            .find(|w| units[w[0]].n == units[i].n && first <= w[1] + 1 && last + 1 >= w[0])
        {
            Some(w) => *w = [w[0].min(first), w[1].max(last)],
            None => windows.push([first, last]),
        }
    }
    windows
        .into_iter()
        .map(|[first, last]| Quote {
            n: units[first].n,
            span: [units[first].span[0], units[last].span[1]],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        let chars: Vec<char> = s.chars().collect();
        units(&chars)
            .into_iter()
            .map(|u| collapse(&chars[u[0]..u[1]]))
            .collect()
    }

    #[test]
    fn units_are_sentences_and_items_with_headings_joined() {
        let t = "2.4 Library Notes\n\nThe header file of this library is libtasn1.h. The main \
            type used in it is asn1_node, e.g. for definitions. • On-line ASN.1 structure \
            management that needs no code generation. • No limits for INTEGER and ENUMERATED values.";
        assert_eq!(
            texts(t),
            [
                "2.4 Library Notes The header file of this library is libtasn1.h.",
                "The main type used in it is asn1_node, e.g. for definitions.",
                "On-line ASN.1 structure management that needs no code generation.",
                "No limits for INTEGER and ENUMERATED values.",
            ]
        );
    }

    const GZIP: &str = "When the data is read back from tape, gunzip detects that there is extra \
        trailing garbage after the compressed data and emits a warning by default. You can use \
        the --quiet option to suppress the warning. Other options are described below.\n\n\
        Compression levels run from 1, the fastest, to 9, the best compression.\n\n\
        The --best option gives worse compression than the default level in some rare cases.";

    /// Cosines as if the embedder found unit `best` closest to the question.
    fn cosines(n: usize, best: usize) -> Vec<f32> {
        (0..n).map(|i| if i == best { 0.7 } else { 0.35 }).collect()
    }

    #[test]
    fn the_answer_after_the_matching_sentence_is_quoted_with_it() {
        let hits = [crate::service::cite::tests::hit(GZIP)];
        let units = passage_units(&hits);
        assert_eq!(units.len(), 4, "{units:?}");
        let q = "gunzip warns about trailing garbage after the data read from tape";
        let quotes = select(
            &units,
            &score(&units, &cosines(units.len(), 0), q, ""),
            MIN_COSINE,
        );
        assert_eq!(quotes.len(), 1, "{quotes:?}");
        let quoted: String = GZIP
            .chars()
            .skip(quotes[0].span[0])
            .take(quotes[0].span[1] - quotes[0].span[0])
            .collect();
        assert!(quoted.starts_with("When the data is read back"), "{quoted}");
        assert!(quoted.contains("--quiet option to suppress"), "{quoted}");
        assert!(!quoted.contains("--best"), "{quoted}");
    }

    #[test]
    fn an_unrelated_question_gets_no_quote() {
        let hits = [crate::service::cite::tests::hit(GZIP)];
        let units = passage_units(&hits);
        let cos = vec![0.1; units.len()];
        let q = "which licence covers the font files shipped with the package";
        assert!(select(&units, &score(&units, &cos, q, ""), MIN_COSINE).is_empty());
        // Between the two models' floors: quoted by MiniLM's, declined by EmbeddingGemma's.
        let cos = vec![0.35; units.len()];
        let scored = score(&units, &cos, q, "");
        assert!(!select(&units, &scored, min_cosine("all-MiniLM-L6-v2")).is_empty());
        assert!(select(&units, &scored, min_cosine("embeddinggemma-300m")).is_empty());
    }
}
