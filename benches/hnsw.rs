//! Dense-index benchmark: hearth's HNSW index against hnswlib on the same vectors, in the same
//! run.
//!
//!     cargo bench --bench hnsw                        # 100k vectors
//!     HEARTH_BENCH_1M=1 cargo bench --bench hnsw      # also 1M (the builds take long)
//!     HEARTH_BENCH_1M=only cargo bench --bench hnsw   # 1M alone
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench hnsw   # 10k, proves the harness
//!     HEARTH_BENCH_NO_HNSW_RS=1 ...                   # without hnsw_rs (25 min to build 1M)
//!     HEARTH_BENCH_DATA=docs cargo bench --bench hnsw # real MiniLM vectors of real text
//!     HEARTH_BENCH_NO_FILTERED=1 ...                  # without the filtered runs
//!     HEARTH_BENCH_SEGMENTS=10 ...                    # also: the vectors split into 10
//!                                                     # graphs, top-k merged (scale-out)
//!     HEARTH_BENCH_10M=1 cargo bench --bench hnsw     # 10M alone: the graph on codes over
//!                                                     # rows read in place (see `run_10m`)
//!
//! Data: a seeded Gaussian mixture of unit-norm 384-d vectors (100 clusters; see
//! `common::Mixture`), 1,000 queries from the same mixture, exact top-10 by inner product
//! (brute force on 2 threads). With `HEARTH_BENCH_DATA=docs`, instead: 100,000 passages of
//! the Linux, Python and Perl documentation (`scripts/bench-text.sh`) embedded by hearth's
//! MiniLM embedder, and 1,000 other passages of the same text as queries (every 100th
//! passage from the 51st on is held out). The vectors, queries and ground truth are written as
//! raw files to `<target dir>/bench-data/` (and reused by later runs).
//!
//! For each size, first hearth's own graph (`GraphIndex`): built on f32, searched on f32 and
//! then on its 7-bit codes (rescored with f32); then a graph built on the codes. Then
//! hearth's `HnswIndex` (hnsw_rs) is built (M=16, ef_construction=200) with wall and CPU
//! time and resident-memory growth measured, then searched with one thread at ef in
//! {16, 32, 64, 128, 256}: recall@10 and queries/s. Then `benches/peers/hnsw_peer.py` does the
//! same with hnswlib (venv from `scripts/bench-peers.sh`; `HEARTH_BENCH_NO_PEERS=1` skips it).
//! Prints a table and the target check — recall@10 ≥ 0.95 at a query rate ≥ hnswlib's at that
//! recall: the smallest ef reaching 0.95 for each and the ratio of their query rates. Writes
//! `bench-hnsw.json` in the cargo target directory.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use hearth_index::{GraphIndex, HnswIndex, HnswParams, VectorIndex};
use serde_json::{Value, json};

const DIM: usize = 384;
const QUERIES: usize = 1000;
const K: usize = 10;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;
const EFS: [usize; 5] = [16, 32, 64, 128, 256];
const TARGET_RECALL: f64 = 0.95;
const CLUSTERS: usize = 100;
const NOISE: f64 = 1.0;
const SEED: u64 = 0x6865_6172_7468; // "hearth"
const BUILD_THREADS: usize = 2;
const SEARCH_REPS: usize = 3;

fn main() {
    if common::is_probe() {
        return;
    }
    let docs = std::env::var("HEARTH_BENCH_DATA").is_ok_and(|v| v == "docs");
    let sizes: Vec<usize> = if docs {
        vec![100_000]
    } else if common::quick() {
        vec![10_000]
    } else if std::env::var("HEARTH_BENCH_1M").is_ok_and(|v| v == "only") {
        vec![1_000_000]
    } else if common::env_flag("HEARTH_BENCH_1M") {
        vec![100_000, 1_000_000]
    } else {
        vec![100_000]
    };
    let machine = common::machine();
    if let Some(n) = std::env::var("HEARTH_BENCH_10M")
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 1)
                .unwrap_or(10_000_000)
        })
    {
        let run = run_10m(n);
        common::write_results(
            "hnsw-10m",
            &json!({"bench": "hnsw-10m", "machine": machine, "data": "mixture",
                    "config": {"dim": DIM, "queries": QUERIES, "k": K, "M": M,
                               "ef_construction": EF_CONSTRUCTION, "clusters": CLUSTERS,
                               "noise": NOISE, "seed": SEED, "build_threads": BUILD_THREADS,
                               "generator_version": common::MIXTURE_VERSION},
                    "runs": [run]}),
        );
        return;
    }
    let mut runs = Vec::new();
    for n in sizes {
        let data = if docs { docs_data(n) } else { data(n) };
        runs.push(run(n, data));
    }
    common::write_results(
        "hnsw",
        &json!({
            "bench": "hnsw",
            "machine": machine,
            "data": if docs { "docs: MiniLM vectors of documentation passages" } else { "mixture" },
            "config": {"dim": DIM, "queries": QUERIES, "k": K, "M": M, "ef_construction": EF_CONSTRUCTION,
                       "efs": EFS, "clusters": CLUSTERS, "noise": NOISE, "seed": SEED,
                       "generator_version": common::MIXTURE_VERSION, "build_threads": BUILD_THREADS,
                       "search_threads": 1, "target_recall": TARGET_RECALL},
            "runs": runs,
        }),
    );
}

struct Data {
    base: Vec<f32>,
    queries: Vec<f32>,
    truth: Vec<u32>,
    base_path: PathBuf,
    queries_path: PathBuf,
    truth_path: PathBuf,
}

/// Generates (or reuses from an earlier run) the vectors, queries and ground truth for `n`.
fn data(n: usize) -> Data {
    let dir = common::target_dir().join("bench-data").join(format!(
        "mixture-v{}-n{n}-d{DIM}-q{QUERIES}-k{K}-c{CLUSTERS}-s{SEED:x}",
        common::MIXTURE_VERSION
    ));
    if let Some(data) = reuse(&dir, n) {
        return data;
    }
    let t = Instant::now();
    let mixture = common::Mixture::new(DIM, CLUSTERS, NOISE, SEED);
    let base = mixture.sample(n, SEED.wrapping_add(1));
    let queries = mixture.sample(QUERIES, SEED.wrapping_add(2));
    println!(
        "data: generated {n} + {QUERIES} vectors in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let truth = common::ground_truth(&base, &queries, DIM, K, 2);
    println!(
        "data: exact top-{K} for {QUERIES} queries in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    save(&dir, base, queries, truth)
}

/// The files of a data set in `dir`.
fn paths(dir: &std::path::Path) -> [PathBuf; 3] {
    ["base.f32", "queries.f32", "groundtruth.u32"].map(|f| dir.join(f))
}

/// The data set an earlier run completed in `dir`, when its sizes are those of `n` vectors.
fn reuse(dir: &std::path::Path, n: usize) -> Option<Data> {
    if !dir.join("complete").exists() {
        return None;
    }
    let t = Instant::now();
    let [base_path, queries_path, truth_path] = paths(dir);
    let base = common::read_f32(&base_path).unwrap_or_default();
    let queries = common::read_f32(&queries_path).unwrap_or_default();
    let truth = common::read_u32(&truth_path).unwrap_or_default();
    if base.len() != n * DIM || queries.len() != QUERIES * DIM || truth.len() != QUERIES * K {
        println!("data: {} is inconsistent, regenerating", dir.display());
        return None;
    }
    println!(
        "data: reused {} ({:.1} s)",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Some(Data {
        base,
        queries,
        truth,
        base_path,
        queries_path,
        truth_path,
    })
}

/// Writes a data set to `dir` for later runs (marking it complete last).
fn save(dir: &std::path::Path, base: Vec<f32>, queries: Vec<f32>, truth: Vec<u32>) -> Data {
    std::fs::create_dir_all(dir).unwrap();
    let [base_path, queries_path, truth_path] = paths(dir);
    common::write_f32(&base_path, &base).unwrap();
    common::write_f32(&queries_path, &queries).unwrap();
    common::write_u32(&truth_path, &truth).unwrap();
    std::fs::write(dir.join("complete"), "").unwrap();
    Data {
        base,
        queries,
        truth,
        base_path,
        queries_path,
        truth_path,
    }
}

/// `n` passages of real documentation (`scripts/bench-text.sh`) and 1,000 held-out ones as
/// queries, embedded by hearth's MiniLM embedder, with the exact top-10 (reused when cached).
fn docs_data(n: usize) -> Data {
    let cache = std::env::var_os("HEARTH_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hearth"),
        PathBuf::from,
    );
    let text = cache.join("bench-text/docs.txt");
    let Ok(all) = std::fs::read_to_string(&text) else {
        eprintln!(
            "{} is missing: run scripts/bench-text.sh first",
            text.display()
        );
        std::process::exit(2);
    };
    let dir = common::target_dir()
        .join("bench-data")
        .join(format!("docs-minilm-n{n}-d{DIM}-q{QUERIES}-k{K}"));
    if let Some(data) = reuse(&dir, n) {
        return data;
    }
    let mut base_text = Vec::with_capacity(n);
    let mut query_text = Vec::with_capacity(QUERIES);
    for (i, line) in all.lines().enumerate() {
        if i % 100 == 50 && query_text.len() < QUERIES {
            query_text.push(line.to_owned());
        } else if base_text.len() < n {
            base_text.push(line.to_owned());
        }
    }
    assert!(
        base_text.len() == n && query_text.len() == QUERIES,
        "{} holds too few passages for {n} + {QUERIES}",
        text.display()
    );
    let embedder = hearth_engine::Embedder::load(&hearth_engine::EngineConfig {
        models_dir: common::models_dir(),
        embed_threads: 2,
        ..hearth_engine::EngineConfig::default()
    })
    .expect("the embedding model (scripts/fetch-models.sh)");
    let t = Instant::now();
    let embed = |texts: Vec<String>| -> Vec<f32> {
        let mut out = Vec::with_capacity(texts.len() * DIM);
        for (i, batch) in texts.chunks(1024).enumerate() {
            let rows = embedder
                .embed_blocking(
                    batch.to_vec(),
                    hearth_engine::Role::Passage,
                    hearth_engine::Priority::Bulk,
                )
                .expect("embedding");
            out.extend(rows.iter().flatten());
            if i % 10 == 9 {
                eprintln!("embedded {} passages", (i + 1) * 1024);
            }
        }
        out
    };
    let base = embed(base_text);
    let queries = embed(query_text);
    println!(
        "data: embedded {n} + {QUERIES} passages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let truth = common::ground_truth(&base, &queries, DIM, K, 2);
    save(&dir, base, queries, truth)
}

/// The 10M run (`HEARTH_BENCH_10M=1`; `=N` for another size, `N > 1`): the base rows (15 GB
/// of f32 at 10M) are generated block by block into a vectors file and scanned once for the
/// exact top-10 as they are written; the graph is then linked on the codes with the rows read
/// in place from that file (`GraphIndex::build_on_file`): the heap holds the lists and codes
/// (~5 GB), the page cache the rows. No peer runs (hnswlib would need the 15 GB of rows on its
/// heap beside ours) and no hnsw_rs; the saved graph is then opened cold and searched again.
fn run_10m(n: usize) -> Value {
    println!(
        "\n=== {n} vectors (rows read in place), {DIM}-d, {QUERIES} queries, M={M}, ef_construction={EF_CONSTRUCTION} ==="
    );
    let dir = common::target_dir().join("bench-data").join(format!(
        "mixture-v{}-n{n}-d{DIM}-q{QUERIES}-k{K}-c{CLUSTERS}-s{SEED:x}-file",
        common::MIXTURE_VERSION
    ));
    let rows = dir.join("base.hvec");
    let [_, queries_path, truth_path] = paths(&dir);
    let mixture = common::Mixture::new(DIM, CLUSTERS, NOISE, SEED);
    let queries = mixture.sample(QUERIES, SEED.wrapping_add(2));
    let reused = dir.join("complete").exists()
        && common::read_u32(&truth_path).is_ok_and(|t| t.len() == QUERIES * K)
        && std::fs::metadata(&rows).is_ok_and(|m| m.len() as usize >= 64 + n * DIM * 4);
    let generate_s = if reused {
        println!("data: reused {}", dir.display());
        0.0
    } else {
        std::fs::create_dir_all(&dir).expect("bench dir");
        let t = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(
            1 << 22,
            std::fs::File::create(&rows).expect("the rows file"),
        );
        use std::io::Write;
        out.write_all(&GraphIndex::vectors_header(DIM, n as u64))
            .unwrap();
        let mut exact = common::ExactTopK::new(&queries, DIM, K);
        let per = 64 * common::Mixture::BLOCK;
        let mut block = vec![0f32; per * DIM];
        for first in (0..n).step_by(per) {
            let len = per.min(n - first);
            let rows = &mut block[..len * DIM];
            mixture.sample_blocks(rows, first / common::Mixture::BLOCK, SEED.wrapping_add(1));
            exact.add(rows, first as u32, 2);
            for x in rows.iter() {
                out.write_all(&x.to_le_bytes()).unwrap();
            }
            if (first / per) % 8 == 7 {
                eprintln!(
                    "data: {} of {n} rows written and scanned ({:.0} s)",
                    first + len,
                    t.elapsed().as_secs_f64()
                );
            }
        }
        let bytes = 64 + n * DIM * 4;
        out.write_all(&vec![0u8; bytes.next_multiple_of(64) - bytes])
            .unwrap();
        out.into_inner().expect("flush").sync_all().unwrap();
        common::write_f32(&queries_path, &queries).unwrap();
        common::write_u32(&truth_path, &exact.ids()).unwrap();
        std::fs::write(dir.join("complete"), "").unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("data: generated {n} rows with their exact top-{K} in {s:.1} s");
        s
    };
    let data = Data {
        base: Vec::new(),
        queries,
        truth: common::read_u32(&truth_path).expect("ground truth"),
        base_path: rows.clone(),
        queries_path,
        truth_path,
    };
    let (anon0, file0) = common::rss_split();
    let (graph, build) = common::measure(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(BUILD_THREADS)
            .build()
            .expect("a rayon pool")
            .install(|| GraphIndex::build_on_file(&rows, params(), true))
            .expect("building the graph on the rows file")
    });
    let (anon1, file1) = common::rss_split();
    let mib = |kib: u64, from: u64| (kib as f64 - from as f64) / 1024.0;
    println!(
        "graph on codes, rows in place: built in {:.1} s ({:.1} CPU-s); RssAnon +{:.0} MiB, RssFile +{:.0} MiB \
         (peak RSS +{:.0} MiB); heap {:.0} MiB, in place {:.0} MiB",
        build.wall_s,
        build.cpu_s,
        mib(anon1, anon0),
        mib(file1, file0),
        build.peak_rss_growth_mib,
        graph.memory_bytes() as f64 / f64::from(1 << 20),
        graph.mapped_bytes() as f64 / f64::from(1 << 20),
    );
    let points = sweep("graph on codes", &data, |q, ef| graph.search(q, K, ef));
    let reach = points.iter().find(|p| p.recall >= TARGET_RECALL);
    println!(
        "target recall {TARGET_RECALL}: {}",
        reach.map_or("not reached".to_owned(), |p| format!(
            "ef {} ({:.4}, {:.0} q/s)",
            p.ef, p.recall, p.qps
        ))
    );
    let mapped = mapped_run(&graph, &data, &points);
    json!({"n": n, "generate_s": generate_s, "reused_data": reused,
           "build": {"wall_s": build.wall_s, "cpu_s": build.cpu_s,
                     "anon_mib": mib(anon1, anon0), "file_mib": mib(file1, file0),
                     "peak_rss_growth_mib": build.peak_rss_growth_mib,
                     "heap_mib": graph.memory_bytes() as f64 / f64::from(1 << 20),
                     "mapped_mib": graph.mapped_bytes() as f64 / f64::from(1 << 20)},
           "search": points.iter().map(|p| json!({"ef": p.ef, "recall": p.recall, "qps": p.qps})).collect::<Vec<_>>(),
           "mapped": mapped})
}

#[derive(Clone, Copy, Debug)]
struct Point {
    ef: usize,
    recall: f64,
    qps: f64,
}

fn run(n: usize, data: Data) -> Value {
    println!(
        "\n=== {n} vectors, {DIM}-d, {QUERIES} queries, M={M}, ef_construction={EF_CONSTRUCTION} ==="
    );

    // hearth's own graph (issue 21), first so that its memory growth is measured on a clean heap
    let (graph, gbuild) = common::measure(|| build_graph(&data.base, false));
    println!(
        "graph: built in {:.1} s ({:.1} CPU-s), RSS +{:.0} MiB (peak +{:.0} MiB)",
        gbuild.wall_s, gbuild.cpu_s, gbuild.rss_growth_mib, gbuild.peak_rss_growth_mib
    );
    let graph_points = sweep("graph", &data, |q, ef| graph.search(q, K, ef));
    // the same graph traversed on 7-bit codes, its candidates rescored with the f32 vectors
    let (graph, quantize) = common::measure(|| graph.quantize());
    println!(
        "graph int8: codes in {:.2} s, RSS +{:.0} MiB",
        quantize.wall_s, quantize.rss_growth_mib
    );
    let int8_points = sweep("graph int8", &data, |q, ef| graph.search(q, K, ef));
    drop(graph);
    // built on the codes too
    let (graph, qbuild) = common::measure(|| build_graph(&data.base, true));
    println!(
        "graph built on codes: {:.1} s ({:.1} CPU-s), RSS +{:.0} MiB (peak +{:.0} MiB)",
        qbuild.wall_s, qbuild.cpu_s, qbuild.rss_growth_mib, qbuild.peak_rss_growth_mib
    );
    let coded_points = sweep("graph on codes", &data, |q, ef| graph.search(q, K, ef));
    let filtered = if common::env_flag("HEARTH_BENCH_NO_FILTERED") {
        Value::Null
    } else {
        filtered_runs(&graph, &data)
    };
    let segmented = match std::env::var("HEARTH_BENCH_SEGMENTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(s) if s >= 2 => segments_run(&data, s, &coded_points),
        _ => Value::Null,
    };
    let mapped = mapped_run(&graph, &data, &coded_points);
    let churn = if n <= 200_000 {
        churn_run(&graph, &data, &coded_points)
    } else {
        Value::Null
    };
    drop(graph);

    // hearth (hnsw_rs), unless skipped (its 1M build takes 25 minutes)
    let (hearth, build) = if common::env_flag("HEARTH_BENCH_NO_HNSW_RS") {
        println!("hearth (hnsw_rs): skipped (HEARTH_BENCH_NO_HNSW_RS)");
        (Vec::new(), common::measure(|| ()).1)
    } else {
        let (index, build) = common::measure(|| build_hearth(&data.base));
        println!(
            "hearth: built in {:.1} s ({:.1} CPU-s), RSS +{:.0} MiB (peak +{:.0} MiB)",
            build.wall_s, build.cpu_s, build.rss_growth_mib, build.peak_rss_growth_mib
        );
        let hearth = sweep("hearth", &data, |q, ef| index.search(q, K, ef));
        (hearth, build) // the index is dropped here, giving its memory back before the peer
    };

    // peer
    let arg = |s: &str| OsString::from(s);
    let args = vec![
        arg("--base"),
        data.base_path.clone().into(),
        arg("--queries"),
        data.queries_path.clone().into(),
        arg("--groundtruth"),
        data.truth_path.clone().into(),
        arg("--dim"),
        arg(&DIM.to_string()),
        arg("--k"),
        arg(&K.to_string()),
        arg("--M"),
        arg(&M.to_string()),
        arg("--ef-construction"),
        arg(&EF_CONSTRUCTION.to_string()),
        arg("--ef"),
        arg(&EFS.map(|e| e.to_string()).join(",")),
        arg("--build-threads"),
        arg(&BUILD_THREADS.to_string()),
        arg("--search-reps"),
        arg(&SEARCH_REPS.to_string()),
    ];
    println!("peer: hnswlib (hnsw_peer.py)");
    let peer = common::peer_or_missing("hnsw_peer.py", &args);
    let peer_points: Vec<Point> = peer["search"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Point {
                ef: p["ef"].as_u64()? as usize,
                recall: p["recall"].as_f64()?,
                qps: p["qps"].as_f64()?,
            })
        })
        .collect();

    // table
    let pf = |k: &str| peer[k].as_f64();
    println!();
    println!(
        "{n} vectors                 {:>12} {:>12} {:>12}",
        "hearth", "hnswlib", "hearth/peer"
    );
    let line = |label: &str, h: f64, p: Option<f64>, d: usize, ratio: String| {
        println!(
            "{label:<26} {:>12} {:>12} {:>12}",
            common::num(Some(h), d),
            common::num(p, d),
            ratio
        );
    };
    line(
        "build wall s",
        build.wall_s,
        pf("build_wall_s"),
        1,
        common::ratio(Some(build.wall_s), pf("build_wall_s")),
    );
    line(
        "build CPU s",
        build.cpu_s,
        pf("build_cpu_s"),
        1,
        common::ratio(Some(build.cpu_s), pf("build_cpu_s")),
    );
    line(
        "build RSS growth MiB",
        build.rss_growth_mib,
        pf("rss_growth_mib"),
        0,
        common::ratio(Some(build.rss_growth_mib), pf("rss_growth_mib")),
    );
    line(
        "build peak RSS growth MiB",
        build.peak_rss_growth_mib,
        pf("peak_rss_growth_mib"),
        0,
        common::ratio(Some(build.peak_rss_growth_mib), pf("peak_rss_growth_mib")),
    );
    println!();
    print_points("hearth", &hearth, &peer_points);
    println!(
        "(hearth/peer = hearth ÷ hnswlib: above 1 is better for q/s, below 1 for build time and memory)"
    );
    println!();
    println!(
        "graph: build {:.1} wall s, {:.1} CPU s ({} of hnswlib's), RSS +{:.0} MiB (peak +{:.0}; {} of hnswlib's)",
        gbuild.wall_s,
        gbuild.cpu_s,
        common::ratio(Some(gbuild.cpu_s), pf("build_cpu_s")),
        gbuild.rss_growth_mib,
        gbuild.peak_rss_growth_mib,
        common::ratio(Some(gbuild.peak_rss_growth_mib), pf("peak_rss_growth_mib")),
    );
    print_points("graph", &graph_points, &peer_points);
    print_points("int8", &int8_points, &peer_points);
    println!(
        "graph built on codes: build {:.1} wall s, {:.1} CPU s ({} of hnswlib's), RSS +{:.0} MiB (peak +{:.0})",
        qbuild.wall_s,
        qbuild.cpu_s,
        common::ratio(Some(qbuild.cpu_s), pf("build_cpu_s")),
        qbuild.rss_growth_mib,
        qbuild.peak_rss_growth_mib,
    );
    print_points("coded", &coded_points, &peer_points);
    let first = |pts: &[Point]| pts.iter().copied().find(|p| p.recall >= TARGET_RECALL);
    let (ht, pt) = (first(&hearth), first(&peer_points));
    let graph_verdict = |label: &str, points: &[Point]| match (first(points), pt) {
        (Some(g), Some(p)) => {
            let r = g.qps / p.qps;
            println!(
                "{label}: recall ≥ {TARGET_RECALL} at ef {} ({:.0} q/s), {r:.2}x hnswlib's q/s at its ef {}",
                g.ef, g.qps, p.ef
            );
            json!({"met": r >= 1.0, "qps_ratio": r, "graph_ef": g.ef, "hnswlib_ef": p.ef})
        }
        (g, _) => json!({"met": null, "graph_ef": g.map(|g| g.ef)}),
    };
    let (f32_verdict, int8_verdict, coded_verdict) = (
        graph_verdict("graph", &graph_points),
        graph_verdict("graph int8", &int8_points),
        graph_verdict("graph built on codes", &coded_points),
    );
    let worst_drop = graph_points
        .iter()
        .zip(&int8_points)
        .map(|(f, q)| f.recall - q.recall)
        .fold(f64::NEG_INFINITY, f64::max);
    println!(
        "graph int8: largest recall drop against f32 at equal ef {worst_drop:+.4} (target ≤ 0.005)"
    );
    let describe = |p: Option<Point>| {
        p.map_or_else(
            || "not reached".to_owned(),
            |p| format!("ef {} (recall {:.4}, {:.0} q/s)", p.ef, p.recall, p.qps),
        )
    };
    println!(
        "recall@{K} ≥ {TARGET_RECALL}: hearth at {}; hnswlib at {}",
        describe(ht),
        describe(pt)
    );
    let verdict = match (ht, pt) {
        (Some(h), Some(p)) => {
            let r = h.qps / p.qps;
            let ok = if r >= 1.0 { "met" } else { "NOT met" };
            println!(
                "target (recall ≥ {TARGET_RECALL} at ≥ hnswlib's q/s): {ok}, hearth/hnswlib q/s = {r:.2}x"
            );
            json!({"met": r >= 1.0, "qps_ratio": r, "hearth_ef": h.ef, "hnswlib_ef": p.ef})
        }
        (None, _) => {
            println!("target: NOT met (hearth never reaches recall {TARGET_RECALL})");
            json!({"met": false, "qps_ratio": null})
        }
        (Some(_), None) => {
            println!("target: unknown (no hnswlib figure reaching recall {TARGET_RECALL})");
            json!({"met": null, "qps_ratio": null})
        }
    };
    let points = |pts: &[Point]| -> Value {
        pts.iter()
            .map(|p| json!({"ef": p.ef, "recall": p.recall, "qps": p.qps}))
            .collect()
    };
    json!({
        "n": n,
        "hearth": {"build_wall_s": build.wall_s, "build_cpu_s": build.cpu_s,
                   "rss_growth_mib": build.rss_growth_mib, "peak_rss_growth_mib": build.peak_rss_growth_mib,
                   "search": points(&hearth)},
        "graph": {"build_wall_s": gbuild.wall_s, "build_cpu_s": gbuild.cpu_s,
                  "rss_growth_mib": gbuild.rss_growth_mib, "peak_rss_growth_mib": gbuild.peak_rss_growth_mib,
                  "search": points(&graph_points), "target": f32_verdict},
        "graph_int8": {"quantize_wall_s": quantize.wall_s, "rss_growth_mib": quantize.rss_growth_mib,
                       "search": points(&int8_points), "target": int8_verdict,
                       "largest_recall_drop": worst_drop},
        "graph_coded": {"build_wall_s": qbuild.wall_s, "build_cpu_s": qbuild.cpu_s,
                        "rss_growth_mib": qbuild.rss_growth_mib, "peak_rss_growth_mib": qbuild.peak_rss_growth_mib,
                        "search": points(&coded_points), "target": coded_verdict,
                        "filtered": filtered, "churn": churn, "segmented": segmented,
                        "mapped": mapped},
        "peer": peer,
        "target": verdict,
    })
}

/// The graph parameters every index of the run is built with.
fn params() -> HnswParams {
    HnswParams {
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ..HnswParams::default()
    }
}

/// Builds on a rayon pool of `BUILD_THREADS` threads (hnswlib gets as many).
fn build_hearth(base: &[f32]) -> HnswIndex {
    let params = params();
    rayon::ThreadPoolBuilder::new()
        .num_threads(BUILD_THREADS)
        .build()
        .expect("a rayon pool")
        .install(|| HnswIndex::build(base, DIM, params))
        .expect("building hearth's HNSW index")
}

/// One index's recall and query rate per ef beside hnswlib's.
fn print_points(label: &str, points: &[Point], peer: &[Point]) {
    println!(
        "{:>5} {:>14} {:>10} {:>14} {:>10} {:>12}",
        "ef",
        format!("{label} recall"),
        "q/s",
        "hnswlib recall",
        "q/s",
        format!("{label}/peer")
    );
    for h in points {
        let p = peer.iter().find(|p| p.ef == h.ef);
        println!(
            "{:>5} {:>14.4} {:>10.0} {:>14} {:>10} {:>12}",
            h.ef,
            h.recall,
            h.qps,
            common::num(p.map(|p| p.recall), 4),
            common::num(p.map(|p| p.qps), 0),
            common::ratio(Some(h.qps), p.map(|p| p.qps))
        );
    }
}

/// Builds hearth's own graph (on the 7-bit codes if `coded`) on a rayon pool of
/// `BUILD_THREADS` threads.
fn build_graph(base: &[f32], coded: bool) -> GraphIndex {
    let params = params();
    rayon::ThreadPoolBuilder::new()
        .num_threads(BUILD_THREADS)
        .build()
        .expect("a rayon pool")
        .install(|| {
            if coded {
                GraphIndex::build_quantized(base, DIM, params)
            } else {
                GraphIndex::build(base, DIM, params)
            }
        })
        .expect("building hearth's graph")
}

type Found = hearth_index::Result<Vec<(u32, f32)>>;

/// Filters keeping one id in 2, 10, 100 and 1,000 (50%, 10%, 1%, 0.1%).
const FILTER_EVERY: [u32; 4] = [2, 10, 100, 1000];
const FILTER_EFS: [usize; 2] = [64, 256];
/// At 1M, the graph's filtered traversal is measured only for allowed sets above the size the
/// collection scans exactly (`exact_max_points`).
const GRAPH_MIN_ALLOWED: usize = 20_000;

/// The graph's filtered traversal against an exact scan of the allowed vectors, per
/// selectivity: recall@10 against the exact filtered top-10, and queries/s.
fn filtered_runs(graph: &GraphIndex, data: &Data) -> Value {
    let n = data.base.len() / DIM;
    let mut out = Vec::new();
    println!("filtered search (graph built on codes; exact = a scan of the allowed vectors):");
    for every in FILTER_EVERY {
        let ids: Vec<u32> = (0..n as u32).filter(|i| i.is_multiple_of(every)).collect();
        if ids.len() < K {
            continue;
        }
        let rows: Vec<f32> = ids
            .iter()
            .flat_map(|&i| &data.base[i as usize * DIM..(i as usize + 1) * DIM])
            .copied()
            .collect();
        let truth: Vec<u32> = common::ground_truth(&rows, &data.queries, DIM, K, 2)
            .into_iter()
            .map(|local| ids[local as usize])
            .collect();
        let sub = Data {
            base: Vec::new(),
            queries: data.queries.clone(),
            truth,
            base_path: PathBuf::new(),
            queries_path: PathBuf::new(),
            truth_path: PathBuf::new(),
        };
        let keep = move |i: u32| i.is_multiple_of(every);
        let flat = hearth_index::FlatIndex::build(&rows, DIM).expect("flat index");
        let exact = search_with(&format!("exact 1/{every}"), &sub, 0, |q| {
            flat.search(q, K).map(|hits| {
                hits.into_iter()
                    .map(|(l, s)| (ids[l as usize], s))
                    .collect()
            })
        });
        // The collection scans sets this small exactly; the graph's traversal of them walks
        // nearly every node (100k, 1 in 1,000 allowed: 44 q/s against the scan's 209,846).
        let skip_graph = n >= 1_000_000 && ids.len() <= GRAPH_MIN_ALLOWED;
        let graphs: Vec<Value> = FILTER_EFS
            .iter()
            .filter(|_| !skip_graph)
            .map(|&ef| {
                let p = search_with(&format!("graph 1/{every}"), &sub, ef, |q| {
                    graph.search_where(q, K, ef, &keep)
                });
                json!({"ef": ef, "recall": p.recall, "qps": p.qps})
            })
            .collect();
        out.push(json!({"keep_one_in": every, "allowed": ids.len(),
                        "exact": {"recall": exact.recall, "qps": exact.qps}, "graph": graphs}));
    }
    Value::Array(out)
}

/// The vectors split into `segments` graphs of consecutive ids (built on codes), each searched
/// for the top-10 at the same ef and the answers merged by score: what a node serving several
/// immutable segments, or a fan-out over nodes, returns, against one graph over everything.
fn segments_run(data: &Data, segments: usize, whole: &[Point]) -> Value {
    let n = data.base.len() / DIM;
    let per = n.div_ceil(segments);
    let (graphs, build) = common::measure(|| {
        (0..segments)
            .map(|s| {
                let (lo, hi) = (s * per, ((s + 1) * per).min(n));
                (lo as u32, build_graph(&data.base[lo * DIM..hi * DIM], true))
            })
            .collect::<Vec<_>>()
    });
    println!(
        "segmented: {segments} graphs of {per} built in {:.1} s ({:.1} CPU-s)",
        build.wall_s, build.cpu_s
    );
    let points = sweep(&format!("{segments} segments merged"), data, |q, ef| {
        let mut all: Vec<(u32, f32)> = Vec::with_capacity(K * segments);
        for (offset, g) in &graphs {
            all.extend(
                g.search(q, K, ef)?
                    .into_iter()
                    .map(|(i, s)| (i + offset, s)),
            );
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(K);
        Ok(all)
    });
    println!(
        "{:>5} {:>13} {:>10} {:>15} {:>10}",
        "ef", "whole recall", "q/s", "merged recall", "q/s"
    );
    for (w, p) in whole.iter().zip(&points) {
        println!(
            "{:>5} {:>13.4} {:>10.0} {:>15.4} {:>10.0}",
            w.ef, w.recall, w.qps, p.recall, p.qps
        );
    }
    json!({"segments": segments, "build_wall_s": build.wall_s, "build_cpu_s": build.cpu_s,
           "search": points.iter().map(|p| json!({"ef": p.ef, "recall": p.recall, "qps": p.qps})).collect::<Vec<_>>()})
}

/// 10 % of the nodes removed (every id whose hash ends in 3): the graph repaired around them
/// (what a compaction does) against one built anew on what is left, in time and recall.
/// The graph built on codes saved and opened in place (`GraphIndex::open`, files evicted from
/// the page cache first, so the open is cold), then searched: its answers must be the same
/// as the built graph's; what stays on the heap (RssAnon) and what the page cache holds for
/// it (RssFile) are measured separately.
fn mapped_run(graph: &GraphIndex, data: &Data, built: &[Point]) -> Value {
    let dir = common::target_dir()
        .join("bench-data")
        .join(format!("hnsw-mapped-{}", graph.len()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let t0 = std::time::Instant::now();
    graph.save(&dir).expect("save the graph");
    let save_s = t0.elapsed().as_secs_f64();
    let files = ["graph.hgraph", "vectors.hvec"].map(|f| dir.join(f));
    let evicted = files.iter().all(|f| common::evict(f));
    let (anon0, file0) = common::rss_split();
    let (opened, open) = common::measure(|| GraphIndex::open(&dir, params()).expect("open"));
    let (anon1, file1) = common::rss_split();
    let points = sweep("graph mapped", data, |q, ef| opened.search(q, K, ef));
    let (anon2, file2) = common::rss_split();
    let same = points
        .iter()
        .zip(built)
        .all(|(a, b)| (a.recall - b.recall).abs() < 1e-12);
    let mib = |kib: u64, from: u64| (kib as f64 - from as f64) / 1024.0;
    let heap = opened.memory_bytes() as f64 / (1 << 20) as f64;
    let in_place = opened.mapped_bytes() as f64 / (1 << 20) as f64;
    let vectors = (graph.len() * DIM * 4) as f64 / (1 << 20) as f64;
    println!(
        "graph mapped: saved in {save_s:.2} s; opened {} in {:.3} s ({:.2} CPU-s); heap {heap:.0} MiB, \
         {in_place:.0} MiB in place ({vectors:.0} MiB of it f32 vectors); after open RssAnon +{:.0} \
         RssFile +{:.0} MiB; after the sweep RssAnon +{:.0} RssFile +{:.0} MiB; answers {}",
        if evicted {
            "cold"
        } else {
            "warm (eviction refused)"
        },
        open.wall_s,
        open.cpu_s,
        mib(anon1, anon0),
        mib(file1, file0),
        mib(anon2, anon0),
        mib(file2, file0),
        if same { "identical" } else { "DIFFER" },
    );
    assert!(same, "the mapped graph answers differently");
    drop(opened);
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    json!({"save_s": save_s, "open_wall_s": open.wall_s, "open_cpu_s": open.cpu_s, "cold": evicted,
           "heap_mib": heap, "mapped_mib": in_place, "f32_mib": vectors,
           "open_anon_mib": mib(anon1, anon0), "open_file_mib": mib(file1, file0),
           "sweep_anon_mib": mib(anon2, anon0), "sweep_file_mib": mib(file2, file0),
           "same_answers": same})
}

fn churn_run(graph: &GraphIndex, data: &Data, before: &[Point]) -> Value {
    let n = data.base.len() / DIM;
    let removed = |i: u32| (u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 10 == 3;
    let kept: Vec<u32> = (0..n as u32).filter(|&i| !removed(i)).collect();
    let rows: Vec<f32> = kept
        .iter()
        .flat_map(|&i| &data.base[i as usize * DIM..(i as usize + 1) * DIM])
        .copied()
        .collect();
    let sub = Data {
        base: Vec::new(),
        queries: data.queries.clone(),
        truth: common::ground_truth(&rows, &data.queries, DIM, K, 2),
        base_path: PathBuf::new(),
        queries_path: PathBuf::new(),
        truth_path: PathBuf::new(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(BUILD_THREADS)
        .build()
        .expect("a rayon pool");
    let (repaired, repair) = common::measure(|| pool.install(|| graph.without(&removed)));
    println!(
        "churn: {} of {n} removed; repaired in {:.1} s ({:.1} CPU-s)",
        n - kept.len(),
        repair.wall_s,
        repair.cpu_s
    );
    let repaired_points = sweep("repaired", &sub, |q, ef| repaired.search(q, K, ef));
    drop(repaired);
    let (rebuilt, rebuild) = common::measure(|| build_graph(&rows, true));
    println!(
        "churn: rebuilt in {:.1} s ({:.1} CPU-s)",
        rebuild.wall_s, rebuild.cpu_s
    );
    let rebuilt_points = sweep("rebuilt", &sub, |q, ef| rebuilt.search(q, K, ef));
    println!(
        "{:>5} {:>14} {:>16} {:>15}",
        "ef", "before recall", "repaired recall", "rebuilt recall"
    );
    for ((b, r), f) in before.iter().zip(&repaired_points).zip(&rebuilt_points) {
        println!(
            "{:>5} {:>14.4} {:>16.4} {:>15.4}",
            b.ef, b.recall, r.recall, f.recall
        );
    }
    let points = |pts: &[Point]| -> Value {
        pts.iter()
            .map(|p| json!({"ef": p.ef, "recall": p.recall, "qps": p.qps}))
            .collect()
    };
    json!({"removed": n - kept.len(),
           "repair": {"wall_s": repair.wall_s, "cpu_s": repair.cpu_s, "search": points(&repaired_points)},
           "rebuild": {"wall_s": rebuild.wall_s, "cpu_s": rebuild.cpu_s, "search": points(&rebuilt_points)}})
}

/// One index's recall and query rate at every ef of `EFS`.
fn sweep(label: &str, data: &Data, search: impl Fn(&[f32], usize) -> Found) -> Vec<Point> {
    EFS.iter()
        .map(|&ef| search_with(label, data, ef, |q| search(q, ef)))
        .collect()
}

fn search_with(label: &str, data: &Data, ef: usize, search: impl Fn(&[f32]) -> Found) -> Point {
    let queries: Vec<&[f32]> = data.queries.chunks_exact(DIM).collect();
    for q in queries.iter().take(50) {
        std::hint::black_box(search(q).expect("search")); // warm-up
    }
    let mut best = f64::INFINITY;
    let mut found: Vec<Vec<u32>> = Vec::new();
    for _ in 0..SEARCH_REPS {
        let t = Instant::now();
        found = queries
            .iter()
            .map(|q| {
                search(q)
                    .expect("search")
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            })
            .collect();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let p = Point {
        ef,
        recall: common::recall(&found, &data.truth, K),
        qps: queries.len() as f64 / best,
    };
    println!(
        "{label}: ef={ef} recall@{K}={:.4} {:.0} q/s",
        p.recall, p.qps
    );
    p
}
