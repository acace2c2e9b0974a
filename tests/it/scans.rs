//! Scans and images (`testdata/scans`: pages of real PDFs rendered at 150 dpi and put back
//! into image-only PDFs, PNG, JPEG and a two-page TIFF): OCR in the collection's languages
//! reads them, the record names the engine and the confidence, and a question about a scanned
//! page finds it, through `hearth ingest`, `hearth docs` and `hearth search`.

use serde_json::Value;

use crate::common::{
    Backend, Node, Reply, Server, by_source, by_status, create_key, file_name, pdf_of_objects, root,
};

#[test]
fn scanned_pdfs_and_images_are_read_by_ocr_and_found_by_questions() {
    let node = Node::new(Backend::Local);
    let dir = root().join("testdata/scans");
    // (collection, OCR language, files, (question, what the top hit must hold))
    type Set<'a> = (&'a str, &'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let sets: &[Set] = &[
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
            let r = by_source(&docs, f);
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
    let mixed = by_source(&docs, "gzip-manual-mixed.pdf");
    assert_eq!(
        mixed["engine"], "pdf-extract + tesseract OCR (1 of 2 pages)",
        "{mixed:#}"
    );
    assert_eq!(mixed["ocr"]["pages"], 1, "{mixed:#}");
}

#[test]
fn an_ocr_language_that_is_not_installed_is_refused_with_the_package_to_install() {
    let node = Node::new(Backend::Local);
    let scan = root().join("testdata/scans/gzip-manual-page.png");
    let text = root().join("testdata/corpus/gzip-manual.pdf");
    // `hearth ingest -c C --ocr-languages L FILE`: its exit status and standard error.
    let ingest = |c: &str, languages: &str, file: &std::path::Path| {
        let out = node.run(&[
            "ingest",
            "-c",
            c,
            "--ocr-languages",
            languages,
            file.to_str().unwrap(),
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = ingest("klingon", "tlh", &scan);
    assert!(!ok);
    assert!(
        err.contains("OCR language tlh is not installed") && err.contains("tesseract-ocr-tlh"),
        "{err}"
    );
    let (ok, err) = ingest("bad", "../eng", &scan);
    assert!(!ok);
    assert!(err.contains("is not a Tesseract language name"), "{err}");
    // A collection keeps the languages it was made with.
    let (ok, err) = ingest("de", "deu", &text);
    assert!(ok, "{err}");
    let (ok, err) = ingest("de", "eng", &scan);
    assert!(!ok);
    assert!(
        err.contains("OCR languages deu (asked: eng)") && err.contains("cannot change"),
        "{err}"
    );
}

/// A PDF of `pages` pages, each showing the same blank 400 x 520 gray image (large enough to
/// be taken for a scan).
fn image_only_pdf(pages: usize) -> Vec<u8> {
    let (w, h) = (400, 520);
    let img = vec![0xffu8; w * h];
    let content = b"q 612 0 0 792 0 0 cm /Im1 Do Q";
    let mut objs: Vec<Vec<u8>> = Vec::new();
    objs.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    let kids: Vec<String> = (0..pages).map(|i| format!("{} 0 R", 5 + i)).collect();
    objs.push(
        format!(
            "<< /Type /Pages /Count {pages} /Kids [{}] >>",
            kids.join(" ")
        )
        .into_bytes(),
    );
    let mut image = format!(
        "<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray /BitsPerComponent 8 /Length {} >>\nstream\n",
        img.len()
    )
    .into_bytes();
    image.extend_from_slice(&img);
    image.extend_from_slice(b"\nendstream");
    objs.push(image);
    let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
    stream.extend_from_slice(content);
    stream.extend_from_slice(b"\nendstream");
    objs.push(stream);
    for _ in 0..pages {
        objs.push(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 3 0 R >> >> /Contents 4 0 R >>".to_vec());
    }
    pdf_of_objects(&objs)
}

#[test]
fn five_thousand_image_only_pages_are_bounded_per_page_and_show_progress() {
    // A 30 s limit per extraction: the whole document takes minutes, each page ~50 ms. The
    // limit covers the text-layer pass before OCR's first page too: ~6 s for 5,000 pages in a
    // release build (pdf-extract lists the page tree for every page it reads), longer in a
    // debug build on a busy machine (a 10 s limit failed there).
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__EXTRACT_TIMEOUT_SECS", "30");
    let pdf = node.dir.path().join("pages.pdf");
    std::fs::write(&pdf, image_only_pdf(5000)).unwrap();
    let mut ingest = node
        .command()
        .args(["ingest", "--json", "-c", "pages"])
        .arg(&pdf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut progress = Vec::new();
    while ingest.try_wait().unwrap().is_none() {
        assert!(started.elapsed().as_secs() < 900, "ingest did not end");
        let out = node.run(&["docs", "--json", "-c", "pages"]);
        if let Ok(docs) = serde_json::from_slice::<Vec<Value>>(&out.stdout)
            && let Some(p) = docs.first().and_then(|d| d["progress"].as_str())
            && progress.last().is_none_or(|l: &String| l != p)
        {
            progress.push(p.to_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = ingest.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = &summary["documents"][0];
    assert_eq!(doc["status"], "failed", "{summary:#}");
    assert_eq!(
        doc["reason"],
        "no text in the PDF's 5000 page(s): it has no text layer, and OCR found none (blank pages or pictures)"
    );
    assert!(
        progress.len() >= 2
            && progress
                .iter()
                .all(|p| p.ends_with(" of 5000 pages recognised")),
        "{progress:?}"
    );
    let rec = &node.docs("pages")[0];
    assert!(rec.get("progress").is_none(), "{rec:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_a_collection_has_ocr_languages_and_a_huge_image_is_refused() {
    use serde_json::json;
    let node = Node::new(Backend::Local);
    let s = node.serve(&["--open"]).await;
    let r = s
        .post_json(
            "/v1/collections",
            &json!({"name": "de", "ocr_languages": ["deu"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json());
    assert_eq!(r.json()["ocr_languages"], json!(["deu"]));
    let m = s
        .post_json(
            "/v1/collections",
            &json!({"name": "tlh", "ocr_languages": ["tlh"]}),
        )
        .await
        .error(400, "invalid_request");
    assert!(m.contains("tesseract-ocr-tlh"), "{m}");
    s.post_json(
        "/v1/collections",
        &json!({"name": "de", "ocr_languages": ["eng"]}),
    )
    .await
    .error(409, "conflict");
    let huge = std::fs::read(root().join("testdata/broken/huge-image.png")).unwrap();
    let m = s
        .upload("de", "huge-image.png", &huge, None)
        .await
        .error(413, "payload_too_large");
    assert!(m.contains("30000 x 30000 pixels"), "{m}");
    // A German scan in the German collection: read, with the confidence in the record.
    let tiff = std::fs::read(root().join("testdata/scans/gzip-de-pages.tiff")).unwrap();
    let r = s.upload("de", "gzip-de-pages.tiff", &tiff, None).await;
    assert_eq!(r.status, 202, "{}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let done = s.wait_done("de", &id).await;
    assert_eq!(done["status"], "indexed", "{done}");
    assert_eq!(done["ocr"]["pages"], 2, "{done}");
    assert!(done["ocr"]["confidence"].as_f64().unwrap() > 80.0, "{done}");
}

/// What another tenant's key gets from the routes OCR touched: refusals before any size or
/// settings check (no 409 naming the languages, no 413 sizing the image), no document counts
/// of a collection it cannot read in `/metrics`, and no duplicate hint for bytes another
/// collection holds.
#[tokio::test(flavor = "multi_thread")]
async fn another_collections_key_learns_nothing_of_its_scans_or_settings() {
    use serde_json::json;
    let node = Node::new(Backend::Local);
    let admin = create_key(&node, "admin", "admin", &[], &[]);
    let outsider = create_key(&node, "outsider", "writer", &["other"], &[]);
    let reader = create_key(&node, "de-reader", "reader", &["de"], &[]);
    let s = node.serve(&[]).await;
    async fn create(s: &Server, key: &str, body: Value) -> Reply {
        s.call(Some(key), "POST", "/v1/collections", Some(body))
            .await
    }
    const OCTETS: &str = "application/octet-stream";

    let r = create(&s, &admin, json!({"name": "de", "ocr_languages": ["deu"]})).await;
    assert_eq!(r.status, 201, "{}", r.json());
    let tiff = std::fs::read(root().join("testdata/scans/gzip-de-pages.tiff")).unwrap();
    let r = s
        .upload_as(&admin, "de", "gzip-de-pages.tiff", OCTETS, tiff.clone())
        .await;
    assert_eq!(r.status, 202, "{}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();

    // Asking for other languages on a collection it cannot see: 403, not the 409 that
    // would name the collection's languages.
    let m = create(
        &s,
        &outsider,
        json!({"name": "de", "ocr_languages": ["eng"]}),
    )
    .await
    .error(403, "forbidden");
    assert!(!m.contains("deu"), "{m}");
    for path in [
        "/v1/collections/de".to_owned(),
        format!("/v1/collections/de/documents/{id}"),
    ] {
        s.call(Some(&outsider), "GET", &path, None)
            .await
            .error(403, "forbidden");
    }
    // The image size check comes after the key's: 403 for the outsider and for a reader.
    let huge = std::fs::read(root().join("testdata/broken/huge-image.png")).unwrap();
    for key in [&outsider, &reader] {
        s.upload_as(key, "de", "huge-image.png", OCTETS, huge.clone())
            .await
            .error(403, "forbidden");
    }
    create(&s, &reader, json!({"name": "de", "ocr_languages": ["deu"]}))
        .await
        .error(403, "forbidden");
    // No key at all: 401 before anything.
    let body = json!({"name": "de", "ocr_languages": ["eng"]});
    s.call(None, "POST", "/v1/collections", Some(body))
        .await
        .error(401, "unauthorized");
    // The same bytes in its own collection: a new document, no hint that "de" holds them.
    let r = create(&s, &outsider, json!({"name": "other"})).await;
    assert_eq!(r.status, 201, "{}", r.json());
    let r = s
        .upload_as(&outsider, "other", "copy.tiff", OCTETS, tiff)
        .await;
    assert_eq!(r.status, 202, "{}", r.json());
    assert_eq!(r.json()["duplicate"], false, "{}", r.json());
    // /metrics: the admin sees both collections' documents, the outsider only its own.
    let metrics = |key: String| {
        let s = &s;
        async move {
            let r = s.call(Some(&key), "GET", "/metrics", None).await;
            assert_eq!(r.status, 200);
            String::from_utf8(r.body).unwrap()
        }
    };
    let all = metrics(admin.clone()).await;
    for c in ["de", "other"] {
        let label = format!("hearth_documents{{collection=\"{c}\"");
        assert!(all.contains(&label), "{all}");
    }
    // An admin scoped to "other" is an admin of "other" only: its counts, not "de"'s.
    let other_admin = create_key(&node, "other-admin", "admin", &["other"], &[]);
    let scoped = metrics(other_admin).await;
    assert!(!scoped.contains("collection=\"de\""), "{scoped}");
    // Without a key, nothing.
    s.call(None, "GET", "/metrics", None)
        .await
        .error(401, "unauthorized");
    let own = metrics(outsider.clone()).await;
    assert!(!own.contains("collection=\"de\""), "{own}");
    assert!(
        own.contains("hearth_documents{collection=\"other\""),
        "{own}"
    );
}
