//! Search through the real binary: modes, filters, deletes, replacement by name, and rebuilding
//! the local index from the object store.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{Backend, Node, assert_ok, hit_files, objects, root};

fn corpus_file(name: &str) -> std::path::PathBuf {
    root().join("testdata/corpus").join(name)
}

/// The (rank, chunk id, score) triples of a search, for exact comparisons.
fn ranking(v: &Value) -> Vec<(String, String)> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["chunk_id"].as_str().unwrap().to_owned(),
                format!("{:.4}", h["score"].as_f64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn every_mode_finds_the_right_document_and_reports_where() {
    let node = Node::new(Backend::Local);
    let summary = node.ingest("docs", &[&root().join("testdata/corpus")]);
    // Every chunk of a fresh collection is embedded, and the rate is reported.
    let chunks = summary["chunks"].as_u64().unwrap();
    assert!(chunks > 100, "{summary:#}");
    assert_eq!(summary["embedded"].as_u64(), Some(chunks), "{summary:#}");
    assert!(
        summary["chunks_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{summary:#}"
    );
    for mode in ["dense", "bm25", "hybrid"] {
        let out = node.search(
            "docs",
            "how do I convert a disk image from raw to qcow2",
            &["--mode", mode, "--top-k", "5"],
        );
        let files = hit_files(&out);
        assert_eq!(files.len(), 5, "{mode}: {out:#}");
        assert_eq!(files[0], "qemu-img.html", "{mode}: {files:?}");
        let top = &out["hits"][0];
        assert!(top["heading"].as_array().is_some_and(|h| !h.is_empty()));
        assert!(top["text"].as_str().unwrap().len() > 20);
    }
    // PDF hits carry their page.
    let out = node.search(
        "docs",
        "bzip2 recovering data from damaged files",
        &["--top-k", "3"],
    );
    assert_eq!(hit_files(&out)[0], "bzip2-manual.pdf", "{out:#}");
    assert!(out["hits"][0]["page_start"].as_u64().is_some());
    // Ligatures in PDFs (ﬁ, ﬂ) do not hide words: "file" matches text extracted as "ﬁle".
    let out = node.search(
        "docs",
        "asn1 definitions file parser",
        &["--mode", "bm25", "--top-k", "3"],
    );
    assert_eq!(hit_files(&out)[0], "libtasn1-manual.pdf", "{out:#}");

    // Bad input: a clear error, non-zero exit.
    for (args, word) in [
        (vec!["--mode", "fuzzy"], "--mode"),
        (vec!["--top-k", "0"], "top_k"),
        (vec!["--filter", "year>=soon"], "number"),
    ] {
        let out = node
            .command()
            .args(["search", "-c", "docs", "anything"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
    }
}

#[test]
fn filters_apply_inside_retrieval() {
    let node = Node::new(Backend::Local);
    // One small document tagged team=legal among many tagged team=eng.
    let out = node
        .command()
        .args([
            "ingest",
            "--json",
            "-c",
            "f",
            "--meta",
            "team=eng",
            "--meta",
            "year=2021",
        ])
        .arg(root().join("testdata/corpus"))
        .output()
        .unwrap();
    assert_ok(&out);
    let dir = tempfile::tempdir().unwrap();
    let legal = dir.path().join("retention-note.md");
    std::fs::write(
        &legal,
        "# Retention\n\nInvoices are kept for ten years. Contracts are kept for six years after they end.\n\nPayroll records are kept for five years.\n",
    )
    .unwrap();
    let out = node
        .command()
        .args([
            "ingest",
            "--json",
            "-c",
            "f",
            "--meta",
            "team=legal",
            "--meta",
            "year=2024",
        ])
        .arg(&legal)
        .output()
        .unwrap();
    assert_ok(&out);

    // A query about compression: unfiltered, the legal note is nowhere near the top; filtered
    // to team=legal, its chunk is the only possible hit and is returned.
    let q = "how does deflate compression work";
    for mode in ["dense", "bm25", "hybrid"] {
        let all = node.search("f", q, &["--mode", mode, "--top-k", "10"]);
        assert!(!hit_files(&all).contains(&"retention-note.md".to_owned()));
        let only = node.search(
            "f",
            q,
            &["--mode", mode, "--top-k", "10", "--filter", "team=legal"],
        );
        let files = hit_files(&only);
        if mode == "bm25" {
            // No query word occurs in the note: under the filter BM25 has nothing to return.
            assert!(files.is_empty(), "{files:?}");
            // One shared word ("invoices") is enough, and nothing else passes the filter.
            let mixed = node.search(
                "f",
                "deflate compression invoices",
                &["--mode", mode, "--top-k", "10", "--filter", "team=legal"],
            );
            assert_eq!(hit_files(&mixed), vec!["retention-note.md"]);
        } else {
            assert_eq!(files, vec!["retention-note.md"], "{mode}");
        }
    }
    // Range and IN filters; a filter keeping few documents still fills top_k.
    let eng = node.search("f", q, &["--top-k", "10", "--filter", "year<2022"]);
    assert_eq!(hit_files(&eng).len(), 10);
    assert!(!hit_files(&eng).contains(&"retention-note.md".to_owned()));
    let both = node.search(
        "f",
        "kept for ten years",
        &[
            "--top-k",
            "3",
            "--filter",
            "team=legal|eng",
            "--filter",
            "year>=2021",
        ],
    );
    assert_eq!(hit_files(&both)[0], "retention-note.md");
    let none = node.search("f", q, &["--filter", "team=nobody"]);
    assert!(none["hits"].as_array().unwrap().is_empty());
    // By document id.
    let zlib = node.search("f", q, &["--top-k", "1"])["hits"][0]["doc_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_id = node.search(
        "f",
        "zlib",
        &["--top-k", "50", "--filter", &format!("doc={zlib}")],
    );
    let ids: BTreeSet<&str> = by_id["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![zlib.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_and_replacements_hide_old_chunks_at_once() {
    let node = Node::new(Backend::Local);
    let dir = tempfile::tempdir().unwrap();
    let note = dir.path().join("office-note.txt");
    std::fs::write(
        &note,
        "The office coffee machine is descaled every Tuesday by the facilities team.\n",
    )
    .unwrap();
    node.ingest("d", &[&note, &corpus_file("zlib-how.html")]);
    let q = "when is the coffee machine descaled";
    assert_eq!(
        hit_files(&node.search("d", q, &["--top-k", "1"]))[0],
        "office-note.txt"
    );

    // Same name, new content: the old version is replaced.
    std::fs::write(
        &note,
        "The espresso grinder is cleaned on the first Friday of each month.\n",
    )
    .unwrap();
    let summary = node.ingest("d", &[&note]);
    assert_eq!(summary["ok"], 1, "{summary:#}");
    let docs = node.docs("d");
    assert_eq!(
        docs.len(),
        2,
        "the old version is still recorded: {docs:#?}"
    );
    for mode in ["dense", "bm25", "hybrid"] {
        let out = node.search(
            "d",
            "descaled every Tuesday",
            &["--mode", mode, "--top-k", "20"],
        );
        for h in out["hits"].as_array().unwrap() {
            assert!(
                !h["text"].as_str().unwrap().contains("Tuesday"),
                "{mode}: old text found"
            );
        }
    }
    let out = node.search("d", "espresso grinder cleaning", &["--top-k", "1"]);
    assert!(out["hits"][0]["text"].as_str().unwrap().contains("Friday"));

    // Delete by name: gone from results, records and the store.
    let out = node.run(&["delete", "-c", "d", "--source", &note.display().to_string()]);
    assert_ok(&out);
    for mode in ["dense", "bm25", "hybrid"] {
        let out = node.search(
            "d",
            "espresso grinder cleaning",
            &["--mode", mode, "--top-k", "50"],
        );
        assert!(
            !hit_files(&out).contains(&"office-note.txt".to_owned()),
            "{mode}"
        );
    }
    assert_eq!(node.docs("d").len(), 1);
    let store = node.store();
    assert_eq!(objects(&store, "raw/d/").await.len(), 1);
    assert_eq!(objects(&store, "chunks/d/").await.len(), 1);

    // Deleting an unknown id says so.
    let out = node.run(&["delete", "-c", "d", &"0".repeat(64)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not found"));

    // Compaction keeps results for live documents: dense hits and scores identical; hybrid
    // hits in the same order (BM25 statistics lose the deleted chunks, so its scores move).
    let q = "zlib inflate loop";
    let dense_before = node.search("d", q, &["--top-k", "5", "--mode", "dense"]);
    let hybrid_before = node.search("d", q, &["--top-k", "5"]);
    let out = node.run(&["compact", "-c", "d"]);
    assert_ok(&out);
    let dense_after = node.search("d", q, &["--top-k", "5", "--mode", "dense"]);
    let hybrid_after = node.search("d", q, &["--top-k", "5"]);
    assert_eq!(ranking(&dense_before), ranking(&dense_after));
    let ids = |v: &Value| ranking(v).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(&hybrid_before), ids(&hybrid_after));
}

async fn rebuild_from_store(node: Node, replica: Option<Node>) {
    node.ingest("r", &[&root().join("testdata/corpus")]);
    let queries = [
        "what does the library do when a timer is unref'd",
        "Reisekosten Hotel Obergrenze",
        "password rotation on the first day",
    ];
    let rankings = |node: &Node| -> Vec<_> {
        queries
            .iter()
            .map(|q| ranking(&node.search("r", q, &[])))
            .collect()
    };
    let before = rankings(&node);
    let store = node.store();
    assert!(
        !store
            .list("index/r/v0/manifests/")
            .await
            .unwrap()
            .is_empty(),
        "the index was not published"
    );
    // Wipe the local cache, and take the chunk files away: the index comes back from what was
    // published, the very same one (its graph and BM25 files), without a chunk file read.
    let index_dir = node.dir.path().join("data/index");
    assert!(index_dir.join("r").is_dir());
    std::fs::remove_dir_all(&index_dir).unwrap();
    let chunks_before = objects(&store, "chunks/r/").await;
    assert!(!chunks_before.is_empty());
    for key in chunks_before.keys() {
        store.delete(key).await.unwrap();
    }
    assert_eq!(rankings(&node), before);
    // Another node over the same store, with nothing of its own, answers the same.
    if let Some(replica) = &replica {
        assert_eq!(rankings(replica), before);
    }
    for (key, bytes) in &chunks_before {
        store.put(key, bytes.clone().into()).await.unwrap();
    }

    // Nothing published: the index is rebuilt from the chunk files, without re-embedding.
    let node = node.env("HEARTH__INDEX__PUBLISH", "false");
    std::fs::remove_dir_all(&index_dir).unwrap();
    let after = rankings(&node);
    // HNSW graphs built in another order may differ slightly; the top hits must not.
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b[..3], a[..3]);
    }
    assert_eq!(
        objects(&store, "chunks/r/").await,
        chunks_before,
        "rebuilding rewrote chunk files (re-embedded?)"
    );
    // A second open uses the rebuilt cache and gives the same answers.
    assert_eq!(after, rankings(&node));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_rebuilt_from_the_store_local() {
    rebuild_from_store(Node::new(Backend::Local), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_rebuilt_from_the_store_s3() {
    let cfg = hearth_index::fixtures::SeaweedFs::shared().fresh_bucket();
    rebuild_from_store(
        Node::new(Backend::S3(cfg.clone())),
        Some(Node::new(Backend::S3(cfg))),
    )
    .await;
}
