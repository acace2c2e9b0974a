//! The web page end to end in headless Chromium (tests/browser/ask.mjs, playwright-core
//! driving Debian's /usr/bin/chromium): upload a file and three Office files, wait until they
//! are indexed, ask, see the answer stream in with a citation that opens its passage.

use crate::common::{Backend, Node, root};

/// Chromium and playwright-core, installed by scripts/browser-deps.sh.
fn require_browser() {
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "browser test dependencies missing: run scripts/browser-deps.sh"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_uploads_asks_and_shows_a_cited_streamed_answer() {
    let script = root().join("tests/browser/ask.mjs");
    require_browser();
    let node = Node::new(Backend::Local);
    let s = node.serve(&[]).await;
    let out = node.run(&["keys", "create", "--name", "browser", "--role", "writer"]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let page = s.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let url = s.url.clone();
    let api_key = key.clone();
    let artifacts = node.dir.path().join("artifacts");
    // Office files and a scan go through the same file input after the first upload.
    const MORE: [&str; 4] = [
        "office/runbook.docx",
        "office/release-review.pptx",
        "office/offices.xlsx",
        "scans/gzip-manual-page.png",
    ];
    let more_files = MORE
        .iter()
        .map(|f| root().join("testdata").join(f).display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args([
                url.as_str(),
                &root()
                    .join("testdata/corpus/qemu-img.html")
                    .display()
                    .to_string(),
                "How do I convert a disk image to qcow2?",
                "qemu-img",
            ])
            .env("HEARTH_API_KEY", key)
            .env("HEARTH_TEST_COLLECTION", "browser")
            .env("HEARTH_TEST_MORE_FILES", more_files)
            .env("HEARTH_TEST_ARTIFACTS", artifacts)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("PASS"), "{stdout}\n{stderr}");
    // What the page did is visible through the API too: the document it uploaded is indexed.
    let docs = s
        .send(
            s.client
                .get(format!(
                    "{}/v1/collections/browser/documents?status=indexed",
                    s.url
                ))
                .bearer_auth(&api_key),
        )
        .await
        .json();
    let mut indexed: Vec<&str> = docs["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["source"].as_str())
        .collect();
    indexed.sort_unstable();
    let mut expected = vec!["qemu-img.html"];
    expected.extend(MORE.map(|f| f.rsplit('/').next().unwrap()));
    expected.sort_unstable();
    assert_eq!(indexed, expected, "{docs}");
}

/// Open mode (no keys, what the quickstart runs) against other sites' pages in a real browser
/// (tests/browser/cross-site.mjs): a cross-site form and `no-cors` fetch that would upload into
/// the user's collection, and a DNS-rebinding name for hearth itself, are refused; hearth's own
/// page still creates a collection and uploads; nothing the attacker sent reaches the store.
#[tokio::test(flavor = "multi_thread")]
async fn open_mode_refuses_other_sites_pages_and_rebound_names() {
    let script = root().join("tests/browser/cross-site.mjs");
    require_browser();
    let node = Node::new(Backend::Local);
    let s = node.serve(&["--open"]).await;
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "{stdout}\n{stderr}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(seen["form"], 403, "{seen}");
    assert_eq!(seen["fetch"], 403, "{seen}");
    assert_eq!(seen["rebound_page"], 421, "{seen}");
    assert_eq!(seen["rebound_api"], 421, "{seen}");
    assert!(
        !seen["rebound_api_body"].as_str().unwrap().contains("own"),
        "{seen}"
    );
    assert_eq!(seen["own_collection"], 201, "{seen}");
    assert_eq!(seen["own"], 202, "{seen}");
    // Nothing of the attacker's is stored: the collection holds the page's own document only,
    // and no object holds the attacker's text.
    let docs = s.get("/v1/collections/own/documents").await.json();
    let sources: Vec<&str> = docs["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["source"].as_str())
        .collect();
    assert_eq!(sources, ["own.txt"], "{docs}");
    let stored = crate::common::objects(&node.store(), "").await;
    assert!(
        stored
            .values()
            .all(|v| !String::from_utf8_lossy(v).contains("planted")),
        "{:?}",
        stored.keys().collect::<Vec<_>>()
    );
}
