//! Word-level text matching shared by citation checking and evaluation: folding (case,
//! accents, number formats and small number words), runs of words, and the terms a passage
//! must contain to support a sentence.

use unicode_normalization::UnicodeNormalization;

use super::cite::is_marker;

/// English number words that answers write for small numbers.
const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// Text as a list of comparable words: lower case, accents removed, split at everything that
/// is not a letter or digit, numbers in one form (`1,000` and `1 000` → `1000`, `2,5` → `2.5`,
/// `5.0` → `5`, `five` → `5`); digits glued to letters stay in their word (`qcow2`).
pub(crate) fn words(text: &str) -> Vec<String> {
    let folded: Vec<char> = text
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let alnum_end = |from: usize| {
        let mut j = from;
        while j < folded.len() && folded[j].is_alphanumeric() {
            j += 1;
        }
        j
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < folded.len() {
        if !folded[i].is_alphanumeric() {
            i += 1;
            continue;
        }
        if folded[i].is_ascii_digit() {
            let (number, next) = number_at(&folded, i);
            if next < folded.len() && folded[next].is_alphabetic() {
                // "64bit", "2nd": one word as written.
                let j = alnum_end(i);
                out.push(folded[i..j].iter().collect());
                i = j;
            } else {
                out.push(number);
                i = next;
            }
            continue;
        }
        // Letters, and digits glued to them ("qcow2", "sha256"), make one word.
        let j = alnum_end(i);
        let w: String = folded[i..j].iter().collect();
        match NUMBER_WORDS.iter().position(|n| *n == w) {
            Some(n) => out.push(n.to_string()),
            None => out.push(w),
        }
        i = j;
    }
    out
}

/// Reads the number starting at `i`: digit groups joined by `,`, `.`, `'`, or a (thin,
/// no-break) space. Returns its canonical text and the index after it.
fn number_at(s: &[char], i: usize) -> (String, usize) {
    let is_sep = |c: char| matches!(c, ',' | '.' | '\'' | ' ' | '\u{a0}' | '\u{202f}');
    let mut groups: Vec<String> = Vec::new();
    let mut seps: Vec<char> = Vec::new();
    let mut j = i;
    loop {
        let start = j;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        groups.push(s[start..j].iter().collect());
        if j + 1 < s.len() && is_sep(s[j]) && s[j + 1].is_ascii_digit() {
            // A space only joins thousands groups: "5 000", not "5 10".
            let group_len = s[j + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if s[j].is_whitespace() && group_len != 3 {
                break;
            }
            seps.push(s[j]);
            j += 1;
        } else {
            break;
        }
    }
    let same = seps.iter().all(|c| Some(c) == seps.first());
    let grouped = groups[0].len() <= 3 && groups[1..].iter().all(|g| g.len() == 3);
    let (int, frac) = if seps.is_empty() {
        (groups[0].clone(), String::new())
    } else if same && grouped && (seps.len() > 1 || seps[0] != '.') {
        // 1,000 / 1.000.000 / 10'000 / 5 000: one separator throughout, groups of three.
        (groups.concat(), String::new())
    } else if seps.len() == 1 {
        // 2.5 / 2,5: a decimal.
        (groups[0].clone(), groups[1].clone())
    } else {
        // 1,000.5 / 1.000,5: thousands groups, then a decimal mark.
        let last = groups.len() - 1;
        (groups[..last].concat(), groups[last].clone())
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    // "5.0" is 5; "4.10" stays 4.10 (section and version numbers).
    let text = if frac.chars().all(|c| c == '0') {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    (text, j)
}

/// Whether `needle` occurs as a run of consecutive words in `hay`.
pub(crate) fn contains(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A sentence without its `[n]` markers.
pub(crate) fn strip_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let Some(len) = rest[open..].find(']') else {
            break;
        };
        let inner = &rest[open + 1..open + len];
        out.push_str(&rest[..open]);
        if !is_marker(inner) {
            out.push_str(&rest[open..=open + len]);
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

/// The terms of a sentence that a supporting passage must contain: text in backquotes, and
/// tokens with digits or with code punctuation inside or in front (`-O`, `--force-share`,
/// `/dev/zero`, `asn1_write_value`, `fileURLToPath()`, `url.parse`).
pub(crate) fn checkable_terms(sentence: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = sentence;
    let mut plain = String::new();
    while let Some(open) = rest.find('`') {
        plain.push_str(&rest[..open]);
        let Some(len) = rest[open + 1..].find('`') else {
            rest = &rest[open + 1..];
            continue;
        };
        let code = rest[open + 1..open + 1 + len].trim();
        if !words(code).is_empty() {
            out.push(code.to_owned());
        }
        rest = &rest[open + 2 + len..];
    }
    plain.push_str(rest);
    for token in plain.split_whitespace() {
        let t = token.trim_matches(|c: char| {
            matches!(
                c,
                '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '(' | ')' | '“' | '”' | '«' | '»'
            )
        });
        let t = t.strip_suffix("()").unwrap_or(t);
        if t.is_empty() || words(t).is_empty() {
            continue;
        }
        let has_digit = t.chars().any(|c| c.is_ascii_digit());
        let inner = t
            .char_indices()
            .any(|(i, c)| i > 0 && i + c.len_utf8() < t.len() && "_./=:".contains(c));
        let leading = t.starts_with(['-', '/', '$', '~']);
        // "e.g", "i.e": abbreviations, not identifiers.
        let abbreviation = !has_digit && !leading && words(t).iter().all(|w| w.len() == 1);
        if (has_digit || inner || leading) && !abbreviation && !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    out
}

/// Phrases with which an answer says the documents do not cover the question (contractions
/// are expanded before matching: "don't" is "do not").
const ABSTAIN: [&str; 22] = [
    "do not say",
    "does not say",
    "do not mention",
    "does not mention",
    "not mentioned",
    "do not contain",
    "does not contain",
    "no information",
    "not covered",
    "do not cover",
    "does not cover",
    "could not find",
    "cannot find",
    "do not provide",
    "does not provide",
    "not specified",
    "no mention",
    "nicht erwähnt",
    "keine angaben",
    "ne mentionnent pas",
    "ne précisent pas",
    "ne disent pas",
];

/// Whether `text` says that the documents do not cover the question.
pub(crate) fn declines(text: &str) -> bool {
    let text = text
        .to_lowercase()
        .replace('’', "'")
        .replace("can't", "cannot")
        .replace("n't", " not");
    ABSTAIN.iter().any(|p| text.contains(p))
}
