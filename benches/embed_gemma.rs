//! EmbeddingGemma-300M: hearth's encoder (dense f32 through candle, and Q8_0 weights on the
//! integer kernels) against sentence-transformers + torch (f32) on the same model and the same
//! passages, in the same run; all-MiniLM-L6-v2 (int8) on them as the cost reference; and the
//! cosine agreement of hearth's vectors with the peer's.
//!
//!     HEARTH_BENCH_PYTHON=/path/to/venv/bin/python cargo bench --bench embed_gemma
//!     HEARTH_BENCH_QUICK=1 HEARTH_BENCH_PYTHON=... cargo bench --bench embed_gemma  # 40 passages, 1 rep
//!
//! The peer is `benches/peers/embed_gemma_peer.py`, run by the python of
//! `$HEARTH_BENCH_PYTHON` (any venv with torch and a sentence-transformers that knows gemma3,
//! e.g. `HEARTH_BENCH_PYTHON=/tmp/stvenv/bin/python`); unset, the venv of
//! `scripts/bench-peers.sh` (created on first use); `HEARTH_BENCH_NO_PEERS=1` skips it.
//!
//! Inputs: 200 passages of 54 words (~100 tokens; 54-word windows over the passages of
//! `testdata/sources/e5/texts.json`, real manual pages in 9 languages, as
//! `benches/embed_e5.rs` cuts them). hearth embeds them in requests of 32 at bulk priority with
//! 1 and 2 embedding threads, one embedder per row (gemma f32, gemma int8, MiniLM int8 where the
//! CPU has AVX-512 VNNI); the peer loads the sentence-transformers directory as is in f32
//! (max_seq_length 512, hearth's cap for this model), encodes with `prompt_name="document"`
//! (the prefix hearth adds to a passage) and batch 32, on 1 and 2 torch threads (a process
//! each). Passages/s by wall clock, best and median of 3 (after one warm-up batch); CPU
//! seconds per pass (the whole process); peak RSS (hearth: VmHWM reset before each row's load
//! where the kernel permits, so a row's figure is its own; the peer: its process's peak).
//! Prints a table with the ratios and writes `bench-embed_gemma.json` in the target directory.
//!
//! Needs `embeddinggemma-300m` (the sentence-transformers directory) and `all-MiniLM-L6-v2`
//! under `$HEARTH_MODELS` (else `<root>/models`).

mod common;

use std::ffi::OsString;
use std::time::Instant;

use hearth_engine::{EmbedPrecision, Embedder, EngineConfig, Priority, Role};
use serde_json::{Value, json};

const GEMMA: &str = "embeddinggemma-300m";
const MINILM: &str = "all-MiniLM-L6-v2";
const BATCH: usize = 32;
const THREADS: [usize; 2] = [1, 2];
/// Passages whose vectors the peer returns for the agreement check.
const AGREEMENT: usize = 16;
/// EmbeddingGemma's "document" prompt (only to count the tokens the model sees).
const DOCUMENT_PROMPT: &str = "title: none | text: ";

/// One hearth row: an embedder's figures on the whole set.
struct Row {
    label: &'static str,
    model: &'static str,
    precision: EmbedPrecision,
    threads: usize,
    load_s: f64,
    walls: Vec<f64>,
    cpus: Vec<f64>,
    peak_rss_mib: Option<f64>,
    /// The vectors of the first [`AGREEMENT`] passages.
    vectors: Vec<Vec<f32>>,
}

impl Row {
    fn name(&self) -> String {
        format!(
            "hearth {} {}, {}t",
            self.label,
            precision_name(self.precision),
            self.threads
        )
    }
    fn best(&self, n: usize) -> f64 {
        n as f64 / self.walls.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn median(&self, n: usize) -> f64 {
        n as f64 / common::median(&self.walls)
    }
    fn cpu_per_pass(&self) -> f64 {
        common::median(&self.cpus)
    }
}

fn main() {
    if common::is_probe() {
        return;
    }
    let n = if common::quick() { 40 } else { 200 };
    let reps = if common::quick() { 1 } else { 3 };
    let passages = common::e5_bench_passages(n);
    let models = common::models_dir();
    let machine = common::machine();
    println!(
        "{} passages of 54 words ({} bytes on average); requests of {BATCH}, best of {reps}",
        passages.len(),
        passages.iter().map(String::len).sum::<usize>() / passages.len()
    );
    if !common::reset_peak_rss() {
        println!(
            "note: cannot reset the peak RSS here: each hearth row's peak is the process's so far"
        );
    }

    // hearth
    let mut rows: Vec<Row> = Vec::new();
    let mut gemma_tokens = None;
    for (model, label, precision) in [
        (GEMMA, "gemma", EmbedPrecision::F32),
        (GEMMA, "gemma", EmbedPrecision::Int8),
        // "auto": int8 where the CPU has AVX-512 VNNI; no MiniLM row otherwise.
        (MINILM, "MiniLM", EmbedPrecision::Auto),
    ] {
        for threads in THREADS {
            let cfg = EngineConfig {
                models_dir: models.clone(),
                embedding_model: model.into(),
                device: "cpu".into(),
                embed_threads: threads,
                embed_batch_size: BATCH,
                embed_precision: precision,
                ..EngineConfig::default()
            };
            common::reset_peak_rss();
            let t = Instant::now();
            let e = Embedder::load(&cfg).unwrap_or_else(|e| {
                panic!(
                    "loading {}: {e} (scripts/fetch-models.sh, or set HEARTH_MODELS)",
                    cfg.embedding_model_dir().display()
                )
            });
            let load_s = t.elapsed().as_secs_f64();
            if precision == EmbedPrecision::Auto && e.precision() == EmbedPrecision::F32 {
                println!("{label}: this CPU has no AVX-512 VNNI, so \"auto\" is f32: no int8 row");
                break;
            }
            if model == GEMMA && gemma_tokens.is_none() {
                let counts: Vec<f64> = passages
                    .iter()
                    .map(|p| {
                        e.tokenizer()
                            .count(&format!("{DOCUMENT_PROMPT}{p}"))
                            .unwrap() as f64
                    })
                    .collect();
                gemma_tokens = Some((
                    counts.iter().sum::<f64>() / counts.len() as f64,
                    counts.iter().copied().fold(0.0, f64::max),
                ));
            }
            embed(&e, &passages[..BATCH.min(passages.len())]); // warm-up
            let (mut walls, mut cpus) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let cpu0 = common::cpu_time();
                let t = Instant::now();
                embed(&e, &passages);
                walls.push(t.elapsed().as_secs_f64());
                cpus.push((common::cpu_time() - cpu0).as_secs_f64());
            }
            let hwm = common::rss().hwm_kib;
            let vectors = embed(&e, &passages[..AGREEMENT.min(passages.len())]);
            let row = Row {
                label,
                model,
                precision: e.precision(),
                threads,
                load_s,
                walls,
                cpus,
                peak_rss_mib: (hwm > 0).then(|| hwm as f64 / 1024.0),
                vectors,
            };
            println!(
                "{}: {:.2} passages/s (best), {:.2} CPU-s per pass, loaded in {:.2} s",
                row.name(),
                row.best(n),
                row.cpu_per_pass(),
                load_s
            );
            rows.push(row);
        }
    }
    if let Some((mean, max)) = gemma_tokens {
        println!("gemma: {mean:.1} tokens per passage with its prompt (max {max})");
    }

    // peer: one process per thread count; the first returns its vectors for the agreement.
    let dir = tempfile::tempdir().unwrap();
    let model_dir = models.join(GEMMA);
    let mut peers: Vec<(usize, Value)> = Vec::new();
    for (i, threads) in THREADS.into_iter().enumerate() {
        let input = dir.path().join(format!("embed-gemma-input-{threads}.json"));
        let input_json = json!({
            "model_dir": model_dir, "passages": passages, "threads": threads, "batch": BATCH,
            "reps": reps, "vectors": if i == 0 { AGREEMENT } else { 0 },
        });
        std::fs::write(&input, serde_json::to_vec(&input_json).unwrap()).unwrap();
        println!("peer: sentence-transformers (embed_gemma_peer.py), {threads} torch thread(s)");
        let peer = common::peer_or_missing("embed_gemma_peer.py", &[OsString::from(&input)]);
        let missing = peer.get("missing").is_some();
        peers.push((threads, peer));
        if missing {
            break; // the same reason holds for the other thread count
        }
    }
    let peer_at = |threads: usize| {
        peers
            .iter()
            .find(|(t, p)| *t == threads && p.get("missing").is_none())
            .map(|(_, p)| p)
    };
    let peer_rate =
        |threads: usize| peer_at(threads).and_then(|p| p["passages_per_s_best"].as_f64());

    // agreement of hearth's gemma vectors with the peer's (cosine: both are unit vectors)
    let peer_vectors: Vec<Vec<f32>> = peers
        .iter()
        .find_map(|(_, p)| p["vectors"].as_array().filter(|v| !v.is_empty()))
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut agreement = serde_json::Map::new();
    if !peer_vectors.is_empty() {
        for precision in [EmbedPrecision::Int8, EmbedPrecision::F32] {
            // The 2-thread row (the threads should not change the vectors; its last row anyway).
            let Some(row) = rows
                .iter()
                .rev()
                .find(|r| r.model == GEMMA && r.precision == precision)
            else {
                continue;
            };
            let cos: Vec<f64> = row
                .vectors
                .iter()
                .zip(&peer_vectors)
                .map(|(a, b)| {
                    assert_eq!(
                        a.len(),
                        b.len(),
                        "hearth and the peer disagree on the width"
                    );
                    f64::from(a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
                })
                .collect();
            let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
            let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
            println!(
                "hearth gemma {} against sentence-transformers f32 on the first {} passages: cosine min {min:.5}, mean {mean:.6}",
                precision_name(precision),
                cos.len()
            );
            agreement.insert(
                precision_name(precision).into(),
                json!({"passages": cos.len(), "threads": row.threads, "cosine_min": min,
                       "cosine_mean": mean, "cosines": cos}),
            );
        }
    }

    // table
    let gemma_int8_rate = |threads: usize| {
        rows.iter()
            .find(|r| {
                r.model == GEMMA && r.precision == EmbedPrecision::Int8 && r.threads == threads
            })
            .map(|r| r.best(n))
    };
    println!();
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "passages/s", "best", "median", "CPU s", "peak MiB", "/ s-t", "/ int8"
    );
    for r in &rows {
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            r.name(),
            common::num(Some(r.best(n)), 2),
            common::num(Some(r.median(n)), 2),
            common::num(Some(r.cpu_per_pass()), 2),
            common::num(r.peak_rss_mib, 0),
            common::ratio(Some(r.best(n)), peer_rate(r.threads)),
            common::ratio(Some(r.best(n)), gemma_int8_rate(r.threads)),
        );
    }
    for threads in THREADS {
        let p = peer_at(threads);
        let f = |k: &str| p.and_then(|p| p[k].as_f64());
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("s-t gemma f32, {threads}t"),
            common::num(f("passages_per_s_best"), 2),
            common::num(f("passages_per_s_median"), 2),
            common::num(f("cpu_s"), 2),
            common::num(f("peak_rss_mb"), 0),
            "",
            common::ratio(f("passages_per_s_best"), gemma_int8_rate(threads)),
        );
    }
    println!(
        "(/ s-t: best rate ÷ sentence-transformers' gemma at the same threads; / int8: ÷ hearth gemma int8 at the same threads; CPU s: per pass, whole process; peak MiB: hearth per row, the peer per process)"
    );
    if let (Some((ours, _)), Some(theirs)) = (
        gemma_tokens,
        peer_at(1).and_then(|p| p["tokens"]["mean"].as_f64()),
    ) && (theirs - ours).abs() > 0.5
    {
        println!(
            "warning: the peer's tokenizer counts {theirs:.1} tokens per passage, hearth's {ours:.1}"
        );
    }

    // results
    let hearth: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name(), "model": r.model, "precision": precision_name(r.precision),
                "threads": r.threads, "load_s": r.load_s, "walls_s": r.walls, "cpu_s": r.cpus,
                "passages_per_s_best": r.best(n), "passages_per_s_median": r.median(n),
                "cpu_s_per_pass": r.cpu_per_pass(), "peak_rss_mib": r.peak_rss_mib,
                "over_peer": ratio_value(Some(r.best(n)), peer_rate(r.threads)),
            })
        })
        .collect();
    let peer: serde_json::Map<String, Value> = peers
        .into_iter()
        .map(|(threads, mut p)| {
            if let Some(o) = p.as_object_mut() {
                o.remove("vectors");
            }
            (format!("threads_{threads}"), p)
        })
        .collect();
    let results = json!({
        "bench": "embed_gemma",
        "machine": machine,
        "config": {"passages": n, "words": 54, "batch": BATCH, "reps": reps,
                   "threads": THREADS, "model_dir": model_dir,
                   "tokens_mean": gemma_tokens.map(|t| t.0)},
        "hearth": hearth,
        "peer": peer,
        "agreement_with_peer": agreement,
    });
    common::write_results("embed_gemma", &results);
}

fn precision_name(p: EmbedPrecision) -> &'static str {
    match p {
        EmbedPrecision::F32 => "f32",
        EmbedPrecision::Int8 => "int8",
        EmbedPrecision::Auto => "auto",
    }
}

fn ratio_value(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

/// Embeds `texts` as passages in requests of [`BATCH`] at bulk priority; returns the vectors.
fn embed(e: &Embedder, texts: &[String]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(BATCH) {
        let v = e
            .embed_blocking(batch.to_vec(), Role::Passage, Priority::Bulk)
            .expect("embedding");
        assert_eq!(v.len(), batch.len());
        out.extend(v.iter().map(<[f32]>::to_vec));
    }
    out
}
