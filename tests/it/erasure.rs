//! Erasure: after a document is deleted and the collection compacted, no file of the object
//! store and no file of the node's local caches holds any of its bytes, its chunk text or its
//! vectors, while the other documents' are still there (the scan's own check). BM25 no longer
//! finds its words.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_index::{BlobStore, CollectionName, DocId, decode_chunks, keys};

use crate::common::{Backend, Node, assert_ok, files_under, objects, root};

/// Needles for one document: 32-byte windows of its bytes, 40-byte pieces of its chunk texts
/// and the first 8 components (32 bytes, little-endian f32) of each chunk's vector.
async fn needles(store: &BlobStore, c: &CollectionName, id: &DocId, file: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let bytes = std::fs::read(file).unwrap();
    for start in (0..bytes.len().saturating_sub(32)).step_by(bytes.len() / 24 + 1) {
        out.push(bytes[start..start + 32].to_vec());
    }
    let key = keys::chunks(c, id);
    let chunks = decode_chunks(&key, &store.get(&key).await.unwrap()).unwrap();
    assert!(!chunks.is_empty());
    for ch in &chunks {
        let t = ch.text.as_bytes();
        if t.len() >= 60 {
            out.push(t[10..50].to_vec());
        }
        let v = ch.embedding.as_ref().expect("embedded");
        out.push(v[..8].iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    out
}

/// How many needles occur somewhere in `files`, and one example.
fn occurrences(files: &BTreeMap<String, Vec<u8>>, needles: &[Vec<u8>]) -> (usize, Option<String>) {
    let mut n = 0;
    let mut example = None;
    for needle in needles {
        if let Some((name, _)) = files
            .iter()
            .find(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_slice()))
        {
            n += 1;
            example
                .get_or_insert_with(|| format!("{:?} in {name}", String::from_utf8_lossy(needle)));
        }
    }
    (n, example)
}

async fn erase(backend: Backend) {
    let node = Node::new(backend);
    let raw_store = node.store();
    let gone = root().join("testdata/corpus/incident-runbook.md");
    let kept = root().join("testdata/corpus/libffi-basics.txt");
    node.ingest("docs", &[&gone, &kept]);
    let c = CollectionName::new("docs").unwrap();
    let id_of = |name: &str| -> DocId {
        let d = node
            .docs("docs")
            .into_iter()
            .find(|d| d["source"].as_str().unwrap().ends_with(name))
            .unwrap();
        d["doc_id"].as_str().unwrap().parse().unwrap()
    };
    let (gone_id, kept_id) = (id_of("incident-runbook.md"), id_of("libffi-basics.txt"));
    let gone_needles = needles(&raw_store, &c, &gone_id, &gone).await;
    let kept_needles = needles(&raw_store, &c, &kept_id, &kept).await;
    // Everything the node holds: the store's objects and every local file.
    let scan = || async {
        let mut all = objects(&raw_store, "").await;
        all.extend(files_under(&node.dir.path().join("data")));
        all
    };
    let before = scan().await;
    let (n, _) = occurrences(&before, &gone_needles);
    assert_eq!(
        n,
        gone_needles.len(),
        "the scan must see every needle before the delete"
    );
    let hits = node.search("docs", "Kestrel storage cluster", &["--mode", "bm25"]);
    assert!(!hits["hits"].as_array().unwrap().is_empty());

    let out = node.run(&["delete", "-c", "docs", &gone_id.to_hex()]);
    assert_ok(&out);
    let out = node.run(&["compact", "-c", "docs"]);
    assert_ok(&out);

    let after = scan().await;
    let (n, example) = occurrences(&after, &gone_needles);
    assert_eq!(
        n, 0,
        "{n} needles of the deleted document remain, e.g. {example:?}"
    );
    let (n, _) = occurrences(&after, &kept_needles);
    assert_eq!(
        n,
        kept_needles.len(),
        "the other document must be untouched"
    );
    let hits = node.search("docs", "Kestrel storage cluster", &["--mode", "bm25"]);
    for h in hits["hits"].as_array().unwrap() {
        assert_ne!(
            h["doc_id"],
            gone_id.to_hex(),
            "BM25 still finds the deleted document"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_documents_leave_nothing_behind_local() {
    erase(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_documents_leave_nothing_behind_s3() {
    erase(Backend::s3()).await;
}
