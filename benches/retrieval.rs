//! End-to-end retrieval at scale: a collection of 100,000 chunks (1,000 documents of 100
//! chunks by default) with real-word text and synthetic 384-d vectors (the seeded Gaussian mixture of
//! `common`), indexed by hearth's `CollectionIndex`. Measures
//! - building the index from stored vectors (what a rebuild from the object store costs, minus
//!   reading the files) and committing it;
//! - cold start: opening the committed index in a fresh `CollectionIndex` (segments, the saved
//!   graph, tantivy), and opening it when the saved graph is gone (rebuilt from the segments);
//! - query latency end to end as a search sees it: embedding the question with the real
//!   MiniLM embedder (query priority) + HNSW + BM25 + fusion + filter, p50/p99, for each mode,
//!   unfiltered and with filters keeping 10% and 1% of the documents; and for readers whose
//!   groups (of 1,010 in the collection) let them read all, 10% and 1% of the documents.
//!
//!     scripts/fetch-models.sh && cargo bench --bench retrieval
//!
//! `HEARTH_BENCH_CHUNKS=N` changes the size, `HEARTH_BENCH_CHUNKS_PER_DOC=N` the document size
//! (100); `HEARTH_BENCH_QUICK=1` runs 10,000 chunks; `HEARTH_BENCH_ANN=hnsw_rs` measures the
//! collection on `hnsw_rs` instead of hearth's graph (`index.ann`).
//! `HEARTH_BENCH_KEEP_DIR=D` builds into D and keeps it (a run that finds the same collection
//! there reuses it); `HEARTH_BENCH_COLD_ONLY=1` stops after the cold start.
//! Results go to `bench-retrieval.json` in the cargo target directory.

mod common;

use std::time::Instant;

use hearth_engine::{Embedder, EngineConfig, Priority, Role};
use hearth_index::{
    AnnKind, CollectionIndex, Condition, Filter, MetaValue, Reader, SearchMode, SearchRequest,
};
use serde_json::json;

const DIM: usize = 384;

fn main() {
    if common::is_probe() {
        return;
    }
    let n: usize = if common::quick() {
        10_000
    } else {
        std::env::var("HEARTH_BENCH_CHUNKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    };
    let per_doc: usize = std::env::var("HEARTH_BENCH_CHUNKS_PER_DOC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let docs = n.div_ceil(per_doc);
    let machine = common::machine();

    let mixture = common::Mixture::new(DIM, 100, 0.5, 7);
    let vectors = mixture.sample(n, 11);
    let mut rng = common::Rng::new(3);
    // `HEARTH_BENCH_KEEP_DIR=D` builds into D and keeps it; a later run that finds the same
    // collection there skips the build (to iterate on the cold start).
    let kept = std::env::var_os("HEARTH_BENCH_KEEP_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir_path = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let params = common::collection::params(
        DIM,
        match std::env::var("HEARTH_BENCH_ANN").as_deref() {
            Ok("hnsw_rs") => AnnKind::HnswRs,
            _ => AnnKind::Graph,
        },
    );
    println!(
        "retrieval bench: {n} chunks in {docs} documents, {DIM}-d, index.ann = {}",
        params.ann
    );
    let reuse = kept.is_some()
        && CollectionIndex::open(&dir_path, params).is_ok_and(|i| i.stats().live_chunks == n);
    let dir = dir_path.as_path();

    // Build from stored vectors, in documents of 100 chunks, then commit.
    let (_, build) = common::measure(|| {
        if reuse {
            println!("build + commit: skipped, reusing {}", dir.display());
            return;
        }
        let mut index = CollectionIndex::open(dir, params).unwrap();
        common::collection::fill(&mut index, &vectors, per_doc, &mut rng, n);
        index.commit().unwrap();
    });
    if !reuse {
        println!(
            "build + commit: {:.1} s wall, {:.1} s CPU ({:.0} chunks/s), RSS +{:.0} MiB",
            build.wall_s,
            build.cpu_s,
            n as f64 / build.wall_s,
            build.peak_rss_growth_mib
        );
    }

    // Cold start from the local cache, its files evicted from the page cache first.
    let evicted = evict_all(dir);
    let (anon0, file0) = common::rss_split();
    let (index, cold) = common::measure(|| CollectionIndex::open(dir, params).unwrap());
    let (anon1, file1) = common::rss_split();
    let (cold_anon, cold_file) = (
        (anon1 as f64 - anon0 as f64) / 1024.0,
        (file1 as f64 - file0 as f64) / 1024.0,
    );
    // The checksums the open left to a background thread: when their verdict is in.
    let t = Instant::now();
    index.verification().wait();
    let checked_s = cold.wall_s + t.elapsed().as_secs_f64();
    println!(
        "background check of the vectors and graph files: done {checked_s:.2} s after the open began"
    );
    let stats = index.stats();
    assert_eq!(stats.live_chunks, n);
    let mib = |b: usize| b as f64 / 1048576.0;
    let (vec_heap, vec_file) = index.vector_bytes();
    let (graph_heap, graph_mapped) = index.graph_bytes().unwrap_or((0, 0));
    println!(
        "after the cold start: vectors {:.0} MiB on the heap, {:.0} MiB in their mapped file; graph {:.0} MiB on the heap, {:.0} MiB mapped",
        mib(vec_heap),
        mib(vec_file),
        mib(graph_heap),
        mib(graph_mapped)
    );
    println!(
        "cold start{}: {:.2} s wall, {:.2} s CPU, RSS +{:.0} MiB (RssAnon +{cold_anon:.0}, RssFile +{cold_file:.0}), {:.0} MiB on disk",
        if evicted {
            ""
        } else {
            " (eviction refused: warm)"
        },
        cold.wall_s,
        cold.cpu_s,
        cold.rss_growth_mib,
        stats.disk_bytes as f64 / 1048576.0
    );
    drop(index);
    if common::env_flag("HEARTH_BENCH_COLD_ONLY") {
        return;
    }
    // Cold start when the saved graph is lost: the graph is rebuilt from the segments.
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|f| {
            let f = f.to_string_lossy();
            f.starts_with("hnsw-") || f.starts_with("graph-")
        }) {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    let (index, rebuild) = common::measure(|| CollectionIndex::open(dir, params).unwrap());
    println!(
        "cold start without the saved graph (rebuilt): {:.1} s wall, {:.1} s CPU",
        rebuild.wall_s, rebuild.cpu_s
    );

    // Queries: the labelled questions, embedded for real at query priority.
    let embedder = Embedder::load(&EngineConfig {
        models_dir: common::models_dir(),
        embed_threads: 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let questions = questions();
    let passes = if common::quick() { 1 } else { 3 };
    // Access: document d is readable by group g{d % 1000} and by its department dept{d % 10},
    // so 1,010 groups in all. Each reader row keeps the share of documents of the filter row
    // above it, so the two differ only in how the allowed set is decided.
    let member = |groups: Vec<String>| Reader::member(Some("bench-user"), &groups);
    let every_group: Vec<String> = (0..1000)
        .map(|d| format!("g{d}"))
        .chain((0..10).map(|d| format!("dept{d}")))
        .collect();
    let cases: Vec<(&str, Option<Filter>, Reader)> = vec![
        ("none", None, Reader::Everything),
        (
            "10% (team)",
            Some(eq("team", MetaValue::Text("t3".into()))),
            Reader::Everything,
        ),
        (
            "1% (shard)",
            Some(eq("shard", MetaValue::Number(7.0))),
            Reader::Everything,
        ),
        ("acl all", None, member(every_group)),
        ("acl 10%", None, member(vec!["dept3".into()])),
        (
            "acl 1%",
            None,
            member(
                (0..1000)
                    .filter(|d| d % 100 == 7)
                    .map(|d| format!("g{d}"))
                    .collect(),
            ),
        ),
    ];
    let fusion = hearth_index::Fusion::default();
    let mut rows = Vec::new();
    println!(
        "{:<8} {:<11} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "mode", "filter", "p50 ms", "p99 ms", "embed p50", "index p50", "hits"
    );
    for mode in [SearchMode::Dense, SearchMode::Bm25, SearchMode::Hybrid] {
        for (fname, filter, reader) in &cases {
            let mut total = Vec::new();
            let mut embed_ms = Vec::new();
            let mut index_ms = Vec::new();
            let mut short = 0usize;
            for _ in 0..passes {
                for q in &questions {
                    let t0 = Instant::now();
                    let v = (mode != SearchMode::Bm25).then(|| {
                        embedder
                            .embed_blocking(vec![q.clone()], Role::Query, Priority::Query)
                            .unwrap()
                            .row(0)
                            .to_vec()
                    });
                    let t1 = Instant::now();
                    let hits = index
                        .search(&SearchRequest {
                            text: q,
                            vector: v.as_deref(),
                            mode,
                            top_k: 10,
                            filter: filter.as_ref(),
                            reader,
                            fusion,
                        })
                        .unwrap();
                    let t2 = Instant::now();
                    if hits.len() < 10 && mode != SearchMode::Bm25 {
                        short += 1;
                    }
                    total.push((t2 - t0).as_secs_f64() * 1e3);
                    embed_ms.push((t1 - t0).as_secs_f64() * 1e3);
                    index_ms.push((t2 - t1).as_secs_f64() * 1e3);
                }
            }
            total.sort_by(f64::total_cmp);
            let p50 = common::percentile(&total, 50.0);
            let p99 = common::percentile(&total, 99.0);
            println!(
                "{:<8} {:<11} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>7}",
                format!("{mode:?}").to_lowercase(),
                fname,
                p50,
                p99,
                common::median(&embed_ms),
                common::median(&index_ms),
                if short == 0 {
                    "full".to_owned()
                } else {
                    format!("{short} short")
                }
            );
            rows.push(json!({
                "mode": format!("{mode:?}").to_lowercase(), "filter": fname, "queries": total.len(),
                "p50_ms": p50, "p99_ms": p99, "embed_p50_ms": common::median(&embed_ms),
                "index_p50_ms": common::median(&index_ms), "short_results": short,
            }));
        }
    }
    common::write_results(
        "retrieval",
        &json!({
            "machine": machine, "chunks": n, "documents": docs, "dim": DIM,
            "ann": params.ann.to_string(),
            "build": if reuse { json!("reused") } else { json!({"wall_s": build.wall_s, "cpu_s": build.cpu_s, "peak_rss_growth_mib": build.peak_rss_growth_mib}) },
            "cold_start": {"wall_s": cold.wall_s, "cpu_s": cold.cpu_s, "rss_growth_mib": cold.rss_growth_mib,
                           "rss_anon_mib": cold_anon, "rss_file_mib": cold_file, "evicted": evicted,
                           "background_check_done_s": checked_s,
                           "vectors_heap_mib": mib(vec_heap), "vectors_file_mib": mib(vec_file),
                           "graph_heap_mib": mib(graph_heap), "graph_mapped_mib": mib(graph_mapped),
                           "disk_mib": stats.disk_bytes as f64 / 1048576.0},
            "cold_start_rebuilding_hnsw": {"wall_s": rebuild.wall_s, "cpu_s": rebuild.cpu_s},
            "queries": rows,
        }),
    );
}

fn eq(key: &str, value: MetaValue) -> Filter {
    Filter {
        conditions: vec![Condition::Eq {
            key: key.into(),
            value,
        }],
    }
}

fn questions() -> Vec<String> {
    let raw = std::fs::read(common::root().join("testdata/retrieval/questions.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question"].as_str().unwrap().to_owned())
        .collect()
}

/// Evicts every file under `dir` from the page cache; false if any eviction was refused.
fn evict_all(dir: &std::path::Path) -> bool {
    let mut ok = true;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        ok &= if p.is_dir() {
            evict_all(&p)
        } else {
            common::evict(&p)
        };
    }
    ok
}
