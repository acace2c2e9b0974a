//! Temporary throughput probe (not committed): passages/s at ~64 and ~256 tokens, query latency.
use std::path::PathBuf;
use std::time::Instant;

use hearth_engine::{Embedder, EngineConfig, Priority, Tokenizer};

fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn matmul_probe(threads: usize) {
    use candle_core::{Device, Tensor};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let dev = Device::Cpu;
    for (m, k, n) in [
        (12usize, 384usize, 1536usize),
        (12, 1536, 384),
        (12, 384, 1152),
        (12, 384, 384),
        (64, 384, 1536),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w_oi = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let w_io = w_oi.t().unwrap().contiguous().unwrap();
        for (label, w) in [
            ("(in,out)", w_io.clone()),
            ("(out,in).t()", w_oi.t().unwrap()),
        ] {
            pool.install(|| {
                let _ = x.matmul(&w).unwrap();
                let t = Instant::now();
                let reps = 20;
                for _ in 0..reps {
                    let _ = x.matmul(&w).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "matmul {m}x{k}x{n} {label}: {:.2} ms, {:.1} GFLOP/s",
                    s * 1e3,
                    2.0 * (m * k * n) as f64 / s / 1e9
                );
            });
        }
    }
}

fn main() {
    if std::env::var_os("PROBE").is_some() {
        let threads: usize = std::env::var("THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        return matmul_probe(threads);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let models = std::env::var_os("HEARTH_MODELS")
        .map(PathBuf::from)
        .unwrap();
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let cfg = EngineConfig {
        models_dir: models,
        device: "cpu".into(),
        embed_threads: threads,
        embed_batch_size: batch,
        ..Default::default()
    };
    let tok = Tokenizer::from_file(&cfg.embedding_model_dir().join("tokenizer.json")).unwrap();
    let mut words = Vec::new();
    for f in [
        "APACHE-LICENSE-2.0",
        "incident-runbook.md",
        "libffi-basics.txt",
        "node-path.md",
        "node-security.md",
        "node-timers.md",
        "node-url.md",
    ] {
        let s = std::fs::read_to_string(root.join("testdata/corpus").join(f)).unwrap();
        words.extend(s.split_whitespace().map(str::to_owned));
    }
    let make = |start: usize, target: usize| -> Vec<String> {
        let mut out = Vec::new();
        let mut at = start;
        while out.len() < n {
            let mut k = 1;
            loop {
                let p: Vec<&str> = (0..k + 1)
                    .map(|j| words[(at + j) % words.len()].as_str())
                    .collect();
                if tok.count(&p.join(" ")).unwrap() > target {
                    break;
                }
                k += 1;
            }
            let p: Vec<&str> = (0..k)
                .map(|j| words[(at + j) % words.len()].as_str())
                .collect();
            out.push(p.join(" "));
            at += k;
        }
        out
    };
    let p64 = make(0, 64);
    let p256 = make(5000, 256);
    let mean = |ps: &[String]| {
        ps.iter().map(|p| tok.count(p).unwrap()).sum::<usize>() as f64 / ps.len() as f64
    };
    println!(
        "threads {threads} batch {batch}: {} passages of {:.1} and {:.1} tokens",
        n,
        mean(&p64),
        mean(&p256)
    );
    if let Some(path) = std::env::var_os("DUMP") {
        let qs: Vec<String> = [
            "How do I reset my password?",
            "What time does the library open on Sundays?",
            "how to rotate the backup keys",
            "node url parse deprecated",
            "incident severity levels",
        ]
        .iter()
        .cycle()
        .take(50)
        .map(|s| s.to_string())
        .collect();
        let j = serde_json::json!({"model_dir": cfg.embedding_model_dir(), "passages_64": p64, "passages_256": p256, "queries": qs, "threads": threads, "batch": batch, "reps": 2});
        std::fs::write(path, serde_json::to_vec(&j).unwrap()).unwrap();
        return;
    }
    let e = Embedder::load(&cfg).unwrap();
    let run = |ps: &[String]| {
        for c in ps.chunks(batch) {
            e.embed_blocking(c.to_vec(), Priority::Bulk).unwrap();
        }
    };
    run(&p64[..batch]);
    run(&p256[..batch]);
    let only = std::env::var("ONLY").unwrap_or_default();
    for (label, ps) in [("~64", &p64), ("~256", &p256)] {
        if !only.is_empty() && !label.ends_with(&only) {
            continue;
        }
        let mut best = f64::MAX;
        let mut best_cpu = f64::MAX;
        for _ in 0..2 {
            let c = cpu_s();
            let t = Instant::now();
            run(ps);
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_s() - c);
        }
        println!(
            "{label}: {:.1} passages/s, {:.2} cpu-ms per passage",
            ps.len() as f64 / best,
            best_cpu * 1000.0 / ps.len() as f64
        );
    }
    let qs = [
        "How do I reset my password?",
        "What time does the library open on Sundays?",
        "how to rotate the backup keys",
        "node url parse deprecated",
        "incident severity levels",
    ];
    let mut lat = Vec::new();
    let c0 = cpu_s();
    for i in 0..50 {
        let t = Instant::now();
        e.embed_blocking(vec![qs[i % qs.len()].to_owned()], Priority::Query)
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("query cpu-ms {:.2}", (cpu_s() - c0) * 1000.0 / 50.0);
    lat.sort_by(f64::total_cmp);
    println!(
        "query latency p50 {:.2} ms p99 {:.2} ms",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
}
