//! Markdown (CommonMark + tables): paragraphs, list items, quotes, code blocks and table rows
//! become blocks; ATX and setext headings maintain the heading path.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::{Extracted, push_block};

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "events without text are ignored"
)]
pub(super) fn parse(text: &str) -> Extracted {
    let mut out = Extracted::default();
    let mut path: Vec<(HeadingLevel, String)> = Vec::new();
    let mut buf = String::new();
    let mut in_heading: Option<HeadingLevel> = None;
    let headings = |path: &[(HeadingLevel, String)]| -> Vec<String> {
        path.iter().map(|(_, h)| h.clone()).collect()
    };

    for event in Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                push_block(&mut out.blocks, &buf, None, &headings(&path));
                buf.clear();
                in_heading = Some(level);
            }
            Event::End(TagEnd::Heading(_)) => {
                let level = in_heading.take().unwrap_or(HeadingLevel::H1);
                let title = buf.trim().to_owned();
                buf.clear();
                path.retain(|(l, _)| *l < level);
                if !title.is_empty() {
                    if out.title.is_none() && level == HeadingLevel::H1 {
                        out.title = Some(title.clone());
                    }
                    path.push((level, title.clone()));
                    push_block(&mut out.blocks, &title, None, &headings(&path));
                }
            }
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => {
                buf.push_str(&t)
            }
            Event::SoftBreak => buf.push(' '),
            Event::HardBreak => buf.push('\n'),
            Event::Start(Tag::Item | Tag::TableCell) if !buf.is_empty() => buf.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableRow
                | TagEnd::TableHead
                | TagEnd::BlockQuote(_),
            ) => {
                push_block(&mut out.blocks, &buf, None, &headings(&path));
                buf.clear();
            }
            Event::End(TagEnd::TableCell) => buf.push_str(" |"),
            _ => {}
        }
    }
    push_block(&mut out.blocks, &buf, None, &headings(&path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_form_a_path_and_blocks_follow_structure() {
        let doc = parse(
            "# Guide\n\nIntro text\nwrapped.\n\n## Install\n\n- one\n- two `code`\n\n### Debian\n\napt\n\n## Use\n\n```\nrun it\n```\n",
        );
        assert_eq!(doc.title.as_deref(), Some("Guide"));
        let got: Vec<(&str, Vec<&str>)> = doc
            .blocks
            .iter()
            .map(|b| {
                (
                    b.text.as_str(),
                    b.heading.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("Guide", vec!["Guide"]),
                ("Intro text wrapped.", vec!["Guide"]),
                ("Install", vec!["Guide", "Install"]),
                ("one", vec!["Guide", "Install"]),
                ("two code", vec!["Guide", "Install"]),
                ("Debian", vec!["Guide", "Install", "Debian"]),
                ("apt", vec!["Guide", "Install", "Debian"]),
                ("Use", vec!["Guide", "Use"]),
                ("run it", vec!["Guide", "Use"]),
            ]
        );
    }
}
