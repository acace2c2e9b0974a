//! Format parsers: bytes in, text blocks out. These run inside the isolated extraction process
//! (see `extract.rs`), so a parser that panics, loops or exhausts memory takes down only that
//! process, never the service.

mod html;
mod markdown;
mod pdf;
mod text;

pub(crate) use pdf::panic_message;

use serde::{Deserialize, Serialize};

use crate::sniff::DocKind;

/// A unit of text as the document presents it: a paragraph, list item, heading, table cell or
/// code block. Blocks are never merged by parsers; the chunker decides how to group them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The raw text of the block (normalised later).
    pub text: String,
    /// The 1-based PDF page the block is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Enclosing headings, outermost first. A heading block includes itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heading: Vec<String>,
}

/// What a parser got out of a document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// The document's title, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Text blocks in reading order.
    pub blocks: Vec<Block>,
    /// Pages in the document (PDF only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    /// Non-fatal problems, e.g. a PDF page that could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Extracted {
    /// Total bytes of text in the blocks.
    pub fn text_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.text.len()).sum()
    }
}

/// Runs the parser for `kind`. The error is a human-readable reason.
pub fn parse(kind: DocKind, bytes: &[u8]) -> Result<Extracted, String> {
    match kind {
        DocKind::Pdf => pdf::parse(bytes),
        DocKind::Html => Ok(html::parse(&decode(bytes)?)),
        DocKind::Markdown => Ok(markdown::parse(&decode(bytes)?)),
        DocKind::Text => Ok(text::parse(&decode(bytes)?)),
    }
}

fn decode(bytes: &[u8]) -> Result<String, String> {
    crate::sniff::decode_text(bytes)
        .ok_or_else(|| "the text holds NUL bytes; it is not a text document".to_owned())
}

/// Pushes a block if it has any visible text.
fn push_block(blocks: &mut Vec<Block>, text: &str, page: Option<u32>, heading: &[String]) {
    let t = text.trim();
    if !t.is_empty() {
        blocks.push(Block {
            text: t.to_owned(),
            page,
            heading: heading.to_vec(),
        });
    }
}
