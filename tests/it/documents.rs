//! Office, OpenDocument, RTF and delimited files (`testdata/office`, made by pandoc and
//! LibreOffice from real text): every file indexes, and questions about a heading, a slide, its
//! speaker notes and a table cell find the chunk that answers them, through `hearth ingest` and
//! `hearth search` as a user runs them.

use serde_json::Value;

use crate::common::{Backend, Node, assert_ok, by_status, file_name, root};

/// (question, text the top hit must hold, the page it must start on for slides).
type Question = (&'static str, &'static str, Option<u64>);

const WORD: &[Question] = &[
    // A heading's section.
    (
        "what do I do when a storage node's disk is full",
        "kestrelctl compact",
        None,
    ),
    // A table cell.
    (
        "first response time for a SEV2 incident",
        "First response: 30 minutes",
        None,
    ),
];

const SLIDES: &[Question] = &[
    (
        "How long did the Frankfurt rollback take?",
        "took 11 minutes",
        Some(2),
    ),
    // Speaker notes.
    (
        "why is the US storage migration slower",
        "Thanksgiving",
        Some(3),
    ),
    // A table on a slide.
    (
        "how far along is the kestrel-us migration",
        "Progress: 45 %",
        Some(3),
    ),
];

const SHEETS: &[Question] = &[(
    "phone number of the Lyon office",
    "Phone: +33 4 5550 8841",
    None,
)];

const WORKBOOKS: &[Question] = &[(
    "hotel cap per night in Copenhagen",
    "Hotel cap per night (EUR): 210",
    None,
)];

#[test]
fn office_files_index_and_answer_questions_about_their_parts() {
    let node = Node::new(Backend::Local);
    let dir = root().join("testdata/office");
    let files: &[(&str, &[&[Question]])] = &[
        ("runbook.docx", &[WORD]),
        ("runbook.odt", &[WORD]),
        ("runbook.rtf", &[WORD]),
        ("release-review.pptx", &[SLIDES]),
        ("release-review.odp", &[SLIDES]),
        ("offices.xlsx", &[SHEETS, WORKBOOKS]),
        ("offices.xls", &[SHEETS, WORKBOOKS]),
        ("offices.ods", &[SHEETS, WORKBOOKS]),
        ("offices.csv", &[SHEETS]),
        ("offices.tsv", &[SHEETS]),
    ];
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        files.len(),
        "every file in testdata/office is tested"
    );
    let mut misses = Vec::new();
    for (file, sets) in files {
        // One collection per file: the same text in three formats would otherwise compete.
        let collection = file.replace('.', "-");
        let summary = node.ingest(&collection, &[&dir.join(file)]);
        let ok: Vec<String> = by_status(&summary, "ok")
            .iter()
            .map(|d| file_name(d))
            .collect();
        assert_eq!(ok, [*file], "{summary:#}");
        for (question, holds, page) in sets.iter().flat_map(|s| s.iter()) {
            let out = node.search(&collection, question, &["--top-k", "1"]);
            let hit: &Value = &out["hits"][0];
            let text = hit["text"].as_str().unwrap_or("");
            let on_page = hit["page_start"].as_u64();
            if !text.contains(holds) || (page.is_some() && on_page != *page) {
                misses.push(format!(
                    "{file}: {question:?} → page {on_page:?}: {text:?} (wanted {holds:?} on {page:?})"
                ));
            }
        }
    }
    assert!(misses.is_empty(), "{misses:#?}");
}

/// An XLSX of one sheet: a header row, then `rows` rows of `cols` numbers (written by Python's
/// zipfile, whose zlib compresses the ~250 MB of sheet XML in seconds).
fn numbers_xlsx(path: &std::path::Path, rows: usize, cols: usize) {
    let script = r#"
import sys, zipfile
path, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
letters = [chr(65 + c) for c in range(cols)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    z.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>')
    z.writestr("_rels/.rels", f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
    z.writestr("xl/workbook.xml", f'<workbook {ns}><sheets><sheet name="Readings" sheetId="1" r:id="rId1"/></sheets></workbook>')
    z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>')
    with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:
        f.write(f"<worksheet {ns}><sheetData>".encode())
        head = "".join(f'<c r="{l}1" t="inlineStr"><is><t>sensor {l}</t></is></c>' for l in letters)
        f.write(f'<row r="1">{head}</row>'.encode())
        for r in range(2, rows + 2):
            cells = "".join(f'<c r="{l}{r}"><v>{r * 31 + i}</v></c>' for i, l in enumerate(letters))
            f.write(f'<row r="{r}">{cells}</row>'.encode())
        f.write(b"</sheetData></worksheet>")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .args([rows.to_string(), cols.to_string()])
        .output()
        .unwrap();
    assert_ok(&out);
}

#[test]
fn a_sheet_of_ten_million_cells_fails_at_the_text_limit_in_bounded_memory() {
    // 10^7 cells read whole took more than 512 MiB; read a cell at a time, the sheet stops
    // where its text passes ingest.max_text_bytes (64 MiB), with that reason.
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__EXTRACT_MEMORY_MIB", "512");
    let book = node.dir.path().join("readings.xlsx");
    numbers_xlsx(&book, 1_000_000, 10);
    let summary = node.ingest("sheets", &[&book]);
    let doc = &summary["documents"][0];
    assert_eq!(doc["status"], "failed", "{summary:#}");
    let reason = doc["reason"].as_str().unwrap();
    assert!(reason.contains("more than 64 MiB of text"), "{reason}");
}
