//! Search latency through a replica against a single node: `POST /v1/collections/{c}/search`
//! (hybrid, top 5, the query embedded by the node) through the release `hearth serve` over
//! loopback HTTP, every node on SeaweedFS on loopback.
//!
//! The evaluation corpus (`testdata/corpus`) is ingested once with `hearth ingest` into one
//! bucket, and every object is copied into a second one. Then, never two runs at once:
//! 1. **single node**: `hearth serve` on the first bucket (no `[cluster]`);
//! 2. **replicas**: two `hearth serve` with `cluster.enabled` on the second bucket; r1 starts
//!    first and holds the collection's lease (the indexer), r2 follows.
//!
//! Each node answers the evaluation questions (`testdata/eval/questions.jsonl`, one pass to
//! warm up, unmeasured) at concurrency 1 and 4 (closed loop, each client takes the next
//! question); on the replicas, concurrency 1 on each, and concurrency 4 split across both (on
//! a 2-core machine both share the same cores, so this measures the cost of the replicas'
//! background work, not a scale-out). Also checked: every node returns the same hits (ids and
//! scores) for every question.
//!
//!     cargo bench --bench replicas
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench replicas      # 40 questions per level
//!
//! Needs the default models (`scripts/fetch-models.sh`; `HEARTH_MODELS` to point elsewhere) and
//! `weed` (`scripts/test-deps.sh`). Results go to `bench-replicas.json` in the cargo target
//! directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hearth_index::fixtures::SeaweedFs;
use hearth_index::{BlobStore, S3Config};
use serde_json::{Value, json};

const COLLECTION: &str = "corpus";

/// One hit: document id, chunk ordinal, score (5 decimals).
type Hit = (String, u64, String);

fn main() {
    if common::is_probe() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

struct Node {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Node {
    async fn start(hearth: &Path, data: &Path, s3: &S3Config, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = command(hearth, data, s3)
            .args(["serve", "--open", "--bind", "127.0.0.1:0"])
            .env("HEARTH__SERVER__RATE_PER_MINUTE", "1000000")
            .env("HEARTH__SERVER__CONCURRENCY_PER_KEY", "64")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hearth serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(300))
                .expect("hearth serve printed no address");
            if let Some(rest) = line.strip_prefix("hearth is listening on ") {
                break rest.trim().to_owned();
            }
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(format!("{url}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "{url} not ready within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url, client }
    }

    /// The hits (document id, chunk, score) for `q`, and the request's latency.
    async fn search(&self, q: &str) -> (Vec<Hit>, f64) {
        let started = Instant::now();
        let r = self
            .client
            .post(format!("{}/v1/collections/{COLLECTION}/search", self.url))
            .header("content-type", "application/json")
            .body(json!({"query": q, "top_k": 5}).to_string())
            .send()
            .await
            .expect("search request");
        assert_eq!(r.status(), 200);
        let v: Value =
            serde_json::from_slice(&r.bytes().await.expect("search body")).expect("search JSON");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let hits = v["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                (
                    h["doc_id"].as_str().unwrap_or_default().to_owned(),
                    h["ordinal"].as_u64().unwrap_or_default(),
                    format!("{:.5}", h["score"].as_f64().unwrap_or_default()),
                )
            })
            .collect();
        (hits, ms)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn command(hearth: &Path, data: &Path, s3: &S3Config) -> Command {
    let mut cmd = Command::new(hearth);
    cmd.current_dir(data.parent().expect("data dir parent"))
        .env_remove("HEARTH_CONFIG")
        .env_remove("HEARTH_LOG")
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_MODELS", common::models_dir())
        .stdin(Stdio::null());
    // None of the caller's settings, then the store's.
    for (k, _) in std::env::vars() {
        if k.starts_with("HEARTH__") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HEARTH__STORAGE__BACKEND", "s3")
        .env("HEARTH__STORAGE__S3__ENDPOINT", &s3.endpoint)
        .env("HEARTH__STORAGE__S3__BUCKET", &s3.bucket);
    cmd
}

/// Latencies of every question through `nodes` (client `i` uses node `i % nodes.len()`) at
/// `clients` at once, with the hits of each question, in question order.
async fn level(
    nodes: &[&Node],
    questions: &Arc<Vec<String>>,
    clients: usize,
) -> (Vec<f64>, Vec<Vec<Hit>>, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = futures::future::join_all((0..clients).map(|i| {
        let node = nodes[i % nodes.len()];
        let (next, questions) = (next.clone(), questions.clone());
        async move {
            let mut out = Vec::new();
            loop {
                let q = next.fetch_add(1, Ordering::Relaxed);
                let Some(text) = questions.get(q) else { break };
                let (hits, ms) = node.search(text).await;
                out.push((q, hits, ms));
            }
            out
        }
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let mut all: Vec<(usize, Vec<Hit>, f64)> = results.into_iter().flatten().collect();
    all.sort_by_key(|(q, _, _)| *q);
    let ms: Vec<f64> = all.iter().map(|(_, _, ms)| *ms).collect();
    let hits = all.into_iter().map(|(_, h, _)| h).collect();
    (ms, hits, questions.len() as f64 / wall)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    name: String,
    p50: f64,
    p95: f64,
    qps: f64,
    same: usize,
}

async fn measure(
    name: &str,
    nodes: &[&Node],
    questions: &Arc<Vec<String>>,
    clients: usize,
    reference: Option<&Vec<Vec<Hit>>>,
) -> (Row, Vec<Vec<Hit>>) {
    let (ms, hits, qps) = level(nodes, questions, clients).await;
    let same = reference.map_or(hits.len(), |r| {
        r.iter().zip(&hits).filter(|(a, b)| a == b).count()
    });
    let row = Row {
        name: name.to_owned(),
        p50: percentile(&ms, 0.5),
        p95: percentile(&ms, 0.95),
        qps,
        same,
    };
    println!(
        "{:<44} p50 {:>7.2} ms  p95 {:>7.2} ms  {:>6.1} q/s  identical hits {}/{}",
        row.name,
        row.p50,
        row.p95,
        row.qps,
        row.same,
        hits.len()
    );
    (row, hits)
}

async fn copy_bucket(from: &BlobStore, to: &BlobStore) -> usize {
    let keys = from.list("").await.expect("list");
    for k in &keys {
        let bytes = from.get_opt(k).await.expect("get").expect("object");
        to.put(k, bytes).await.expect("put");
    }
    keys.len()
}

async fn run() {
    let hearth = PathBuf::from(env!("CARGO_BIN_EXE_hearth"));
    let root = common::root();
    let mut questions: Vec<String> =
        std::fs::read_to_string(root.join("testdata/eval/questions.jsonl"))
            .expect("questions")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("question JSON");
                v["question"].as_str().expect("question").to_owned()
            })
            .collect();
    if common::quick() {
        questions.truncate(40);
    }
    let questions = Arc::new(questions);
    let weed = SeaweedFs::start().expect("SeaweedFS");
    let (single, shared) = (weed.fresh_bucket(), weed.fresh_bucket());
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = |name: &str| -> PathBuf {
        let d = temp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d.join("data")
    };

    println!("replicas bench: ingesting testdata/corpus");
    let started = Instant::now();
    let out = command(&hearth, &dir("ingest"), &single)
        .args(["ingest", "-c", COLLECTION, "--json"])
        .arg(root.join("testdata/corpus"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("hearth ingest");
    assert!(out.success(), "hearth ingest failed");
    let copied = copy_bucket(
        &BlobStore::s3(&single).expect("store"),
        &BlobStore::s3(&shared).expect("store"),
    )
    .await;
    println!(
        "ingested and copied {copied} objects in {:.1} s; {} questions per level",
        started.elapsed().as_secs_f64(),
        questions.len()
    );

    let mut rows = Vec::new();
    let node = Node::start(&hearth, &dir("single"), &single, &[]).await;
    level(&[&node], &questions, 1).await;
    let (row, reference) = measure("single node, c=1", &[&node], &questions, 1, None).await;
    rows.push(row);
    let (row, _) = measure(
        "single node, c=4",
        &[&node],
        &questions,
        4,
        Some(&reference),
    )
    .await;
    rows.push(row);
    node.stop();

    let cluster = [("HEARTH__CLUSTER__ENABLED", "true")];
    let r1 = Node::start(
        &hearth,
        &dir("r1"),
        &shared,
        &[cluster[0], ("HEARTH__CLUSTER__NAME", "r1")],
    )
    .await;
    // r1 opens the collection (and takes its lease) before r2 starts.
    level(&[&r1], &questions, 1).await;
    let r2 = Node::start(
        &hearth,
        &dir("r2"),
        &shared,
        &[cluster[0], ("HEARTH__CLUSTER__NAME", "r2")],
    )
    .await;
    level(&[&r2], &questions, 1).await;
    for (name, nodes, clients) in [
        ("replica r1 (indexer), c=1", vec![&r1], 1),
        ("replica r2 (follower), c=1", vec![&r2], 1),
        ("replica r2 (follower), c=4", vec![&r2], 4),
        ("replicas r1 + r2, c=4 split across both", vec![&r1, &r2], 4),
    ] {
        let (row, _) = measure(name, &nodes, &questions, clients, Some(&reference)).await;
        rows.push(row);
    }
    r1.stop();
    r2.stop();

    let base = rows[0].p50;
    println!("\nratio of p50 to the single node at c=1:");
    for r in &rows {
        println!("  {:<44} {:.3}", r.name, r.p50 / base);
    }
    let report = json!({
        "machine": common::machine(),
        "questions": questions.len(),
        "rows": rows.iter().map(|r| json!({
            "name": r.name, "p50_ms": r.p50, "p95_ms": r.p95, "qps": r.qps,
            "identical_hits": r.same,
        })).collect::<Vec<_>>(),
    });
    let path = common::target_dir().join("bench-replicas.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).expect("report JSON"),
    )
    .expect("write report");
    println!("wrote {}", path.display());
}
