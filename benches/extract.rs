//! Extraction throughput per format: the release `hearth extract-worker` (the isolated process
//! ingestion runs the parsers in) fed each file of `testdata/office`, scans of
//! `testdata/scans` (OCR, when Tesseract is installed) and a few of `testdata/corpus` again and
//! again for `HEARTH_BENCH_SECS` seconds (default 2; at least once) each, over its own
//! stdin/stdout protocol. Reports documents/s, pages/s, MB/s and characters of text/s per file,
//! and the worker's peak RSS (its children, pdftoppm and tesseract, are not counted). Peers in
//! the same run, one process per document as a pipeline that shells out to them would run
//! them: pandoc converting the same DOCX, ODT and RTF files to plain text, and `tesseract FILE -`
//! reading the same PNG page (when each is on the PATH).
//!
//!     cargo bench --bench extract
//!
//! Writes `bench-extract.json` in the cargo target directory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REPLY_MARK: &str = "\u{1e}HEARTH ";

fn main() {
    if common::is_probe() {
        return;
    }
    let secs: f64 = std::env::var("HEARTH_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if common::quick() { 0.2 } else { 2.0 });
    let root = common::root();
    let files: Vec<(&str, &str)> = vec![
        ("office/runbook.docx", "docx"),
        ("office/runbook.odt", "odt"),
        ("office/runbook.rtf", "rtf"),
        ("office/release-review.pptx", "pptx"),
        ("office/release-review.odp", "odp"),
        ("office/offices.xlsx", "xlsx"),
        ("office/offices.xls", "xls"),
        ("office/offices.ods", "ods"),
        ("office/offices.csv", "csv"),
        ("corpus/incident-runbook.md", "markdown"),
        ("corpus/qemu-img.html", "html"),
        ("corpus/gzip-manual.pdf", "pdf"),
        ("scans/gzip-manual-page.png", "png"),
        ("scans/gzip-manual-scan.pdf", "pdf"),
        ("scans/gzip-manual-mixed.pdf", "pdf"),
    ];
    let mut worker = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("extract-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hearth extract-worker");
    let pid = worker.id();
    let mut stdin = worker.stdin.take().unwrap();
    let mut stdout = BufReader::new(worker.stdout.take().unwrap());
    let installed = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let (pandoc, tesseract) = (installed("pandoc"), installed("tesseract"));

    println!(
        "{:28} {:>8} {:>9} {:>8} {:>9} {:>11} {:>12}",
        "file", "KiB", "docs/s", "pages/s", "MB/s", "text KiB/s", "peer docs/s"
    );
    let mut results = Vec::new();
    for (file, kind) in files {
        let path = root.join("testdata").join(file);
        let bytes = std::fs::read(&path).unwrap();
        let mut docs = 0u64;
        let mut text = 0usize;
        let mut pages = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs_f64(secs) || docs == 0 {
            let header = serde_json::json!({"kind": kind, "len": bytes.len()}).to_string();
            stdin.write_all(header.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
            stdin.write_all(&bytes).unwrap();
            stdin.flush().unwrap();
            let reply = read_reply(&mut stdout);
            let ok = &reply["Ok"];
            assert!(!ok.is_null(), "{file}: {reply}");
            text = ok["blocks"].as_array().map_or(0, |b| {
                b.iter()
                    .map(|b| b["text"].as_str().map_or(0, str::len))
                    .sum()
            });
            pages = ok["pages"].as_u64().unwrap_or(0);
            docs += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let docs_per_s = docs as f64 / elapsed;
        let peer = match kind {
            "docx" | "odt" | "rtf" if pandoc => {
                Some(peer_docs_per_s(&path, secs, "pandoc", &["-t", "plain"]))
            }
            "png" if tesseract => Some(peer_docs_per_s(&path, secs, "tesseract", &["-"])),
            _ => None,
        };
        let pages_per_s = (pages > 0).then_some(docs_per_s * pages as f64);
        println!(
            "{:28} {:>8.1} {:>9.1} {:>8} {:>9.2} {:>11.0} {:>12}",
            file,
            bytes.len() as f64 / 1024.0,
            docs_per_s,
            common::num(pages_per_s, 1),
            docs_per_s * bytes.len() as f64 / 1e6,
            docs_per_s * text as f64 / 1024.0,
            common::num(peer, 1),
        );
        results.push(serde_json::json!({
            "file": file, "kind": kind, "bytes": bytes.len(), "text_bytes": text,
            "pages": pages, "docs_per_s": docs_per_s, "pages_per_s": pages_per_s,
            "mb_per_s": docs_per_s * bytes.len() as f64 / 1e6, "peer_docs_per_s": peer,
        }));
    }
    let peak = common::proc_stats(pid).map_or(0.0, |s| s.hwm_kib as f64 / 1024.0);
    println!("extract-worker peak RSS {peak:.0} MiB");
    drop(stdin);
    let _ = worker.wait();
    common::write_results(
        "extract",
        &serde_json::json!({
            "machine": common::machine(), "seconds_per_file": secs,
            "worker_peak_rss_mib": peak, "files": results,
        }),
    );
}

fn read_reply(stdout: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the worker exited"
        );
        if let Some(json) = line.strip_prefix(REPLY_MARK) {
            return serde_json::from_str(json.trim_end()).unwrap();
        }
    }
}

/// Documents per second that `PROGRAM FILE ARGS...` turns into text on its stdout, one process
/// each (Tesseract with one thread, as hearth runs it).
fn peer_docs_per_s(path: &Path, secs: f64, program: &str, args: &[&str]) -> f64 {
    let started = Instant::now();
    let mut docs = 0u64;
    while started.elapsed() < Duration::from_secs_f64(secs) || docs == 0 {
        let mut child = Command::new(program)
            .arg(path)
            .args(args)
            .env("OMP_THREAD_LIMIT", "1")
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        assert!(child.wait().unwrap().success() && !out.is_empty());
        docs += 1;
    }
    docs as f64 / started.elapsed().as_secs_f64()
}
