//! Ingesting the committed corpus: idempotence, determinism, and bad input, on both backends.

use std::path::Path;

use hearth_index::decode_chunks;

use serde_json::Value;

use crate::common::{Backend, Node, by_source, by_status, file_name, objects, pdf_of_pages, root};

fn corpus() -> std::path::PathBuf {
    root().join("testdata/corpus")
}

fn corpus_files() -> usize {
    walk_count(&corpus())
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .count()
}

async fn ingest_twice(backend: Backend) {
    let node = Node::new(backend);
    let first = node.ingest("corpus", &[&corpus()]);
    let n = corpus_files();
    assert_eq!(first["failed"], 0, "{first:#}");
    assert_eq!(first["ok"], n, "{first:#}");
    let store = node.store();
    let chunks_before = objects(&store, "chunks/corpus/").await;
    let records_before = objects(&store, "docs/corpus/").await;
    assert_eq!(chunks_before.len(), n);

    let second = node.ingest("corpus", &[&corpus()]);
    assert_eq!(second["duplicate"], n, "{second:#}");
    assert_eq!(second["ok"], 0);
    assert_eq!(
        objects(&store, "chunks/corpus/").await,
        chunks_before,
        "chunks changed on re-ingest"
    );
    assert_eq!(
        objects(&store, "docs/corpus/").await,
        records_before,
        "records changed on re-ingest"
    );

    // What the chunks hold: every chunk fits the embedder, PDFs carry pages, HTML and Markdown
    // carry headings, every chunk carries a unit-length embedding.
    let mut pages = 0;
    let mut headings = 0;
    for (key, bytes) in &chunks_before {
        let chunks = decode_chunks(key, bytes).unwrap();
        assert!(!chunks.is_empty(), "{key} has no chunks");
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.ordinal as usize, i);
            assert!(
                c.token_count <= 256 && c.token_count > 2,
                "{key}#{i}: {} tokens",
                c.token_count
            );
            assert!(!c.text.trim().is_empty());
            assert!(c.span_end > c.span_start);
            let v = c.embedding.as_ref().expect("every chunk is embedded");
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "{key}#{i}: norm {norm}");
            pages += usize::from(c.page_start.is_some());
            headings += usize::from(!c.heading.is_empty());
        }
    }
    assert!(
        pages > 0 && headings > 0,
        "pages {pages}, headings {headings}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingesting_twice_yields_identical_chunks_local() {
    ingest_twice(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingesting_twice_yields_identical_chunks_s3() {
    ingest_twice(Backend::s3()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunking_is_deterministic_across_nodes() {
    let a = Node::new(Backend::Local);
    let b = Node::new(Backend::Local).env("HEARTH__INGEST__WORKERS", "1");
    a.ingest("c", &[&corpus()]);
    b.ingest("c", &[&corpus()]);
    let (files_a, files_b) = (
        objects(&a.store(), "chunks/c/").await,
        objects(&b.store(), "chunks/c/").await,
    );
    assert_eq!(
        files_a.keys().collect::<Vec<_>>(),
        files_b.keys().collect::<Vec<_>>()
    );
    // The chunks are identical; their vectors agree to float noise (another batch composition
    // changes the order of additions in the matrix products).
    for (key, bytes) in &files_a {
        let mut ca = decode_chunks(key, bytes).unwrap();
        let mut cb = decode_chunks(key, &files_b[key]).unwrap();
        for (x, y) in ca.iter_mut().zip(cb.iter_mut()) {
            let (vx, vy) = (x.embedding.take().unwrap(), y.embedding.take().unwrap());
            let cos: f32 = vx.iter().zip(&vy).map(|(p, q)| p * q).sum();
            assert!(cos > 0.9999, "{key}#{}: cosine {cos}", x.ordinal);
        }
        assert_eq!(ca, cb, "{key}");
    }
}

/// Each broken file, and a word its failure reason must contain.
const BROKEN: &[(&str, &str)] = &[
    ("empty.txt", "empty"),
    ("junk.pdf", "binary"),
    ("random.bin", "binary"),
    ("truncated.pdf", "PDF"),
    ("encrypted.pdf", "password"),
    ("bomb.pdf", "limit"),
    ("compressed.txt", "gzip"),
    ("image.md", "PNG"),
    ("huge.txt", "too large"),
    ("encrypted.xlsx", "password"),
    ("bomb.docx", "ZIP bomb"),
    ("runbook.doc", "save it as DOCX"),
    ("huge-image.png", "30000 x 30000 pixels"),
];

/// Files in `testdata/broken` that look suspicious and must ingest all the same.
const NOT_BROKEN: &[&str] = &[
    "utf16.txt",
    "macros.docm",
    "damaged-xref.pdf",
    "huge-range.xlsx",
];

async fn good_and_broken(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for src in [corpus(), root().join("testdata/broken")] {
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && p.extension().is_none_or(|x| x != "py") {
                std::fs::copy(&p, mixed.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    // A 1 GiB file (sparse, so the test costs no disk) is refused before it is read.
    std::fs::File::create(mixed.join("huge.txt"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    let node = Node::new(backend)
        .env("HEARTH__INGEST__EXTRACT_MEMORY_MIB", "512")
        .env("HEARTH__INGEST__EXTRACT_TIMEOUT_SECS", "60");
    let summary = node.ingest("mixed", &[&mixed]);
    let failed: Vec<(String, String)> = by_status(&summary, "failed")
        .iter()
        .map(|d| (file_name(d), d["reason"].as_str().unwrap_or("").to_owned()))
        .collect();
    for (name, word) in BROKEN {
        let reason = failed
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_str());
        let reason = reason.unwrap_or_else(|| panic!("{name} did not fail; failures: {failed:#?}"));
        assert!(
            reason.contains(word),
            "{name}: reason {reason:?} lacks {word:?}"
        );
    }
    assert_eq!(
        failed.len(),
        BROKEN.len(),
        "unexpected failures: {failed:#?}"
    );
    // Every good file made it, including UTF-16 text.
    let ok: Vec<String> = by_status(&summary, "ok")
        .iter()
        .map(|d| file_name(d))
        .collect();
    assert_eq!(ok.len(), corpus_files() + NOT_BROKEN.len(), "{ok:?}");
    for name in NOT_BROKEN {
        assert!(ok.contains(&(*name).to_owned()), "{name}: {ok:?}");
    }

    // Documents refused at the door left nothing behind; those that failed later are recorded
    // with their reason.
    let recorded_failures: Vec<_> = node
        .docs("mixed")
        .into_iter()
        .filter(|r| r["state"] == "failed")
        .collect();
    for r in &recorded_failures {
        assert!(!r["reason"].as_str().unwrap().is_empty());
    }
    let raw = node.store().list("raw/mixed/").await.unwrap();
    assert_eq!(raw.len(), ok.len() + recorded_failures.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn good_files_survive_broken_ones_local() {
    good_and_broken(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn good_files_survive_broken_ones_s3() {
    good_and_broken(Backend::s3()).await;
}

/// A node with one extraction process under these limits (MiB, seconds), and an empty folder
/// for the PDFs to ingest.
fn one_worker_node(memory_mib: &str, timeout_secs: &str) -> (Node, std::path::PathBuf) {
    let node = Node::new(Backend::Local)
        .env("HEARTH__INGEST__EXTRACT_MEMORY_MIB", memory_mib)
        .env("HEARTH__INGEST__EXTRACT_TIMEOUT_SECS", timeout_secs)
        .env("HEARTH__INGEST__WORKERS", "1");
    let dir = node.dir.path().join("pdfs");
    std::fs::create_dir(&dir).unwrap();
    (node, dir)
}

/// pdf-extract's two ways to lose a PDF besides a panic: it runs too long (8,000 pages: it
/// lists the page tree for each page it reads) or takes its process down (a page of 500,000
/// path operations exhausts a 512 MiB limit). poppler reads both, the record names it and
/// says why, and the next document is read by a fresh process.
#[test]
fn pdfs_that_outlast_or_kill_pdf_extract_are_read_by_the_second_engine() {
    let (node, dir) = one_worker_node("512", "20");
    let long: Vec<Vec<u8>> = (1..=8000)
        .map(|i| {
            let line = match i {
                7321 => "the night clerk found a forged cheque from Marrowgate Shipping".to_owned(),
                _ => format!("entry {i} was reconciled by the night clerk"),
            };
            format!("BT /F1 12 Tf 72 700 Td (Ledger page {i}: {line}.) Tj ET").into_bytes()
        })
        .collect();
    std::fs::write(dir.join("a-long.pdf"), pdf_of_pages(&long)).unwrap();
    let mut heavy = b"BT /F1 12 Tf 72 700 Td (The quarterly vault audit counted 4,217 sealed deposit boxes.) Tj ET ".to_vec();
    heavy.extend(b"0 0 m 10 10 l S ".repeat(500_000));
    std::fs::write(dir.join("b-heavy.pdf"), pdf_of_pages(&[heavy])).unwrap();
    let handbook = corpus().join("onboarding-handbook.pdf");
    std::fs::copy(&handbook, dir.join("c-handbook.pdf")).unwrap();

    let summary = node.ingest("pdfs", &[&dir]);
    let ok: Vec<String> = by_status(&summary, "ok")
        .iter()
        .map(|d| file_name(d))
        .collect();
    assert_eq!(ok.len(), 3, "{summary:#}");
    let docs = node.docs("pdfs");
    let long = by_source(&docs, "a-long.pdf");
    assert_eq!(long["engine"], "poppler pdftotext", "{long:#}");
    assert_eq!(long["pages"], 8000, "{long:#}");
    let why = long["warnings"][0].as_str().unwrap_or("");
    assert!(why.contains("did not finish within 10 s"), "{long:#}");
    let heavy = by_source(&docs, "b-heavy.pdf");
    assert_eq!(heavy["engine"], "poppler pdftotext", "{heavy:#}");
    let why = heavy["warnings"][0].as_str().unwrap_or("");
    assert!(why.contains("512 MiB memory limit"), "{heavy:#}");
    assert_eq!(by_source(&docs, "c-handbook.pdf")["engine"], Value::Null);
    // The text is poppler's, page numbers included.
    let hit = node.search("pdfs", "who sent the forged cheque", &["--top-k", "1"]);
    let found = hit["hits"].as_array().unwrap().iter().any(|h| {
        let pages = h["page_start"].as_u64().unwrap_or(0)..=h["page_end"].as_u64().unwrap_or(0);
        h["text"].as_str().unwrap_or("").contains("Marrowgate") && pages.contains(&7321)
    });
    assert!(found, "{hit:#}");
    let hit = node.search(
        "pdfs",
        "how many sealed deposit boxes did the vault audit count",
        &["--top-k", "1"],
    );
    assert!(
        hit["hits"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("4,217"),
        "{hit:#}"
    );

    // One page pdf-extract cannot be asked to leave (lopdf parses its 2,000,000 operations
    // for several seconds, in up to 4 GiB): past 2 s its thread is left running, its process
    // retires after the reply, and a fresh one reads the next document. Poppler gets 1.2 s
    // for the page (~1 s on a quiet machine): on a busy one the document fails instead,
    // saying why; either way the next document must not meet the retiring process.
    let (node, dir) = one_worker_node("4096", "4");
    let mut page = b"BT /F1 12 Tf 72 700 Td (The harbour master logged 38 arrivals and 41 departures in March.) Tj ET ".to_vec();
    page.extend(b"0 0 m 10 10 l S ".repeat(2_000_000));
    std::fs::write(dir.join("a-stuck.pdf"), pdf_of_pages(&[page])).unwrap();
    std::fs::copy(&handbook, dir.join("b-handbook.pdf")).unwrap();
    let summary = node.ingest("pdfs", &[&dir]);
    let ok = by_status(&summary, "ok");
    assert!(
        ok.iter().any(|d| file_name(d) == "b-handbook.pdf"),
        "{summary:#}"
    );
    let docs = node.docs("pdfs");
    let stuck = by_source(&docs, "a-stuck.pdf");
    let why = match stuck["state"].as_str() {
        Some("indexed") => {
            assert_eq!(stuck["engine"], "poppler pdftotext", "{stuck:#}");
            stuck["warnings"][0].as_str().unwrap_or("")
        }
        _ => stuck["reason"].as_str().unwrap_or(""),
    };
    assert!(
        why.contains("pdf-extract did not finish within 2 s"),
        "{stuck:#}"
    );
}
