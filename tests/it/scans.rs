//! Scans and images (`testdata/scans`: pages of real PDFs rendered at 150 dpi and put back
//! into image-only PDFs, PNG, JPEG and a two-page TIFF): OCR in the collection's languages
//! reads them, the record names the engine and the confidence, and a question about a scanned
//! page finds it, through `hearth ingest`, `hearth docs` and `hearth search`.

use serde_json::Value;

use crate::common::{Backend, Node, by_status, file_name, root};

fn record<'a>(docs: &'a [Value], file: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["source"].as_str().is_some_and(|s| s.ends_with(file)))
        .unwrap_or_else(|| panic!("no document {file}: {docs:#?}"))
}

#[test]
fn scanned_pdfs_and_images_are_read_by_ocr_and_found_by_questions() {
    let node = Node::new(Backend::Local);
    let dir = root().join("testdata/scans");
    let sets: &[(&str, &str, &[&str], &[(&str, &str)])] = &[
        (
            "scans-en",
            "eng",
            &[
                "gzip-manual-scan.pdf",
                "gzip-manual-mixed.pdf",
                "gzip-manual-page.png",
                "gzip-manual-page.jpg",
            ],
            &[
                ("how do I keep the input files when compressing", "--keep"),
                (
                    "which gzip option converts end of lines in text files",
                    "--ascii",
                ),
            ],
        ),
        (
            "scans-de",
            "deu",
            &["gzip-de-scan.pdf", "gzip-de-pages.tiff"],
            &[("Welche Endungen erkennt gunzip außerdem?", ".tgz")],
        ),
    ];
    let mut misses = Vec::new();
    for (collection, lang, files, questions) in sets {
        let paths: Vec<_> = files.iter().map(|f| dir.join(f)).collect();
        let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
        let summary = node.ingest_with(collection, &refs, &["--ocr-languages", lang]);
        let mut ok: Vec<String> = by_status(&summary, "ok")
            .iter()
            .map(|d| file_name(d))
            .collect();
        ok.sort();
        let mut want: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
        want.sort();
        assert_eq!(ok, want, "{summary:#}");
        let docs = node.docs(collection);
        for f in *files {
            let r = record(&docs, f);
            let confidence = r["ocr"]["confidence"].as_f64().unwrap_or(0.0);
            assert!(confidence > 80.0, "{f}: {r:#}");
            let engine = r["engine"].as_str().unwrap_or("");
            assert!(engine.contains("tesseract OCR"), "{f}: {r:#}");
        }
        for (question, holds) in *questions {
            let out = node.search(collection, question, &["--top-k", "1"]);
            let text = out["hits"][0]["text"].as_str().unwrap_or("");
            if !text.contains(holds) {
                misses.push(format!(
                    "{collection}: {question:?} → {text:?} (wanted {holds:?})"
                ));
            }
        }
    }
    assert!(misses.is_empty(), "{misses:#?}");
    // The mixed PDF: page 1 from its text layer, page 2 recognised.
    let docs = node.docs("scans-en");
    let mixed = record(&docs, "gzip-manual-mixed.pdf");
    assert_eq!(
        mixed["engine"], "pdf-extract + tesseract OCR (1 of 2 pages)",
        "{mixed:#}"
    );
    assert_eq!(mixed["ocr"]["pages"], 1, "{mixed:#}");
}

#[test]
fn an_ocr_language_that_is_not_installed_is_refused_with_the_package_to_install() {
    let node = Node::new(Backend::Local);
    let file = root().join("testdata/scans/gzip-manual-page.png");
    let out = node.run(&[
        "ingest",
        "-c",
        "klingon",
        "--ocr-languages",
        "tlh",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OCR language tlh is not installed") && err.contains("tesseract-ocr-tlh"),
        "{err}"
    );
    let out = node.run(&[
        "ingest",
        "-c",
        "bad",
        "--ocr-languages",
        "../eng",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Tesseract language name"), "{err}");
}
