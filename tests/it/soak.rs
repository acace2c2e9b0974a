//! Soak: 16 clients upload, search, ask and delete against `hearth serve` on loopback while the
//! server is killed with SIGKILL and restarted at intervals. Afterwards every acknowledged
//! upload that was not deleted is present and searchable exactly once, every acknowledged
//! delete is honoured, no document appears that no client sent, and the server's peak RSS
//! stayed under the bound.
//!
//! Duration: `HEARTH_SOAK_SECS` (default 60, the CI run), a kill every
//! `HEARTH_SOAK_KILL_SECS` (default 20). The long figures are in SECURITY.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};

use crate::common::{Backend, Node};

/// Peak RSS the server may reach, in MiB.
const RSS_BOUND_MIB: u64 = 2048;
const CLIENTS: usize = 16;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn marker(n: usize) -> String {
    format!("zq{n}soakmarker")
}

fn document(n: usize) -> String {
    format!(
        "Soak document {n}. Its marker is {m}. The storage node {n} keeps journals for the \
         scheduler, and the router forwards packets to the archive.\n\nSecond paragraph of \
         document {n}: the cipher suite and the compiler version are recorded with marker {m}.\n",
        m = marker(n)
    )
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// Upload numbers sent (acknowledged or not).
    attempted: BTreeSet<usize>,
    /// Acknowledged uploads: number → document id.
    acked: BTreeMap<usize, String>,
    /// Acknowledged deletes.
    deleted: BTreeSet<usize>,
    /// Deletes sent whose answer a kill cut off: the document may or may not be there.
    maybe_deleted: BTreeSet<usize>,
    /// Server errors that are not part of a kill (status 500).
    failures: Vec<String>,
}

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

async fn client(
    id: usize,
    url: Arc<RwLock<String>>,
    ledger: Arc<Mutex<Ledger>>,
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicUsize>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let base = url.read().await.clone();
        let kind = (id + round) % 8;
        let result = match kind {
            // Uploads: half of all operations.
            0..=3 => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                ledger.lock().await.attempted.insert(n);
                // (An upload that never connected stays in `attempted`: harmless, it only
                // widens what may appear.)
                let r = http
                    .post(format!(
                        "{base}/v1/collections/soak/documents?source=soak-{n}.txt"
                    ))
                    .header("content-type", "text/plain")
                    .body(document(n))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let body = r.bytes().await.unwrap_or_default();
                        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                        if let Some(doc) = v["id"].as_str() {
                            ledger.lock().await.acked.insert(n, doc.to_owned());
                        }
                        Ok(())
                    }
                    Ok(r) => Err(r.status().as_u16()),
                    Err(e) => Err(cut_off(&e)),
                }
            }
            4 | 5 => {
                let q = {
                    let l = ledger.lock().await;
                    l.acked.keys().nth(round % l.acked.len().max(1)).copied()
                };
                let query = q.map_or_else(|| "storage journals".to_owned(), marker);
                let r = http
                    .post(format!("{base}/v1/collections/soak/search"))
                    .header("content-type", "application/json")
                    .body(json!({"query": query, "mode": "bm25", "top_k": 3}).to_string())
                    .send()
                    .await;
                status_of(r)
            }
            6 => {
                let r = http
                    .post(format!("{base}/v1/collections/soak/ask"))
                    .header("content-type", "application/json")
                    .body(
                        json!({"question": "What does the router forward?", "top_k": 2,
                               "sampling": {"max_tokens": 4}})
                        .to_string(),
                    )
                    .send()
                    .await;
                status_of(r)
            }
            _ => {
                // Delete an acknowledged upload, each at most once.
                // Picked and reserved as "maybe" under one lock, so no other client picks
                // the same document (two deletes of one document: the second is a 404); an
                // acknowledged delete moves it to `deleted`.
                let pick = {
                    let mut l = ledger.lock().await;
                    let pick = l
                        .acked
                        .iter()
                        .filter(|(n, _)| !l.deleted.contains(n) && !l.maybe_deleted.contains(n))
                        .nth(round % 3)
                        .map(|(n, d)| (*n, d.clone()));
                    if let Some((n, _)) = &pick {
                        l.maybe_deleted.insert(*n);
                    }
                    pick
                };
                match pick {
                    Some((n, doc)) => {
                        let r = http
                            .delete(format!("{base}/v1/collections/soak/documents/{doc}"))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let mut l = ledger.lock().await;
                                l.maybe_deleted.remove(&n);
                                l.deleted.insert(n);
                                Ok(())
                            }
                            Ok(r) => {
                                ledger.lock().await.maybe_deleted.remove(&n);
                                Err(r.status().as_u16())
                            }
                            // Never connected: it did not happen.
                            Err(e) if e.is_connect() => {
                                ledger.lock().await.maybe_deleted.remove(&n);
                                Err(DOWN)
                            }
                            // Cut off by a kill: it may have happened.
                            Err(e) => Err(cut_off(&e)),
                        }
                    }
                    None => Ok(()),
                }
            }
        };
        ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {}
            // Refused under load (429/503), or the server is down or was killed mid-request:
            // not a failure; back off a little.
            Err(429 | 503 | 504 | DOWN) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(code) => ledger
                .lock()
                .await
                .failures
                .push(format!("client {id} op {kind}: status {code}")),
        }
    }
}

/// Not an HTTP status: the request did not complete because the server was down or killed.
const DOWN: u16 = 0;

fn cut_off(_: &reqwest::Error) -> u16 {
    DOWN
}

fn status_of(r: Result<reqwest::Response, reqwest::Error>) -> Result<(), u16> {
    match r {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(r.status().as_u16()),
        Err(e) => Err(cut_off(&e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_with_kill_9_loses_nothing_and_stays_bounded() {
    let total = Duration::from_secs(env_secs("HEARTH_SOAK_SECS", 60));
    let every = Duration::from_secs(env_secs("HEARTH_SOAK_KILL_SECS", 20));
    let node = Node::new(Backend::Local)
        .env("HEARTH__SERVER__RATE_PER_MINUTE", "100000")
        .env("HEARTH__SERVER__CONCURRENCY_PER_KEY", "64");
    let mut server = node.serve(&["--open"]).await;
    let r = server
        .post_json("/v1/collections", &json!({"name": "soak"}))
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.json());

    let url = Arc::new(RwLock::new(server.url.clone()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                url.clone(),
                ledger.clone(),
                next.clone(),
                stop.clone(),
                ops.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let (mut kills, mut peak) = (0, 0u64);
    while start.elapsed() < total {
        tokio::time::sleep(every.min(total.saturating_sub(start.elapsed()))).await;
        if start.elapsed() >= total {
            break;
        }
        peak = peak.max(peak_rss_mib(server.child.id()));
        server.child.kill().unwrap(); // SIGKILL
        let _ = server.child.wait();
        kills += 1;
        server = node.serve(&["--open"]).await;
        *url.write().await = server.url.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // One last kill after the load, then let the restarted server finish what was acknowledged.
    peak = peak.max(peak_rss_mib(server.child.id()));
    server.child.kill().unwrap();
    let _ = server.child.wait();
    kills += 1;
    let server = node.serve(&["--open"]).await;
    let l = ledger.lock().await;
    assert!(l.failures.is_empty(), "server errors: {:?}", l.failures);

    // Wait (bounded) until every acknowledged upload is indexed.
    let deadline = Instant::now() + Duration::from_secs(300);
    let records = loop {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let r = server
                .get(&format!(
                    "/v1/collections/soak/documents?limit=1000{}",
                    if after.is_empty() {
                        String::new()
                    } else {
                        format!("&after={after}")
                    }
                ))
                .await;
            assert_eq!(r.status, 200);
            let v = r.json();
            all.extend(v["documents"].as_array().unwrap().iter().cloned());
            match v["next_after"].as_str() {
                Some(a) => after = a.to_owned(),
                None => break,
            }
        }
        let pending = all.iter().filter(|d| d["status"] != "indexed").count();
        if pending == 0 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} documents still not indexed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let by_source: BTreeMap<usize, Vec<&Value>> =
        records.iter().fold(BTreeMap::new(), |mut m, d| {
            let n: usize = d["source"]
                .as_str()
                .unwrap()
                .trim_start_matches("soak-")
                .trim_end_matches(".txt")
                .parse()
                .unwrap();
            m.entry(n).or_insert_with(Vec::new).push(d);
            m
        });
    for (n, docs) in &by_source {
        assert!(l.attempted.contains(n), "document {n} was never sent");
        assert_eq!(docs.len(), 1, "document {n} is there {} times", docs.len());
    }
    let kept: Vec<usize> = l
        .acked
        .keys()
        .filter(|n| !l.deleted.contains(n) && !l.maybe_deleted.contains(n))
        .copied()
        .collect();
    for n in &kept {
        assert_eq!(
            by_source.get(n).map(|d| d[0]["id"].as_str().unwrap()),
            Some(l.acked[n].as_str()),
            "acknowledged upload {n} is missing"
        );
    }
    for n in &l.deleted {
        assert!(!by_source.contains_key(n), "deleted document {n} came back");
    }
    // Searchable exactly once: a sample of the kept ones (every one on long runs).
    let sample: Vec<usize> = if kept.len() > 60 {
        kept.iter().step_by(kept.len() / 60).copied().collect()
    } else {
        kept.clone()
    };
    for n in sample.iter().chain(l.deleted.iter().take(20)) {
        let r = server
            .post_json(
                "/v1/collections/soak/search",
                &json!({"query": marker(*n), "mode": "bm25", "top_k": 10}),
            )
            .await;
        assert_eq!(r.status, 200);
        let docs: BTreeSet<String> = r.json()["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["doc_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if l.deleted.contains(n) {
            assert!(!docs.contains(&l.acked[n]), "deleted document {n} is found");
        } else {
            assert_eq!(docs, BTreeSet::from([l.acked[n].clone()]), "document {n}");
        }
    }
    eprintln!(
        "soak: {} s, {CLIENTS} clients, {} operations, {kills} kills; {} uploads sent, {} acknowledged, {} deleted, {} deletes cut off, {} kept, {} documents at the end; server peak RSS {peak} MiB (bound {RSS_BOUND_MIB})",
        total.as_secs(),
        ops.load(Ordering::Relaxed),
        l.attempted.len(),
        l.acked.len(),
        l.deleted.len(),
        l.maybe_deleted.len(),
        kept.len(),
        records.len()
    );
    assert!(kills >= 2, "the soak must kill the server at least twice");
    assert!(
        !kept.is_empty() && !l.deleted.is_empty(),
        "too little happened"
    );
    assert!(peak > 0 && peak < RSS_BOUND_MIB, "peak RSS {peak} MiB");
}
