//! The exact terms a question names (an option, a path, a function, an identifier from code, a
//! file name, a mixed-case or all-capitals name) and whether the passages found contain them.
//!
//! A question about `--defrag` whose passages never write `--defrag` is one they do not answer,
//! however close their subject: the not-covered questions of the labelled set are such near
//! misses (a tool's manual is there, the option is not), and no cosine tells them apart from
//! covered ones (BENCHMARKS.md, "Named terms"). So before an answer is made, every term the
//! question names must be in a passage; one that is not is looked for by BM25 (a passage
//! that has it joins the others), and one that no passage the reader may read has makes the
//! answer say so, naming it, without quoting or calling the model.
//!
//! Ordinary words are not named terms, nor are short capitals (`RAM`, `CV`, `API`: common
//! words that passages write out or inflect), numbers, or abbreviations (`e.g`).

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::text::{contains, words};

/// Most named terms taken from one question (a question is at most a few thousand characters;
/// past a handful the question is a paste, not a question about names).
pub(crate) const MAX_TERMS: usize = 4;

/// Characters around a token that are punctuation, not part of it.
const AROUND: &[char] = &[
    '.', ',', ';', ':', '!', '?', '"', '\'', '(', ')', '[', ']', '{', '}', '“', '”', '‘', '’', '«',
    '»', '„', '¿', '¡', '<', '>', '`', '*',
];

/// An option: `-l`, `-9`, `--defrag`, `-printf`, `--output=FILE` (up to the `=`).
static OPTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^--?[A-Za-z0-9][A-Za-z0-9_-]*$").expect("a valid pattern"));

/// A mixed-case name (`URLPattern`, `setTimeout`, `BahnCard`, `GPLv2`), not a plural of
/// capitals (`APIs`).
static MIXED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[a-z][A-Z]|[A-Z]{2,}[a-z]").expect("a valid pattern"));
static PLURAL_CAPS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Z]{2,}s$").expect("a valid pattern"));

/// A file name or a versioned name: `pyproject.toml`, `Node.js`, `Apache-2.0`.
static FILE_OR_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z]{2,}\.[A-Za-z0-9]{2,}|[A-Za-z]-[0-9]").expect("a valid pattern")
});

/// Unicode dashes and minus signs (PDF manuals write options with them) as `-`.
fn plain_dashes(s: &str) -> String {
    s.nfkc()
        .map(|c| match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe63}' | '\u{ff0d}' => '-',
            c => c,
        })
        .collect()
}

/// The terms `question` names, in order, each once, at most [`MAX_TERMS`].
pub(crate) fn terms(question: &str) -> Vec<String> {
    let question = plain_dashes(question);
    let mut out: Vec<String> = Vec::new();
    for token in question.split_whitespace() {
        let token = token
            .trim_start_matches(AROUND)
            .trim_end_matches(|c| AROUND.contains(&c) && c != ')');
        // "zlib's", "qemu-img's": the name without the possessive.
        let trimmed = token
            .strip_suffix("'s")
            .or_else(|| token.strip_suffix("’s"))
            .unwrap_or(token);
        let (core, call) = match trimmed.strip_suffix("()") {
            Some(core) => (core, true),
            None => (trimmed.trim_end_matches(AROUND), false),
        };
        // `--output=FILE`: the option's name is what a passage writes.
        let core = match core.split_once('=') {
            Some((name, _)) if OPTION.is_match(name) => name,
            _ => core,
        };
        if is_named(core, call) && !out.iter().any(|t| t == core) {
            out.push(core.to_owned());
            if out.len() == MAX_TERMS {
                break;
            }
        }
    }
    out
}

/// Whether a token (punctuation around it removed; `call` when it was written `name()`) is a
/// name that a passage about it would write as it is.
fn is_named(t: &str, call: bool) -> bool {
    if t.chars().count() < 2
        || t.chars()
            .all(|c| c.is_ascii_digit() || ".,%/:-".contains(c))
    {
        return false;
    }
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    if OPTION.is_match(t) {
        return true;
    }
    // A path: /dev/kvm, ~/.config, ./configure (not "try/catch" or "and/or").
    let path = ["/", "~/", "./"].iter().any(|p| {
        t.strip_prefix(p)
            .and_then(|r| r.chars().next())
            .is_some_and(word_char)
    });
    // A call (adler32()), or code: an inner underscore or a `::`.
    let code = (call && t.chars().all(|c| word_char(c) || c == '.'))
        || t.trim_matches('_').contains('_')
        || t.contains("::");
    let mixed = MIXED.is_match(t) && !PLURAL_CAPS.is_match(t);
    // Four capitals or more, nothing in lower case: CVSS, MIME, EXTERNALLY-MANAGED (not RAM).
    let capitals = t.chars().filter(char::is_ascii_uppercase).count() >= 4
        && !t.chars().any(char::is_lowercase);
    path || code || mixed || capitals || FILE_OR_VERSION.is_match(t)
}

/// The passages' text in the form [`missing`] compares: dashes plain, then as words (case,
/// accents and punctuation folded) and lower case for options.
pub(crate) struct Haystack {
    words: Vec<String>,
    lower: String,
}

impl Haystack {
    pub(crate) fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut joined = String::new();
        for t in texts {
            joined.push_str(t);
            joined.push('\n');
        }
        let plain = plain_dashes(&joined);
        Self {
            words: words(&plain),
            lower: plain.to_lowercase(),
        }
    }

    /// Whether the text contains `term`: an option as written, bounded (`-l` is not in
    /// `-ls` or `file-l`); any other as its run of words (`/dev/kvm` is `dev kvm`,
    /// `EXTERNALLY-MANAGED` is `externally managed`, in any case).
    pub(crate) fn has(&self, term: &str) -> bool {
        let term = plain_dashes(term);
        if OPTION.is_match(&term) {
            let needle = term.to_lowercase();
            return self.lower.match_indices(&needle).any(|(at, _)| {
                let before = self.lower[..at].chars().next_back();
                let after = self.lower[at + needle.len()..].chars().next();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
                    && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
        }
        contains(&self.words, &words(&term))
    }
}

/// The terms of `terms` that `hay` does not contain.
pub(crate) fn missing<'t>(terms: &'t [String], hay: &Haystack) -> Vec<&'t str> {
    terms
        .iter()
        .filter(|t| !hay.has(t))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_names_options_paths_code_and_names_not_words() {
        let t = |q: &str| terms(q);
        assert_eq!(
            t("what does qemu-img's --defrag option do and when should I run it?"),
            ["--defrag"]
        );
        assert_eq!(
            t("why is gzip -l wrong for files larger than 4 GB?"),
            ["-l"]
        );
        assert_eq!(
            t("which group gives a user access to /dev/kvm on Debian?"),
            ["/dev/kvm"]
        );
        assert_eq!(
            t("how do I compute an Adler-32 checksum with zlib's adler32() function?"),
            ["Adler-32", "adler32"]
        );
        assert_eq!(
            t("which libtasn1 version introduced asn1_decode_simple_ber?"),
            ["asn1_decode_simple_ber"]
        );
        assert_eq!(
            t("Does Debian's python3 mark the interpreter as EXTERNALLY-MANAGED?"),
            ["EXTERNALLY-MANAGED"]
        );
        assert_eq!(
            t("how do I use URLPattern in Node.js (setTimeout too)?"),
            ["URLPattern", "Node.js", "setTimeout"]
        );
        assert_eq!(
            t("packaging with only a pyproject.toml"),
            ["pyproject.toml"]
        );
        assert_eq!(t("write the result with --output=FILE"), ["--output"]);
        // Unicode minus signs as PDF manuals and some keyboards write them.
        assert_eq!(t("what does find \u{2212}prune do?"), ["-prune"]);
        // Words, short capitals, numbers, abbreviations, word pairs: not names.
        for q in [
            "my machine has very little RAM - can it use less?",
            "Que fait-on des CV des candidats ?",
            "libbzip2 high-level API: is the stream embedded?",
            "clear a Node timeout, e.g. in a map",
            "check a URL without a try/catch",
            "on which day of the month is salary paid?",
            "how much is 1,000.50 - 20 %?",
            "Which APIs are stable?",
        ] {
            assert_eq!(t(q), Vec::<String>::new(), "{q}");
        }
        // At most MAX_TERMS, each once.
        assert_eq!(t("-a -b -a -c -d -e").len(), MAX_TERMS);
        assert_eq!(t("-a -b -a"), ["-a", "-b"]);
    }

    #[test]
    fn a_passage_has_a_term_as_written_or_as_its_words() {
        let hay = Haystack::new([
            "Options: \u{2212}l, \u{2212}\u{2212}list lists the archive; see -ls too.",
            "Access to /dev/kvm is given to the group kvm. The file is Externally Managed.",
        ]);
        assert!(hay.has("-l"));
        assert!(hay.has("--list"));
        assert!(hay.has("-ls"));
        assert!(!hay.has("-s"));
        assert!(!hay.has("--defrag"));
        assert!(hay.has("/dev/kvm"));
        assert!(hay.has("EXTERNALLY-MANAGED"));
        assert!(!hay.has("URLPattern"));
        let named = terms("does -l or --defrag work on /dev/kvm?");
        assert_eq!(missing(&named, &hay), ["--defrag"]);
    }
}
