//! Rich Text Format: the text of the body, paragraph by paragraph, with headings from
//! `\outlinelevel` or a "Heading N" paragraph style, tables as rows that name their columns,
//! the title from `\info`, characters from the document's code page
//! (`\ansicpg`, `\'hh`) and Unicode escapes (`\uN` with `\ucN` fallbacks skipped). Font,
//! colour, style and list tables, pictures, embedded objects and field instructions are skipped.
//!
//! Written here rather than taken from a crate: the RTF crates found (rtf-parser and its forks)
//! build a token vector of the whole file first, depend on wasm-bindgen, and ignore code pages,
//! which the documents of non-English users need.

use std::collections::HashMap;

use super::package::labelled_rows;
use super::{Extracted, push_block};

/// Destinations whose text is not the document's.
const SKIPPED: &[&str] = &[
    "fonttbl",
    "colortbl",
    "listtable",
    "listoverridetable",
    "revtbl",
    "rsidtbl",
    "generator",
    "pict",
    "object",
    "objdata",
    "fldinst",
    "datastore",
    "themedata",
    "colorschememapping",
    "latentstyles",
    "xmlnstbl",
    "header",
    "headerl",
    "headerr",
    "headerf",
    "footer",
    "footerl",
    "footerr",
    "footerf",
    "bkmkstart",
    "bkmkend",
    "filetbl",
    "private",
    "nonshppict",
    "shppict",
    "shpinst",
    "author",
    "operator",
    "company",
    "keywords",
    "comment",
    "subject",
    "doccomm",
];

#[derive(Clone, Copy)]
struct Group {
    skip: bool,
    /// Inside `{\info ...}`; only `\title` is read there.
    info: bool,
    title: bool,
    /// Inside `{\stylesheet ...}`: style names are read, to know which styles are headings.
    styles: bool,
    /// Characters to skip after `\uN`.
    uc: usize,
}

pub(super) fn parse(bytes: &[u8]) -> Result<Extracted, String> {
    if !bytes.trim_ascii_start().starts_with(b"{\\rtf") {
        return Err("the file does not start with {\\rtf; it is not RTF".into());
    }
    let mut r = Rtf {
        out: Extracted::default(),
        encoding: encoding_rs::WINDOWS_1252,
        para: String::new(),
        title: String::new(),
        pending: Vec::new(),
        outline: None,
        style: None,
        style_names: HashMap::new(),
        style_def: None,
        in_table: false,
        row: Vec::new(),
        rows: Vec::new(),
        path: Vec::new(),
    };
    let mut stack: Vec<Group> = Vec::new();
    let mut g = Group {
        skip: false,
        info: false,
        title: false,
        styles: false,
        uc: 1,
    };
    // Fallback characters still to skip after a `\uN`.
    let mut skip_chars = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'{' => {
                r.flush_bytes(g);
                stack.push(g);
                // `{\*\dest ...}`: an optional destination hearth does not know; skip it.
                if bytes[i + 1..].starts_with(b"\\*") {
                    g.skip = true;
                }
                i += 1;
            }
            b'}' => {
                r.flush_bytes(g);
                g = stack.pop().unwrap_or(g);
                skip_chars = 0;
                i += 1;
            }
            b'\\' => {
                let (word, param, next) = control(bytes, i);
                i = next;
                if word.is_empty() {
                    // A control symbol: `\'hh`, `\~`, `\-`, `\_`, or an escaped `\ { }`.
                    let Some(&sym) = bytes.get(i) else {
                        break;
                    };
                    i += 1;
                    match sym {
                        b'\'' => {
                            let hex = bytes.get(i..i + 2).and_then(|h| {
                                u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            });
                            if let Some(byte) = hex {
                                i += 2;
                                if skip_chars > 0 {
                                    skip_chars -= 1;
                                } else if !g.skip {
                                    r.pending.push(byte);
                                }
                            }
                        }
                        b'~' => r.push_text(g, "\u{a0}"),
                        b'_' => r.push_text(g, "-"),
                        b'\\' | b'{' | b'}' => r.push_text(g, &(sym as char).to_string()),
                        b'\n' | b'\r' => r.end_paragraph(g),
                        _ => {}
                    }
                    continue;
                }
                r.flush_bytes(g);
                match word {
                    w if SKIPPED.contains(&w) => g.skip = true,
                    "info" => g.info = true,
                    "stylesheet" => g.styles = true,
                    "s" if g.styles => r.style_def = param.map(|n| (n, String::new())),
                    "s" => r.style = param,
                    "intbl" => r.in_table = true,
                    "title" if g.info => g.title = true,
                    "ansicpg" => {
                        if let Some(cp) = param {
                            r.encoding = code_page(cp);
                        }
                    }
                    "uc" => g.uc = param.unwrap_or(1).clamp(0, 8) as usize,
                    "u" => {
                        if let Some(n) = param {
                            let code = if n < 0 { n + 65536 } else { n } as u32;
                            if let Some(c) = char::from_u32(code) {
                                r.push_text(g, &c.to_string());
                            }
                            skip_chars = g.uc;
                        }
                    }
                    "par" | "sect" | "page" => r.end_paragraph(g),
                    "pard" => {
                        r.outline = None;
                        r.style = None;
                        r.in_table = false;
                    }
                    "outlinelevel" => r.outline = param.map(|l| (l.clamp(0, 8) + 1) as u8),
                    "line" => r.push_text(g, "\n"),
                    "tab" => r.push_text(g, "\t"),
                    "cell" => r.end_cell(g),
                    "row" => r.end_row(g),
                    "emdash" => r.push_text(g, "\u{2014}"),
                    "endash" => r.push_text(g, "\u{2013}"),
                    "bullet" => r.push_text(g, "\u{2022}"),
                    "lquote" => r.push_text(g, "\u{2018}"),
                    "rquote" => r.push_text(g, "\u{2019}"),
                    "ldblquote" => r.push_text(g, "\u{201c}"),
                    "rdblquote" => r.push_text(g, "\u{201d}"),
                    "bin" => {
                        // Raw binary data of the given length.
                        i = i.saturating_add(param.unwrap_or(0).max(0) as usize);
                    }
                    _ => {}
                }
            }
            b'\r' | b'\n' => i += 1,
            _ => {
                // A run of plain text up to the next special byte.
                let end = bytes[i..]
                    .iter()
                    .position(|&c| matches!(c, b'{' | b'}' | b'\\' | b'\r' | b'\n'))
                    .map_or(bytes.len(), |p| i + p);
                let mut run = &bytes[i..end];
                while skip_chars > 0 && !run.is_empty() {
                    run = &run[1..];
                    skip_chars -= 1;
                }
                if !g.skip {
                    r.pending.extend_from_slice(run);
                }
                i = end;
            }
        }
    }
    r.flush_bytes(g);
    r.in_table = false;
    r.end_paragraph(g);
    r.end_table();
    let title = r.title.trim();
    if !title.is_empty() {
        r.out.title = Some(title.to_owned());
    }
    Ok(r.out)
}

struct Rtf {
    out: Extracted,
    encoding: &'static encoding_rs::Encoding,
    para: String,
    title: String,
    /// Bytes in the code page, decoded together (a double-byte code page splits characters
    /// over two `\'hh`).
    pending: Vec<u8>,
    /// The paragraph's `\outlinelevel`, as a heading level.
    outline: Option<u8>,
    /// The paragraph's style number (`\sN`).
    style: Option<i32>,
    /// Paragraph style names by number, lowercased.
    style_names: HashMap<i32, String>,
    /// The style whose name is being read in the stylesheet.
    style_def: Option<(i32, String)>,
    /// The paragraph is in a table (`\intbl`); its text goes to the cell.
    in_table: bool,
    row: Vec<String>,
    rows: Vec<Vec<String>>,
    path: Vec<(u8, String)>,
}

impl Rtf {
    fn flush_bytes(&mut self, g: Group) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.pending);
        let (text, _, _) = self.encoding.decode(&bytes);
        self.push_text(g, &text);
    }

    fn push_text(&mut self, g: Group, text: &str) {
        if g.skip {
            return;
        }
        if g.styles {
            if let Some((n, name)) = &mut self.style_def {
                name.push_str(text);
                // A style's name ends with a semicolon.
                if let Some((done, _)) = name.split_once(';') {
                    self.style_names.insert(*n, done.trim().to_lowercase());
                    self.style_def = None;
                }
            }
        } else if g.title {
            self.title.push_str(text);
        } else if !g.info {
            self.para.push_str(text);
        }
    }

    fn end_paragraph(&mut self, g: Group) {
        self.flush_bytes(g);
        if self.in_table {
            // A paragraph break inside a cell: the cell goes on.
            self.para.push(' ');
            return;
        }
        self.end_table();
        let text = std::mem::take(&mut self.para);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if let Some(level) = self.outline.or_else(|| self.style_level()) {
            self.path.retain(|(l, _)| *l < level);
            self.path.push((level, text.to_owned()));
        }
        let heading = self.heading();
        push_block(&mut self.out.blocks, text, None, &heading);
    }

    /// The heading level of the paragraph's style ("heading 2" → 2, "title" → 0).
    fn style_level(&self) -> Option<u8> {
        let name = self.style_names.get(&self.style?)?;
        if name == "title" {
            return Some(0);
        }
        name.strip_prefix("heading ")?
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| (1..=9).contains(l))
    }

    fn heading(&self) -> Vec<String> {
        self.path.iter().map(|(_, h)| h.clone()).collect()
    }

    fn end_cell(&mut self, g: Group) {
        self.flush_bytes(g);
        let text = std::mem::take(&mut self.para);
        self.row.push(text.trim().to_owned());
    }

    fn end_row(&mut self, g: Group) {
        self.flush_bytes(g);
        let row = std::mem::take(&mut self.row);
        if row.iter().any(|c| !c.is_empty()) {
            self.rows.push(row);
        }
    }

    /// A table ends at the first paragraph outside it: its rows become blocks.
    fn end_table(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let heading = self.heading();
        for line in labelled_rows(std::mem::take(&mut self.rows)) {
            push_block(&mut self.out.blocks, &line, None, &heading);
        }
    }
}

/// A control word at `at` (the backslash): its name (empty for a control symbol), its numeric
/// parameter, and where what follows it begins (a space delimiting it is consumed).
fn control(bytes: &[u8], at: usize) -> (&str, Option<i32>, usize) {
    let mut i = at + 1;
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_alphabetic() && i - start < 32 {
        i += 1;
    }
    // invariant: ASCII letters are UTF-8.
    let word = std::str::from_utf8(&bytes[start..i]).unwrap_or("");
    if word.is_empty() {
        return ("", None, i);
    }
    let num_start = i;
    if i < bytes.len() && bytes[i] == b'-' {
        i += 1;
    }
    while i < bytes.len() && bytes[i].is_ascii_digit() && i - num_start < 10 {
        i += 1;
    }
    let param = std::str::from_utf8(&bytes[num_start..i])
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    if i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    (word, param, i)
}

/// The encoding of a Windows code page number.
fn code_page(cp: i32) -> &'static encoding_rs::Encoding {
    let label = match cp {
        932 => "shift_jis".to_owned(),
        936 => "gbk".to_owned(),
        949 => "euc-kr".to_owned(),
        950 => "big5".to_owned(),
        10000 => "macintosh".to_owned(),
        65001 => "utf-8".to_owned(),
        n => format!("windows-{n}"),
    };
    encoding_rs::Encoding::for_label(label.as_bytes()).unwrap_or(encoding_rs::WINDOWS_1252)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_headings_code_pages_and_unicode() {
        let rtf = br"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Times;}}{\colortbl;\red0;}
{\info{\title Retention policy}{\author Someone}}
{\pard\outlinelevel0\b Scope\par}
{\pard Invoices are kept for ten years in the caf\'e9 archive.\par}
{\pard\outlinelevel1 Exceptions\par}
{\pard Stra\u223?e and \u8364\'80 signs{\*\unknowndest hidden} stay.\par}
{\field{\*\fldinst HYPERLINK x}{\fldrslt link text}}\par
}";
        let doc = parse(rtf).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Retention policy"));
        let got: Vec<(&str, String)> = doc
            .blocks
            .iter()
            .map(|b| (b.text.as_str(), b.heading.join(" > ")))
            .collect();
        assert_eq!(
            got,
            [
                ("Scope", "Scope".to_owned()),
                (
                    "Invoices are kept for ten years in the café archive.",
                    "Scope".to_owned()
                ),
                ("Exceptions", "Scope > Exceptions".to_owned()),
                ("Straße and € signs stay.", "Scope > Exceptions".to_owned()),
                ("link text", "Scope > Exceptions".to_owned()),
            ]
        );
    }
}
