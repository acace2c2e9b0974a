//! Format parsers: bytes in, text blocks out. These run inside the isolated extraction process
//! (see `extract.rs`), so a parser that panics, loops or exhausts memory takes down only that
//! process, never the service.

mod html;
mod mail;
pub(crate) use mail::addresses as mail_addresses;
mod markdown;
mod ocr;
mod office;
mod package;
mod pdf;
mod rtf;
mod sheet;
mod text;

pub(crate) use ocr::{
    check_image_size, image_size, installed_languages as installed_ocr_languages,
};
pub(crate) use pdf::panic_message;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sniff::DocKind;

/// A unit of text as the document presents it: a paragraph, list item, heading, table cell or
/// code block. Blocks are never merged by parsers; the chunker decides how to group them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The raw text of the block (normalised later).
    pub text: String,
    /// The 1-based page the block is on (a PDF page, a slide).
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
    /// Pages in the document (PDF pages, slides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    /// Non-fatal problems, e.g. a PDF page that could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The engine that produced the text, when it is not the format's first one (a PDF read
    /// by poppler because pdf-extract could not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Metadata the document declares about itself (an e-mail's subject, sender, date), added
    /// to the record's metadata where the user gave no value for the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Documents inside this one (an e-mail's attachments, a mailbox's messages), each to be
    /// ingested as a document of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// What OCR recognised, when it read any page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<OcrSummary>,
}

/// Pages recognised by OCR and how sure the recogniser was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OcrSummary {
    /// Pages recognised.
    pub pages: u32,
    /// Words recognised.
    pub words: u32,
    /// Mean word confidence, 0-100.
    pub confidence: f32,
    #[serde(skip)]
    conf_sum: f64,
}

impl Eq for OcrSummary {}

/// Names a step of a parse (see [`Options::stage`]).
pub type StageFn = Box<dyn Fn(&str)>;

/// How to parse: the OCR languages of the document's collection, and where to report
/// progress on long work (pages recognised so far, pages to recognise).
#[derive(Default)]
pub struct Options {
    /// Tesseract language names (`eng`, `deu`, ...); empty means English.
    pub ocr_languages: Vec<String>,
    /// Called before each page OCR reads and once at the end.
    pub progress: Option<Box<dyn Fn(u32, u32)>>,
    /// Called when a parser starts a step worth naming should the time limit end it (the
    /// second PDF engine, after the first overran its share).
    pub stage: Option<StageFn>,
    /// The most text a document may yield (0: no limit); parsers that write text as they
    /// read (workbooks) stop there, and the extraction process checks every result.
    pub max_text_bytes: u64,
    /// The document's extraction time limit, when one applies: PDF engines get shares of it
    /// ([`pdf`]'s first engine half, so a second one has time left when the first overruns).
    pub time_limit: Option<std::time::Duration>,
    /// Why pdf-extract must not read this PDF (it ended the process that tried): only the
    /// second engine runs.
    pub without_pdf_extract: Option<String>,
}

/// Whether a parser left a thread running that it could not stop (a PDF page pdf-extract
/// never finished): the extraction process then exits after its reply, which ends it.
pub(crate) fn left_work_running() -> bool {
    pdf::LEFT_RUNNING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The reason a document that yields more than `max` bytes of text fails.
pub(crate) fn too_much_text(max: u64) -> String {
    format!(
        "the document yields more than {} MiB of text (a decompression bomb or a generated file?)",
        max / (1024 * 1024)
    )
}

/// A document found inside another.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its file name (no path separators).
    pub name: String,
    /// Its bytes (base64 on the wire between the extraction process and the service).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attachment({:?}, {} bytes)", self.name, self.data.len())
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

impl Extracted {
    /// Total bytes of text in the blocks.
    pub fn text_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.text.len()).sum()
    }
}

/// Runs the parser for `kind` with default options. The error is a human-readable reason.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse(kind: DocKind, bytes: &[u8]) -> Result<Extracted, String> {
    parse_with(kind, bytes, &Options::default())
}

/// Runs the parser for `kind`. The error is a human-readable reason.
pub fn parse_with(kind: DocKind, bytes: &[u8], opts: &Options) -> Result<Extracted, String> {
    let max_text = match opts.max_text_bytes {
        0 => u64::MAX,
        n => n,
    };
    match kind {
        DocKind::Pdf => pdf::parse(bytes, opts),
        DocKind::Png | DocKind::Jpeg | DocKind::Tiff => ocr::image(kind, bytes, opts),
        DocKind::Html => Ok(html::parse(&decode(bytes)?)),
        DocKind::Markdown => Ok(markdown::parse(&decode(bytes)?)),
        DocKind::Text => Ok(text::parse(&decode(bytes)?)),
        DocKind::Docx => office::docx(bytes),
        DocKind::Pptx => office::pptx(bytes),
        DocKind::Odt => office::odt(bytes),
        DocKind::Odp => office::odp(bytes),
        DocKind::Xlsx => sheet::workbook(sheet::Book::Xlsx, bytes, max_text),
        DocKind::Xls => sheet::workbook(sheet::Book::Xls, bytes, max_text),
        DocKind::Ods => sheet::workbook(sheet::Book::Ods, bytes, max_text),
        DocKind::Csv => sheet::delimited(&decode(bytes)?, false),
        DocKind::Tsv => sheet::delimited(&decode(bytes)?, true),
        DocKind::Rtf => rtf::parse(bytes),
        DocKind::Eml => mail::eml(bytes),
        DocKind::Mbox => mail::mbox(bytes),
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

/// A file of `testdata/FOLDER`, sniffed and parsed as ingestion does (for the tests below).
#[cfg(test)]
fn read_test_file(folder: &str, name: &str) -> Extracted {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(folder)
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    let kind = crate::sniff::sniff(&bytes, name).unwrap();
    parse(kind, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[cfg(test)]
mod office_files {
    //! The Office, OpenDocument, RTF and delimited files of `testdata/office`, made by pandoc
    //! and LibreOffice from real text (`testdata/sources/office/make_office.sh`).

    use super::*;

    fn read(name: &str) -> Extracted {
        super::read_test_file("office", name)
    }

    /// The blocks as (heading path, page, text).
    fn blocks(doc: &Extracted) -> Vec<(String, Option<u32>, &str)> {
        doc.blocks
            .iter()
            .map(|b| (b.heading.join(" > "), b.page, b.text.as_str()))
            .collect()
    }

    fn has(doc: &Extracted, heading_ends: &str, page: Option<u32>, text: &str) -> bool {
        blocks(doc)
            .iter()
            .any(|(h, p, t)| h.ends_with(heading_ends) && *p == page && t.contains(text))
    }

    #[test]
    fn word_documents_keep_headings_and_table_rows() {
        for f in ["runbook.docx", "runbook.odt", "runbook.rtf"] {
            let doc = read(f);
            let b = blocks(&doc);
            assert!(
                has(
                    &doc,
                    "Disk full on a storage node",
                    None,
                    "kestrelctl compact --node"
                ),
                "{f}: {b:#?}"
            );
            assert!(
                has(
                    &doc,
                    "On-call runbook: storage cluster incidents > Severity levels",
                    None,
                    "Level: SEV2; Meaning: Degraded latency or one replica set down; First response: 30 minutes"
                ),
                "{f}: {b:#?}"
            );
            // Every paragraph of the source arrives once.
            assert_eq!(
                b.iter()
                    .filter(|(_, _, t)| t.contains("post-incident review"))
                    .count(),
                1,
                "{f}"
            );
        }
    }

    #[test]
    fn slides_are_pages_with_their_titles_tables_and_speaker_notes() {
        for f in ["release-review.pptx", "release-review.odp"] {
            let doc = read(f);
            let b = blocks(&doc);
            assert_eq!(doc.pages, Some(4), "{f}");
            assert_eq!(
                doc.title.as_deref(),
                Some("Quarterly release review"),
                "{f}"
            );
            assert!(
                has(
                    &doc,
                    "Release train status",
                    Some(2),
                    "Frankfurt region rollback took 11 minutes"
                ),
                "{f}: {b:#?}"
            );
            assert!(
                has(
                    &doc,
                    "Storage migration",
                    Some(3),
                    "Cluster: kestrel-us; Old file system: ext4; New file system: XFS; Progress: 45 %"
                ),
                "{f}: {b:#?}"
            );
            assert!(
                has(
                    &doc,
                    "Storage migration",
                    Some(3),
                    "Speaker notes: The US migration is slower because of the change freeze"
                ),
                "{f}: {b:#?}"
            );
            // Slide numbers and placeholders of the notes page are not text.
            assert!(
                !b.iter().any(|(_, _, t)| t.contains("<number>")),
                "{f}: {b:#?}"
            );
        }
    }

    #[test]
    fn spreadsheet_rows_name_their_columns() {
        for f in ["offices.xlsx", "offices.xls", "offices.ods"] {
            let doc = read(f);
            let b = blocks(&doc);
            assert!(
                has(
                    &doc,
                    "Offices",
                    None,
                    "Office: Lyon; Address: 12 quai Saint-Antoine, 69002 Lyon; Phone: +33 4 5550 8841; Facility manager: Mathieu Garnier; Desks: 62; Opened: 2019-09-16"
                ),
                "{f}: {b:#?}"
            );
            assert!(
                has(
                    &doc,
                    "Per diem",
                    None,
                    "City: Vienna; Daily allowance (EUR): 52; Hotel cap per night (EUR): 165"
                ),
                "{f}: {b:#?}"
            );
        }
        for f in ["offices.csv", "offices.tsv"] {
            let doc = read(f);
            assert!(
                has(
                    &doc,
                    "",
                    None,
                    "Office: Lyon; Address: 12 quai Saint-Antoine, 69002 Lyon; Phone: +33 4 5550 8841"
                ),
                "{f}: {:#?}",
                blocks(&doc)
            );
            assert_eq!(doc.blocks.len(), 4, "{f}");
        }
    }
}

#[cfg(test)]
mod mail_files {
    //! The messages of `testdata/mail`, written by Python's email and mailbox packages
    //! (`testdata/sources/mail/make_mail.py`).

    use super::*;

    fn read(name: &str) -> Extracted {
        super::read_test_file("mail", name)
    }

    #[test]
    fn a_message_has_its_headers_as_metadata_its_body_as_text_and_its_attachments() {
        let doc = read("supplier-contract.eml");
        let subject = "Renewal of the Nordlicht Datacenter supplier contract";
        assert_eq!(doc.title.as_deref(), Some(subject));
        assert_eq!(doc.metadata["subject"], subject);
        assert_eq!(
            doc.metadata["from"],
            "Clara Lindqvist <clara.lindqvist@kestrel-storage.example>"
        );
        assert_eq!(
            doc.metadata["cc"],
            "Ravi Menon <ravi.menon@kestrel-storage.example>"
        );
        assert_eq!(doc.metadata["date"], "2026-03-12T09:41:00Z");
        assert!(doc.blocks[0].text.starts_with("From: Clara Lindqvist"));
        let text: Vec<&str> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert!(
            text.iter().any(|t| t.contains("sign before 15 May 2026")),
            "{text:#?}"
        );
        // The body once: the HTML alternative is not a second copy.
        assert_eq!(
            text.iter()
                .filter(|t| t.contains("Lulea colocation"))
                .count(),
            1,
            "{text:#?}"
        );
        assert!(doc.blocks.iter().all(|b| b.heading == [subject]));
        let names: Vec<&str> = doc.attachments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["storage-runbook.docx", "offices.xlsx", "logo.png"]);
        let docx = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testdata/office/runbook.docx"),
        )
        .unwrap();
        assert_eq!(
            doc.attachments[0].data, docx,
            "attachments arrive byte for byte"
        );
        // And survive the trip from the extraction process.
        let wire = serde_json::to_string(&doc).unwrap();
        let back: Extracted = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn a_mailbox_lists_its_messages_and_hands_each_back() {
        let doc = read("board.mbox");
        assert_eq!(doc.attachments.len(), 3);
        assert_eq!(doc.metadata["messages"], "3");
        assert!(
            doc.blocks[1]
                .text
                .contains("Büroumzug Berlin: neue Schlüsselkarten"),
            "{:#?}",
            doc.blocks
        );
        // Each message is an e-mail of its own, decoded from its own charset.
        let second = parse(DocKind::Eml, &doc.attachments[1].data).unwrap();
        assert_eq!(
            second.metadata["from"],
            "Jana Krüger <jana.krueger@kestrel-storage.example>"
        );
        assert!(
            second.blocks.iter().any(|b| b
                .text
                .contains("Berliner Büro nur noch die neuen Schlüsselkarten")),
            "{:#?}",
            second.blocks
        );
    }
}
