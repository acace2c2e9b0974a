//! The web page end to end in headless Chromium (tests/browser/ask.mjs, playwright-core
//! driving Debian's /usr/bin/chromium): upload a file and three Office files, wait until they
//! are indexed, ask, see the answer stream in with a citation that opens its passage.

use crate::common::{Backend, Node, root};

#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_uploads_asks_and_shows_a_cited_streamed_answer() {
    let script = root().join("tests/browser/ask.mjs");
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "browser test dependencies missing: run scripts/browser-deps.sh"
    );
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
