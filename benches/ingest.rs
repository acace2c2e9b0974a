//! End-to-end ingestion benchmark: the release `hearth ingest` on (1) the committed corpus in
//! `testdata/corpus` and (2) 1,000 generated HTML pages. Reports documents/s, MB/s, chunks/s,
//! CPU time and peak RSS (the hearth process, and the whole process tree including extraction
//! processes, sampled every 10 ms). With two workers each corpus is also ingested into an
//! encrypted store (AES-256-GCM at rest), right after the plain run, for the overhead ratio.
//! Writes `bench-ingest.json` in the cargo target directory.
//!
//!     cargo bench --bench ingest
//!
//! Needs the default models (`scripts/fetch-models.sh`; `HEARTH_MODELS` to point elsewhere).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let root = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    );
    let models =
        std::env::var_os("HEARTH_MODELS").map_or_else(|| root.join("models"), PathBuf::from);
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench --no-run` style probes
    }
    let pages = tempfile::tempdir().unwrap();
    write_html_pages(pages.path(), 1000);
    let mut results = Vec::new();
    for (name, dir) in [
        ("testdata-corpus", root.join("testdata/corpus")),
        ("html-1000", pages.path().to_path_buf()),
    ] {
        for (workers, encrypted) in [("1", false), ("2", false), ("2", true)] {
            let r = run(&models, &dir, workers, encrypted);
            let label = if encrypted { " encrypted" } else { "" };
            println!(
                "{name:16} workers={workers}{label:10}  {:>4} docs  {:>6.2} MB  {:>6.2} s  {:>7.1} docs/s  {:>6.2} MB/s  {:>7.0} chunks/s  cpu {:>5.2} s  peak RSS hearth {:>5.0} MiB, tree {:>5.0} MiB",
                r.docs,
                r.mb,
                r.secs,
                r.docs as f64 / r.secs,
                r.mb / r.secs,
                r.chunks as f64 / r.secs,
                r.cpu_secs,
                r.rss_main_mib,
                r.rss_tree_mib
            );
            results.push(serde_json::json!({
                "corpus": name, "workers": workers, "encrypted": encrypted, "docs": r.docs, "megabytes": r.mb, "seconds": r.secs,
                "docs_per_s": r.docs as f64 / r.secs, "mb_per_s": r.mb / r.secs, "chunks": r.chunks,
                "cpu_seconds": r.cpu_secs, "peak_rss_hearth_mib": r.rss_main_mib, "peak_rss_tree_mib": r.rss_tree_mib,
            }));
        }
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    std::fs::create_dir_all(&target).unwrap();
    let out = target.join("bench-ingest.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("wrote {}", out.display());
}

struct RunResult {
    docs: u64,
    chunks: u64,
    mb: f64,
    secs: f64,
    cpu_secs: f64,
    rss_main_mib: f64,
    rss_tree_mib: f64,
}

fn run(models: &Path, corpus: &Path, workers: &str, encrypted: bool) -> RunResult {
    let data = tempfile::tempdir().unwrap();
    let mb = dir_bytes(corpus) as f64 / 1e6;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    if encrypted {
        let kek = data.path().join("kek");
        std::fs::write(&kek, "3c".repeat(32)).unwrap();
        cmd.env("HEARTH__STORAGE__ENCRYPTION__KEK_FILE", &kek);
    }
    let started = Instant::now();
    let mut child = cmd
        .args(["ingest", "--json", "-c", "bench"])
        .arg(corpus)
        .env("HEARTH_DATA_DIR", data.path().join("data"))
        .env("HEARTH_MODELS", models)
        .env("HEARTH__INGEST__WORKERS", workers)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Drain stdout while the run goes on: the JSON summary can exceed a pipe's buffer.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).unwrap();
        buf
    });
    let (mut main_peak, mut tree_peak, mut cpu_ticks) = (0u64, 0u64, 0u64);
    while child.try_wait().unwrap().is_none() {
        let tree = process_tree(pid);
        let rss: Vec<u64> = tree.iter().map(|&p| rss_kib(p)).collect();
        main_peak = main_peak.max(rss.first().copied().unwrap_or(0));
        tree_peak = tree_peak.max(rss.iter().sum());
        cpu_ticks = cpu_ticks.max(tree.iter().map(|&p| cpu(p)).sum());
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(child.wait().unwrap().success(), "hearth ingest failed");
    let summary: serde_json::Value = serde_json::from_slice(&reader.join().unwrap()).unwrap();
    let docs = summary["ok"].as_u64().unwrap() + summary["failed"].as_u64().unwrap();
    let ticks = nix_ticks();
    RunResult {
        docs,
        chunks: summary["chunks"].as_u64().unwrap(),
        mb,
        secs,
        cpu_secs: cpu_ticks as f64 / ticks,
        rss_main_mib: main_peak as f64 / 1024.0,
        rss_tree_mib: tree_peak as f64 / 1024.0,
    }
}

fn nix_ticks() -> f64 {
    100.0 // USER_HZ on Linux
}

/// `pid` and its descendants (the extraction processes).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    all
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (and its reaped children), in clock ticks.
fn cpu(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // Fields after the command name, from `state` (index 0): utime=11, stime=12, cutime=13,
    // cstime=14. Every field is kept in place (tpgid is -1 without a terminal, so dropping
    // the ones that do not parse as unsigned would shift the indices).
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f.get(11..15)
        .map_or(0, |v| v.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Writes `n` documentation-like HTML pages (~10 KB each) with navigation, scripts and footers;
/// deterministic.
fn write_html_pages(dir: &Path, n: usize) {
    const WORDS: &[&str] = &[
        "the",
        "package",
        "manager",
        "installs",
        "configuration",
        "files",
        "under",
        "system",
        "service",
        "network",
        "interface",
        "kernel",
        "module",
        "loads",
        "when",
        "device",
        "appears",
        "user",
        "account",
        "permissions",
        "backup",
        "restores",
        "archive",
        "from",
        "mirror",
        "security",
        "update",
        "release",
        "notes",
        "describe",
        "changes",
        "in",
        "each",
        "version",
        "and",
        "how",
        "to",
        "upgrade",
        "safely",
        "without",
        "data",
        "loss",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..n {
        let mut body = String::new();
        for s in 0..4 {
            body.push_str(&format!("<h2>Section {s} of page {i}</h2>\n"));
            for _ in 0..4 {
                let len = 30 + (next() % 40) as usize;
                let words: Vec<&str> = (0..len)
                    .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                    .collect();
                body.push_str(&format!("<p>{}.</p>\n", words.join(" ")));
            }
        }
        let page = format!(
            "<!DOCTYPE html><html><head><title>Page {i}</title><style>body{{margin:0}}</style>\
             <script>window.track = function() {{ return {i}; }};</script></head><body>\
             <nav><ul><li><a href=\"/\">Home</a></li><li><a href=\"/docs\">Docs</a></li></ul></nav>\
             <main><h1>Guide page {i}</h1>\n{body}</main><footer>Generated page {i}</footer></body></html>"
        );
        std::fs::write(dir.join(format!("page-{i:04}.html")), page).unwrap();
    }
}
