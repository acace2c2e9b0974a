//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).
//! Each runs one stage on arbitrary input exactly as ingestion does, and returns nothing: a
//! panic, a hang or an unbounded allocation is the finding.

use hearth_index::{DocId, Redaction, RedactionPattern};

use crate::chunk::{ChunkParams, TokenCounter, chunk};
use crate::normalize::normalize;
use crate::parse::{Block, Extracted, parse};
use crate::redact::{KINDS, Redactor};
use crate::sniff::{DocKind, sniff};

/// Sniffs, then parses `bytes` as `kind`, then normalises and
/// chunks what came out.
///
/// As in the extraction process, a panic inside a parser is caught and becomes the document's
/// failure (the process isolation also bounds its time and memory); normalisation and
/// chunking run in the service itself, so a panic there is a finding.
pub fn parse_bytes(kind: DocKind, bytes: &[u8]) {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = sniff(bytes, "upload");
    let parsed = std::panic::catch_unwind(|| parse(kind, bytes));
    if let Ok(Ok(ex)) = parsed {
        chunk_extracted(&ex);
    }
}

/// Builds blocks from `text` (paragraphs; lines starting with `#` become headings), then
/// normalises and chunks them with a small token budget.
pub fn chunk_text(text: &str) {
    let mut ex = Extracted::default();
    let mut heading = Vec::new();
    for (i, para) in text.split("\n\n").enumerate() {
        if let Some(h) = para.strip_prefix('#') {
            heading = vec![h.to_owned()];
        }
        ex.blocks.push(Block {
            text: para.to_owned(),
            page: (i % 3 == 0).then_some(u32::try_from(i).unwrap_or(u32::MAX)),
            heading: heading.clone(),
        });
    }
    chunk_extracted(&ex);
}

/// Redacts `text` with every built-in kind and one user pattern.
pub fn redact_text(text: &str) {
    let spec = Redaction {
        kinds: KINDS.iter().map(|k| (*k).to_owned()).collect(),
        patterns: vec![RedactionPattern {
            name: "id".into(),
            regex: "[A-Z]{3}-[0-9]{4,8}".into(),
        }],
    };
    // invariant: the rules above are valid.
    let r = Redactor::new(&spec).expect("valid rules").expect("rules");
    let (out, n) = r.redact(text);
    assert!(n > 0 || out == text, "text changed without a redaction");
}

/// A tokenizer stand-in: a token ends at every whitespace and after every 4 other characters,
/// always on a character boundary.
struct Chars;

impl TokenCounter for Chars {
    fn token_ends(&self, text: &str) -> Result<Vec<usize>, String> {
        let mut ends = Vec::new();
        let mut run = 0;
        for (i, ch) in text.char_indices() {
            run += 1;
            if ch.is_whitespace() || run == 4 {
                ends.push(i + ch.len_utf8());
                run = 0;
            }
        }
        if run > 0 {
            ends.push(text.len());
        }
        Ok(ends)
    }

    fn special_tokens(&self) -> usize {
        2
    }
}

fn chunk_extracted(ex: &Extracted) {
    let doc = normalize(ex);
    let params = ChunkParams {
        max_tokens: 24,
        overlap: 4,
    };
    if let Ok(chunks) = chunk(DocId::of_bytes(doc.text.as_bytes()), &doc, &Chars, params) {
        let chars = doc.text.chars().count() as u64;
        for c in &chunks {
            assert!(
                c.span_start <= c.span_end && c.span_end <= chars,
                "span out of the text"
            );
        }
    }
}
