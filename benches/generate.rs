//! Generation benchmark: hearth's generator (SmolLM2-135M-Instruct Q4_1 GGUF, greedy, 2
//! threads, CPU) against llama.cpp's `llama-server` on the same GGUF file, the same prompt
//! tokens and the same numbers of generated tokens, in the same run.
//!
//!     cargo bench --bench generate
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench generate     # small run, proves the harness
//!     HEARTH_BENCH_REQUESTS=32 HEARTH_BENCH_CONCURRENCY=1,16 cargo bench --bench generate
//!
//! `HEARTH_BENCH_REQUESTS` is the number of requests per concurrency level: a number (raised
//! to the level, so that every client sends one) or `Kx` for K per client (default `2x`, at
//! least 4). `HEARTH_BENCH_CONCURRENCY` lists the levels (default `1,4,8,16`).
//! `HEARTH_BENCH_MODEL=FILE.gguf` benchmarks another model (both engines).
//! `HEARTH_BENCH_NO_PEERS=1` skips llama.cpp; `HEARTH_BENCH_NO_LORA=1` skips the adapters (they
//! fit the default model only). Needs the models (`scripts/fetch-models.sh`;
//! `HEARTH_MODELS` to point elsewhere) and llama.cpp (`scripts/llama-server.sh` builds it
//! once; it prints the cached binary's path).
//!
//! ## How
//!
//! hearth runs in a **child process**: this bench binary re-executed with
//! `HEARTH_BENCH_GENERATE_CHILD=1`, which loads the `Generator` and then serves commands (a
//! JSON line each on stdin: tokenize, run a batch of requests with N client threads, report
//! its statistics) so that its peak RSS (VmHWM) and CPU time (getrusage) are its own, not the
//! harness's. llama-server is started on a free loopback port with `-t 2 --parallel 16
//! -c 11200 --no-warmup` (16 slots of 700 tokens) and driven over HTTP/1.1 (a minimal client
//! in `common`): `POST /completion` with the prompt as **token ids from hearth's tokenizer**,
//! `"stream": true` (the first SSE event times the first token), `"cache_prompt": true` (its
//! per-slot prompt cache, the counterpart of hearth's prefix cache: both skip a shared
//! system prompt they have already computed),
//! `"temperature": 0` and `"ignore_eos": true`. hearth has no ignore-EOS option, so hearth
//! runs each measurement first and llama-server is then asked for exactly as many tokens as
//! hearth produced for the same prompt (`n_predict` = hearth's completion tokens, end token
//! included); rates use the actual counts on both sides. The two engines never run at the
//! same time; each measurement runs hearth, then the peer.
//!
//! 1. **Cold start.** hearth: child spawn → `Generator::load` → first token of a short chat
//!    prompt, as seen by the parent (there is no generate CLI yet, so this is the bench binary,
//!    not `hearth`), plus the in-process load and load + first token times. llama-server:
//!    spawn → `/health` 200 → first token of the same prompt tokens.
//! 2. **Single stream.** Prefill: a ~512-token raw-text prompt (corpus text, different per
//!    repetition so that hearth's prefix cache cannot help), `max_tokens` 1: prompt tokens/s
//!    from the engines' own timings (hearth `prefill_ms`, llama-server `prompt_per_second`)
//!    and the client-side TTFT. Decode: a short chat prompt asking for a long essay, 128 tokens:
//!    the engines' own decode rates (hearth `decode_tokens_per_s`, llama-server
//!    `predicted_per_second`), the client-side (tokens − 1) / (last event − first event) and CPU
//!    per generated token. 3 repetitions of each (the table shows the best rate and the
//!    median time); one unmeasured warm-up prompt first.
//! 3. **Serving.** At each concurrency N, N closed-loop client threads send RAG-shaped chat
//!    prompts of ~600 tokens (a shared system prompt, then ~5 passages of `testdata/corpus`
//!    text and a question from `testdata/retrieval/questions.json`; every request's passages
//!    differ, so only the system prompt can come from hearth's prefix cache) for 64 tokens
//!    each: output tokens/s and requests/s over the level's wall time, TTFT p50/p95, and CPU
//!    ms per generated token (hearth: the child's getrusage; llama-server: utime + stime from
//!    `/proc/<pid>/stat`), which includes the prefill work.
//! 4. **Peak RSS** of each process (VmHWM) at the end, after all the above.
//! 5. `llama-bench -t 2 -p 512 -n 128` after llama-server has exited, as a reference for the
//!    figures in FIELD_NOTES.md.
//!
//! Quick mode (`HEARTH_BENCH_QUICK=1`) only proves the harness: 128-token prefill prompt, 32
//! decode tokens, ~200-token serving prompts with 16 tokens out at concurrency 1 and 4 (2 and 4
//! requests), one repetition each, llama-bench `-p 64 -n 8 -r 1`.
//!
//! Prints a table with the ratios hearth/llama-server and writes `bench-generate.json` in the
//! cargo target directory. Prints the load average before starting and before each phase:
//! on 2 shared cores, other work skews the figures (and the ratios) badly.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hearth_engine::{
    ChatMessage, EngineConfig, GenerationEvent, Generator, Prompt, SamplingParams,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const THREADS: usize = 2;
const SLOTS: usize = 16;
const SLOT_CONTEXT: usize = 700;
const WORDS_PER_PASSAGE: usize = 90;
const CHILD_ENV: &str = "HEARTH_BENCH_GENERATE_CHILD";
/// Bounds every read of a response and every wait for the child (long: c16 TTFTs reach tens of
/// seconds on 2 cores, more under load).
const IO_TIMEOUT: Duration = Duration::from_secs(900);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(180);

const SYSTEM_PROMPT: &str = "You are the assistant of a document search service. Answer the \
user's question using only the numbered context passages below. Cite the passages you use as \
[1], [2] and so on. If the passages do not contain the answer, say so plainly and do not make \
anything up. Write complete sentences and explain your reasoning step by step.";

const SHORT_PROMPT: &str = "Say hello.";
/// Whether the LoRA phase is skipped (`HEARTH_BENCH_NO_LORA=1`: the adapters of testdata/lora
/// fit SmolLM2-135M only, so another `HEARTH_BENCH_MODEL` needs it).
fn lora_off() -> bool {
    common::env_flag("HEARTH_BENCH_NO_LORA")
}

/// PEFT adapters of testdata/lora the child registers: (name, directory).
const ADAPTERS: [(&str, &str); 2] = [("all", "all-r4"), ("qv", "qv-r2-rslora")];

const ESSAY_TOPICS: [&str; 4] = [
    "the history of data compression, from Morse code to modern archive formats",
    "how operating systems manage users, groups and file permissions",
    "how a web browser turns a URL into a rendered page",
    "the design of incident response processes in software teams",
];

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child::main();
        return;
    }
    if common::is_probe() {
        return;
    }
    let s = Settings::from_env();
    let machine = common::machine();
    let root = common::root();
    let config = engine_config();
    let model_path = config.generator_model_path();
    println!(
        "settings: {THREADS} threads; prefill {} tokens × {}, decode {} tokens × {}; serving levels {:?}, requests {:?}, ~{}-token prompts, {} tokens out",
        s.prefill_tokens,
        s.prefill_reps,
        s.decode_tokens,
        s.decode_reps,
        s.levels,
        s.levels.iter().map(|&n| s.requests(n)).collect::<Vec<_>>(),
        s.rag_tokens,
        s.serve_tokens
    );

    // -- cold start: hearth --------------------------------------------------------------
    phase("cold start: hearth");
    let (mut hearth, hearth_cold) = HearthChild::spawn();
    println!(
        "hearth: spawn → first token {:.2} s (in-process: load {:.2} s, load + first token {:.2} s)",
        hearth_cold.spawn_to_first_token_s, hearth_cold.load_s, hearth_cold.load_first_token_s
    );

    // -- prompts ---------------------------------------------------------------------------
    let words = common::corpus_words(&root.join("testdata/corpus"));
    assert!(
        words.len() > 5_000,
        "too little text in testdata/corpus ({} words)",
        words.len()
    );
    let questions = questions(&root);
    let short = PromptSpec::Chat(vec![user(SHORT_PROMPT)]);
    let short_ids = hearth.tokenize(std::slice::from_ref(&short)).remove(0);
    let warm = fit_prompts(&mut hearth, 1, 128, |_, w| {
        PromptSpec::Text(text_at(&words, words.len() / 2, w))
    });
    let prefill = fit_prompts(&mut hearth, s.prefill_reps, s.prefill_tokens, |i, w| {
        PromptSpec::Text(text_at(&words, i * 2 * s.prefill_tokens, w))
    });
    let decode: Vec<PromptSpec> = (0..s.decode_reps)
        .map(|i| {
            PromptSpec::Chat(vec![user(&format!(
                "Write a long, detailed essay about {}. Explain how it works and give many examples.",
                ESSAY_TOPICS[i % ESSAY_TOPICS.len()]
            ))])
        })
        .collect();
    let decode_ids = hearth.tokenize(&decode);
    let rag_base = s.prefill_reps * 2 * s.prefill_tokens;
    // Every serving level, then fresh prompts for the LoRA run (at the level nearest 8).
    let lora_level = s.levels.iter().copied().min_by_key(|n| n.abs_diff(8));
    let total_rag: usize = s.levels.iter().map(|&n| s.requests(n)).sum::<usize>()
        + lora_level.map_or(0, |n| s.requests(n));
    let rag = fit_prompts(&mut hearth, total_rag, s.rag_tokens, |i, w| {
        rag_prompt(
            &words,
            rag_base + i * s.rag_tokens,
            w,
            &questions[i % questions.len()],
        )
    });
    let mean_len = |p: &[(PromptSpec, Vec<u32>)]| {
        p.iter().map(|(_, ids)| ids.len()).sum::<usize>() as f64 / p.len().max(1) as f64
    };
    println!(
        "prompts: short {} tokens; prefill {:.0}; decode {:.0}; RAG {} of {:.0} tokens (from {} corpus words, {} questions)",
        short_ids.len(),
        mean_len(&prefill),
        decode_ids.iter().map(Vec::len).sum::<usize>() as f64 / decode_ids.len().max(1) as f64,
        rag.len(),
        mean_len(&rag),
        words.len(),
        questions.len()
    );

    // -- cold start: llama-server ------------------------------------------------------------
    phase("cold start: llama-server");
    let mut peer_missing = None;
    let mut peer = None;
    if common::env_flag("HEARTH_BENCH_NO_PEERS") {
        peer_missing = Some("HEARTH_BENCH_NO_PEERS is set".to_owned());
    } else {
        match LlamaServer::start(&model_path, &short_ids) {
            Ok(p) => {
                println!(
                    "llama-server: spawn → /health {:.2} s, → first token {:.2} s",
                    p.cold.spawn_to_health_s, p.cold.spawn_to_first_token_s
                );
                peer = Some(p);
            }
            Err(why) => {
                println!("llama-server: missing: {why}");
                peer_missing = Some(why);
            }
        }
    }

    // -- single stream ----------------------------------------------------------------------
    phase("single stream");
    let warm_job = job(&warm[0].0, 1);
    hearth.run(1, std::slice::from_ref(&warm_job));
    if let Some(p) = &peer {
        p.run(1, &[peer_job(&warm[0].1, 1)]);
    }
    let mut single = SingleStream::default();
    for (i, (spec, ids)) in prefill.iter().enumerate() {
        let h = hearth.run(1, &[job(spec, 1)]);
        let p = peer.as_ref().map(|p| p.run(1, &[peer_job(ids, 1)]));
        report_single("prefill", i, &h, p.as_ref());
        if h.results[0].cached_prompt_tokens > 0 {
            println!(
                "warning: hearth served {} prompt tokens of the prefill prompt from its prefix cache",
                h.results[0].cached_prompt_tokens
            );
        }
        single.prefill.push((h, p));
    }
    for (i, (spec, ids)) in decode.iter().zip(&decode_ids).enumerate() {
        let h = hearth.run(1, &[job(spec, s.decode_tokens)]);
        let n = h.results[0].tokens_or(s.decode_tokens);
        let p = peer.as_ref().map(|p| p.run(1, &[peer_job(ids, n)]));
        report_single("decode", i, &h, p.as_ref());
        if n < s.decode_tokens {
            println!(
                "note: hearth stopped at an end token after {n} of {} tokens; llama-server was asked for {n}",
                s.decode_tokens
            );
        }
        single.decode.push((h, p));
    }

    // -- serving ------------------------------------------------------------------------------
    let mut levels = Vec::new();
    let mut next = 0;
    for &n in &s.levels {
        let count = s.requests(n);
        let prompts = &rag[next..next + count];
        next += count;
        phase(&format!(
            "serving: concurrency {n}, {count} requests of ~{} tokens, {} out",
            s.rag_tokens, s.serve_tokens
        ));
        let load = common::load_avg();
        let jobs: Vec<Job> = prompts
            .iter()
            .map(|(spec, _)| job(spec, s.serve_tokens))
            .collect();
        let h = hearth.run(n, &jobs);
        let hs = LevelSummary::new(&h);
        hs.print("hearth", n);
        let ps = peer.as_ref().map(|p| {
            let jobs: Vec<PeerJob> = prompts
                .iter()
                .zip(&h.results)
                .map(|((_, ids), r)| peer_job(ids, r.tokens_or(s.serve_tokens)))
                .collect();
            let r = p.run(n, &jobs);
            let ps = LevelSummary::new(&r);
            ps.print("llama-server", n);
            (r, ps)
        });
        levels.push(Level {
            concurrency: n,
            load,
            hearth: (h, hs),
            peer: ps,
        });
    }

    // -- LoRA: the side path's cost ----------------------------------------------------------
    let lora = if lora_off() {
        json!({"skipped": "HEARTH_BENCH_NO_LORA is set"})
    } else {
        phase("LoRA adapters");
        lora_phase(&mut hearth, &s, &decode, &single, &levels, &rag[next..])
    };

    // -- memory, CPU totals, shutdown ---------------------------------------------------------
    let hearth_stats = hearth.stats();
    let peer_final = peer.as_ref().and_then(|p| common::proc_stats(p.pid));
    let peer_info = peer.as_ref().map(|p| (p.cold, p.args.clone()));
    drop(peer);
    drop(hearth);

    phase("llama-bench");
    let bench = if peer_missing.is_some() {
        json!({"missing": peer_missing})
    } else {
        llama_bench(&model_path, s.quick)
    };

    // -- table and JSON -----------------------------------------------------------------------
    let hearth_hwm_mib = hearth_stats["hwm_kib"].as_f64().map(|k| k / 1024.0);
    let peer_hwm_mib = peer_final.map(|p| p.hwm_kib as f64 / 1024.0);
    let table = Table {
        prefill_tokens: s.prefill_tokens,
        hearth_cold: &hearth_cold,
        peer_cold: peer_info.as_ref().map(|(c, _)| c),
        single: &single,
        levels: &levels,
        rss_mib: (hearth_hwm_mib, peer_hwm_mib),
        bench: &bench,
    };
    print_table(&table);

    let results = json!({
        "bench": "generate",
        "machine": machine,
        "config": {
            "threads": THREADS, "model": model_path, "quick": s.quick,
            "prefill_tokens": s.prefill_tokens, "prefill_reps": s.prefill_reps,
            "decode_tokens": s.decode_tokens, "decode_reps": s.decode_reps,
            "rag_tokens": s.rag_tokens, "serve_tokens": s.serve_tokens,
            "levels": s.levels, "requests": s.levels.iter().map(|&n| s.requests(n)).collect::<Vec<_>>(),
            "hearth_engine": {"gen_threads": config.gen_threads, "kv_cache_mb": config.kv_cache_mb,
                "kv_block_size": config.kv_block_size, "max_batch_tokens": config.max_batch_tokens,
                "max_running": config.max_running, "max_context": config.max_context},
            "llama_server_args": peer_info.as_ref().map(|(_, a)| a.clone()),
            "token_counts": "peer n_predict = hearth's completion tokens per prompt (ignore_eos)",
        },
        "hearth": {
            "cold_start": hearth_cold.json(),
            "prefill": single.prefill.iter().map(|(h, _)| h.json()).collect::<Vec<_>>(),
            "decode": single.decode.iter().map(|(h, _)| h.json()).collect::<Vec<_>>(),
            "serving": levels.iter().map(|l| l.hearth.1.json(l.concurrency, l.load, &l.hearth.0)).collect::<Vec<_>>(),
            "process": hearth_stats,
            "peak_rss_mib": hearth_hwm_mib,
        },
        "peer": match &peer_missing {
            Some(why) => json!({"name": "llama-server", "missing": why}),
            None => json!({
                "name": "llama-server",
                "cold_start": peer_info.as_ref().map(|(c, _)| c.json()),
                "prefill": single.prefill.iter().filter_map(|(_, p)| p.as_ref().map(RunReport::json)).collect::<Vec<_>>(),
                "decode": single.decode.iter().filter_map(|(_, p)| p.as_ref().map(RunReport::json)).collect::<Vec<_>>(),
                "serving": levels.iter().filter_map(|l| l.peer.as_ref().map(|(r, ps)| ps.json(l.concurrency, l.load, r))).collect::<Vec<_>>(),
                "process": peer_final.map(|p| json!({"cpu_s": p.cpu_s, "hwm_kib": p.hwm_kib, "rss_kib": p.rss_kib})),
                "peak_rss_mib": peer_hwm_mib,
            }),
        },
        "llama_bench": bench,
        "lora": lora,
        "ratios_hearth_over_peer": ratios_json(&table),
    });
    common::write_results("generate", &results);
}

/// Decode with a rank-4 adapter on every projection against the same prompts without, and a
/// serving run where every request uses one of two adapters against the base model's run at
/// the same concurrency. Returns the figures as JSON.
fn lora_phase(
    hearth: &mut HearthChild,
    s: &Settings,
    decode: &[PromptSpec],
    single: &SingleStream,
    levels: &[Level],
    fresh: &[(PromptSpec, Vec<u32>)],
) -> Value {
    let mut decode_ratio = Vec::new();
    for (spec, (base, _)) in decode.iter().zip(&single.decode) {
        let n = base.results[0].tokens_or(s.decode_tokens);
        let with = hearth.run(1, &[adapter_job(spec, n, "all")]);
        let (b, a) = (
            base.results[0].client_decode_tok_s(),
            with.results[0].client_decode_tok_s(),
        );
        println!(
            "decode with adapter \"all\" (rank 4, 7 projections): {a:.1} tok/s vs {b:.1} without"
        );
        decode_ratio.push(a / b);
    }
    // The serving level closest to 8, on prompts not seen before (no prefix-cache help).
    let Some(level) = levels.iter().min_by_key(|l| l.concurrency.abs_diff(8)) else {
        return json!({ "decode_ratio": decode_ratio });
    };
    let n = level.concurrency;
    let count = s.requests(n).min(fresh.len());
    let jobs: Vec<Job> = fresh[..count]
        .iter()
        .enumerate()
        .map(|(i, (spec, _))| adapter_job(spec, s.serve_tokens, ADAPTERS[i % 2].0))
        .collect();
    let r = hearth.run(n, &jobs);
    let mixed = LevelSummary::new(&r);
    mixed.print("hearth, every request on an adapter", n);
    let ratio = mixed.out_tok_s / level.hearth.1.out_tok_s;
    println!(
        "LoRA serving c{n}: {:.1} vs {:.1} out tok/s without adapters ({ratio:.2}x)",
        mixed.out_tok_s, level.hearth.1.out_tok_s
    );
    json!({
        "decode_ratio": decode_ratio,
        "serving": mixed.json(n, common::load_avg(), &r),
        "serving_ratio": ratio,
    })
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    quick: bool,
    prefill_reps: usize,
    decode_reps: usize,
    decode_tokens: usize,
    /// Tokens of the single-stream prefill prompt.
    prefill_tokens: usize,
    /// Tokens of each serving prompt.
    rag_tokens: usize,
    serve_tokens: usize,
    levels: Vec<usize>,
    /// `HEARTH_BENCH_REQUESTS`: `(per_client, fixed)`.
    requests: (usize, Option<usize>),
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        let levels = common::env_levels(SLOTS, if quick { &[1, 4] } else { &[1, 4, 8, 16] });
        let requests = common::env_requests(if quick { 1 } else { 2 });
        Self {
            quick,
            prefill_reps: if quick { 1 } else { 3 },
            decode_reps: if quick { 1 } else { 3 },
            decode_tokens: if quick { 32 } else { 128 },
            // Quick mode only proves the harness: short prompts keep it to a few minutes.
            prefill_tokens: if quick { 128 } else { 512 },
            rag_tokens: if quick { 200 } else { 600 },
            serve_tokens: if quick { 16 } else { 64 },
            levels,
            requests,
        }
    }

    /// Requests sent at concurrency `n`: a fixed count (at least `n`), else `per_client × n`
    /// (at least 4; at least 2 in quick mode).
    fn requests(&self, n: usize) -> usize {
        match self.requests {
            (_, Some(fixed)) => fixed.max(n),
            (k, None) => (k * n).max(if self.quick { 2 } else { 4 }),
        }
    }
}

/// The default configuration on the CPU; `HEARTH_BENCH_MODEL` names another GGUF file (under
/// the models directory, or a path) for both engines.
fn engine_config() -> EngineConfig {
    let defaults = EngineConfig::default();
    EngineConfig {
        models_dir: common::models_dir(),
        device: "cpu".to_owned(),
        gen_threads: THREADS,
        generator_model: std::env::var_os("HEARTH_BENCH_MODEL")
            .map_or(defaults.generator_model.clone(), PathBuf::from),
        ..defaults
    }
}

fn phase(name: &str) {
    println!("\n== {name} (load average {:.2})", common::load_avg());
}

// ---------------------------------------------------------------------------------------------
// Prompts and requests

/// A prompt in a form both the child (hearth) and the parent can carry over a pipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PromptSpec {
    Text(String),
    Chat(Vec<ChatMessage>),
}

impl PromptSpec {
    fn to_prompt(&self) -> Prompt {
        match self {
            Self::Text(t) => Prompt::Text(t.clone()),
            Self::Chat(m) => Prompt::Chat(m.clone()),
        }
    }
}

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        content: text.into(),
    }
}

/// `n` words of the corpus from `start` (wrapping around), joined by spaces.
fn text_at(words: &[String], start: usize, n: usize) -> String {
    (0..n)
        .map(|k| words[(start + k) % words.len()].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A RAG-shaped chat: the shared system prompt, then `n` corpus words from `start` cut into
/// numbered passages, then the question.
fn rag_prompt(words: &[String], start: usize, n: usize, question: &str) -> PromptSpec {
    let mut context = String::new();
    for (i, from) in (0..n).step_by(WORDS_PER_PASSAGE).enumerate() {
        let len = WORDS_PER_PASSAGE.min(n - from);
        context.push_str(&format!(
            "[{}] {}\n\n",
            i + 1,
            text_at(words, start + from, len)
        ));
    }
    PromptSpec::Chat(vec![
        ChatMessage {
            role: "system".into(),
            content: SYSTEM_PROMPT.into(),
        },
        user(&format!(
            "Context passages:\n\n{context}Question: {question}\nAnswer in detail."
        )),
    ])
}

/// The questions of the retrieval evaluation set.
fn questions(root: &Path) -> Vec<String> {
    let path = root.join("testdata/retrieval/questions.json");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let qs: Vec<String> = v["questions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["question"].as_str().map(str::to_owned))
        .collect();
    assert!(!qs.is_empty(), "no questions in {}", path.display());
    qs
}

/// `n` prompts of at most `target` tokens each (as hearth tokenises them): for every `i`, the
/// largest word count `w` such that `make(i, w)` fits, by binary search, all prompts' probes
/// batched into one child round trip per step. Returns each prompt with its token ids.
fn fit_prompts(
    child: &mut HearthChild,
    n: usize,
    target: usize,
    make: impl Fn(usize, usize) -> PromptSpec,
) -> Vec<(PromptSpec, Vec<u32>)> {
    // Invariant per prompt: `lo` words fit, `hi` do not (every word is at least one token).
    let mut bounds = vec![(1usize, target + 1); n];
    while bounds.iter().any(|&(lo, hi)| hi - lo > 1) {
        let open: Vec<usize> = (0..n).filter(|&i| bounds[i].1 - bounds[i].0 > 1).collect();
        let probes: Vec<PromptSpec> = open
            .iter()
            .map(|&i| make(i, usize::midpoint(bounds[i].0, bounds[i].1)))
            .collect();
        let ids = child.tokenize(&probes);
        for (&i, ids) in open.iter().zip(&ids) {
            let mid = usize::midpoint(bounds[i].0, bounds[i].1);
            if ids.len() <= target {
                bounds[i].0 = mid;
            } else {
                bounds[i].1 = mid;
            }
        }
    }
    let specs: Vec<PromptSpec> = (0..n).map(|i| make(i, bounds[i].0)).collect();
    let ids = child.tokenize(&specs);
    specs.into_iter().zip(ids).collect()
}

/// One hearth request.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    prompt: PromptSpec,
    max_tokens: usize,
    /// A LoRA adapter the child registered (see `ADAPTERS`).
    #[serde(default)]
    adapter: Option<String>,
}

fn job(prompt: &PromptSpec, max_tokens: usize) -> Job {
    Job {
        prompt: prompt.clone(),
        max_tokens,
        adapter: None,
    }
}

fn adapter_job(prompt: &PromptSpec, max_tokens: usize, adapter: &str) -> Job {
    Job {
        adapter: Some(adapter.to_owned()),
        ..job(prompt, max_tokens)
    }
}

/// One llama-server request: the same prompt as token ids, and exactly `n_predict` tokens.
#[derive(Clone, Debug)]
struct PeerJob {
    ids: Vec<u32>,
    n_predict: usize,
}

fn peer_job(ids: &[u32], n_predict: usize) -> PeerJob {
    PeerJob {
        ids: ids.to_vec(),
        n_predict,
    }
}

/// What one request did, seen from its client (and, where said, from the engine's timings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ReqResult {
    /// Submission, in seconds from the start of the batch.
    start_s: f64,
    /// Submission → first streamed event.
    ttft_ms: f64,
    /// Submission → last event.
    total_ms: f64,
    prompt_tokens: usize,
    /// Tokens generated (hearth: including a final end token).
    tokens: usize,
    /// Prompt tokens the engine did not compute (hearth's prefix cache; llama-server's cache).
    cached_prompt_tokens: usize,
    /// The engine's own prompt-processing time.
    prefill_ms: f64,
    /// The engine's own decode rate.
    decode_tok_s: f64,
    error: Option<String>,
}

impl ReqResult {
    fn failed(start_s: f64, why: String) -> Self {
        Self {
            start_s,
            error: Some(why),
            ..Default::default()
        }
    }

    /// The tokens generated, or `fallback` if the request failed.
    fn tokens_or(&self, fallback: usize) -> usize {
        if self.error.is_none() && self.tokens > 0 {
            self.tokens
        } else {
            fallback
        }
    }

    /// (tokens − 1) / (last event − first event).
    fn client_decode_tok_s(&self) -> f64 {
        let span = (self.total_ms - self.ttft_ms) / 1e3;
        if self.tokens > 1 && span > 0.0 {
            (self.tokens - 1) as f64 / span
        } else {
            f64::NAN
        }
    }

    fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_prompt_tokens) as f64 / (self.prefill_ms / 1e3)
    }
}

/// A batch of requests run by N client threads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunReport {
    wall_s: f64,
    /// CPU seconds of the engine's process over the batch.
    cpu_s: f64,
    results: Vec<ReqResult>,
}

impl RunReport {
    fn tokens(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.tokens)
            .sum()
    }

    fn cpu_ms_per_token(&self) -> f64 {
        self.cpu_s * 1e3 / self.tokens() as f64
    }

    fn json(&self) -> Value {
        json!({"wall_s": self.wall_s, "cpu_s": self.cpu_s, "tokens": self.tokens(),
               "cpu_ms_per_token": self.cpu_ms_per_token(), "results": self.results})
    }
}

/// Runs `jobs` on `concurrency` closed-loop client threads (each takes the next job when its
/// previous one is done); `one` runs a job given the batch's start instant.
fn run_clients<J: Sync>(
    concurrency: usize,
    jobs: &[J],
    one: impl Fn(&J, Instant) -> ReqResult + Sync,
) -> (Vec<ReqResult>, f64) {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<ReqResult>> = jobs.iter().map(|_| Mutex::default()).collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(j) = jobs.get(i) else { break };
                    let r = one(j, t0);
                    // invariant: a client thread panicking would already have ended the scope.
                    *results[i].lock().expect("results lock") = r;
                }
            });
        }
    });
    let wall_s = t0.elapsed().as_secs_f64();
    let results = results
        .into_iter()
        .map(|m| m.into_inner().expect("results lock"))
        .collect();
    (results, wall_s)
}

fn ms_since(t: Instant, since: Instant) -> f64 {
    t.duration_since(since).as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// hearth, in a child process

/// The child side: `main` of the re-executed bench binary.
mod child {
    use super::*;

    #[derive(Deserialize)]
    #[serde(tag = "cmd", rename_all = "snake_case")]
    enum Request {
        Tokenize { prompts: Vec<PromptSpec> },
        Run { concurrency: usize, jobs: Vec<Job> },
        Stats,
    }

    pub fn main() {
        let t0 = Instant::now();
        let config = engine_config();
        let generator = match Generator::load(&config) {
            Ok(g) => g,
            Err(e) => {
                reply(&json!({"error": format!(
                    "loading {}: {e} (run scripts/fetch-models.sh or set HEARTH_MODELS)",
                    config.generator_model_path().display()
                )}));
                return;
            }
        };
        let load_s = t0.elapsed().as_secs_f64();
        for (name, dir) in ADAPTERS.iter().filter(|_| !lora_off()) {
            let dir = common::root().join("testdata/lora").join(dir);
            if let Err(e) = generator.register_adapter(name, &dir) {
                reply(&json!({"error": format!("adapter {}: {e}", dir.display())}));
                return;
            }
        }
        let first = one(
            &generator,
            &job(&PromptSpec::Chat(vec![user(SHORT_PROMPT)]), 1),
            t0,
        );
        reply(&json!({
            "ready": true, "load_s": load_s, "load_first_token_s": t0.elapsed().as_secs_f64(),
            "first": first,
        }));
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let answer = match serde_json::from_str::<Request>(&line) {
                Err(e) => json!({"error": format!("bad command: {e}")}),
                Ok(Request::Tokenize { prompts }) => {
                    let ids: Result<Vec<Vec<u32>>, String> = prompts
                        .iter()
                        .map(|p| {
                            generator
                                .tokenize(&p.to_prompt())
                                .map_err(|e| e.to_string())
                        })
                        .collect();
                    match ids {
                        Ok(ids) => json!({ "ids": ids }),
                        Err(e) => json!({ "error": e }),
                    }
                }
                Ok(Request::Run { concurrency, jobs }) => {
                    let cpu0 = common::cpu_time();
                    let (results, wall_s) =
                        run_clients(concurrency, &jobs, |j, t0| one(&generator, j, t0));
                    let cpu_s = (common::cpu_time() - cpu0).as_secs_f64();
                    serde_json::to_value(RunReport {
                        wall_s,
                        cpu_s,
                        results,
                    })
                    .unwrap_or_else(|e| json!({"error": e.to_string()}))
                }
                Ok(Request::Stats) => {
                    let rss = common::rss();
                    json!({"cpu_s": common::cpu_time().as_secs_f64(), "rss_kib": rss.rss_kib,
                           "hwm_kib": rss.hwm_kib})
                }
            };
            reply(&answer);
        }
    }

    fn reply(v: &Value) {
        let mut out = std::io::stdout().lock();
        // A closed pipe means the parent is gone: nothing left to do either way.
        let _ = writeln!(out, "{v}").and_then(|()| out.flush());
    }

    /// Submits one request and follows its stream on this thread.
    fn one(generator: &Generator, job: &Job, t0: Instant) -> ReqResult {
        let start = Instant::now();
        let start_s = start.duration_since(t0).as_secs_f64();
        let params = SamplingParams {
            max_tokens: job.max_tokens,
            temperature: 0.0,
            ..Default::default()
        };
        let stream = match generator.submit_with_adapter(
            &job.prompt.to_prompt(),
            params,
            job.adapter.as_deref(),
        ) {
            Ok(s) => s,
            Err(e) => return ReqResult::failed(start_s, e.to_string()),
        };
        let mut first = None;
        for event in futures::executor::block_on_stream(stream) {
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            match event {
                GenerationEvent::Text(_) | GenerationEvent::Logprobs(_) => {}
                GenerationEvent::Done(c) => {
                    return ReqResult {
                        start_s,
                        ttft_ms: ms_since(first, start),
                        total_ms: ms_since(now, start),
                        prompt_tokens: c.usage.prompt_tokens,
                        tokens: c.usage.completion_tokens,
                        cached_prompt_tokens: c.usage.cached_prompt_tokens,
                        prefill_ms: c.timings.prefill_ms,
                        decode_tok_s: c.timings.decode_tokens_per_s,
                        error: None,
                    };
                }
                GenerationEvent::Failed(e) => return ReqResult::failed(start_s, e.to_string()),
            }
        }
        ReqResult::failed(start_s, "the stream ended without Done".into())
    }
}

/// The parent side: the child process, killed on drop.
struct HearthChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Clone, Copy, Debug)]
struct HearthCold {
    /// Parent: spawn → the child's report of its first token.
    spawn_to_first_token_s: f64,
    /// Child: `main` → `Generator::load` done.
    load_s: f64,
    /// Child: `main` → first token of the short prompt.
    load_first_token_s: f64,
}

impl HearthCold {
    fn json(&self) -> Value {
        json!({"spawn_to_first_token_s": self.spawn_to_first_token_s, "load_s": self.load_s,
               "load_first_token_s": self.load_first_token_s,
               "what": "bench binary re-executed: process spawn → Generator::load → first token (no generate CLI yet)"})
    }
}

impl HearthChild {
    fn spawn() -> (Self, HearthCold) {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let t0 = Instant::now();
        let mut child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the hearth child");
        // invariant: both pipes were requested just above.
        let stdin = child.stdin.take().expect("child stdin");
        let stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        let mut me = Self {
            child,
            stdin,
            stdout,
        };
        let ready = me.read_reply();
        let spawn_to_first_token_s = t0.elapsed().as_secs_f64();
        let cold = HearthCold {
            spawn_to_first_token_s,
            load_s: ready["load_s"].as_f64().unwrap_or(f64::NAN),
            load_first_token_s: ready["load_first_token_s"].as_f64().unwrap_or(f64::NAN),
        };
        if let Some(e) = ready["first"]["error"].as_str() {
            panic!("hearth: the first request failed: {e}");
        }
        (me, cold)
    }

    /// The next JSON object line from the child (other lines are passed on to stderr). Panics
    /// on EOF or on an `{"error": ...}` reply: the bench cannot go on without hearth.
    fn read_reply(&mut self) -> Value {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("reading from the hearth child");
            assert!(n > 0, "the hearth child exited (see its output above)");
            match serde_json::from_str::<Value>(line.trim()) {
                Ok(v) if v.is_object() => {
                    if let Some(e) = v["error"].as_str() {
                        panic!("hearth child: {e}");
                    }
                    return v;
                }
                _ => eprint!("hearth child: {line}"),
            }
        }
    }

    fn call(&mut self, request: &Value) -> Value {
        writeln!(self.stdin, "{request}")
            .and_then(|()| self.stdin.flush())
            .expect("writing to the hearth child");
        self.read_reply()
    }

    fn tokenize(&mut self, prompts: &[PromptSpec]) -> Vec<Vec<u32>> {
        let v = self.call(&json!({"cmd": "tokenize", "prompts": prompts}));
        serde_json::from_value(v["ids"].clone()).expect("token ids from the hearth child")
    }

    fn run(&mut self, concurrency: usize, jobs: &[Job]) -> RunReport {
        let v = self.call(&json!({"cmd": "run", "concurrency": concurrency, "jobs": jobs}));
        serde_json::from_value(v).expect("a run report from the hearth child")
    }

    fn stats(&mut self) -> Value {
        self.call(&json!({"cmd": "stats"}))
    }
}

impl Drop for HearthChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// llama-server

/// A running llama-server, killed on drop (also when the bench panics).
struct LlamaServer {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    args: Vec<String>,
    cold: PeerCold,
}

#[derive(Clone, Copy, Debug)]
struct PeerCold {
    spawn_to_health_s: f64,
    spawn_to_first_token_s: f64,
}

impl PeerCold {
    fn json(&self) -> Value {
        json!({"spawn_to_health_s": self.spawn_to_health_s,
               "spawn_to_first_token_s": self.spawn_to_first_token_s})
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path `scripts/llama-server.sh <name>` prints (it builds llama.cpp on first use).
fn llama_binary(name: &str) -> Result<PathBuf, String> {
    let script = common::root().join("scripts/llama-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() || !Path::new(&path).exists() {
        return Err(format!(
            "{} {name} failed ({}) or printed no binary",
            script.display(),
            out.status
        ));
    }
    Ok(PathBuf::from(path))
}

impl LlamaServer {
    /// Spawns llama-server, waits for `/health`, then times the first token of `first_ids`.
    fn start(model: &Path, first_ids: &[u32]) -> Result<Self, String> {
        let bin = llama_binary("llama-server")?;
        let port = common::free_port().map_err(|e| format!("no free port: {e}"))?;
        let log_path = common::target_dir().join("bench-generate-llama-server.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let args: Vec<String> = vec![
            "-m".into(),
            model.to_string_lossy().into_owned(),
            "-t".into(),
            THREADS.to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--parallel".into(),
            SLOTS.to_string(),
            "-c".into(),
            (SLOTS * SLOT_CONTEXT).to_string(),
            "--no-warmup".into(),
        ];
        let t0 = Instant::now();
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut server = Self {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            args,
            cold: PeerCold {
                spawn_to_health_s: f64::NAN,
                spawn_to_first_token_s: f64::NAN,
            },
        };
        let see_log = || format!("see {}", log_path.display());
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("llama-server exited ({status}); {}", see_log()));
            }
            if t0.elapsed() > HEALTH_TIMEOUT {
                return Err(format!(
                    "llama-server not healthy after {} s; {}",
                    HEALTH_TIMEOUT.as_secs(),
                    see_log()
                ));
            }
            if let Ok((200, _)) =
                common::http_request(server.addr, "GET", "/health", None, Duration::from_secs(2))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.cold.spawn_to_health_s = t0.elapsed().as_secs_f64();
        let first = peer_one(server.addr, &peer_job(first_ids, 1), t0);
        if let Some(e) = first.error {
            return Err(format!("llama-server's first request failed: {e}"));
        }
        server.cold.spawn_to_first_token_s = first.start_s + first.ttft_ms / 1e3;
        Ok(server)
    }

    fn run(&self, concurrency: usize, jobs: &[PeerJob]) -> RunReport {
        let cpu0 = common::proc_stats(self.pid).map_or(f64::NAN, |p| p.cpu_s);
        let (results, wall_s) = run_clients(concurrency, jobs, |j, t0| peer_one(self.addr, j, t0));
        let cpu1 = common::proc_stats(self.pid).map_or(f64::NAN, |p| p.cpu_s);
        for r in &results {
            if let Some(e) = &r.error {
                println!("warning: llama-server request failed: {e}");
            }
        }
        RunReport {
            wall_s,
            cpu_s: cpu1 - cpu0,
            results,
        }
    }
}

/// One streamed `POST /completion`.
fn peer_one(addr: SocketAddr, job: &PeerJob, t0: Instant) -> ReqResult {
    let body = json!({
        "prompt": job.ids, "n_predict": job.n_predict, "temperature": 0.0,
        "ignore_eos": true, "cache_prompt": true, "stream": true,
    })
    .to_string();
    let start = Instant::now();
    let start_s = start.duration_since(t0).as_secs_f64();
    let (mut first, mut last, mut fin, mut bad) = (None, start, None, None);
    let status = common::http_sse(addr, "/completion", body.as_bytes(), IO_TIMEOUT, &mut |d| {
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        match serde_json::from_str::<Value>(d) {
            Ok(v) if v["stop"] == true => fin = Some(v),
            Ok(v) if v.get("error").is_some() => bad = Some(v["error"].to_string()),
            Ok(_) => {}
            Err(e) => bad = Some(format!("bad event {d:?}: {e}")),
        }
    });
    let why = match (status, bad, &fin) {
        (Err(e), _, _) => Some(format!("HTTP: {e}")),
        (Ok(s), _, _) if s != 200 => Some(format!("HTTP status {s}")),
        (_, Some(b), _) => Some(b),
        (_, None, None) => Some("no final event".into()),
        _ => None,
    };
    if let Some(why) = why {
        return ReqResult::failed(start_s, why);
    }
    let v = fin.unwrap_or_default();
    let t = &v["timings"];
    let n = |x: &Value| x.as_u64().unwrap_or(0) as usize;
    ReqResult {
        start_s,
        ttft_ms: ms_since(first.unwrap_or(last), start),
        total_ms: ms_since(last, start),
        prompt_tokens: n(&v["tokens_evaluated"]),
        tokens: n(&v["tokens_predicted"]),
        cached_prompt_tokens: n(&t["cache_n"]),
        prefill_ms: t["prompt_ms"].as_f64().unwrap_or(f64::NAN),
        decode_tok_s: t["predicted_per_second"].as_f64().unwrap_or(f64::NAN),
        error: None,
    }
}

/// `llama-bench -t 2 -p 512 -n 128` (quick: `-p 64 -n 8 -r 1`), parsed from its JSON output.
fn llama_bench(model: &Path, quick: bool) -> Value {
    let (p, n, r) = if quick { (64, 8, 1) } else { (512, 128, 3) };
    let bin = match llama_binary("llama-bench") {
        Ok(b) => b,
        Err(why) => return json!({"missing": why}),
    };
    let args = [
        "-m".to_owned(),
        model.to_string_lossy().into_owned(),
        "-t".into(),
        THREADS.to_string(),
        "-p".into(),
        p.to_string(),
        "-n".into(),
        n.to_string(),
        "-r".into(),
        r.to_string(),
        "-o".into(),
        "json".into(),
    ];
    let out = match Command::new(&bin)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => return json!({"missing": format!("llama-bench failed ({})", o.status)}),
        Err(e) => return json!({"missing": format!("cannot run llama-bench: {e}")}),
    };
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let pick = |want_prompt: bool| {
        runs.as_array().into_iter().flatten().find_map(|r| {
            let (np, ng) = (r["n_prompt"].as_u64()?, r["n_gen"].as_u64()?);
            let is = if want_prompt {
                np > 0 && ng == 0
            } else {
                np == 0 && ng > 0
            };
            is.then(
                || json!({"tokens": np + ng, "avg_ts": r["avg_ts"], "stddev_ts": r["stddev_ts"]}),
            )
        })
    };
    let (pp, tg) = (pick(true), pick(false));
    println!(
        "llama-bench: pp{p} {} tok/s, tg{n} {} tok/s",
        common::num(pp.as_ref().and_then(|v| v["avg_ts"].as_f64()), 1),
        common::num(tg.as_ref().and_then(|v| v["avg_ts"].as_f64()), 1)
    );
    json!({"args": args, "pp": pp, "tg": tg})
}

// ---------------------------------------------------------------------------------------------
// Summaries, table and ratios

#[derive(Default)]
struct SingleStream {
    prefill: Vec<(RunReport, Option<RunReport>)>,
    decode: Vec<(RunReport, Option<RunReport>)>,
}

/// Best (highest) of a figure over the repetitions that have it.
fn best(v: &[f64]) -> Option<f64> {
    v.iter().copied().filter(|x| x.is_finite()).reduce(f64::max)
}

/// Median of a figure over the repetitions that have it.
fn med(v: &[f64]) -> Option<f64> {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| common::median(&v))
}

/// hearth's and the peer's values of `f` over one kind of single-stream run, aggregated.
fn sides(
    runs: &[(RunReport, Option<RunReport>)],
    f: impl Fn(&RunReport) -> f64,
    agg: fn(&[f64]) -> Option<f64>,
) -> Pair {
    let h: Vec<f64> = runs.iter().map(|(h, _)| f(h)).collect();
    let p: Vec<f64> = runs
        .iter()
        .filter_map(|(_, p)| p.as_ref())
        .map(&f)
        .collect();
    (agg(&h), agg(&p))
}

fn report_single(kind: &str, i: usize, h: &RunReport, p: Option<&RunReport>) {
    let line = |name: &str, r: &RunReport| {
        let q = &r.results[0];
        match &q.error {
            Some(e) => println!("{name}: {kind} #{i}: failed: {e}"),
            None => println!(
                "{name}: {kind} #{i}: {} prompt tokens, {} generated; TTFT {:.0} ms; prefill {:.1} tok/s, decode {:.1} tok/s (engine), {:.1} (client); {:.2} CPU-s",
                q.prompt_tokens,
                q.tokens,
                q.ttft_ms,
                q.prefill_tok_s(),
                q.decode_tok_s,
                q.client_decode_tok_s(),
                r.cpu_s
            ),
        }
    };
    line("hearth", h);
    if let Some(p) = p {
        line("llama-server", p);
        let (a, b) = (&h.results[0], &p.results[0]);
        if a.error.is_none() && b.error.is_none() && a.prompt_tokens != b.prompt_tokens {
            println!(
                "warning: prompt token counts differ: hearth {}, llama-server {}",
                a.prompt_tokens, b.prompt_tokens
            );
        }
    }
}

struct Level {
    concurrency: usize,
    load: f64,
    hearth: (RunReport, LevelSummary),
    peer: Option<(RunReport, LevelSummary)>,
}

struct LevelSummary {
    ok: usize,
    failed: usize,
    out_tok_s: f64,
    req_s: f64,
    ttft_p50_ms: f64,
    ttft_p95_ms: f64,
    cpu_ms_per_token: f64,
    cached_prompt_tokens: usize,
}

impl LevelSummary {
    fn new(r: &RunReport) -> Self {
        let ok: Vec<&ReqResult> = r.results.iter().filter(|q| q.error.is_none()).collect();
        let mut ttft: Vec<f64> = ok.iter().map(|q| q.ttft_ms).collect();
        ttft.sort_by(f64::total_cmp);
        Self {
            ok: ok.len(),
            failed: r.results.len() - ok.len(),
            out_tok_s: r.tokens() as f64 / r.wall_s,
            req_s: ok.len() as f64 / r.wall_s,
            ttft_p50_ms: common::percentile(&ttft, 50.0),
            ttft_p95_ms: common::percentile(&ttft, 95.0),
            cpu_ms_per_token: r.cpu_ms_per_token(),
            cached_prompt_tokens: ok.iter().map(|q| q.cached_prompt_tokens).sum(),
        }
    }

    fn print(&self, name: &str, n: usize) {
        println!(
            "{name}: c{n}: {} ok, {} failed; {:.1} out tok/s, {:.3} req/s; TTFT p50 {:.0} ms, p95 {:.0} ms; {:.1} CPU-ms/token; {} cached prompt tokens",
            self.ok,
            self.failed,
            self.out_tok_s,
            self.req_s,
            self.ttft_p50_ms,
            self.ttft_p95_ms,
            self.cpu_ms_per_token,
            self.cached_prompt_tokens
        );
    }

    fn json(&self, concurrency: usize, load: f64, r: &RunReport) -> Value {
        json!({"concurrency": concurrency, "load_avg_1m_before": load, "ok": self.ok,
               "failed": self.failed, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
               "output_tokens": r.tokens(), "output_tokens_per_s": self.out_tok_s,
               "requests_per_s": self.req_s, "ttft_p50_ms": self.ttft_p50_ms,
               "ttft_p95_ms": self.ttft_p95_ms, "cpu_ms_per_token": self.cpu_ms_per_token,
               "cached_prompt_tokens": self.cached_prompt_tokens, "results": r.results})
    }
}

struct Table<'a> {
    prefill_tokens: usize,
    hearth_cold: &'a HearthCold,
    peer_cold: Option<&'a PeerCold>,
    single: &'a SingleStream,
    levels: &'a [Level],
    rss_mib: Pair,
    bench: &'a Value,
}

/// hearth's and the peer's value of a figure.
type Pair = (Option<f64>, Option<f64>);
/// JSON key, label, values and decimals of a table line.
type Figure = (&'static str, String, Pair, usize);
/// JSON key, label, value and decimals of a serving level's table line.
type LevelFigure = (&'static str, &'static str, fn(&LevelSummary) -> f64, usize);

/// One line of the table: JSON key, label, hearth, peer, decimals, whether the ratio means
/// anything (not for figures that measure different things on the two sides).
struct Row {
    key: String,
    label: String,
    hearth: Option<f64>,
    peer: Option<f64>,
    decimals: usize,
    compare: bool,
}

fn table_rows(t: &Table) -> Vec<Row> {
    let first = |r: &RunReport| r.results[0].clone();
    let (pf, dc, n) = (&t.single.prefill, &t.single.decode, t.prefill_tokens);
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |key: String, label: String, (h, p): Pair, d: usize| {
        let compare = !key.starts_with("llama_bench") && key != "cold_load_s";
        rows.push(Row {
            key,
            label,
            hearth: h,
            peer: p,
            decimals: d,
            compare,
        });
    };
    #[rustfmt::skip]
    let single: [Figure; 5] = [
        ("prefill_tok_s", format!("prefill tok/s, {n}-tok (engine, best)"),
            sides(pf, |r| first(r).prefill_tok_s(), best), 1),
        ("prefill_ttft_ms", format!("TTFT ms, {n}-tok prompt (median)"),
            sides(pf, |r| first(r).ttft_ms, med), 0),
        ("decode_tok_s_engine", "decode tok/s (engine, best)".into(),
            sides(dc, |r| first(r).decode_tok_s, best), 1),
        ("decode_tok_s_client", "decode tok/s (client, best)".into(),
            sides(dc, |r| first(r).client_decode_tok_s(), best), 1),
        ("decode_cpu_ms_per_token", "decode CPU-ms/token (median)".into(),
            sides(dc, RunReport::cpu_ms_per_token, med), 2),
    ];
    for (key, label, v, d) in single {
        push(key.into(), label, v, d);
    }
    for l in t.levels {
        let (h, p, c) = (&l.hearth.1, l.peer.as_ref().map(|(_, s)| s), l.concurrency);
        let figures: [LevelFigure; 5] = [
            ("output_tok_s", "output tok/s", |s| s.out_tok_s, 1),
            ("requests_per_s", "requests/s", |s| s.req_s, 3),
            ("ttft_p50_ms", "TTFT p50 ms", |s| s.ttft_p50_ms, 0),
            ("ttft_p95_ms", "TTFT p95 ms", |s| s.ttft_p95_ms, 0),
            (
                "cpu_ms_per_token",
                "CPU-ms/output token",
                |s| s.cpu_ms_per_token,
                1,
            ),
        ];
        for (key, label, f, d) in figures {
            push(
                format!("c{c}_{key}"),
                format!("c{c} {label}"),
                (Some(f(h)), p.map(f)),
                d,
            );
        }
    }
    let (hc, pc) = (t.hearth_cold, t.peer_cold);
    let lb = |k: &str| t.bench[k]["avg_ts"].as_f64();
    let tokens = |k: &str| t.bench[k]["tokens"].as_u64().unwrap_or(0);
    #[rustfmt::skip]
    let rest: [Figure; 5] = [
        ("cold_first_token_s", "cold: spawn → first token s".into(),
            (Some(hc.spawn_to_first_token_s), pc.map(|c| c.spawn_to_first_token_s)), 2),
        ("cold_load_s", "cold: load s (in-proc / →health)".into(),
            (Some(hc.load_s), pc.map(|c| c.spawn_to_health_s)), 2),
        ("peak_rss_mib", "peak RSS MiB (VmHWM)".into(), t.rss_mib, 0),
        ("llama_bench_pp", format!("llama-bench pp{} tok/s", tokens("pp")), (None, lb("pp")), 1),
        ("llama_bench_tg", format!("llama-bench tg{} tok/s", tokens("tg")), (None, lb("tg")), 1),
    ];
    for (key, label, v, d) in rest {
        push(key.into(), label, v, d);
    }
    rows
}

fn print_table(t: &Table) {
    println!();
    println!(
        "{:<36} {:>12} {:>12} {:>12}",
        "", "hearth", "llama-server", "hearth/peer"
    );
    for r in table_rows(t) {
        println!(
            "{:<36} {:>12} {:>12} {:>12}",
            r.label,
            common::num(r.hearth, r.decimals),
            common::num(r.peer, r.decimals),
            if r.compare {
                common::ratio(r.hearth, r.peer)
            } else {
                "-".into()
            }
        );
    }
    println!(
        "(hearth/peer = hearth ÷ llama-server: above 1 is better for rates, below 1 for times, CPU and memory.\n \
         Same prompt tokens; llama-server generates as many tokens as hearth did for each prompt.\n \
         CPU per output token includes the prompts' prefill. Cold load: hearth in-process, llama-server\n \
         spawn → /health (not comparable). Timings on 2 shared cores: compare only within one run, on a quiet machine.)"
    );
}

/// hearth ÷ peer for every comparable row, by key.
fn ratios_json(t: &Table) -> Value {
    let map: serde_json::Map<String, Value> = table_rows(t)
        .into_iter()
        .filter(|r| r.compare)
        .map(|r| {
            let v = match (r.hearth, r.peer) {
                (Some(h), Some(p)) if p > 0.0 && h.is_finite() && p.is_finite() => json!(h / p),
                _ => Value::Null,
            };
            (r.key, v)
        })
        .collect();
    Value::Object(map)
}
