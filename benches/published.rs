//! A fresh replica's time to serve a collection from the object store, against what a node
//! without a published index does (build the graph and BM25 from the chunks), and search
//! latency on the fetched index against the node that published it.
//!
//! Builds a collection of 1,000,000 chunks by default (documents of 100 chunks, the retrieval
//! bench's real-word text and seeded 384-d vectors, `index.ann = "graph"`), commits it, starts
//! SeaweedFS on loopback and measures:
//! - build + commit: what a node without a published index redoes (reading the chunk files
//!   from the store not counted, so a lower bound of a rebuild);
//! - publish: every file uploaded and the manifest committed;
//! - a fresh replica: fetch into an empty cache, open, first search (time to serve);
//! - hybrid search latency, the same 300 queries (a vector of the mixture and three words) on
//!   the publisher's index and on the fetched one, and whether every hit list is identical.
//!
//!     cargo bench --bench published
//!
//! `HEARTH_BENCH_CHUNKS=N` changes the size; `HEARTH_BENCH_KEEP_DIR=D` builds into D and
//! reuses it later (a directory the retrieval bench kept for the same size works too).
//! Results go to `bench-published.json` in the cargo target directory.

mod common;

use std::time::Instant;

use hearth_index::fixtures::SeaweedFs;
use hearth_index::{
    AnnKind, BlobStore, CollectionIndex, CollectionName, Hit, PublishedIndex, Reader, SearchMode,
    SearchRequest, Uploaded,
};
use serde_json::json;

const DIM: usize = 384;
const PER_DOC: usize = 100;
const QUERIES: usize = 300;

fn main() {
    if common::is_probe() {
        return;
    }
    let n: usize = std::env::var("HEARTH_BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let params = common::collection::params(DIM, AnnKind::Graph);
    let mixture = common::Mixture::new(DIM, 100, 0.5, 7);
    let kept = std::env::var_os("HEARTH_BENCH_KEEP_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.clone().unwrap_or_else(|| temp.path().join("node"));
    println!("published bench: {n} chunks, {DIM}-d");
    let reuse = kept.is_some()
        && CollectionIndex::open(&dir, params).is_ok_and(|i| i.stats().live_chunks == n);
    let (_, build) = common::measure(|| {
        if reuse {
            println!("build + commit: skipped, reusing {}", dir.display());
            return;
        }
        let vectors = mixture.sample(n, 11);
        let mut index = CollectionIndex::open(&dir, params).unwrap();
        common::collection::fill(&mut index, &vectors, PER_DOC, &mut common::Rng::new(3), n);
        index.commit().unwrap();
    });
    if !reuse {
        println!(
            "build + commit: {:.1} s wall, {:.1} s CPU",
            build.wall_s, build.cpu_s
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let weed = SeaweedFs::start().expect("SeaweedFS");
    let store = BlobStore::s3(&weed.fresh_bucket()).unwrap();
    let c = CollectionName::new("bench").unwrap();
    let published = PublishedIndex::new(store, &c, 0);

    let node = CollectionIndex::open(&dir, params).unwrap();
    let snap = node.snapshot().unwrap().expect("a committed index");
    let t = Instant::now();
    let p = rt
        .block_on(published.publish(&snap, &mut Uploaded::default()))
        .unwrap()
        .expect("published");
    let publish_s = t.elapsed().as_secs_f64();
    println!(
        "publish: {} files, {:.0} MiB, {publish_s:.1} s ({:.0} MiB/s)",
        p.files,
        p.uploaded_bytes as f64 / 1048576.0,
        p.uploaded_bytes as f64 / 1048576.0 / publish_s
    );

    // The fresh replica: an empty cache, the store, and a first query to answer.
    let queries = queries(&mixture);
    let replica_dir = temp.path().join("replica");
    let t = Instant::now();
    let fetched = rt
        .block_on(published.fetch(&replica_dir, None))
        .unwrap()
        .expect("fetched");
    let fetch_s = t.elapsed().as_secs_f64();
    let replica = CollectionIndex::open(&replica_dir, params).unwrap();
    let open_s = t.elapsed().as_secs_f64() - fetch_s;
    search(&replica, &queries[0]);
    let serve_s = t.elapsed().as_secs_f64();
    println!(
        "fresh replica: fetch {fetch_s:.1} s ({} files, {:.0} MiB), open {open_s:.1} s, serving after {serve_s:.1} s",
        fetched.files,
        fetched.bytes as f64 / 1048576.0
    );
    replica.verification().wait();

    // The same queries on both, twice each, alternating, to even out the page cache.
    let mut identical = true;
    let mut ms = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        for q in &queries {
            let mut hits = Vec::new();
            for (i, index) in [&node, &replica].into_iter().enumerate() {
                let t = Instant::now();
                hits.push(search(index, q));
                ms[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
            identical &= same(&hits[0], &hits[1]);
        }
    }
    for m in &mut ms {
        m.sort_by(f64::total_cmp);
    }
    let p = |i: usize, q: f64| common::percentile(&ms[i], q);
    println!(
        "hybrid search, {} queries: single node p50 {:.2} ms p99 {:.2} ms; fetched replica p50 {:.2} ms p99 {:.2} ms; identical hits: {identical}",
        ms[0].len(),
        p(0, 50.0),
        p(0, 99.0),
        p(1, 50.0),
        p(1, 99.0)
    );
    common::write_results(
        "published",
        &json!({
            "machine": common::machine(), "chunks": n, "dim": DIM,
            "build": if reuse { json!("reused") } else { json!({"wall_s": build.wall_s, "cpu_s": build.cpu_s}) },
            "publish": {"s": publish_s, "files": snap.files().len(), "bytes": fetched.bytes},
            "replica": {"fetch_s": fetch_s, "open_s": open_s, "serving_after_s": serve_s},
            "search_ms": {"node_p50": p(0, 50.0), "node_p99": p(0, 99.0),
                          "replica_p50": p(1, 50.0), "replica_p99": p(1, 99.0),
                          "queries": ms[0].len(), "identical": identical},
        }),
    );
}

/// Query vectors from the collection's mixture, with three words of its text each.
fn queries(mixture: &common::Mixture) -> Vec<(Vec<f32>, String)> {
    let words = common::collection::vocabulary();
    let mut rng = common::Rng::new(17);
    let vectors = mixture.sample(QUERIES, 99);
    vectors
        .chunks(DIM)
        .map(|v| {
            (
                v.to_vec(),
                common::collection::sentence(&words, &mut rng, 3),
            )
        })
        .collect()
}

fn search(index: &CollectionIndex, (v, text): &(Vec<f32>, String)) -> Vec<Hit> {
    index
        .search(&SearchRequest {
            text,
            vector: Some(v),
            mode: SearchMode::Hybrid,
            top_k: 10,
            filter: None,
            reader: &Reader::Everything,
            fusion: hearth_index::Fusion::default(),
        })
        .unwrap()
}

fn same(a: &[Hit], b: &[Hit]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.chunk.id() == y.chunk.id() && (x.score - y.score).abs() < 1e-5)
}
