//! `/metrics` in the Prometheus text format: requests and latency per route, generation TTFT
//! and speed, the generator's queue and KV cache, the ingestion backlog and documents by
//! status.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hearth_engine::Completion;

use super::State;
use super::error::ApiError;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the tokens-per-second buckets.
const SPEED: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// How long the documents-by-status counts are reused before they are counted again.
const DOC_COUNTS_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, &le) in self.buckets.iter_mut().zip(bounds) {
            if v <= le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in bounds.iter().enumerate() {
            let n = self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the server counts.
/// Documents by (collection, status).
type DocCounts = BTreeMap<(String, &'static str), u64>;

#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
    doc_counts: tokio::sync::Mutex<Option<(Instant, DocCounts)>>,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    ttft: HashMap<&'static str, Histogram>,
    speed: HashMap<&'static str, Histogram>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a finished generation of `endpoint` (`ask` or `chat`).
    pub fn generation(&self, endpoint: &'static str, c: &Completion) {
        let mut m = self.lock();
        m.ttft
            .entry(endpoint)
            .or_default()
            .observe(&LATENCY, c.timings.ttft_ms / 1e3);
        if c.usage.completion_tokens > 1 {
            m.speed
                .entry(endpoint)
                .or_default()
                .observe(&SPEED, c.timings.decode_tokens_per_s);
        }
    }
}

/// The middleware: counts each request by route template, method and status, and times it
/// until its response head.
pub(crate) async fn track(state: State, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let secs = started.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let mut m = state.metrics.lock();
    *m.requests
        .entry((route.clone(), method, status))
        .or_default() += 1;
    m.latency.entry(route).or_default().observe(&LATENCY, secs);
    resp
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "metrics", content_type = "text/plain")))]
pub(super) async fn metrics(s: State) -> Result<Response, ApiError> {
    let docs = doc_counts(&s).await?;
    let mut out = String::with_capacity(8192);
    {
        let m = s.metrics.lock();
        out.push_str("# HELP hearth_http_requests_total HTTP requests by route, method and status.\n# TYPE hearth_http_requests_total counter\n");
        for ((route, method, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "hearth_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                esc(route)
            );
        }
        out.push_str("# HELP hearth_http_request_duration_seconds Time to the response head, by route.\n# TYPE hearth_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.write(
                &mut out,
                "hearth_http_request_duration_seconds",
                &format!("route=\"{}\"", esc(route)),
                &LATENCY,
            );
        }
        out.push_str("# HELP hearth_ttft_seconds Time to the first generated token.\n# TYPE hearth_ttft_seconds histogram\n");
        for (endpoint, h) in &m.ttft {
            h.write(
                &mut out,
                "hearth_ttft_seconds",
                &format!("endpoint=\"{endpoint}\""),
                &LATENCY,
            );
        }
        out.push_str("# HELP hearth_generation_tokens_per_second Decode speed of finished generations.\n# TYPE hearth_generation_tokens_per_second histogram\n");
        for (endpoint, h) in &m.speed {
            h.write(
                &mut out,
                "hearth_generation_tokens_per_second",
                &format!("endpoint=\"{endpoint}\""),
                &SPEED,
            );
        }
    }
    if let Ok(g) = s.service.generator() {
        let st = g.stats();
        let info = g.info();
        for (name, help, v) in [
            (
                "hearth_generation_queue_depth",
                "Generation requests waiting for a place.",
                st.waiting,
            ),
            (
                "hearth_generation_running",
                "Sequences in the running batch.",
                st.running,
            ),
            (
                "hearth_kv_blocks_used",
                "KV cache blocks holding live sequences.",
                st.kv_blocks_used,
            ),
            (
                "hearth_kv_blocks_total",
                "KV cache blocks in all.",
                info.kv_blocks,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP hearth_generation_preemptions_total Sequences preempted for lack of KV blocks.\n# TYPE hearth_generation_preemptions_total counter\nhearth_generation_preemptions_total {}",
            st.preemptions
        );
    }
    let _ = writeln!(
        out,
        "# HELP hearth_ingest_backlog Documents waiting for or in background ingestion.\n# TYPE hearth_ingest_backlog gauge\nhearth_ingest_backlog {}",
        s.service.ingest_backlog()
    );
    out.push_str("# HELP hearth_documents Documents by collection and status.\n# TYPE hearth_documents gauge\n");
    for ((c, status), n) in &docs {
        let _ = writeln!(
            out,
            "hearth_documents{{collection=\"{}\",status=\"{status}\"}} {n}",
            esc(c)
        );
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

async fn doc_counts(s: &State) -> Result<DocCounts, ApiError> {
    let mut cache = s.metrics.doc_counts.lock().await;
    if let Some((at, counts)) = cache.as_ref()
        && at.elapsed() < DOC_COUNTS_TTL
    {
        return Ok(counts.clone());
    }
    let mut counts = BTreeMap::new();
    for c in s.service.collections().await? {
        for r in s.service.storage().documents(&c, None).await? {
            *counts
                .entry((c.as_str().to_owned(), r.state.as_str()))
                .or_default() += 1;
        }
    }
    *cache = Some((Instant::now(), counts.clone()));
    Ok(counts)
}
