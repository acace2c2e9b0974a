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

/// Uploads from several clients, and background ingestion, while the collection is deleted:
/// the delete succeeds, no upload after it is accepted, nothing of the deleted documents is
/// left in the store or the node's files once the work under way has finished, and a
/// collection of the same name created afterwards holds only its own documents.
async fn delete_a_collection_under_uploads(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const MARK: &str = "Quillmoor";
    let node = Node::new(backend)
        .env("HEARTH__INGEST__WORKERS", "2")
        .env("HEARTH__SERVER__RATE_PER_MINUTE", "100000");
    let store = node.store();
    let server = Arc::new(node.serve(&["--open"]).await);
    let r = server
        .post_json("/v1/collections", &serde_json::json!({"name": "ledger"}))
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.error(201, ""));

    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for t in 0..4 {
        let (server, accepted, stop) = (server.clone(), accepted.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // (status, when the request was sent)
            let mut sent = Vec::new();
            for i in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let text = format!(
                    "Ledger note {t}-{i}. The {MARK} account moved {} crowns to the harbour fund.\n\n{}",
                    i * 7 + t,
                    "The clerk checked each entry against the day book and signed it. ".repeat(40)
                );
                let at = Instant::now();
                let r = server
                    .upload("ledger", &format!("note-{t}-{i}.txt"), text.as_bytes(), None)
                    .await;
                if r.status == 202 {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                sent.push((r.status, at, String::from_utf8_lossy(&r.body).into_owned()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.load(Ordering::SeqCst) < 24 {
        assert!(
            Instant::now() < deadline,
            "24 uploads were not accepted in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = server.delete("/v1/collections/ledger").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let deleted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut after = 0;
    for client in clients {
        for (status, at, body) in client.await.unwrap() {
            assert!(status < 500, "an upload answered {status}: {body}");
            if at > deleted_at {
                after += 1;
                assert_eq!(status, 404, "an upload after the delete: {body}");
            }
        }
    }
    assert!(after > 0, "no upload was sent after the delete");

    // Work under way when the collection went finishes in the background; once it has,
    // nothing of the deleted documents may remain anywhere the node keeps data.
    let data = node.dir.path().join("data");
    let leftovers = || async {
        let mut all = objects(&store, "").await;
        all.extend(files_under(&data));
        all.into_iter()
            .filter(|(_, b)| b.windows(MARK.len()).any(|w| w == MARK.as_bytes()))
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = leftovers().await;
        let backlog = server.get("/metrics").await;
        let idle = String::from_utf8_lossy(&backlog.body).contains("\nhearth_ingest_backlog 0\n");
        if left.is_empty() && idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "90 s after the delete, the deleted documents remain in {left:?} (backlog idle: {idle})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A collection of the same name starts empty (it may have to wait for the work on the
    // old one to finish: 409 until then).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = server
            .post_json("/v1/collections", &serde_json::json!({"name": "ledger"}))
            .await;
        if r.status == 200 || r.status == 201 {
            break;
        }
        assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            Instant::now() < deadline,
            "the name was not free again within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = server
        .upload(
            "ledger",
            "fresh.txt",
            b"The Brackenfield account moved 12 crowns to the harbour fund.",
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(server.wait_done("ledger", &id).await["status"], "indexed");
    let docs = server.get("/v1/collections/ledger/documents").await.json();
    let docs = docs["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 1, "{docs:#?}");
    let hits = server
        .post_json(
            "/v1/collections/ledger/search",
            &serde_json::json!({"query": "which account moved crowns to the harbour fund", "top_k": 10}),
        )
        .await
        .json();
    let hits = hits["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert!(hits[0]["text"].as_str().unwrap().contains("Brackenfield"));
    assert!(leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_deleted_under_uploads_leaves_nothing_local() {
    delete_a_collection_under_uploads(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_deleted_under_uploads_leaves_nothing_s3() {
    delete_a_collection_under_uploads(Backend::s3()).await;
}
