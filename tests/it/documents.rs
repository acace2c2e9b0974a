//! Office, OpenDocument, RTF and delimited files (`testdata/office`, made by pandoc and
//! LibreOffice from real text): every file indexes, and questions about a heading, a slide, its
//! speaker notes and a table cell find the chunk that answers them, through `hearth ingest` and
//! `hearth search` as a user runs them.

use serde_json::Value;

use crate::common::{Backend, Node, by_status, file_name, root};

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
