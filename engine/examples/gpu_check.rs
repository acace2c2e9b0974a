//! Device check: the engine on a CUDA device against its own CPU path on the same machine, in
//! one bounded run. `scripts/gpu-check.sh` builds it with the `cuda` feature and runs it; on a
//! machine without a GPU (the link-time stub as `libcuda.so.1`) it checks the fallback instead:
//! opening `cuda` fails with a clear error, `auto` picks the CPU, and the CPU figures are taken.
//!
//!     gpu_check [embed|generate|all] [--quick] [--out FILE.json]
//!
//! - **embed**: all-MiniLM-L6-v2 on each device: passages/s on 1,024 passages of ~256 word
//!   pieces cut from `testdata/corpus` (2 repetitions after a warm-up; best), single-query
//!   latency p50/p99 over 100 queries, and the agreement of each device's vectors with the CPU's
//!   f32 ones (cosine, min and mean).
//! - **generate**: the default GGUF (or `HEARTH_GPU_CHECK_MODEL`) on each device: greedy output
//!   of three chat prompts compared token for token between the devices; prefill tokens/s on
//!   ~512-token raw prompts (different each repetition, so no prefix cache); decode tokens/s
//!   over 128 tokens; serving at concurrency 1, 16 and 64 (closed-loop clients, RAG-shaped
//!   ~600-token chat prompts, 64 tokens out, each level stopped after its time budget):
//!   tokens/s, requests/s, TTFT p50/p95.
//!
//! The CPU side uses every core the machine has. Models from `HEARTH_MODELS` (else `./models`);
//! texts from `testdata/` (`HEARTH_GPU_CHECK_ROOT`, else the current directory). Prints a table
//! per part and writes a JSON summary.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hearth_engine::{
    ChatMessage, EmbedPrecision, Embedder, EngineConfig, Generator, Priority, Prompt, Role,
    SamplingParams, Tokenizer,
};
use serde_json::{Value, json};

#[path = "../../benches/common/text.rs"]
mod text;
use text::percentile;

struct Opts {
    quick: bool,
    cores: usize,
    root: PathBuf,
    models: PathBuf,
}

fn main() {
    let mut part = "all".to_owned();
    let mut quick = false;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next(),
            "embed" | "generate" | "all" => part = a,
            other => {
                eprintln!("gpu_check: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let opts = Opts {
        quick,
        cores: std::thread::available_parallelism().map_or(2, |n| n.get()),
        root: std::env::var_os("HEARTH_GPU_CHECK_ROOT").map_or_else(|| ".".into(), PathBuf::from),
        models: std::env::var_os("HEARTH_MODELS").map_or_else(|| "models".into(), PathBuf::from),
    };
    let started = Instant::now();
    // HEARTH_GPU_CHECK_DEVICES=cuda (or cpu) skips the probe, which needs the embedder.
    let only = std::env::var("HEARTH_GPU_CHECK_DEVICES").ok();
    let (cuda, cuda_error, auto) = match only.as_deref() {
        Some(list) => {
            let cuda = list
                .split(',')
                .any(|d| d == "cuda")
                .then(|| "cuda:0".to_owned());
            (cuda, None, "not probed".to_owned())
        }
        None => {
            let (cuda, err) = match Embedder::load(&config(&opts, "cuda")) {
                Ok(e) => (Some(e.device().to_owned()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let auto = Embedder::load(&config(&opts, "auto"))
                .map(|e| e.device().to_owned())
                .unwrap_or_else(|e| format!("error: {e}"));
            (cuda, err, auto)
        }
    };
    println!(
        "cuda: {}; engine.device = \"auto\" picks {auto}; {} CPU cores",
        cuda.as_deref().map_or_else(
            || format!("not opened ({})", cuda_error.as_deref().unwrap_or("?")),
            |d| { format!("opened {d}") }
        ),
        opts.cores
    );
    let mut devices = vec!["cpu"];
    if cuda.is_some() {
        devices.insert(0, "cuda");
    }
    if let Some(list) = &only {
        devices.retain(|d| list.split(',').any(|l| l == *d));
    }
    let mut summary = json!({
        "cuda": cuda, "cuda_error": cuda_error, "auto_picks": auto, "cores": opts.cores,
        "quick": quick,
    });
    if part != "generate" {
        summary["embed"] = embed_part(&opts, &devices);
    }
    if part != "embed" {
        summary["generate"] = generate_part(&opts, &devices);
    }
    summary["wall_s"] = json!(started.elapsed().as_secs_f64());
    let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
    match out {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text + "\n") {
                eprintln!("gpu_check: writing {path}: {e}");
                std::process::exit(1);
            }
        }
        None => println!("{text}"),
    }
    // Without a device the fallback is what is checked: auto must have picked the CPU.
    if only.is_none() && cuda.is_none() && auto != "cpu" {
        eprintln!("gpu_check: no CUDA device, yet engine.device = \"auto\" gave {auto}");
        std::process::exit(1);
    }
}

fn config(opts: &Opts, device: &str) -> EngineConfig {
    EngineConfig {
        models_dir: opts.models.clone(),
        device: device.to_owned(),
        embed_threads: opts.cores,
        gen_threads: opts.cores,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

fn embed_part(opts: &Opts, devices: &[&str]) -> Value {
    let reference = config(opts, "cpu");
    let tok = Tokenizer::from_file(&reference.embedding_model_dir().join("tokenizer.json"))
        .unwrap_or_else(|e| fail(&format!("the embedder's tokenizer: {e}")));
    let words = corpus_words(&opts.root);
    let n = if opts.quick { 64 } else { 1024 };
    let texts = text::passages(&tok, &words, 0, n, 256);
    let n_queries = if opts.quick { 10 } else { 100 };
    let queries = text::passages(&tok, &words, words.len() / 2, n_queries, 16);
    let f32_cpu = {
        let e = Embedder::load(&EngineConfig {
            embed_precision: EmbedPrecision::F32,
            ..reference.clone()
        })
        .unwrap_or_else(|e| fail(&format!("loading the embedder on the CPU: {e}")));
        e.embed_blocking(texts.clone(), Role::Passage, Priority::Bulk)
            .unwrap_or_else(|e| fail(&format!("embedding on the CPU: {e}")))
    };
    let mut rows = Vec::new();
    println!(
        "\nembeddings: {n} passages of <= 256 word pieces, {} queries",
        queries.len()
    );
    println!(
        "{:<6} {:>9} {:>12} {:>10} {:>10} {:>11} {:>11}",
        "device", "precision", "passages/s", "query p50", "query p99", "cos min", "cos mean"
    );
    for &device in devices {
        let mut cfg = config(opts, device);
        if device != "cpu" {
            // Bigger batches keep a GPU busy; the CPU's default of 32 is its measured best.
            cfg.embed_batch_size = 256;
        }
        let e =
            Embedder::load(&cfg).unwrap_or_else(|e| fail(&format!("embedder on {device}: {e}")));
        let run = || {
            let t = Instant::now();
            let v = e
                .embed_blocking(texts.clone(), Role::Passage, Priority::Bulk)
                .unwrap_or_else(|e| fail(&format!("embedding on {device}: {e}")));
            (t.elapsed().as_secs_f64(), v)
        };
        let (_, vectors) = run();
        let best = (0..if opts.quick { 1 } else { 2 })
            .map(|_| run().0)
            .fold(f64::INFINITY, f64::min);
        let cos: Vec<f64> = (0..n)
            .map(|i| {
                vectors
                    .row(i)
                    .iter()
                    .zip(f32_cpu.row(i))
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect();
        let mut lat: Vec<f64> = queries
            .iter()
            .map(|q| {
                let t = Instant::now();
                e.embed_blocking(vec![q.clone()], Role::Query, Priority::Query)
                    .unwrap_or_else(|e| fail(&format!("query on {device}: {e}")));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let row = json!({
            "device": e.device(),
            "precision": format!("{:?}", e.precision()).to_lowercase(),
            "passages_per_s": n as f64 / best,
            "query_p50_ms": percentile(&lat, 50.0),
            "query_p99_ms": percentile(&lat, 99.0),
            "cosine_to_cpu_f32_min": cos.iter().copied().fold(f64::INFINITY, f64::min),
            "cosine_to_cpu_f32_mean": cos.iter().sum::<f64>() / n as f64,
        });
        println!(
            "{:<6} {:>9} {:>12.1} {:>8.2}ms {:>8.2}ms {:>11.6} {:>11.6}",
            row["device"].as_str().unwrap_or("?"),
            row["precision"].as_str().unwrap_or("?"),
            row["passages_per_s"].as_f64().unwrap_or(0.0),
            row["query_p50_ms"].as_f64().unwrap_or(0.0),
            row["query_p99_ms"].as_f64().unwrap_or(0.0),
            row["cosine_to_cpu_f32_min"].as_f64().unwrap_or(0.0),
            row["cosine_to_cpu_f32_mean"].as_f64().unwrap_or(0.0),
        );
        rows.push(row);
    }
    json!({ "passages": n, "queries": queries.len(), "devices": rows })
}

// ---------------------------------------------------------------------------------------------
// Generation

const SYSTEM: &str = "You answer questions using only the numbered passages below. Cite the \
passage you use as [n]. If the passages do not contain the answer, say that the documents do \
not say.";

fn generate_part(opts: &Opts, devices: &[&str]) -> Value {
    let words = corpus_words(&opts.root);
    let greedy_prompts = [
        "Explain in three sentences what a checksum is for.",
        "Write a short list of steps to compress a file with gzip.",
        "What is the difference between a process and a thread?",
    ];
    let mut rows = Vec::new();
    let mut greedy: Vec<Vec<String>> = Vec::new();
    for &device in devices {
        // A device that fails is reported and the others still run.
        match generate_on(opts, device, &words, &greedy_prompts) {
            Ok((row, texts)) => {
                rows.push(row);
                greedy.push(texts);
            }
            Err(e) => {
                println!("\ngeneration on {device} failed: {e}");
                rows.push(json!({"device": device, "error": e}));
            }
        }
    }
    // Greedy agreement: the characters the devices' answers share from the start.
    let agreement: Vec<Value> = match greedy.as_slice() {
        [gpu, cpu] => gpu
            .iter()
            .zip(cpu)
            .zip(greedy_prompts)
            .map(|((a, b), p)| {
                let same = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
                json!({"prompt": p, "identical": a == b, "shared_prefix_chars": same,
                       "chars": b.chars().count(), "cuda": a, "cpu": b})
            })
            .collect(),
        _ => Vec::new(),
    };
    if !agreement.is_empty() {
        let identical = agreement.iter().filter(|a| a["identical"] == true).count();
        println!(
            "greedy answers identical on cuda and cpu: {identical} of {}",
            agreement.len()
        );
    }
    json!({ "devices": rows, "greedy_agreement": agreement })
}

/// One device's figures and its greedy answers to `greedy_prompts`.
fn generate_on(
    opts: &Opts,
    device: &str,
    words: &[String],
    greedy_prompts: &[&str],
) -> Result<(Value, Vec<String>), String> {
    let levels: &[usize] = if opts.quick { &[1, 4] } else { &[1, 16, 64] };
    let budget = Duration::from_secs(if opts.quick { 15 } else { 30 });
    let mut cfg = config(opts, device);
    if let Ok(m) = std::env::var("HEARTH_GPU_CHECK_MODEL") {
        cfg.generator_model = m.into();
    }
    cfg.kv_cache_mb = 4096;
    cfg.max_running = 64;
    cfg.gen_queue = 1024;
    let t = Instant::now();
    let g = Generator::load(&cfg)
        .map_err(|e| format!("loading {}: {e}", cfg.generator_model_path().display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let name = g.info().name.clone();
    let texts = greedy_prompts
        .iter()
        .map(|p| run(&g, &chat(None, p), 48).map(|r| r.0))
        .collect::<Result<Vec<_>, _>>()?;
    let reps = if opts.quick { 1 } else { 3 };
    let mut prefill = Vec::new();
    for r in 0..reps {
        let text = words_from(words, 1000 + r * 700, if opts.quick { 100 } else { 400 });
        let (_, c) = run(&g, &Prompt::Text(text), 1)?;
        prefill.push((c.usage.prompt_tokens, c.timings.prefill_ms));
    }
    let prefill_tok_s = prefill
        .iter()
        .map(|&(tokens, ms)| tokens as f64 / (ms / 1e3))
        .fold(0.0, f64::max);
    let mut decode = 0.0f64;
    for _ in 0..reps {
        let essay = chat(
            None,
            "Write a long essay about the history of data compression.",
        );
        let (_, c) = run(&g, &essay, if opts.quick { 32 } else { 128 })?;
        decode = decode.max(c.timings.decode_tokens_per_s);
    }
    println!(
        "\ngeneration on {} ({name}): load {load_s:.2} s, prefill {prefill_tok_s:.0} tok/s \
         ({} prompt tokens), decode {decode:.1} tok/s",
        g.info().device,
        prefill.first().map_or(0, |p| p.0)
    );
    println!(
        "{:>5} {:>9} {:>10} {:>8} {:>10} {:>10} {:>7}",
        "conc", "requests", "tokens/s", "req/s", "TTFT p50", "TTFT p95", "failed"
    );
    let mut serving = Vec::new();
    for &c in levels {
        let s = serve(&g, words, c, budget, opts.quick);
        println!(
            "{:>5} {:>9} {:>10.1} {:>8.2} {:>8.0}ms {:>8.0}ms {:>7}",
            c,
            s["requests"],
            s["tokens_per_s"].as_f64().unwrap_or(0.0),
            s["requests_per_s"].as_f64().unwrap_or(0.0),
            s["ttft_p50_ms"].as_f64().unwrap_or(0.0),
            s["ttft_p95_ms"].as_f64().unwrap_or(0.0),
            s["failed"]
        );
        serving.push(s);
    }
    let row = json!({
        "device": g.info().device, "model": name, "load_s": load_s,
        "prefill_tokens_per_s": prefill_tok_s,
        "prefill_prompt_tokens": prefill.first().map_or(0, |p| p.0),
        "decode_tokens_per_s": decode, "serving": serving,
    });
    Ok((row, texts))
}

fn chat(system: Option<&str>, user: &str) -> Prompt {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage {
            role: "system".into(),
            content: s.into(),
        });
    }
    m.push(ChatMessage {
        role: "user".into(),
        content: user.into(),
    });
    Prompt::Chat(m)
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ..Default::default()
    }
}

/// The answer and the engine's account of it.
fn run(
    g: &Generator,
    p: &Prompt,
    max_tokens: usize,
) -> Result<(String, hearth_engine::Completion), String> {
    g.submit(p, params(max_tokens))
        .and_then(|s| s.wait())
        .map_err(|e| format!("generation: {e}"))
}

/// `conc` closed-loop clients sending RAG-shaped prompts until `budget` has passed (each
/// finishes the request it has in flight).
fn serve(g: &Generator, words: &[String], conc: usize, budget: Duration, quick: bool) -> Value {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(f64, usize)>> = Mutex::new(Vec::new());
    let failed = AtomicUsize::new(0);
    let started = Instant::now();
    let first_error = Mutex::new(None::<String>);
    let (passage_words, out_tokens) = if quick { (30, 16) } else { (90, 64) };
    std::thread::scope(|s| {
        for _ in 0..conc {
            s.spawn(|| {
                while started.elapsed() < budget {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let mut user = String::new();
                    for k in 0..5 {
                        let from = (i * 5 + k) * passage_words * 7;
                        user.push_str(&format!(
                            "[{}] {}\n\n",
                            k + 1,
                            words_from(words, from, passage_words)
                        ));
                    }
                    user.push_str(
                        "Question: what do these passages say about configuration files?",
                    );
                    match g
                        .submit(&chat(Some(SYSTEM), &user), params(out_tokens))
                        .and_then(|s| s.wait())
                    {
                        Ok((_, c)) => done
                            .lock()
                            .expect("results lock")
                            .push((c.timings.ttft_ms, c.usage.completion_tokens)),
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .expect("error lock")
                                .get_or_insert(e.to_string());
                        }
                    }
                }
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let done = done.into_inner().expect("results lock");
    let mut ttft: Vec<f64> = done.iter().map(|d| d.0).collect();
    ttft.sort_by(f64::total_cmp);
    let tokens: usize = done.iter().map(|d| d.1).sum();
    json!({
        "concurrency": conc, "requests": done.len(), "failed": failed.load(Ordering::Relaxed),
        "wall_s": wall, "tokens_per_s": tokens as f64 / wall,
        "requests_per_s": done.len() as f64 / wall,
        "ttft_p50_ms": percentile(&ttft, 50.0), "ttft_p95_ms": percentile(&ttft, 95.0),
        "first_error": first_error.into_inner().expect("error lock"),
    })
}

// ---------------------------------------------------------------------------------------------
// Texts

/// The words of `testdata/corpus` (the benches' reading of it).
fn corpus_words(root: &Path) -> Vec<String> {
    let words = text::corpus_words(&root.join("testdata/corpus"));
    if words.len() < 1000 {
        fail("testdata/corpus holds too little text (run from the repository root)");
    }
    words
}

fn words_from(words: &[String], from: usize, n: usize) -> String {
    (0..n)
        .map(|k| words[(from + k) % words.len()].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn fail(msg: &str) -> ! {
    eprintln!("gpu_check: {msg}");
    std::process::exit(1);
}
