//! What the Office Open XML and OpenDocument readers share: parts read out of a ZIP package
//! with a cap on what they unpack to, a small XML event walk, relationship targets, and tables
//! turned into rows that name their columns.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::{BytesStart, Event};
use zip::ZipArchive;
use zip::result::ZipError;

/// The most one part of a package may unpack to. A DOCX's `word/document.xml` of a 1,000-page
/// manual is ~10 MiB; anything near this is a ZIP bomb.
const MAX_PART_BYTES: u64 = 256 << 20;
/// The most all parts read from one package may unpack to together.
const MAX_PACKAGE_BYTES: u64 = 1 << 30;

/// A ZIP package (DOCX, PPTX, ODT, ODP) opened for reading its parts.
pub(super) struct Package<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    unpacked: u64,
    what: &'static str,
}

impl<'a> Package<'a> {
    /// `what`: the format, for messages ("DOCX").
    pub fn open(bytes: &'a [u8], what: &'static str) -> Result<Self, String> {
        let zip = ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| format!("the {what} file is not a readable ZIP package: {e}"))?;
        Ok(Self {
            zip,
            unpacked: 0,
            what,
        })
    }

    /// The text of part `name`, `None` if the package has no such part.
    pub fn part(&mut self, name: &str) -> Result<Option<String>, String> {
        let what = self.what;
        let file = match self.zip.by_name(name) {
            Ok(f) => f,
            Err(ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format!("cannot read {name} in the {what} file: {e}")),
        };
        if file.encrypted() {
            return Err(format!(
                "the {what} file is encrypted (password-protected): hearth cannot read it"
            ));
        }
        let cap = MAX_PART_BYTES.min(MAX_PACKAGE_BYTES.saturating_sub(self.unpacked));
        let bomb = || {
            format!(
                "{name} in the {what} file unpacks to more than {} MiB (a ZIP bomb?)",
                cap >> 20
            )
        };
        // The size the directory declares is checked before anything is unpacked; a part that
        // lies about it is still stopped at the cap.
        let declared = file.size();
        if declared > cap {
            return Err(bomb());
        }
        let mut data = Vec::with_capacity(declared as usize);
        file.take(cap + 1).read_to_end(&mut data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::OutOfMemory {
                bomb()
            } else {
                format!("cannot unpack {name} in the {what} file: {e}")
            }
        })?;
        if data.len() as u64 > cap {
            return Err(bomb());
        }
        self.unpacked += data.len() as u64;
        Ok(Some(match String::from_utf8(data) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }))
    }

    /// Like [`Package::part`], for a part the format requires.
    pub fn required(&mut self, name: &str) -> Result<String, String> {
        let what = self.what;
        self.part(name)?
            .ok_or_else(|| format!("the {what} file has no {name}; it is damaged or not a {what}"))
    }
}

/// One step of an XML walk. Empty elements arrive as a start and an end.
pub(super) enum Node<'e> {
    Start(&'e BytesStart<'e>),
    End(&'e str),
    Text(&'e str),
}

/// Walks `xml` (part `name`, for messages), calling `visit` for each element start, end and
/// piece of text, with entity and character references resolved.
pub(super) fn walk(
    xml: &str,
    name: &str,
    mut visit: impl FnMut(Node<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "{name} is not well-formed XML (at byte {}): {e}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(e) => visit(Node::Start(&e))?,
            Event::End(e) => visit(Node::End(e.name().as_ref()))?,
            Event::Text(t) => visit(Node::Text(&t.xml10_content()))?,
            Event::CData(t) => visit(Node::Text(&t.xml10_content()))?,
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string().into(),
                    _ => match r.as_ref() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        _ => "".into(),
                    },
                };
                visit(Node::Text(&resolved))?
            }
            Event::Eof => return Ok(()),
            Event::Empty(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_) => {}
        }
    }
}

/// The value of attribute `name` (a qualified name, `w:val`).
pub(super) fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    let a = e.try_get_attribute(name).ok()??;
    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .ok()
        .map(Cow::into_owned)
}

/// The text of the first `element` in `xml` (e.g. `dc:title` in `docProps/core.xml`).
pub(super) fn first_text(xml: &str, name: &str, element: &str) -> Result<Option<String>, String> {
    let mut inside = false;
    let mut found = String::new();
    let mut done = false;
    walk(xml, name, |n| {
        match n {
            Node::Start(e) if !done && e.name().as_ref() == element => inside = true,
            Node::End(end) if inside && end == element => {
                inside = false;
                done = true;
            }
            Node::Text(t) if inside => found.push_str(t),
            Node::Start(_) | Node::End(_) | Node::Text(_) => {}
        }
        Ok(())
    })?;
    let t = found.trim();
    Ok((!t.is_empty()).then(|| t.to_owned()))
}

/// The targets of a relationships part (`_rels/*.rels`) by id, resolved against `dir` (the
/// folder of the part the relationships belong to), with their types.
pub(super) fn relationships(
    xml: &str,
    name: &str,
    dir: &str,
) -> Result<HashMap<String, (String, String)>, String> {
    let mut rels = HashMap::new();
    walk(xml, name, |n| {
        if let Node::Start(e) = n
            && e.local_name().as_ref() == "Relationship"
            && attr(e, "TargetMode").as_deref() != Some("External")
            && let (Some(id), Some(target)) = (attr(e, "Id"), attr(e, "Target"))
        {
            let kind = attr(e, "Type").unwrap_or_default();
            rels.insert(id, (resolve(dir, &target), kind));
        }
        Ok(())
    })?;
    Ok(rels)
}

/// `target` relative to folder `dir` (no trailing slash), as a part name.
pub(super) fn resolve(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A table being read: rows of cell texts.
#[derive(Default)]
pub(super) struct Table {
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
}

impl Table {
    /// Appends text to the current cell, a space between paragraphs.
    pub fn push_text(&mut self, text: &str) {
        let t = text.trim();
        if t.is_empty() {
            return;
        }
        if !self.cell.is_empty() {
            self.cell.push(' ');
        }
        self.cell.push_str(t);
    }

    pub fn end_cell(&mut self) {
        let cell = std::mem::take(&mut self.cell);
        self.row.push(cell);
    }

    pub fn end_row(&mut self) {
        let row = std::mem::take(&mut self.row);
        if row.iter().any(|c| !c.is_empty()) {
            self.rows.push(row);
        }
    }

    /// The table as lines of text, one per row, each cell named by its column's header when
    /// the first row looks like one ([`labelled_rows`]).
    pub fn into_lines(self) -> Vec<String> {
        labelled_rows(self.rows)
    }
}

/// Rows of cells as lines of text a question about one cell can find: when the first row is a
/// header (at least two rows, and its cells are short labels, not numbers), each later row is
/// written `Header: value; Header: value`; otherwise its cells are joined by ` | `.
pub(super) fn labelled_rows(rows: Vec<Vec<String>>) -> Vec<String> {
    let mut labeller = Labeller::default();
    let mut lines: Vec<String> = rows.into_iter().flat_map(|r| labeller.push(r)).collect();
    lines.extend(labeller.finish());
    lines
}

/// [`labelled_rows`] one row at a time, for sheets too large to hold: the first row waits
/// for the second, which decides whether it is a header; every later row is written at once.
#[derive(Default)]
pub(super) enum Labeller {
    #[default]
    Start,
    First(Vec<String>),
    Header(Vec<String>),
    Plain,
}

impl Labeller {
    /// The lines the next row completes (none, one, or two when it settles the first row).
    pub(super) fn push(&mut self, row: Vec<String>) -> Vec<String> {
        let lines = match std::mem::take(self) {
            Labeller::Start => {
                *self = Labeller::First(row);
                return Vec::new();
            }
            Labeller::First(first) if is_header(&first) => {
                let line = labelled_row(&first, &row);
                *self = Labeller::Header(first);
                vec![line]
            }
            Labeller::First(first) => {
                *self = Labeller::Plain;
                vec![plain_row(&first), plain_row(&row)]
            }
            Labeller::Header(header) => {
                let line = labelled_row(&header, &row);
                *self = Labeller::Header(header);
                vec![line]
            }
            Labeller::Plain => {
                *self = Labeller::Plain;
                vec![plain_row(&row)]
            }
        };
        lines.into_iter().filter(|l| !l.is_empty()).collect()
    }

    /// The line of a first row that no second row followed.
    pub(super) fn finish(self) -> Option<String> {
        match self {
            Labeller::First(first) => Some(plain_row(&first)).filter(|l| !l.is_empty()),
            Labeller::Start | Labeller::Header(_) | Labeller::Plain => None,
        }
    }
}

/// A header row: two or more cells, each a short label rather than a number.
fn is_header(row: &[String]) -> bool {
    row.iter().filter(|c| !c.is_empty()).count() >= 2
        && row
            .iter()
            .all(|c| c.chars().count() <= 60 && c.trim().parse::<f64>().is_err())
}

fn labelled_row(header: &[String], row: &[String]) -> String {
    let mut line = String::new();
    for (i, value) in row.iter().enumerate() {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push_str("; ");
        }
        if let Some(h) = header.get(i).map(|h| h.trim()).filter(|h| !h.is_empty()) {
            line.push_str(h);
            line.push_str(": ");
        }
        line.push_str(value);
    }
    line
}

fn plain_row(row: &[String]) -> String {
    row.iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter()
            .map(|row| row.iter().map(|c| (*c).to_owned()).collect())
            .collect()
    }

    #[test]
    fn rows_name_their_columns_when_the_first_row_is_a_header() {
        let lines = labelled_rows(rows(&[
            &["Office", "Phone", "Opened"],
            &["Berlin", "+49 30 1234", "2019"],
            &["Lyon", "", "2021"],
        ]));
        assert_eq!(
            lines,
            [
                "Office: Berlin; Phone: +49 30 1234; Opened: 2019",
                "Office: Lyon; Opened: 2021"
            ]
        );
        // Numbers in the first row: no header.
        let lines = labelled_rows(rows(&[&["2019", "12"], &["2020", "15"]]));
        assert_eq!(lines, ["2019 | 12", "2020 | 15"]);
        // One row: its cells, joined.
        assert_eq!(labelled_rows(rows(&[&["a", "b"]])), ["a | b"]);
    }

    #[test]
    fn relationship_targets_resolve_against_their_folder() {
        assert_eq!(resolve("ppt", "slides/slide1.xml"), "ppt/slides/slide1.xml");
        assert_eq!(
            resolve("ppt/slides", "../notesSlides/notesSlide1.xml"),
            "ppt/notesSlides/notesSlide1.xml"
        );
        assert_eq!(
            resolve("ppt", "/ppt/slides/slide2.xml"),
            "ppt/slides/slide2.xml"
        );
    }

    #[test]
    fn xml_text_has_its_references_resolved() {
        let mut text = String::new();
        walk("<a>x &amp; y &#x263A; <b/>&lt;z&gt;</a>", "t.xml", |n| {
            if let Node::Text(t) = n {
                text.push_str(t);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(text, "x & y \u{263a} <z>");
    }
}
