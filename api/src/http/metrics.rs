//! `/metrics` in the Prometheus text format: requests and latency per route, generation TTFT
//! and speed, the generator's queue and KV cache, the ingestion backlog and documents by
//! status.
//!
//! Document counts are labelled with their collection, so each key sees only those of the
//! collections it may read; the route, generation and backlog figures are node-wide and name
//! no collection.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hearth_engine::Completion;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use hearth_index::CollectionName;

use super::State;
use super::auth::Caller;
use super::error::ApiError;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the tokens-per-second buckets.
const SPEED: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// How long the documents-by-status counts are reused before they are counted again.
const DOC_COUNTS_TTL: Duration = Duration::from_secs(10);

/// Documents by (collection, status).
type DocCounts = BTreeMap<(String, &'static str), u64>;

/// A family of histograms that all share one set of buckets.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// A tenant's usage as `/metrics` shows it: name, documents, stored bytes, tokens today.
pub(super) type TenantUsage = (String, u64, u64, u64);

/// One figure of a tenant's usage.
type TenantFigure = fn(&TenantUsage) -> u64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DocumentLabels {
    collection: String,
    status: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY)
}

fn speed_histogram() -> Histogram {
    Histogram::new(SPEED)
}

/// What the server counts. The families are shared handles: each scrape registers them in a
/// fresh registry next to the values read at that moment.
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Histograms<RouteLabels>,
    ttft: Histograms<EndpointLabels>,
    speed: Histograms<EndpointLabels>,
    doc_counts: tokio::sync::Mutex<Option<(Instant, DocCounts)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            speed: Family::new_with_constructor(speed_histogram),
            doc_counts: tokio::sync::Mutex::new(None),
        }
    }
}

/// The generator's state at scrape time.
struct Engine {
    waiting: usize,
    running: usize,
    kv_blocks_used: usize,
    kv_blocks: usize,
    preemptions: usize,
}

impl Metrics {
    /// Records a finished generation of `endpoint` (`ask` or `chat`).
    pub fn generation(&self, endpoint: &'static str, c: &Completion) {
        let labels = EndpointLabels { endpoint };
        self.ttft
            .get_or_create(&labels)
            .observe(c.timings.ttft_ms / 1e3);
        if c.usage.completion_tokens > 1 {
            self.speed
                .get_or_create(&labels)
                .observe(c.timings.decode_tokens_per_s);
        }
    }

    /// Counts one request and the time to its response head.
    fn request(&self, route: String, method: String, status: u16, secs: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(secs);
    }

    /// The whole exposition in the Prometheus text format 0.0.4.
    fn render(
        &self,
        engine: Option<&Engine>,
        backlog: usize,
        docs: &DocCounts,
        tenants: &[TenantUsage],
    ) -> String {
        let mut r = Registry::default();
        // The registry adds the full stop to each help text, and `_total` to counter names.
        r.register(
            "hearth_http_requests",
            "HTTP requests by route, method and status",
            self.requests.clone(),
        );
        r.register(
            "hearth_http_request_duration_seconds",
            "Time to the response head, by route",
            self.latency.clone(),
        );
        r.register(
            "hearth_ttft_seconds",
            "Time to the first generated token",
            self.ttft.clone(),
        );
        r.register(
            "hearth_generation_tokens_per_second",
            "Decode speed of finished generations",
            self.speed.clone(),
        );
        if let Some(e) = engine {
            for (name, help, v) in [
                (
                    "hearth_generation_queue_depth",
                    "Generation requests waiting for a place",
                    e.waiting,
                ),
                (
                    "hearth_generation_running",
                    "Sequences in the running batch",
                    e.running,
                ),
                (
                    "hearth_kv_blocks_used",
                    "KV cache blocks holding live sequences",
                    e.kv_blocks_used,
                ),
                (
                    "hearth_kv_blocks_total",
                    "KV cache blocks in all",
                    e.kv_blocks,
                ),
            ] {
                r.register(name, help, ConstGauge::new(v));
            }
            r.register(
                "hearth_generation_preemptions",
                "Sequences preempted for lack of KV blocks",
                ConstCounter::new(e.preemptions),
            );
        }
        r.register(
            "hearth_ingest_backlog",
            "Documents waiting for or in background ingestion",
            ConstGauge::new(backlog),
        );
        let documents = Family::<DocumentLabels, Gauge<u64, AtomicU64>>::default();
        for ((collection, status), &n) in docs {
            documents
                .get_or_create(&DocumentLabels {
                    collection: collection.clone(),
                    status,
                })
                .set(n);
        }
        r.register(
            "hearth_documents",
            "Documents by collection and status",
            documents,
        );
        if !tenants.is_empty() {
            let families: [(&str, &str, TenantFigure); 3] = [
                (
                    "hearth_tenant_documents",
                    "Documents in a tenant's collections",
                    |t| t.1,
                ),
                (
                    "hearth_tenant_stored_bytes",
                    "Bytes of the originals in a tenant's collections",
                    |t| t.2,
                ),
                (
                    "hearth_tenant_generated_tokens_today",
                    "Tokens generated for a tenant today (UTC) on this node",
                    |t| t.3,
                ),
            ];
            for (name, help, value) in families {
                let family = Family::<TenantLabels, Gauge<u64, AtomicU64>>::default();
                for t in tenants {
                    family
                        .get_or_create(&TenantLabels {
                            tenant: t.0.clone(),
                        })
                        .set(value(t));
                }
                r.register(name, help, family);
            }
        }
        let mut out = String::with_capacity(8192);
        // invariant: writing to a String does not fail.
        prometheus_text::encode(&mut out, &r).expect("metrics encode into a String");
        out
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
    state
        .metrics
        .request(route, method, resp.status().as_u16(), secs);
    resp
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "metrics", content_type = "text/plain")))]
pub(super) async fn metrics(s: State, caller: Caller) -> Result<Response, ApiError> {
    let mut docs = doc_counts(&s).await?;
    // Document counts name their collection: a key sees those of the collections it may
    // read, nothing of another tenant's (not even that the collection exists).
    docs.retain(|(c, _), _| CollectionName::new(c).is_ok_and(|c| caller.sees(&c)));
    let engine = s.service.generator().ok().map(|g| {
        let st = g.stats();
        Engine {
            waiting: st.waiting,
            running: st.running,
            kv_blocks_used: st.kv_blocks_used,
            kv_blocks: g.info().kv_blocks,
            preemptions: st.preemptions,
        }
    });
    // Tenants' usage: every tenant for the node's admin, its own for a tenant's admin.
    let tenants = super::tenants::visible_usage(&s, &caller).await?;
    let out = s
        .metrics
        .render(engine.as_ref(), s.service.ingest_backlog(), &docs, &tenants);
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hand-written exposition printed for the same observations, before the
    /// Prometheus client took over: names, labels, types and buckets must not move.
    const BEFORE: &str = r#"
# HELP hearth_http_requests_total HTTP requests by route, method and status.
# TYPE hearth_http_requests_total counter
hearth_http_requests_total{route="/metrics",method="GET",status="200"} 1
hearth_http_requests_total{route="/v1/collections/{c}/ask",method="POST",status="200"} 2
hearth_http_requests_total{route="/v1/collections/{c}/ask",method="POST",status="429"} 1
# HELP hearth_http_request_duration_seconds Time to the response head, by route.
# TYPE hearth_http_request_duration_seconds histogram
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.005"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.01"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.025"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.05"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.1"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.25"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="0.5"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="1"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="2.5"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="5"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="10"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="30"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="60"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="120"} 1
hearth_http_request_duration_seconds_bucket{route="/metrics",le="+Inf"} 1
hearth_http_request_duration_seconds_sum{route="/metrics"} 0.002
hearth_http_request_duration_seconds_count{route="/metrics"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.005"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.01"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.025"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.05"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.1"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.25"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="0.5"} 1
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="1"} 2
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="2.5"} 2
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="5"} 3
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="10"} 3
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="30"} 3
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="60"} 3
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="120"} 3
hearth_http_request_duration_seconds_bucket{route="/v1/collections/{c}/ask",le="+Inf"} 3
hearth_http_request_duration_seconds_sum{route="/v1/collections/{c}/ask"} 3.7505
hearth_http_request_duration_seconds_count{route="/v1/collections/{c}/ask"} 3
# HELP hearth_ttft_seconds Time to the first generated token.
# TYPE hearth_ttft_seconds histogram
hearth_ttft_seconds_bucket{endpoint="ask",le="0.005"} 0
hearth_ttft_seconds_bucket{endpoint="ask",le="0.01"} 0
hearth_ttft_seconds_bucket{endpoint="ask",le="0.025"} 0
hearth_ttft_seconds_bucket{endpoint="ask",le="0.05"} 0
hearth_ttft_seconds_bucket{endpoint="ask",le="0.1"} 0
hearth_ttft_seconds_bucket{endpoint="ask",le="0.25"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="0.5"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="1"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="2.5"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="5"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="10"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="30"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="60"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="120"} 2
hearth_ttft_seconds_bucket{endpoint="ask",le="+Inf"} 2
hearth_ttft_seconds_sum{endpoint="ask"} 0.375
hearth_ttft_seconds_count{endpoint="ask"} 2
# HELP hearth_generation_tokens_per_second Decode speed of finished generations.
# TYPE hearth_generation_tokens_per_second histogram
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="1"} 0
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="2"} 0
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="5"} 0
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="10"} 0
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="20"} 0
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="50"} 1
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="100"} 1
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="200"} 1
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="500"} 1
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="1000"} 1
hearth_generation_tokens_per_second_bucket{endpoint="ask",le="+Inf"} 1
hearth_generation_tokens_per_second_sum{endpoint="ask"} 42.5
hearth_generation_tokens_per_second_count{endpoint="ask"} 1
# HELP hearth_generation_queue_depth Generation requests waiting for a place.
# TYPE hearth_generation_queue_depth gauge
hearth_generation_queue_depth 0
# HELP hearth_generation_running Sequences in the running batch.
# TYPE hearth_generation_running gauge
hearth_generation_running 1
# HELP hearth_kv_blocks_used KV cache blocks holding live sequences.
# TYPE hearth_kv_blocks_used gauge
hearth_kv_blocks_used 5
# HELP hearth_kv_blocks_total KV cache blocks in all.
# TYPE hearth_kv_blocks_total gauge
hearth_kv_blocks_total 128
# HELP hearth_generation_preemptions_total Sequences preempted for lack of KV blocks.
# TYPE hearth_generation_preemptions_total counter
hearth_generation_preemptions_total 2
# HELP hearth_ingest_backlog Documents waiting for or in background ingestion.
# TYPE hearth_ingest_backlog gauge
hearth_ingest_backlog 0
# HELP hearth_documents Documents by collection and status.
# TYPE hearth_documents gauge
hearth_documents{collection="docs",status="failed"} 1
hearth_documents{collection="docs",status="indexed"} 3
"#;

    #[test]
    fn exposition_keeps_the_names_labels_types_and_buckets() {
        let m = Metrics::default();
        for (route, method, status, secs) in [
            ("/v1/collections/{c}/ask", "POST", 200, 0.75),
            ("/v1/collections/{c}/ask", "POST", 200, 3.0),
            ("/v1/collections/{c}/ask", "POST", 429, 0.0005),
            ("/metrics", "GET", 200, 0.002),
        ] {
            m.request(route.into(), method.into(), status, secs);
        }
        let ask = EndpointLabels { endpoint: "ask" };
        m.ttft.get_or_create(&ask).observe(0.25);
        m.ttft.get_or_create(&ask).observe(0.125);
        m.speed.get_or_create(&ask).observe(42.5);
        let engine = Engine {
            waiting: 0,
            running: 1,
            kv_blocks_used: 5,
            kv_blocks: 128,
            preemptions: 2,
        };
        let docs: DocCounts = [
            (("docs".to_owned(), "indexed"), 3),
            (("docs".to_owned(), "failed"), 1),
        ]
        .into_iter()
        .collect();
        let out = m.render(Some(&engine), 0, &docs, &[]);
        // Families come out in the same order; the series within one in no particular order.
        let families = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("# TYPE "))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(families(&out), families(BEFORE), "{out}");
        let sorted = |text: &str| -> Vec<String> {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&out), sorted(BEFORE), "{out}");
        // Without a generator its gauges are left out, as before.
        let out = m.render(None, 7, &DocCounts::new(), &[]);
        assert!(!out.contains("hearth_kv_blocks_used"), "{out}");
        assert!(out.contains("\nhearth_ingest_backlog 7\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.request("a\"b\\c\nd".into(), "GET".into(), 404, 0.001);
        let out = m.render(None, 0, &DocCounts::new(), &[("acme".into(), 3, 4096, 17)]);
        assert!(
            out.contains("hearth_tenant_stored_bytes{tenant=\"acme\"} 4096"),
            "{out}"
        );
        assert!(
            out.contains(
                r#"hearth_http_requests_total{route="a\"b\\c\nd",method="GET",status="404"} 1"#
            ),
            "{out}"
        );
    }
}
