//! Shared code of the root end-to-end benches (`embed`, `hnsw`, `generate`, ...): synthetic
//! vectors, raw files, exact ground truth, corpus text, process statistics (this process and
//! others), a minimal loopback HTTP client, peer discovery and JSON results.
//!
//! Each bench includes this with `mod common;` and uses only part of it.
#![allow(dead_code)]

pub mod collection;
mod text;
#[allow(unused_imports)] // as with the rest of this module, each bench uses part of it
pub use text::{corpus_words, passages, percentile};

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The repository root (the root package's manifest directory).
pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// `cargo bench --no-run`, `cargo test --benches` and `--list` probes: nothing to run.
pub fn is_probe() -> bool {
    std::env::args().any(|a| a == "--list" || a == "--test")
}

/// `HEARTH_BENCH_QUICK=1`: a small run that only proves the harness end to end.
pub fn quick() -> bool {
    env_flag("HEARTH_BENCH_QUICK")
}

/// True when the variable is set to anything but "", "0" or "false".
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `$HEARTH_MODELS`, else `<root>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("HEARTH_MODELS").map_or_else(|| root().join("models"), PathBuf::from)
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

// ---------------------------------------------------------------------------------------------
// Random numbers and synthetic vectors

/// SplitMix64: tiny, fast, and good enough for benchmark data. Deterministic per seed.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0); the modulo bias is irrelevant for n far below 2^64.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal, Box-Muller (the second value of each pair is kept for the next call).
    pub fn gaussian(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// A seeded Gaussian mixture of unit-norm `dim`-dimensional vectors, a stand-in for sentence
/// embeddings: `clusters` random unit centres; a point is its centre plus Gaussian noise, then
/// normalised. The noise on coordinate j has standard deviation `noise / sqrt(1 + j)` scaled so
/// that its expected squared norm is `noise²`: a decaying spectrum (effective dimension ≈ 25 of
/// 384, like real embeddings, rather than isotropic noise, whose near neighbours are no nearer
/// than any other point of the cluster).
#[derive(Clone, Debug)]
pub struct Mixture {
    pub dim: usize,
    centres: Vec<f32>,
    sigma: Vec<f64>,
}

/// Bump when the generator changes, so that cached data files are not reused.
pub const MIXTURE_VERSION: u32 = 1;

impl Mixture {
    pub fn new(dim: usize, clusters: usize, noise: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut centres = Vec::with_capacity(clusters * dim);
        for _ in 0..clusters {
            let mut c: Vec<f64> = (0..dim).map(|_| rng.gaussian()).collect();
            normalise(&mut c);
            centres.extend(c.iter().map(|&x| x as f32));
        }
        let raw: Vec<f64> = (0..dim).map(|j| 1.0 / ((1 + j) as f64).sqrt()).collect();
        let norm = raw.iter().map(|s| s * s).sum::<f64>().sqrt();
        let sigma = raw.iter().map(|s| noise * s / norm).collect();
        Self {
            dim,
            centres,
            sigma,
        }
    }

    pub fn clusters(&self) -> usize {
        self.centres.len() / self.dim
    }

    /// `n` points, row-major `n × dim`, from the stream seeded with `seed` (use different seeds
    /// for the base set and the queries). Generated on 2 threads; deterministic.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<f32> {
        let mut out = vec![0f32; n * self.dim];
        self.sample_blocks(&mut out, 0, seed);
        out
    }

    /// Fills `out` (whole rows) with the rows of [`Mixture::sample`]'s stream from block
    /// `first_block` on (blocks of [`Mixture::BLOCK`] rows), so that a set larger than memory
    /// is generated piece by piece, identical to the one `sample` would return.
    pub fn sample_blocks(&self, out: &mut [f32], first_block: usize, seed: u64) {
        let dim = self.dim;
        let blocks: Vec<(usize, &mut [f32])> = out
            .chunks_mut(Self::BLOCK * dim)
            .enumerate()
            .map(|(i, b)| (first_block + i, b))
            .collect();
        let mut halves: [Vec<(usize, &mut [f32])>; 2] = [Vec::new(), Vec::new()];
        for (i, b) in blocks {
            halves[i % 2].push((i, b));
        }
        std::thread::scope(|s| {
            for half in halves {
                s.spawn(move || {
                    for (block, rows) in half {
                        // One stream per block, so the result does not depend on the split.
                        let mut rng =
                            Rng::new(seed ^ (block as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                        let mut v = vec![0f64; dim];
                        for row in rows.chunks_exact_mut(dim) {
                            let c = rng.below(self.clusters() as u64) as usize;
                            let centre = &self.centres[c * dim..(c + 1) * dim];
                            for ((x, &m), &sd) in v.iter_mut().zip(centre).zip(&self.sigma) {
                                *x = f64::from(m) + sd * rng.gaussian();
                            }
                            normalise(&mut v);
                            for (o, &x) in row.iter_mut().zip(&v) {
                                *o = x as f32;
                            }
                        }
                    }
                });
            }
        });
    }

    /// Rows per block of the generator's stream.
    pub const BLOCK: usize = 4096;
}

fn normalise(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw files

/// Writes `data` as raw little-endian f32 (no header).
pub fn write_f32(path: &Path, data: &[f32]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for x in data {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()
}

/// Writes `data` as raw little-endian u32 (no header).
pub fn write_u32(path: &Path, data: &[u32]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for x in data {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()
}

/// Reads a raw little-endian f32 file.
pub fn read_f32(path: &Path) -> std::io::Result<Vec<f32>> {
    let raw = std::fs::read(path)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Reads a raw little-endian u32 file.
pub fn read_u32(path: &Path) -> std::io::Result<Vec<u32>> {
    let raw = std::fs::read(path)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Exact ground truth

/// Dot product with 16 independent accumulators (lets the compiler vectorise it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Exact top-`k` base rows by inner product for every query (best first; ties by lower id), by
/// brute force on `threads` threads. Returns `queries × k` ids, row-major.
pub fn ground_truth(
    base: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    threads: usize,
) -> Vec<u32> {
    let mut exact = ExactTopK::new(queries, dim, k);
    exact.add(base, 0, threads);
    exact.ids()
}

/// The exact top-k by inner product of each query, over base rows streamed past in blocks
/// (so that a base larger than memory is scanned once, as it is generated).
pub struct ExactTopK {
    dim: usize,
    k: usize,
    queries: Vec<f32>,
    /// Per query, its best (score, id) so far, best first.
    tops: Vec<Vec<(f32, u32)>>,
}

impl ExactTopK {
    pub fn new(queries: &[f32], dim: usize, k: usize) -> Self {
        Self {
            dim,
            k,
            queries: queries.to_vec(),
            tops: vec![Vec::with_capacity(k + 1); queries.len() / dim],
        }
    }

    /// Scores the rows of `block`, whose first row has id `first_id`, on `threads` threads.
    pub fn add(&mut self, block: &[f32], first_id: u32, threads: usize) {
        let (dim, k) = (self.dim, self.k);
        let nq = self.tops.len();
        let per = nq.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for (qs, ts) in self
                .queries
                .chunks(per * dim)
                .zip(self.tops.chunks_mut(per))
            {
                s.spawn(move || {
                    // Queries in groups of 8 share each pass over the block (cache reuse).
                    const G: usize = 8;
                    for (qg, tg) in qs.chunks(G * dim).zip(ts.chunks_mut(G)) {
                        for (id, row) in block.chunks_exact(dim).enumerate() {
                            let id = first_id + id as u32;
                            for (qi, top) in tg.iter_mut().enumerate() {
                                let score = dot(&qg[qi * dim..(qi + 1) * dim], row);
                                if top.len() == k && score <= top[k - 1].0 {
                                    continue;
                                }
                                let pos = top.partition_point(|&(s, _)| s >= score);
                                top.insert(pos, (score, id));
                                top.truncate(k);
                            }
                        }
                    }
                });
            }
        });
    }

    /// The ids, `k` per query in query order (0 where fewer rows were seen).
    pub fn ids(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.tops.len() * self.k];
        for (top, o) in self.tops.iter().zip(out.chunks_mut(self.k)) {
            for (slot, &(_, id)) in o.iter_mut().zip(top) {
                *slot = id;
            }
        }
        out
    }
}

/// Recall@k: the fraction of the true top-k found in `found` (each query's first k ids).
pub fn recall(found: &[Vec<u32>], truth: &[u32], k: usize) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth.chunks_exact(k))
        .map(|(f, t)| f.iter().take(k).filter(|id| t.contains(id)).count())
        .sum();
    hits as f64 / (found.len() * k) as f64
}

// ---------------------------------------------------------------------------------------------
// Process statistics

/// Resident set size and its peak (VmRSS, VmHWM) of this process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn rss() -> Rss {
    status_rss(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// VmRSS and VmHWM from the text of a `/proc/<pid>/status` file (0 where missing).
fn status_rss(status: &str) -> Rss {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// The resident set split by kind (RssAnon: the heap and other private memory; RssFile:
/// mapped files' pages, which the page cache holds and may evict), in KiB.
#[allow(dead_code)]
pub fn rss_split() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// Asks the kernel to drop a file's clean pages from the page cache, so the next read of it
/// comes from the disk (a cold open). False where refused.
#[allow(dead_code)]
pub fn evict(path: &Path) -> bool {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    std::fs::File::open(path)
        .ok()
        .is_some_and(|f| posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).is_ok())
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0). False where not permitted,
/// in which case a later peak may predate the measured section.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// User + system CPU time of this process, all threads.
pub fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Wall and CPU time plus RSS growth of a measured section.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub wall_s: f64,
    pub cpu_s: f64,
    /// RSS after minus RSS before.
    pub rss_growth_mib: f64,
    /// Peak RSS during the section minus RSS before.
    pub peak_rss_growth_mib: f64,
}

/// Runs `f`, measuring wall and CPU time (the whole process) and RSS growth.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Section) {
    reset_peak_rss();
    let before = rss();
    let cpu0 = cpu_time();
    let t0 = std::time::Instant::now();
    let out = f();
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = (cpu_time() - cpu0).as_secs_f64();
    let after = rss();
    let mib = |kib: u64| kib as f64 / 1024.0;
    (
        out,
        Section {
            wall_s,
            cpu_s,
            rss_growth_mib: mib(after.rss_kib) - mib(before.rss_kib),
            peak_rss_growth_mib: mib(after.hwm_kib) - mib(before.rss_kib),
        },
    )
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

// ---------------------------------------------------------------------------------------------
// Machine, peers and results

/// What the results were measured on: commit, CPU, cores, load. Prints a warning when the
/// machine is not quiet (peers and hearth suffer differently from competing load).
pub fn machine() -> serde_json::Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "machine: {cpu}, {cores} cores, load average (1 min) {load:.2}, commit {commit}{}",
        if dirty { " (dirty)" } else { "" }
    );
    if load > 0.5 {
        println!(
            "warning: the machine is not quiet (load {load:.2}); figures will be noisy and ratios skewed"
        );
    }
    serde_json::json!({
        "commit": commit, "dirty": dirty, "device": "cpu", "cpu": cpu, "cores": cores,
        "load_avg_1m": load, "quick": quick(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// The Python interpreter of the peers' venv: `$HEARTH_BENCH_PYTHON` if set, else whatever
/// `scripts/bench-peers.sh` prints (it creates the venv on first use; its progress shows on
/// stderr). `HEARTH_BENCH_NO_PEERS=1` skips peers. Errors say why the peers are missing.
pub fn peer_python() -> Result<PathBuf, String> {
    if env_flag("HEARTH_BENCH_NO_PEERS") {
        return Err("HEARTH_BENCH_NO_PEERS is set".into());
    }
    if let Some(p) = std::env::var_os("HEARTH_BENCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let script = root().join("scripts/bench-peers.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py = stdout.lines().last().unwrap_or("").trim();
    if py.is_empty() || !Path::new(py).exists() {
        return Err(format!(
            "{} printed no usable python path",
            script.display()
        ));
    }
    Ok(PathBuf::from(py))
}

/// Runs `python benches/peers/<script> args…` and parses the JSON it prints on stdout (its
/// stderr shows as progress). Errors describe the failure; they do not panic the bench.
pub fn run_peer(
    python: &Path,
    script: &str,
    args: &[std::ffi::OsString],
) -> Result<serde_json::Value, String> {
    let path = root().join("benches/peers").join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!("{script} failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("{script} printed no JSON result: {e}"))
}

/// Finds the peer (see [`peer_python`]) and runs it; a missing peer is printed and returned as
/// `{"missing": why}`.
pub fn peer_or_missing(script: &str, args: &[std::ffi::OsString]) -> serde_json::Value {
    match peer_python().and_then(|py| run_peer(&py, script, args)) {
        Ok(v) => v,
        Err(why) => {
            println!("peer {script}: missing: {why}");
            serde_json::json!({ "missing": why })
        }
    }
}

/// Writes `value` to `<target dir>/bench-<name>.json` and says so.
pub fn write_results(name: &str, value: &serde_json::Value) {
    let dir = target_dir();
    let path = dir.join(format!("bench-{name}.json"));
    let res = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(value).unwrap_or_default(),
        )
    });
    match res {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}

/// `a / b` formatted for a table, or "-" when either side is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// A number for a table, or "-".
pub fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

// ---------------------------------------------------------------------------------------------
// Other processes

/// CPU time and memory of another process, from `/proc/<pid>/{stat,status}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// User + system CPU seconds of all its threads so far (clock-tick resolution, 10 ms).
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kib: u64,
}

/// `None` once the process is gone (or on a system without `/proc`).
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), counting from field 3 (state):
    // utime is field 14 and stime field 15, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let Rss { rss_kib, hwm_kib } = status_rss(&status);
    Some(ProcStats {
        cpu_s: cpu_ticks as f64 / clock_ticks_per_s(),
        rss_kib,
        hwm_kib,
    })
}

/// `getconf CLK_TCK`, else 100 (Linux's USER_HZ on every mainstream architecture).
fn clock_ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t: &f64| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The 1-minute load average, NaN where unknown.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A loopback port that was free a moment ago (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client for loopback peers (no HTTP client crate in the dev-dependencies)

/// One request on a fresh connection (`Connection: close`). The response body, decoded from
/// `Transfer-Encoding: chunked`, `Content-Length` or read to EOF, is handed to `on_body` piece
/// by piece as it arrives, so that streamed responses can be timed. Returns the status code.
/// `timeout` bounds each read and write, not the whole exchange.
pub fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    on_body: &mut dyn FnMut(&[u8]),
) -> std::io::Result<u16> {
    use std::io::{BufRead, BufReader, Read};

    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&request)?;
    stream.flush()?;

    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let (mut chunked, mut length) = (false, None::<usize>);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed in the headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                length = value.parse().ok();
            }
        }
    }
    let mut buf = vec![0u8; 16 * 1024];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the blank line (or EOF).
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk)?;
            on_body(&chunk);
            line.clear();
            r.read_line(&mut line)?; // the CRLF after the chunk
        }
    } else if let Some(mut left) = length {
        while left > 0 {
            let n = r.read(&mut buf[..left.min(16 * 1024)])?;
            if n == 0 {
                return Err(invalid("connection closed in the body".into()));
            }
            on_body(&buf[..n]);
            left -= n;
        }
    } else {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            on_body(&buf[..n]);
        }
    }
    Ok(status)
}

/// A whole request: status and body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let status = http_exchange(addr, method, path, body, timeout, &mut |b| {
        out.extend_from_slice(b)
    })?;
    Ok((status, out))
}

/// A request answered with server-sent events: `on_event` gets the payload of each `data:`
/// line as soon as its line is complete (multi-line events are not joined; the servers we
/// talk to send one line per event). Returns the status code.
pub fn http_sse(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
    on_event: &mut dyn FnMut(&str),
) -> std::io::Result<u16> {
    let mut pending: Vec<u8> = Vec::new();
    let status = http_exchange(addr, "POST", path, Some(body), timeout, &mut |piece| {
        pending.extend_from_slice(piece);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                on_event(data.trim_start());
            }
        }
    })?;
    if let Some(data) = String::from_utf8_lossy(&pending)
        .trim_end()
        .strip_prefix("data:")
    {
        on_event(data.trim_start());
    }
    Ok(status)
}

/// `HEARTH_BENCH_CONCURRENCY`: comma-separated concurrency levels in `1..=max`, else `default`.
pub fn env_levels(max: usize, default: &[usize]) -> Vec<usize> {
    std::env::var("HEARTH_BENCH_CONCURRENCY")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .filter(|&n: &usize| (1..=max).contains(&n))
                .collect::<Vec<usize>>()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// `HEARTH_BENCH_REQUESTS`: `Kx` (K requests per client) or a fixed count, as
/// `(per_client, fixed)`; unset gives `(unset_per_client, None)`.
pub fn env_requests(unset_per_client: usize) -> (usize, Option<usize>) {
    match std::env::var("HEARTH_BENCH_REQUESTS") {
        Ok(v) => match v.trim().strip_suffix('x') {
            Some(k) => (k.trim().parse().unwrap_or(2).max(1), None),
            None => (2, v.trim().parse().ok().filter(|&n: &usize| n > 0)),
        },
        Err(_) => (unset_per_client, None),
    }
}

/// The passages `testdata/sources/e5/bench.sh` makes, for the embedding benches: 54-word
/// windows, 131 words apart, over the words of the reference passages of
/// `testdata/sources/e5/texts.json` (repeated once so that every window is whole).
pub fn e5_bench_passages(n: usize) -> Vec<String> {
    let path = root().join("testdata/sources/e5/texts.json");
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let items: Vec<serde_json::Value> = serde_json::from_slice(&raw).unwrap();
    let words: Vec<&str> = items
        .iter()
        .filter(|i| i["kind"] == "passage" && i.get("note").is_none())
        .flat_map(|i| i["text"].as_str().unwrap_or("").split_whitespace())
        .collect();
    let twice: Vec<&str> = words.iter().chain(&words).copied().collect();
    (0..n)
        .map(|k| twice[k * 131 % words.len()..][..54].join(" "))
        .collect()
}
