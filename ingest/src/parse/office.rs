//! Word (DOCX), PowerPoint (PPTX) and OpenDocument text and presentations (ODT, ODP): the XML
//! parts of the ZIP package are walked once; paragraphs become blocks, headings (from paragraph
//! styles and outline levels) form the heading path, tables become rows that name their
//! columns, slides become pages with their speaker notes.
//!
//! Element names are matched with the prefixes every producer writes (`w:`, `a:`, `p:`,
//! `text:`, `table:`, `draw:`, `presentation:`); macros, embedded objects and external links are
//! never opened.

use std::collections::HashMap;

use super::package::{Node, Package, Table, attr, first_text, relationships, walk};
use super::{Extracted, push_block};

/// The heading path while reading: (level, text), outermost first.
#[derive(Default)]
struct Outline(Vec<(u8, String)>);

impl Outline {
    fn path(&self) -> Vec<String> {
        self.0.iter().map(|(_, h)| h.clone()).collect()
    }

    /// A heading at `level` (0 for a document title): it replaces the headings at its level and
    /// below, and is itself a block under the new path.
    fn heading(&mut self, out: &mut Extracted, level: u8, text: &str, page: Option<u32>) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if level == 0 && out.title.is_none() {
            out.title = Some(text.to_owned());
        }
        self.0.retain(|(l, _)| *l < level);
        self.0.push((level, text.to_owned()));
        push_block(&mut out.blocks, text, page, &self.path());
    }
}

/// Ends a table: a table inside another becomes text of the enclosing cell; an outermost one
/// becomes one block per row.
fn end_table(tables: &mut Vec<Table>, out: &mut Extracted, page: Option<u32>, heading: &[String]) {
    let Some(done) = tables.pop() else {
        return;
    };
    let lines = done.into_lines();
    match tables.last_mut() {
        Some(outer) => {
            for l in &lines {
                outer.push_text(l);
            }
        }
        None => {
            for l in &lines {
                push_block(&mut out.blocks, l, page, heading);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Word

/// Paragraph styles that are headings, by style id: 0 for a title, 1.. for heading levels.
fn word_heading_styles(xml: &str) -> Result<HashMap<String, u8>, String> {
    struct Style {
        name: String,
        based_on: Option<String>,
        outline: Option<u8>,
    }
    let mut styles: HashMap<String, Style> = HashMap::new();
    let mut current: Option<(String, Style)> = None;
    walk(xml, "word/styles.xml", |n| {
        match n {
            Node::Start(e) => match e.name().as_ref() {
                "w:style" => {
                    current = (attr(e, "w:type").as_deref() == Some("paragraph"))
                        .then(|| attr(e, "w:styleId"))
                        .flatten()
                        .map(|id| {
                            (
                                id,
                                Style {
                                    name: String::new(),
                                    based_on: None,
                                    outline: None,
                                },
                            )
                        });
                }
                "w:name" => {
                    if let Some((_, s)) = &mut current {
                        s.name = attr(e, "w:val").unwrap_or_default().to_lowercase();
                    }
                }
                "w:basedOn" => {
                    if let Some((_, s)) = &mut current {
                        s.based_on = attr(e, "w:val");
                    }
                }
                "w:outlineLvl" => {
                    if let Some((_, s)) = &mut current {
                        s.outline = attr(e, "w:val").and_then(|v| v.parse().ok());
                    }
                }
                _ => {}
            },
            Node::End("w:style") => {
                if let Some((id, s)) = current.take() {
                    styles.insert(id, s);
                }
            }
            Node::End(_) | Node::Text(_) => {}
        }
        Ok(())
    })?;
    let own = |s: &Style| -> Option<u8> {
        if let Some(l) = s.outline {
            // Level 9 is body text.
            return (l < 9).then_some(l + 1);
        }
        if s.name == "title" {
            return Some(0);
        }
        s.name
            .strip_prefix("heading ")
            .and_then(|n| n.trim().parse::<u8>().ok())
            .filter(|n| (1..=9).contains(n))
    };
    let mut levels = HashMap::new();
    for (id, style) in &styles {
        // A custom style based on "Heading 2" is a level-2 heading (chains are short; the
        // bound stops a cycle).
        let mut s = style;
        for _ in 0..16 {
            if let Some(l) = own(s) {
                levels.insert(id.clone(), l);
                break;
            }
            match s.based_on.as_ref().and_then(|b| styles.get(b)) {
                Some(b) => s = b,
                None => break,
            }
        }
    }
    Ok(levels)
}

pub(super) fn docx(bytes: &[u8]) -> Result<Extracted, String> {
    let mut pkg = Package::open(bytes, "DOCX")?;
    let styles = match pkg.part("word/styles.xml")? {
        Some(xml) => word_heading_styles(&xml)?,
        None => HashMap::new(),
    };
    let body = pkg.required("word/document.xml")?;
    let mut out = Extracted::default();
    if let Some(core) = pkg.part("docProps/core.xml")? {
        out.title = first_text(&core, "docProps/core.xml", "dc:title")?;
    }

    let mut outline = Outline::default();
    // Paragraphs nest (a text box inside a paragraph holds its own).
    let mut paras: Vec<Para> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    let mut in_text = false;
    let mut in_props = false;
    // Text moved away in tracked changes is still written as `w:t`; it is not the document.
    let mut moved_from = 0usize;
    walk(&body, "word/document.xml", |n| {
        match n {
            Node::Start(e) => match e.name().as_ref() {
                "w:p" => paras.push(Para::new(None)),
                "w:pPr" => in_props = true,
                "w:pStyle" if in_props => {
                    if let (Some(p), Some(id)) = (paras.last_mut(), attr(e, "w:val")) {
                        p.level = p.level.or_else(|| styles.get(&id).copied());
                    }
                }
                "w:outlineLvl" if in_props => {
                    if let (Some(p), Some(l)) = (
                        paras.last_mut(),
                        attr(e, "w:val").and_then(|v| v.parse::<u8>().ok()),
                    ) {
                        p.level = (l < 9).then_some(l + 1);
                    }
                }
                "w:t" => in_text = true,
                "w:tab" if !in_props => push_char(&mut paras, '\t'),
                "w:br" | "w:cr" => push_char(&mut paras, '\n'),
                "w:noBreakHyphen" => push_char(&mut paras, '-'),
                "w:moveFrom" => moved_from += 1,
                "w:tbl" => tables.push(Table::default()),
                _ => {}
            },
            Node::End(name) => match name {
                "w:t" => in_text = false,
                "w:pPr" => in_props = false,
                "w:moveFrom" => moved_from = moved_from.saturating_sub(1),
                "w:p" => {
                    if let Some(p) = paras.pop() {
                        match (tables.last_mut(), p.level) {
                            (Some(t), _) => t.push_text(&p.text),
                            (None, Some(level)) => outline.heading(&mut out, level, &p.text, None),
                            (None, None) => {
                                push_block(&mut out.blocks, &p.text, None, &outline.path())
                            }
                        }
                    }
                }
                "w:tc" => {
                    if let Some(t) = tables.last_mut() {
                        t.end_cell();
                    }
                }
                "w:tr" => {
                    if let Some(t) = tables.last_mut() {
                        t.end_row();
                    }
                }
                "w:tbl" => end_table(&mut tables, &mut out, None, &outline.path()),
                _ => {}
            },
            Node::Text(t) if in_text && moved_from == 0 => {
                if let Some(p) = paras.last_mut() {
                    p.text.push_str(t);
                }
            }
            Node::Text(_) => {}
        }
        Ok(())
    })?;
    Ok(out)
}

/// A paragraph being read, with its heading level if it is a heading.
struct Para {
    text: String,
    level: Option<u8>,
}

impl Para {
    fn new(level: Option<u8>) -> Self {
        Self {
            text: String::new(),
            level,
        }
    }
}

fn push_char(paras: &mut [Para], c: char) {
    if let Some(p) = paras.last_mut() {
        p.text.push(c);
    }
}

// ---------------------------------------------------------------------------------------------
// PowerPoint

/// What one slide (or its notes page) says: the title placeholder's text, and the other
/// paragraphs and table rows in order.
#[derive(Default)]
struct SlideText {
    title: String,
    lines: Vec<String>,
}

/// Reads a slide or notes part. `skip`: placeholder types whose text is not content (on a
/// notes page: the slide image, the slide number, header, footer and date).
fn slide_text(xml: &str, name: &str, skip: &[&str]) -> Result<SlideText, String> {
    let mut s = SlideText::default();
    let mut placeholder: Option<String> = None;
    let mut para: Option<String> = None;
    let mut tables: Vec<Table> = Vec::new();
    let mut in_text = false;
    walk(xml, name, |n| {
        match n {
            Node::Start(e) => match e.name().as_ref() {
                "p:sp" => placeholder = None,
                "p:ph" => placeholder = Some(attr(e, "type").unwrap_or_else(|| "body".into())),
                "a:p" => para = Some(String::new()),
                "a:t" => in_text = true,
                "a:br" => {
                    if let Some(p) = &mut para {
                        p.push('\n');
                    }
                }
                "a:tbl" => tables.push(Table::default()),
                _ => {}
            },
            Node::End(name) => match name {
                "a:t" => in_text = false,
                "a:p" => {
                    let text = para.take().unwrap_or_default();
                    let kind = placeholder.as_deref().unwrap_or("");
                    if let Some(t) = tables.last_mut() {
                        t.push_text(&text);
                    } else if skip.contains(&kind) || text.trim().is_empty() {
                    } else if matches!(kind, "title" | "ctrTitle") {
                        if !s.title.is_empty() {
                            s.title.push(' ');
                        }
                        s.title.push_str(text.trim());
                    } else {
                        s.lines.push(text.trim().to_owned());
                    }
                }
                "a:tc" => {
                    if let Some(t) = tables.last_mut() {
                        t.end_cell();
                    }
                }
                "a:tr" => {
                    if let Some(t) = tables.last_mut() {
                        t.end_row();
                    }
                }
                "a:tbl" => {
                    if let Some(done) = tables.pop() {
                        let lines = done.into_lines();
                        match tables.last_mut() {
                            Some(outer) => lines.iter().for_each(|l| outer.push_text(l)),
                            None => s.lines.extend(lines),
                        }
                    }
                }
                _ => {}
            },
            Node::Text(t) if in_text => {
                if let Some(p) = &mut para {
                    p.push_str(t);
                }
            }
            Node::Text(_) => {}
        }
        Ok(())
    })?;
    Ok(s)
}

/// The folder of a part name (`ppt/slides/slide1.xml` → `ppt/slides`).
fn folder(part: &str) -> &str {
    part.rsplit_once('/').map_or("", |(d, _)| d)
}

/// The relationships part of a part (`ppt/slides/slide1.xml` →
/// `ppt/slides/_rels/slide1.xml.rels`).
fn rels_of(part: &str) -> String {
    match part.rsplit_once('/') {
        Some((d, f)) => format!("{d}/_rels/{f}.rels"),
        None => format!("_rels/{part}.rels"),
    }
}

pub(super) fn pptx(bytes: &[u8]) -> Result<Extracted, String> {
    let mut pkg = Package::open(bytes, "PPTX")?;
    let presentation = pkg.required("ppt/presentation.xml")?;
    let rels = match pkg.part(&rels_of("ppt/presentation.xml"))? {
        Some(xml) => relationships(&xml, "ppt/_rels/presentation.xml.rels", "ppt")?,
        None => HashMap::new(),
    };
    let mut slides = Vec::new();
    walk(&presentation, "ppt/presentation.xml", |n| {
        if let Node::Start(e) = n
            && e.name().as_ref() == "p:sldId"
            && let Some((target, _)) = attr(e, "r:id").and_then(|id| rels.get(&id))
        {
            slides.push(target.clone());
        }
        Ok(())
    })?;
    let mut out = Extracted::default();
    if let Some(core) = pkg.part("docProps/core.xml")? {
        out.title = first_text(&core, "docProps/core.xml", "dc:title")?;
    }
    for (i, slide) in slides.iter().enumerate() {
        let page = Some(i as u32 + 1);
        let Some(xml) = pkg.part(slide)? else {
            out.warnings
                .push(format!("slide {} ({slide}) is missing", i + 1));
            continue;
        };
        let text = slide_text(&xml, slide, &[])?;
        let notes = match pkg.part(&rels_of(slide))? {
            Some(rxml) => {
                let srels = relationships(&rxml, &rels_of(slide), folder(slide))?;
                match srels
                    .values()
                    .find(|(_, kind)| kind.ends_with("/notesSlide"))
                {
                    Some((target, _)) => match pkg.part(target)? {
                        Some(nxml) => Some(slide_text(
                            &nxml,
                            target,
                            &["sldImg", "sldNum", "hdr", "ftr", "dt"],
                        )?),
                        None => None,
                    },
                    None => None,
                }
            }
            None => None,
        };
        slide_blocks(&mut out, page, text, notes);
    }
    out.pages = Some(slides.len() as u32);
    Ok(out)
}

/// A slide's blocks: its title as the heading (or "Slide N"), then its text, then its speaker
/// notes, the first introduced by "Speaker notes:".
fn slide_blocks(
    out: &mut Extracted,
    page: Option<u32>,
    slide: SlideText,
    notes: Option<SlideText>,
) {
    let n = page.unwrap_or(0);
    let title = if slide.title.trim().is_empty() {
        format!("Slide {n}")
    } else {
        slide.title.trim().to_owned()
    };
    let heading = vec![title.clone()];
    if !slide.title.trim().is_empty() {
        push_block(&mut out.blocks, &title, page, &heading);
    }
    for l in &slide.lines {
        push_block(&mut out.blocks, l, page, &heading);
    }
    if let Some(notes) = notes {
        // The notes explain the slide: same section, so they share its chunk when they fit,
        // and the first says what it is.
        let lines = notes
            .title
            .lines()
            .chain(notes.lines.iter().map(String::as_str));
        for (i, l) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
            let text = if i == 0 {
                format!("Speaker notes: {l}")
            } else {
                l.to_owned()
            };
            push_block(&mut out.blocks, &text, page, &heading);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenDocument

pub(super) fn odt(bytes: &[u8]) -> Result<Extracted, String> {
    odf(bytes, "ODT")
}

pub(super) fn odp(bytes: &[u8]) -> Result<Extracted, String> {
    odf(bytes, "ODP")
}

/// ODT and ODP share their text model: `text:h` (with an outline level) and `text:p`, spans,
/// lists and tables. A presentation adds `draw:page` (a slide), frames of class `title`, and
/// `presentation:notes`.
fn odf(bytes: &[u8], what: &'static str) -> Result<Extracted, String> {
    let mut pkg = Package::open(bytes, what)?;
    let content = pkg.required("content.xml")?;
    let mut out = Extracted::default();
    if let Some(meta) = pkg.part("meta.xml")? {
        out.title = first_text(&meta, "meta.xml", "dc:title")?;
    }
    let mut outline = Outline::default();
    let mut paras: Vec<Para> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    // Comments, tracked deletions and footnote marks are not the text.
    let mut skipped = 0usize;
    // Presentations: the slide being read, its title frame, its notes.
    let mut slide: Option<(SlideText, Option<SlideText>)> = None;
    let mut slides = 0u32;
    let mut in_title = false;
    let mut frame_skipped = false;
    let mut in_notes = false;
    walk(&content, "content.xml", |n| {
        match n {
            Node::Start(e) => {
                let name = e.name();
                let name = name.as_ref();
                if skipped > 0
                    || matches!(
                        name,
                        "office:annotation" | "text:tracked-changes" | "text:note-citation"
                    )
                {
                    skipped += 1;
                    return Ok(());
                }
                match name {
                    "text:p" => paras.push(Para::new(None)),
                    "text:h" => paras.push(Para::new(Some(
                        attr(e, "text:outline-level")
                            .and_then(|l| l.parse::<u8>().ok())
                            .unwrap_or(1)
                            .clamp(1, 10),
                    ))),
                    "text:s" => {
                        let count = attr(e, "text:c")
                            .and_then(|c| c.parse::<usize>().ok())
                            .unwrap_or(1)
                            .min(64);
                        if let Some(p) = paras.last_mut() {
                            p.text.extend(std::iter::repeat_n(' ', count));
                        }
                    }
                    "text:tab" => push_char(&mut paras, '\t'),
                    "text:line-break" => push_char(&mut paras, '\n'),
                    "table:table" => tables.push(Table::default()),
                    "draw:page" => {
                        slides += 1;
                        slide = Some((SlideText::default(), None));
                    }
                    "presentation:notes" => {
                        in_notes = true;
                        if let Some((_, notes)) = &mut slide {
                            *notes = Some(SlideText::default());
                        }
                    }
                    "draw:frame" => {
                        let class = attr(e, "presentation:class");
                        in_title = matches!(class.as_deref(), Some("title"));
                        // Page numbers, headers, footers and dates are not content.
                        frame_skipped = matches!(
                            class.as_deref(),
                            Some("page-number" | "header" | "footer" | "date-time")
                        );
                    }
                    _ => {}
                }
            }
            Node::End(name) => {
                if skipped > 0 {
                    skipped -= 1;
                    return Ok(());
                }
                match name {
                    "text:p" | "text:h" => {
                        let Some(p) = paras.pop() else {
                            return Ok(());
                        };
                        if let Some(t) = tables.last_mut() {
                            t.push_text(&p.text);
                        } else if let Some((s, notes)) = &mut slide {
                            let text = p.text.trim();
                            if text.is_empty() || frame_skipped {
                            } else if in_notes {
                                if let Some(n) = notes {
                                    n.lines.push(text.to_owned());
                                }
                            } else if in_title {
                                if !s.title.is_empty() {
                                    s.title.push(' ');
                                }
                                s.title.push_str(text);
                            } else {
                                s.lines.push(text.to_owned());
                            }
                        } else {
                            match p.level {
                                Some(level) => outline.heading(&mut out, level, &p.text, None),
                                None => push_block(&mut out.blocks, &p.text, None, &outline.path()),
                            }
                        }
                    }
                    "table:table-cell" => {
                        if let Some(t) = tables.last_mut() {
                            t.end_cell();
                        }
                    }
                    "table:table-row" => {
                        if let Some(t) = tables.last_mut() {
                            t.end_row();
                        }
                    }
                    "table:table" => {
                        if slide.is_some() && tables.len() == 1 {
                            if let (Some(done), Some((s, _))) = (tables.pop(), &mut slide) {
                                s.lines.extend(done.into_lines());
                            }
                        } else {
                            end_table(&mut tables, &mut out, None, &outline.path());
                        }
                    }
                    "draw:frame" => {
                        in_title = false;
                        frame_skipped = false;
                    }
                    "presentation:notes" => in_notes = false,
                    "draw:page" => {
                        if let Some((s, notes)) = slide.take() {
                            slide_blocks(&mut out, Some(slides), s, notes);
                        }
                    }
                    _ => {}
                }
            }
            Node::Text(t) if skipped == 0 => {
                if let Some(p) = paras.last_mut() {
                    p.text.push_str(t);
                }
            }
            Node::Text(_) => {}
        }
        Ok(())
    })?;
    if what == "ODP" {
        out.pages = Some(slides);
    }
    Ok(out)
}
