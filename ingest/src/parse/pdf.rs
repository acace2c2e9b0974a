//! PDF via `pdf-extract`, page by page, so one unreadable page costs that page, not the
//! document. Panics inside the parser are caught per page; loops and memory blow-ups are the
//! business of the extraction process's limits.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pdf_extract::PlainTextOutput;

use super::text::split_paragraphs;
use super::{Extracted, push_block};

pub(super) fn parse(bytes: &[u8]) -> Result<Extracted, String> {
    let mut doc = catch_unwind(AssertUnwindSafe(|| lopdf::Document::load_mem(bytes)))
        .map_err(|p| {
            format!(
                "the PDF parser crashed reading the file structure: {}",
                panic_message(&p)
            )
        })?
        .map_err(|e| format!("not a readable PDF: {e}"))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err("encrypted PDF: a password is required to read it".into());
    }
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    if pages.is_empty() {
        return Err("the PDF has no pages".into());
    }
    let mut out = Extracted {
        title: title(&doc),
        pages: u32::try_from(pages.len()).ok(),
        ..Extracted::default()
    };
    let mut failed = 0usize;
    for &page in &pages {
        let mut text = String::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut sink = PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&doc, &mut sink, page)
        }));
        match result {
            Ok(Ok(())) => {
                for para in split_paragraphs(&text) {
                    push_block(&mut out.blocks, &join_lines(para), Some(page), &[]);
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                out.warnings.push(format!("page {page}: {e}"));
            }
            Err(p) => {
                failed += 1;
                out.warnings.push(format!(
                    "page {page}: the PDF parser crashed: {}",
                    panic_message(&p)
                ));
            }
        }
    }
    if failed == pages.len() {
        let first = out.warnings.first().cloned().unwrap_or_default();
        return Err(format!(
            "no page of the PDF could be read ({} pages; first problem: {first})",
            pages.len()
        ));
    }
    Ok(out)
}

/// Joins the lines of a paragraph, undoing end-of-line hyphenation ("exam-\nple" → "example").
fn join_lines(para: &str) -> String {
    let mut out = String::with_capacity(para.len());
    for line in para.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if out.ends_with('-') && line.starts_with(|c: char| c.is_lowercase()) {
            out.pop();
        } else if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

fn title(doc: &lopdf::Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?.as_reference().ok()?;
    let dict = doc.get_dictionary(info).ok()?;
    let t = lopdf::decode_text_string(dict.get(b"Title").ok()?).ok()?;
    let t = t.trim().to_owned();
    (!t.is_empty()).then_some(t)
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_wrapped_lines_and_hyphenation() {
        assert_eq!(
            join_lines("An exam-\nple of\n  wrapped text"),
            "An example of wrapped text"
        );
        assert_eq!(join_lines("Well-\nKnown"), "Well- Known");
    }

    #[test]
    fn junk_and_truncated_input_get_reasons() {
        let err = parse(b"%PDF-1.4\nthis is not really a pdf").unwrap_err();
        assert!(err.contains("PDF"), "{err}");
    }
}
