//! Encryption at rest: with a key-encryption key configured, nothing in the object store holds
//! the plaintext of an ingested document (scanned byte by byte, local files and S3 objects as
//! the server stores them), everything still works through hearth, a wrong or missing key is a
//! clear error, and rotating the key re-wraps the data keys without touching any content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hearth_index::BlobStore;
use hearth_index::fixtures::SeaweedFs;
use serde_json::Value;

use crate::common::{Backend, Node, assert_ok, files_under, objects, root};

const KEK_A: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
const KEK_B: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9f";

fn corpus(name: &str) -> PathBuf {
    root().join("testdata/corpus").join(name)
}

fn files() -> Vec<PathBuf> {
    [
        "incident-runbook.md",
        "libffi-basics.txt",
        "qemu-img.html",
        "gzip-manual.pdf",
    ]
    .iter()
    .map(|f| corpus(f))
    .collect()
}

/// Needles: 32-byte windows of every document's bytes and the start of every chunk's text.
fn needles(node: &Node) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files() {
        let bytes = std::fs::read(&f).unwrap();
        for start in (0..bytes.len().saturating_sub(32)).step_by(bytes.len() / 16 + 1) {
            out.push(bytes[start..start + 32].to_vec());
        }
    }
    for q in [
        "storage incident severity",
        "convert disk image",
        "compression",
        "closure",
    ] {
        let hits = node.search("docs", q, &["--top-k", "5"]);
        for h in hits["hits"].as_array().unwrap() {
            let text = h["text"].as_str().unwrap();
            let t: String = text.chars().take(40).collect();
            if t.len() >= 24 {
                out.push(t.into_bytes());
            }
        }
    }
    assert!(out.len() > 64, "too few needles: {}", out.len());
    out
}

/// (object key, needle) pairs where the needle occurs in the object.
fn found(objects: &BTreeMap<String, Vec<u8>>, needles: &[Vec<u8>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, bytes) in objects {
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_slice()) {
                out.push((key.clone(), String::from_utf8_lossy(n).into_owned()));
            }
        }
    }
    out
}

fn assert_no_plaintext(objects: &BTreeMap<String, Vec<u8>>, needles: &[Vec<u8>]) {
    assert!(objects.len() > 8, "{:?}", objects.keys());
    let hits = found(objects, needles);
    assert!(hits.is_empty(), "plaintext in the store: {hits:?}");
}

fn ingest_all(node: &Node) {
    let paths = files();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let summary = node.ingest("docs", &refs);
    assert_eq!(summary["ok"], 4, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_store_holds_no_plaintext_and_rotation_rewraps_only_the_keyring() {
    let node = Node::new(Backend::Local);
    let kek_a = node.dir.path().join("kek-a");
    let kek_b = node.dir.path().join("kek-b");
    std::fs::write(&kek_a, format!("{KEK_A}\n")).unwrap();
    std::fs::write(&kek_b, KEK_B).unwrap();
    let with = |kek: &Path| {
        Node::new(Backend::Local)
            .env(
                "HEARTH_DATA_DIR",
                &node.dir.path().join("data").display().to_string(),
            )
            .env(
                "HEARTH__STORAGE__ENCRYPTION__KEK_FILE",
                &kek.display().to_string(),
            )
    };
    let a = with(&kek_a);
    ingest_all(&a);
    let needles = needles(&a);
    let store_dir = node.dir.path().join("data/store");
    let before = files_under(&store_dir);
    assert!(before.keys().any(|k| k.ends_with("crypto/keyring.json")));
    assert_no_plaintext(&before, &needles);

    // The report says so.
    let out = a.run(&["residency", "--json"]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["encryption"]["at_rest"], true, "{rep}");
    assert_eq!(rep["encryption"]["index_cache_sealed"], false, "{rep}");
    assert_eq!(
        rep["encryption"]["key_source"],
        format!("file:{}", kek_a.display())
    );

    // Without a key, or with a wrong one: a clear error, nothing read or written.
    let plain = Node::new(Backend::Local).env(
        "HEARTH_DATA_DIR",
        &node.dir.path().join("data").display().to_string(),
    );
    let out = plain.run(&["search", "-c", "docs", "severity"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is encrypted") && err.contains("kek_file"),
        "{err}"
    );
    let b = with(&kek_b);
    let out = b.run(&["search", "-c", "docs", "severity"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not open this store's data keys"),
        "{err}"
    );
    assert_eq!(
        files_under(&store_dir),
        before,
        "a refused open wrote nothing"
    );

    // Rotation: only the keyring changes; the new key opens everything, the old one nothing.
    let ids = |v: Value| -> Vec<Value> {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["chunk_id"].clone())
            .collect()
    };
    let hits_a = ids(a.search("docs", "storage incident severity", &[]));
    assert!(!hits_a.is_empty());
    let out = a.run(&[
        "keys",
        "rotate-kek",
        "--new-kek-file",
        &kek_b.display().to_string(),
    ]);
    assert_ok(&out);
    let after = files_under(&store_dir);
    // Besides the keyring, only the audit log grew (the commands since `before`, the rotation
    // last, sealed under the new key).
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v) && !k.contains("/store/audit/"))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let sealed = BlobStore::open(&hearth_index::StorageConfig {
        data_dir: node.dir.path().join("data"),
        encryption: hearth_index::EncryptionConfig {
            kek_file: Some(kek_b.clone()),
            kek_env: None,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let audit = objects(&sealed, "audit/").await;
    let last = audit
        .iter()
        .filter(|(k, _)| !k.ends_with("HEAD.json"))
        .map(|(_, v)| serde_json::from_slice::<Value>(v).unwrap())
        .next_back()
        .unwrap();
    assert_eq!(last["target"], "hearth keys rotate-kek", "{last}");
    assert_eq!(last["outcome"], 0, "{last}");
    assert!(changed[0].ends_with("crypto/keyring.json"), "{changed:?}");
    assert_eq!(
        ids(b.search("docs", "storage incident severity", &[])),
        hits_a
    );
    let out = a.run(&["docs", "-c", "docs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_store_holds_no_plaintext() {
    let s3 = SeaweedFs::shared().fresh_bucket();
    let node = Node::new(Backend::S3(s3.clone()))
        .env("HEARTH_TEST_KEK", KEK_A)
        .env("HEARTH__STORAGE__ENCRYPTION__KEK_ENV", "HEARTH_TEST_KEK");
    ingest_all(&node);
    let needles = needles(&node);
    // The objects as the S3 server holds them (read without hearth's key).
    let raw = objects(&BlobStore::s3(&s3).unwrap(), "").await;
    assert!(raw.contains_key("crypto/keyring.json"));
    assert_no_plaintext(&raw, &needles);
    // Turning encryption on for a store that already holds plaintext is refused.
    let plain_bucket = SeaweedFs::shared().fresh_bucket();
    let plain = Node::new(Backend::S3(plain_bucket.clone()));
    plain.ingest("docs", &[&corpus("libffi-basics.txt")]);
    // The scan's own check: an unencrypted store shows the document's bytes to it.
    let plain_raw = objects(&BlobStore::s3(&plain_bucket).unwrap(), "").await;
    assert!(
        !found(&plain_raw, &needles).is_empty(),
        "the scan cannot see plaintext"
    );
    let late = Node::new(Backend::S3(plain_bucket))
        .env("HEARTH_TEST_KEK", KEK_A)
        .env("HEARTH__STORAGE__ENCRYPTION__KEK_ENV", "HEARTH_TEST_KEK");
    let out = late.run(&["docs", "-c", "docs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds unencrypted objects"), "{err}");
}

/// `index.encrypt_cache`: on an encrypted store, the node's local index cache is sealed too,
/// so no file of the data directory (store or cache) holds a document's bytes, its chunk
/// text or its name. Turning it on deletes the plaintext cache that was there; search works
/// from a fresh process each time (the cache is opened, and BM25 and the graph rebuilt in
/// memory, by every command); without an encrypted store it is refused with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_index_cache_holds_no_plaintext() {
    let node = Node::new(Backend::Local);
    let data = node.dir.path().join("data");
    let kek = node.dir.path().join("kek");
    std::fs::write(&kek, KEK_A).unwrap();
    let encrypted = || {
        Node::new(Backend::Local)
            .env("HEARTH_DATA_DIR", &data.display().to_string())
            .env(
                "HEARTH__STORAGE__ENCRYPTION__KEK_FILE",
                &kek.display().to_string(),
            )
    };
    let plain_cache = encrypted();
    ingest_all(&plain_cache);
    let mut needles = needles(&plain_cache);
    needles.extend(
        [
            "incident-runbook.md",
            "libffi-basics.txt",
            "gzip-manual.pdf",
        ]
        .map(|n| n.as_bytes().to_vec()),
    );
    // The scan's own check: the plaintext cache shows chunk text and names to it.
    let cache = found(&files_under(&data.join("index")), &needles);
    assert!(
        cache.len() > 8,
        "the scan cannot see the plaintext cache: {cache:?}"
    );

    let sealed = encrypted().env("HEARTH__INDEX__ENCRYPT_CACHE", "true");
    let hits = sealed.search("docs", "convert a disk image to qcow2", &["--top-k", "1"]);
    assert!(
        hits["hits"][0]["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("qemu-img.html"),
        "{hits:#}"
    );
    sealed.ingest(
        "docs",
        &[&root().join("testdata/corpus/onboarding-handbook.pdf")],
    );
    let hits = sealed.search("docs", "storage incident severity", &["--mode", "bm25"]);
    assert!(
        hits["hits"][0]["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("incident-runbook.md"),
        "{hits:#}"
    );
    // Re-embedded with another model, the collection stays sealed: the new model's chunk
    // files are encrypted like every object, its index directory holds no plaintext (the
    // scan below covers both), and it answers with the new model.
    let sealed_e5 = encrypted().env("HEARTH__INDEX__ENCRYPT_CACHE", "true").env(
        "HEARTH__ENGINE__EMBEDDERS",
        "{ multilingual-e5-small = \"multilingual-e5-small/e5-small-q4.bin\" }",
    );
    let out = sealed_e5.run(&[
        "reembed",
        "-c",
        "docs",
        "--embedder",
        "multilingual-e5-small",
        "--json",
    ]);
    crate::common::assert_ok(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["documents"], 5, "{report}");
    let hits = sealed_e5.search("docs", "convert a disk image to qcow2", &["--top-k", "1"]);
    assert!(
        hits["hits"][0]["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("qemu-img.html"),
        "{hits:#}"
    );
    assert!(
        data.join("index/docs.v1").is_dir() && !data.join("index/docs").exists(),
        "the new model's index directory replaces the old one"
    );
    let all = files_under(&data);
    assert!(
        all.keys().any(|k| k.contains("/chunks/docs/v1/")),
        "{:?}",
        all.keys().collect::<Vec<_>>()
    );
    assert_no_plaintext(&all, &needles);
    assert!(
        !all.keys()
            .any(|k| k.contains("/tantivy/") || k.contains(".hnsw.") || k.contains(".broken")),
        "{:?}",
        all.keys().collect::<Vec<_>>()
    );

    let out = sealed.run(&["residency", "--json"]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["encryption"]["index_cache_sealed"], true, "{rep}");

    // Sealing needs an encrypted store.
    let bare = Node::new(Backend::Local).env("HEARTH__INDEX__ENCRYPT_CACHE", "true");
    let out = bare.run(&["search", "-c", "docs", "severity"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("index.encrypt_cache needs an encrypted store"),
        "{err}"
    );
}
