//! Text normalisation: Unicode NFC, control characters removed, whitespace collapsed. The
//! normalised blocks are joined with blank lines into the document text that chunk spans index.

use unicode_normalization::UnicodeNormalization;

use crate::parse::Extracted;

/// The separator placed between blocks in the document text.
pub(crate) const BLOCK_SEP: &str = "\n\n";

/// A document's normalised text and where each block lies in it.
#[derive(Debug, Default)]
pub(crate) struct NormalizedDoc {
    pub text: String,
    pub blocks: Vec<NormBlock>,
}

/// A block's place in [`NormalizedDoc::text`] (byte offsets) and its provenance.
#[derive(Debug, Clone)]
pub(crate) struct NormBlock {
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    pub heading: Vec<String>,
}

/// Normalises one string: NFC, controls dropped, runs of whitespace become one space, trimmed.
pub(crate) fn normalize_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.nfc() {
        if c.is_whitespace() {
            pending_space = true;
        } else if !c.is_control() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        }
    }
    out
}

pub(crate) fn normalize(ex: &Extracted) -> NormalizedDoc {
    let mut doc = NormalizedDoc {
        text: String::with_capacity(ex.text_bytes() + ex.blocks.len() * 2),
        blocks: Vec::with_capacity(ex.blocks.len()),
    };
    for b in &ex.blocks {
        let t = normalize_text(&b.text);
        if t.is_empty() {
            continue;
        }
        if !doc.text.is_empty() {
            doc.text.push_str(BLOCK_SEP);
        }
        let start = doc.text.len();
        doc.text.push_str(&t);
        doc.blocks.push(NormBlock {
            start,
            end: doc.text.len(),
            page: b.page,
            heading: b.heading.iter().map(|h| normalize_text(h)).collect(),
        });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_whitespace_and_controls() {
        // "e" + combining acute becomes one precomposed character.
        assert_eq!(
            normalize_text("  cafe\u{301}\t\n au\u{0}lait  "),
            "café aulait"
        );
        // NFC keeps compatibility characters such as ligatures for display.
        assert_eq!(normalize_text("ﬁrst"), "ﬁrst");
    }
}
