//! `kill -9` in the middle of ingesting 200 documents loses and duplicates nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hearth_index::decode_chunks;

use crate::common::{Backend, Node, objects};

/// Writes `n` distinct documents in three formats; deterministic.
fn make_corpus(dir: &std::path::Path, n: usize) {
    let words = [
        "storage",
        "kernel",
        "packet",
        "filesystem",
        "compiler",
        "archive",
        "license",
        "scheduler",
        "router",
        "cipher",
        "journal",
        "mirror",
    ];
    for i in 0..n {
        let mut body = String::new();
        for p in 0..12 {
            let sentence: Vec<&str> = (0..14)
                .map(|k| words[(i * 7 + p * 3 + k * k) % words.len()])
                .collect();
            body.push_str(&format!(
                "Paragraph {p} of document {i}: {}.\n\n",
                sentence.join(" ")
            ));
        }
        let (name, text) = match i % 3 {
            0 => (
                format!("doc-{i:03}.md"),
                format!("# Document {i}\n\n{body}"),
            ),
            1 => (
                format!("doc-{i:03}.html"),
                format!(
                    "<html><head><title>Doc {i}</title></head><body><h1>Document {i}</h1><p>{}</p></body></html>",
                    body.replace("\n\n", "</p><p>")
                ),
            ),
            _ => (format!("doc-{i:03}.txt"), format!("Document {i}\n\n{body}")),
        };
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_ingesting_loses_and_duplicates_nothing() {
    const N: usize = 200;
    let src = tempfile::tempdir().unwrap();
    make_corpus(src.path(), N);
    let node = Node::new(Backend::Local).env("HEARTH__INGEST__WORKERS", "1");
    let records_dir = node.dir.path().join("data/store/docs/crash");

    let mut child = node
        .command()
        .args(["ingest", "-c", "crash"])
        .arg(src.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = std::fs::read_dir(&records_dir).map_or(0, |d| d.count());
        if seen >= 40 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "ingest made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();

    // Some documents were caught mid-way.
    let states: Vec<String> = node
        .docs("crash")
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(states.len() < N, "the kill came too late to test anything");

    // Restart: the same command finishes the job.
    let summary = node.ingest("crash", &[src.path()]);
    assert_eq!(summary["failed"], 0, "{summary:#}");

    let records = node.docs("crash");
    assert_eq!(records.len(), N);
    let store = node.store();
    let chunks = objects(&store, "chunks/crash/").await;
    let raw = store.list("raw/crash/").await.unwrap();
    assert_eq!(raw.len(), N);
    assert_eq!(chunks.len(), N);
    let mut sources = BTreeSet::new();
    for r in &records {
        assert_eq!(r["state"], "indexed", "{r:#}");
        assert!(
            sources.insert(r["source"].as_str().unwrap().to_owned()),
            "duplicate record {r:#}"
        );
        let key = format!("chunks/crash/{}.arrow", r["doc_id"].as_str().unwrap());
        let decoded = decode_chunks(&key, &chunks[&key]).unwrap();
        assert_eq!(decoded.len() as u64, r["chunks"].as_u64().unwrap());
        let ordinals: Vec<u32> = decoded.iter().map(|c| c.ordinal).collect();
        assert_eq!(ordinals, (0..decoded.len() as u32).collect::<Vec<_>>());
    }

    // Every chunk is searchable exactly once: "paragraph" is in every chunk.
    let total: u64 = records.iter().map(|r| r["chunks"].as_u64().unwrap()).sum();
    let hits = node.search("crash", "paragraph", &["--mode", "bm25", "--top-k", "1000"]);
    let ids: Vec<&str> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["chunk_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "searchable chunks vs stored chunks"
    );
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a chunk is indexed twice"
    );
}
