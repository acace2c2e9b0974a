//! Embedding benchmark: hearth's embedder (all-MiniLM-L6-v2, 2 threads, batches of 32) in f32
//! and, where the CPU has AVX-512 VNNI (`engine.embed_precision = "auto"` picks it), in int8,
//! against sentence-transformers + torch on the same texts, in the same run; with the cosine
//! agreement of the int8 vectors to the f32 ones on every passage.
//!
//!     cargo bench --bench embed
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench embed     # small run, proves the harness
//!
//! Inputs, all from the repository: 256 passages of ~64 and 256 of ~256 word pieces (special
//! tokens included, so the longer ones are not truncated) cut at word boundaries from the text
//! files of `testdata/corpus` (HTML tags stripped crudely), and 100 short queries (the questions
//! of `testdata/retrieval/questions.json` plus the short texts of
//! `testdata/embeddings/all-MiniLM-L6-v2.json`).
//!
//! Measures passages/s (each set embedded whole, in requests of 32 at bulk priority, 3
//! repetitions: best and median), single-query latency p50/p99 (query priority, one at a time)
//! and CPU seconds; then runs `benches/peers/embed_peer.py` on the same inputs (venv from
//! `scripts/bench-peers.sh`; `HEARTH_BENCH_NO_PEERS=1` skips it). Prints a table with the
//! ratios and writes `bench-embed.json` in the cargo target directory.
//!
//! Needs the models (`scripts/fetch-models.sh`; `HEARTH_MODELS` to point elsewhere).

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use hearth_engine::{EmbedPrecision, Embedder, EngineConfig, Priority, Role, Tokenizer};
use serde_json::{Value, json};

const THREADS: usize = 2;
const BATCH: usize = 32;
const DIM: usize = 384;

fn main() {
    if common::is_probe() {
        return;
    }
    let quick = common::quick();
    let (n_passages, n_queries, reps) = if quick { (64, 20, 1) } else { (256, 100, 3) };
    let root = common::root();
    let models = common::models_dir();
    let machine = common::machine();

    let config = EngineConfig {
        models_dir: models.clone(),
        device: "cpu".to_owned(),
        embed_threads: THREADS,
        embed_batch_size: BATCH,
        ..Default::default()
    };
    let model_dir = config.embedding_model_dir();
    let tokenizer = Tokenizer::from_file(&model_dir.join("tokenizer.json")).unwrap_or_else(|e| {
        panic!(
            "loading the tokenizer from {}: {e} (run scripts/fetch-models.sh or set HEARTH_MODELS)",
            model_dir.display()
        )
    });
    let corpus = root.join("testdata/corpus");
    let words = common::corpus_words(&corpus);
    assert!(
        words.len() > 10_000,
        "too little text in {}",
        corpus.display()
    );
    let passages_64 = common::passages(&tokenizer, &words, 0, n_passages, 64);
    let passages_256 = common::passages(&tokenizer, &words, words.len() / 3, n_passages, 256);
    let queries = queries(&root, n_queries);
    let tok_stats = |ps: &[String]| {
        let counts: Vec<f64> = ps
            .iter()
            .map(|p| tokenizer.count(p).unwrap() as f64)
            .collect();
        (
            counts.iter().sum::<f64>() / counts.len() as f64,
            counts.iter().copied().fold(0.0, f64::max),
        )
    };
    let (t64, t256, tq) = (
        tok_stats(&passages_64),
        tok_stats(&passages_256),
        tok_stats(&queries),
    );
    println!(
        "inputs: {} passages of {:.1} tokens (max {}), {} of {:.1} (max {}), {} queries of {:.1} (max {}); {THREADS} threads, batch {BATCH}, {reps} reps",
        passages_64.len(),
        t64.0,
        t64.1,
        passages_256.len(),
        t256.0,
        t256.1,
        queries.len(),
        tq.0,
        tq.1
    );

    // hearth: f32, then whatever "auto" picks when that is int8.
    let f32_run = run_hearth(
        &EngineConfig {
            embed_precision: EmbedPrecision::F32,
            ..config.clone()
        },
        &passages_64,
        &passages_256,
        &queries,
        reps,
    );
    let int8_run = if Embedder::load(&config)
        .map(|e| e.precision() == EmbedPrecision::Int8)
        .unwrap_or(false)
    {
        Some(run_hearth(
            &config,
            &passages_64,
            &passages_256,
            &queries,
            reps,
        ))
    } else {
        println!("hearth: this CPU has no AVX-512 VNNI, so \"auto\" is f32: no int8 run");
        None
    };
    let agreement = int8_run.as_ref().map(|i| {
        let cos: Vec<f64> = f32_run
            .vectors
            .iter()
            .zip(&i.vectors)
            .map(|(a, b)| f64::from(a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()))
            .collect();
        let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        println!(
            "int8 against f32 on {} passages: cosine min {min:.5}, mean {mean:.6}",
            cos.len()
        );
        json!({"passages": cos.len(), "cosine_min": min, "cosine_mean": mean})
    });
    let HearthRun {
        load,
        h64,
        h256,
        hq,
        peak_rss_mib: hearth_peak_rss_mib,
        ..
    } = f32_run;

    // peer
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("embed-input.json");
    let input_json = json!({
        "model_dir": model_dir, "passages_64": passages_64, "passages_256": passages_256,
        "queries": queries, "threads": THREADS, "batch": BATCH, "reps": reps,
    });
    std::fs::write(&input, serde_json::to_vec(&input_json).unwrap()).unwrap();
    println!("peer: sentence-transformers (embed_peer.py)");
    let peer = common::peer_or_missing("embed_peer.py", &[OsString::from(&input)]);

    // table
    let pf = |k: &str, f: &str| peer[k][f].as_f64();
    println!();
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "", "hearth f32", "hearth int8", "s-t + torch", "f32/peer", "int8/f32"
    );
    let i8v = |f: &dyn Fn(&HearthRun) -> f64| int8_run.as_ref().map(f);
    let int8_col: [Option<f64>; 12] = [
        i8v(&|r| r.h64.best_rate()),
        i8v(&|r| r.h64.median_rate()),
        i8v(&|r| r.h64.cpu_per_rep()),
        i8v(&|r| r.h256.best_rate()),
        i8v(&|r| r.h256.median_rate()),
        i8v(&|r| r.h256.cpu_per_rep()),
        i8v(&|r| r.hq.p50_ms),
        i8v(&|r| r.hq.p99_ms),
        i8v(&|r| r.hq.mean_ms),
        i8v(&|r| r.hq.cpu_s),
        i8v(&|r| r.load.wall_s),
        i8v(&|r| r.peak_rss_mib),
    ];
    let rows: [(&str, f64, Option<f64>, usize); 12] = [
        (
            "~64-tok passages/s (best)",
            h64.best_rate(),
            pf("passages_64", "passages_per_s_best"),
            1,
        ),
        (
            "~64-tok passages/s (median)",
            h64.median_rate(),
            pf("passages_64", "passages_per_s_median"),
            1,
        ),
        (
            "~64-tok CPU s per pass",
            h64.cpu_per_rep(),
            pf("passages_64", "cpu_s_per_rep"),
            2,
        ),
        (
            "~256-tok passages/s (best)",
            h256.best_rate(),
            pf("passages_256", "passages_per_s_best"),
            1,
        ),
        (
            "~256-tok passages/s (median)",
            h256.median_rate(),
            pf("passages_256", "passages_per_s_median"),
            1,
        ),
        (
            "~256-tok CPU s per pass",
            h256.cpu_per_rep(),
            pf("passages_256", "cpu_s_per_rep"),
            2,
        ),
        ("query p50 ms", hq.p50_ms, pf("queries", "p50_ms"), 2),
        ("query p99 ms", hq.p99_ms, pf("queries", "p99_ms"), 2),
        ("query mean ms", hq.mean_ms, pf("queries", "mean_ms"), 2),
        ("queries CPU s", hq.cpu_s, pf("queries", "cpu_s"), 2),
        ("model load s", load.wall_s, peer["load_s"].as_f64(), 2),
        (
            "peak RSS MiB (process)",
            hearth_peak_rss_mib,
            peer["peak_rss_mib"].as_f64(),
            0,
        ),
    ];
    for ((label, h, p, decimals), i) in rows.into_iter().zip(int8_col) {
        println!(
            "{label:<30} {:>12} {:>12} {:>12} {:>12} {:>12}",
            common::num(Some(h), decimals),
            common::num(i, decimals),
            common::num(p, decimals),
            common::ratio(Some(h), p),
            common::ratio(i, Some(h))
        );
    }
    println!(
        "(a/b = a ÷ b: above 1 is better for rates, below 1 for times, CPU and memory; each hearth run in its own embedder, one after the other, peak RSS of the process so far)"
    );
    for (key, ours) in [("passages_64", t64.0), ("passages_256", t256.0)] {
        if let Some(theirs) = peer[key]["tokens"]["mean"].as_f64()
            && (theirs - ours).abs() > 0.5
        {
            println!(
                "warning: {key}: the peer's tokenizer counts {theirs:.1} tokens per passage, hearth's {ours:.1}"
            );
        }
    }

    let results = json!({
        "bench": "embed",
        "machine": machine,
        "config": {"threads": THREADS, "batch": BATCH, "reps": reps, "model_dir": model_dir,
                   "passages": n_passages, "queries": queries.len(),
                   "tokens_mean": {"passages_64": t64.0, "passages_256": t256.0, "queries": tq.0}},
        "hearth": {
            "load_s": load.wall_s,
            "passages_64": h64.json(), "passages_256": h256.json(), "queries": hq.json(),
            "peak_rss_mib": hearth_peak_rss_mib,
        },
        "hearth_int8": int8_run.as_ref().map(|r| json!({
            "load_s": r.load.wall_s,
            "passages_64": r.h64.json(), "passages_256": r.h256.json(), "queries": r.hq.json(),
            "peak_rss_mib": r.peak_rss_mib,
        })),
        "int8_agreement": agreement,
        "peer": peer,
        "ratios_hearth_over_peer": {
            "passages_64_per_s": ratio_value(Some(h64.best_rate()), pf("passages_64", "passages_per_s_best")),
            "passages_256_per_s": ratio_value(Some(h256.best_rate()), pf("passages_256", "passages_per_s_best")),
            "query_p50_ms": ratio_value(Some(hq.p50_ms), pf("queries", "p50_ms")),
            "query_p99_ms": ratio_value(Some(hq.p99_ms), pf("queries", "p99_ms")),
        },
    });
    common::write_results("embed", &results);
}

/// One embedder's figures, and its vectors of every passage (~64, then ~256 tokens).
struct HearthRun {
    load: common::Section,
    h64: Passes,
    h256: Passes,
    hq: Latency,
    peak_rss_mib: f64,
    vectors: Vec<Vec<f32>>,
}

fn run_hearth(
    config: &EngineConfig,
    passages_64: &[String],
    passages_256: &[String],
    queries: &[String],
    reps: usize,
) -> HearthRun {
    let (embedder, load) = common::measure(|| Embedder::load(config));
    let embedder = embedder.unwrap_or_else(|e| {
        panic!(
            "loading the embedder from {}: {e}",
            config.embedding_model_dir().display()
        )
    });
    let label = format!("hearth {:?}", embedder.precision());
    println!("{label}: embedder loaded in {:.2} s", load.wall_s);
    // Warm-up: a batch of each passage kind and a few queries.
    embed_all(&embedder, &passages_64[..BATCH.min(passages_64.len())]);
    embed_all(&embedder, &passages_256[..BATCH.min(passages_256.len())]);
    for q in queries.iter().take(5) {
        embed_one(&embedder, q);
    }
    let h64 = bench_passages(&embedder, passages_64, reps, "64");
    let h256 = bench_passages(&embedder, passages_256, reps, "256");
    let hq = bench_queries(&embedder, queries);
    let peak_rss_mib = common::rss().hwm_kib as f64 / 1024.0;
    let mut vectors = Vec::new();
    for batch in passages_64.chunks(BATCH).chain(passages_256.chunks(BATCH)) {
        let e = embedder
            .embed_blocking(batch.to_vec(), Role::Passage, Priority::Bulk)
            .expect("embedding a batch");
        vectors.extend(e.iter().map(<[f32]>::to_vec));
    }
    HearthRun {
        load,
        h64,
        h256,
        hq,
        peak_rss_mib,
        vectors,
    }
}

fn ratio_value(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

fn embed_all(embedder: &Embedder, texts: &[String]) {
    for batch in texts.chunks(BATCH) {
        let e = embedder
            .embed_blocking(batch.to_vec(), Role::Passage, Priority::Bulk)
            .expect("embedding a batch");
        assert_eq!((e.len(), e.dim()), (batch.len(), DIM));
    }
}

fn embed_one(embedder: &Embedder, text: &str) {
    let e = embedder
        .embed_blocking(vec![text.to_owned()], Role::Query, Priority::Query)
        .expect("embedding a query");
    assert_eq!((e.len(), e.dim()), (1, DIM));
    let norm: f32 = e.row(0).iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "query embedding norm {norm}");
}

struct Passes {
    n: usize,
    walls: Vec<f64>,
    cpus: Vec<f64>,
}

impl Passes {
    fn best_rate(&self) -> f64 {
        self.n as f64 / self.walls.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn median_rate(&self) -> f64 {
        self.n as f64 / common::median(&self.walls)
    }
    fn cpu_per_rep(&self) -> f64 {
        common::median(&self.cpus)
    }
    fn json(&self) -> Value {
        json!({"passages": self.n, "walls_s": self.walls, "cpu_s": self.cpus,
               "passages_per_s_best": self.best_rate(), "passages_per_s_median": self.median_rate(),
               "cpu_s_per_rep": self.cpu_per_rep()})
    }
}

fn bench_passages(embedder: &Embedder, texts: &[String], reps: usize, label: &str) -> Passes {
    let mut p = Passes {
        n: texts.len(),
        walls: Vec::new(),
        cpus: Vec::new(),
    };
    for r in 0..reps {
        let ((), s) = common::measure(|| embed_all(embedder, texts));
        println!(
            "hearth: {} ~{label}-token passages, rep {}/{reps}: {:.2} s ({:.1}/s, {:.2} CPU-s)",
            texts.len(),
            r + 1,
            s.wall_s,
            texts.len() as f64 / s.wall_s,
            s.cpu_s
        );
        p.walls.push(s.wall_s);
        p.cpus.push(s.cpu_s);
    }
    p
}

struct Latency {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    cpu_s: f64,
}

impl Latency {
    fn json(&self) -> Value {
        json!({"queries": self.n, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
               "mean_ms": self.mean_ms, "cpu_s": self.cpu_s})
    }
}

fn bench_queries(embedder: &Embedder, queries: &[String]) -> Latency {
    let cpu0 = common::cpu_time();
    let mut ms: Vec<f64> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            embed_one(embedder, q);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let cpu_s = (common::cpu_time() - cpu0).as_secs_f64();
    ms.sort_by(f64::total_cmp);
    let l = Latency {
        n: ms.len(),
        p50_ms: common::percentile(&ms, 50.0),
        p99_ms: common::percentile(&ms, 99.0),
        mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        cpu_s,
    };
    println!(
        "hearth: {} queries one at a time: p50 {:.2} ms, p99 {:.2} ms, {:.2} CPU-s",
        l.n, l.p50_ms, l.p99_ms, l.cpu_s
    );
    l
}

/// `n` short queries: the questions of the retrieval set, then the short texts (≤ 32 tokens) of
/// the reference embeddings.
fn queries(root: &Path, n: usize) -> Vec<String> {
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
            .unwrap()
    };
    let questions = read("testdata/retrieval/questions.json");
    let reference = read("testdata/embeddings/all-MiniLM-L6-v2.json");
    let from_questions = questions["questions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["question"].as_str());
    let from_reference = reference["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["tokens"].as_u64().is_some_and(|t| t <= 32))
        .filter_map(|i| i["text"].as_str());
    let mut out: Vec<String> = Vec::with_capacity(n);
    for q in from_questions.chain(from_reference) {
        if out.len() == n {
            break;
        }
        if !q.trim().is_empty() && !out.iter().any(|o| o == q) {
            out.push(q.to_owned());
        }
    }
    out
}
