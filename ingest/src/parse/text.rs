//! Plain text: paragraphs are separated by blank lines.

use super::{Extracted, push_block};

pub(super) fn parse(text: &str) -> Extracted {
    let mut out = Extracted::default();
    for para in split_paragraphs(text) {
        push_block(&mut out.blocks, para, None, &[]);
    }
    out
}

/// Splits on runs of blank lines (lines holding only whitespace or form feeds).
pub(super) fn split_paragraphs(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            // Find the next blank line.
            let mut end = rest.len();
            let mut next = rest.len();
            let mut pos = 0;
            let mut line_start = 0;
            let mut seen_text = false;
            for line in rest.split_inclusive('\n') {
                let blank = line.trim().is_empty();
                if blank && seen_text {
                    end = line_start;
                    next = pos + line.len();
                    break;
                }
                seen_text |= !blank;
                pos += line.len();
                line_start = pos;
            }
            let para = &rest[..end];
            rest = &rest[next..];
            if !para.trim().is_empty() {
                return Some(para);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_split_on_blank_lines() {
        let doc = parse("First line\nstill first.\n\n  \n\nSecond.\r\n\r\nThird\n");
        let texts: Vec<_> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, ["First line\nstill first.", "Second.", "Third"]);
    }
}
