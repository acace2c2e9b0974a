//! Serving benchmark: `POST /v1/collections/{c}/ask` end to end through the release
//! `hearth serve` over loopback HTTP, on a generated 1,000-document Markdown corpus, at
//! concurrency 1, 8 and 32; then the same questions answered by the same engine called
//! in-process (no HTTP) at concurrency 8, to put a number on the API's own overhead (target:
//! at most 5 % of the mean latency at concurrency 8).
//!
//!     cargo bench --bench serve
//!     HEARTH_BENCH_QUICK=1 cargo bench --bench serve      # 50 documents, c=1,2: proves the harness
//!     HEARTH_BENCH_CONCURRENCY=1,8 HEARTH_BENCH_REQUESTS=4x cargo bench --bench serve
//!
//! Needs the default models (`scripts/fetch-models.sh`; `HEARTH_MODELS` to point elsewhere).
//! `HEARTH_BENCH_CONCURRENCY` lists the levels (default `1,8,32`; quick `1,2`).
//! `HEARTH_BENCH_REQUESTS` is the number of measured requests per level: a number (raised to the
//! level) or `Kx` for K per client (default `2x`, at least 8; quick: at least 2).
//! `HEARTH_BENCH_DOCS` changes the corpus size (default 1,000; quick 50).
//! `HEARTH_BENCH_FRESH=1` re-ingests the corpus instead of using the cached data directory.
//! `HEARTH_BENCH_LEVEL_TIMEOUT_S` bounds each level (default 1800 s): no request starts after it.
//! `HEARTH_BENCH_ANSWER=quote` asks for quoted answers (`answer: "quote"`, no model call) instead
//! of generated ones.
//!
//! ## How
//!
//! 1. **Corpus.** `docs` Markdown documents of 300–600 words, generated deterministically
//!    (seeded `common::Rng`): 20 operations topics (backups, firewalls, replication, DNS, ...),
//!    each document about one invented system (a unique made-up name such as "Velmorka") with
//!    five sections of sentences drawn from its topic's components and terms, and three planted
//!    facts (a setting and its value, a recovery procedure, where a setting is changed). It is
//!    ingested once with `hearth ingest --json -c bench` into a data directory cached under
//!    `<target dir>/bench-data/serve-…` (keyed by this bench's corpus version, the document
//!    count and the index format version); every run copies that directory to a temporary one,
//!    so the cache stays pristine.
//! 2. **Questions.** Each asks about one planted fact of one document (question `q` → document
//!    `(389 q + 17) mod docs`), naming the system, so retrieval finds relevant passages and the
//!    model is called (`grounded` in the `done` event; ungrounded answers are counted and left
//!    out of the latency figures). Every level gets its own questions, none repeated, so the
//!    prefix cache only helps with the shared instructions. Two unmeasured warm-up questions
//!    (one in quick mode) go first.
//! 3. **HTTP.** `hearth serve --open --bind 127.0.0.1:0` (the release binary cargo built for this
//!    bench, default configuration: no `hearth.toml`, `HEARTH__*` and `HEARTH_LOG` removed from
//!    its environment, except `server.rate_per_minute` and `server.concurrency_per_key` raised so
//!    that the per-key limiter never answers 429: its code still runs on every request). At each
//!    level N, N closed-loop client threads take the next question in order (one `Connection:
//!    close` HTTP/1.1 request each, minimal client in `common`) and send
//!    `{"question", "stream": true, "top_k": 2, "sampling": {"max_tokens": 32}}` (greedy, 32
//!    tokens at most). Client-side TTFT is request start → first `token` event; latency is
//!    request start → end of the stream. Per level: requests/s (completed requests over the
//!    level's wall time), TTFT and latency p50/p95, the engine's own TTFT p50 (`timings.ttft_ms`
//!    of the `done` event: generation submission → first token), mean prompt, completion and
//!    prefix-cached tokens, and the server's CPU time per request (`/proc/<pid>/stat`). The
//!    server's peak RSS (VmHWM) is read before it is stopped (SIGTERM).
//! 4. **Direct.** After the server has exited (never both at once): `hearth_api::Service` built
//!    in this process with the same default configuration over a fresh copy of the data
//!    directory, the same warm-up questions, then the compared level's questions (the level
//!    nearest 8) in the same order with as many tokio tasks as clients, each calling
//!    `Service::ask` with the same `top_k` and the same `SamplingParams` (deserialised from the
//!    same JSON) and consuming the generation stream. The same figures are taken (TTFT: call →
//!    first text event; latency: call → `Done`).
//! 5. **Overhead** = (HTTP mean − direct mean) / direct mean, for latency and for TTFT, over
//!    the questions grounded in both runs; also in milliseconds, and as CPU time per request
//!    (the server process against this process). On 2 cores the LLM dominates and run-to-run
//!    noise can be as large as the overhead: repeat the run before drawing conclusions.
//!
//! Prints a table and writes `bench-serve.json` in the cargo target directory.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hearth_api::config::{EngineConfig, IndexConfig, IngestConfig, StorageConfig};
use hearth_api::{
    AnswerEvent, AnswerMode, AskRequest, CollectionName, ExtractorCommand, SamplingParams, Service,
    ServiceParts, Store,
};
use serde_json::{Value, json};

/// Bump when the corpus generator changes, so that a cached data directory is not reused.
const CORPUS_VERSION: u32 = 1;
const COLLECTION: &str = "bench";
const TOP_K: usize = 2;
const MAX_TOKENS: usize = 32;
const SEED: u64 = 0x5345_5256_4531; // "SERVE1"
/// Bounds each read and write of one request (a c=32 answer waits behind many others).
const IO_TIMEOUT: Duration = Duration::from_secs(600);
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The target of the issue: API overhead at most this, in percent of the direct mean latency.
const TARGET_PCT: f64 = 5.0;

fn main() {
    if common::is_probe() {
        return;
    }
    let s = Settings::from_env();
    let machine = common::machine();
    let hearth = PathBuf::from(env!("CARGO_BIN_EXE_hearth"));
    let compare = s.compare_level();
    println!(
        "serve bench: {} documents, levels {:?}, requests {:?}, warm-up {}, top_k {TOP_K}, max_tokens {MAX_TOKENS}; direct comparison at c={compare}",
        s.docs,
        s.levels,
        s.levels.iter().map(|&n| s.requests(n)).collect::<Vec<_>>(),
        s.warmup
    );

    // -- corpus and questions ------------------------------------------------------------
    phase("corpus");
    let (cached, ingest) = prepare_data(&s, &hearth);
    let warmup_ids: Vec<usize> = (0..s.warmup).collect();
    let mut level_ids = Vec::new();
    let mut next = s.warmup;
    for &n in &s.levels {
        let count = s.requests(n);
        level_ids.push((next..next + count).collect::<Vec<usize>>());
        next += count;
    }
    let questions: Vec<Question> = (0..next).map(|q| question(q, s.docs)).collect();
    println!(
        "{} questions, e.g. {:?} (document {})",
        questions.len(),
        questions[0].text,
        questions[0].doc
    );

    // -- HTTP ------------------------------------------------------------------------------
    phase("HTTP: starting hearth serve");
    let run_dir = tempfile::tempdir().expect("temporary directory");
    let data = run_dir.path().join("data");
    copy_dir(&cached.join("data"), &data);
    let started = Instant::now();
    let mut server = Server::start(&hearth, run_dir.path(), &data);
    println!(
        "hearth serve (pid {}) on {} ready after {:.1} s",
        server.pid,
        server.addr,
        started.elapsed().as_secs_f64()
    );
    check_collection_http(server.addr, s.docs);
    let load_rss = common::proc_stats(server.pid).unwrap_or_default();

    phase("HTTP: warm-up");
    let warm = run_http(&server, 1, &warmup_ids, &questions, s.level_timeout);
    warm.print_brief("warm-up");

    let mut http_levels = Vec::new();
    for (&n, ids) in s.levels.iter().zip(&level_ids) {
        phase(&format!("HTTP: concurrency {n}, {} requests", ids.len()));
        let r = run_http(&server, n, ids, &questions, s.level_timeout);
        r.print_brief(&format!("c={n}"));
        http_levels.push(r);
    }
    let server_stats = common::proc_stats(server.pid).unwrap_or_default();
    let stderr_tail = server.stop();
    println!(
        "server: peak RSS {:.0} MiB (after loading {:.0} MiB), CPU {:.1} s in all",
        server_stats.hwm_kib as f64 / 1024.0,
        load_rss.rss_kib as f64 / 1024.0,
        server_stats.cpu_s
    );
    drop(run_dir);

    // -- direct ------------------------------------------------------------------------------
    phase(&format!(
        "direct: Service::ask in process, concurrency {compare}"
    ));
    let compare_idx = s
        .levels
        .iter()
        .position(|&n| n == compare)
        .expect("the compared level is one of the levels");
    let direct = run_direct(
        &hearth,
        &cached.join("data"),
        s.docs,
        compare,
        &warmup_ids,
        &level_ids[compare_idx],
        &questions,
        s.level_timeout,
    );
    direct.print_brief(&format!("direct c={compare}"));
    let bench_rss = common::rss();

    // -- table and JSON ------------------------------------------------------------------------
    let overhead = Overhead::new(&http_levels[compare_idx], &direct);
    print_table(
        &s,
        &http_levels,
        &direct,
        &overhead,
        compare,
        &server_stats,
        &bench_rss,
    );
    let results = json!({
        "bench": "serve",
        "machine": machine,
        "config": {
            "quick": s.quick, "docs": s.docs, "levels": s.levels,
            "requests": s.levels.iter().map(|&n| s.requests(n)).collect::<Vec<_>>(),
            "warmup": s.warmup, "top_k": TOP_K, "max_tokens": MAX_TOKENS,
            "request_body": ask_body("<question>"),
            "compare_level": compare, "level_timeout_s": s.level_timeout.as_secs(),
            "corpus_version": CORPUS_VERSION, "data_cache": cached, "ingest": ingest,
            "server_env": {"HEARTH__SERVER__RATE_PER_MINUTE": RATE_OVERRIDE, "HEARTH__SERVER__CONCURRENCY_PER_KEY": CONCURRENCY_OVERRIDE},
        },
        "http": {
            "warmup": warm.json(),
            "levels": http_levels.iter().map(Run::json).collect::<Vec<_>>(),
            "server": {
                "peak_rss_mib": server_stats.hwm_kib as f64 / 1024.0,
                "rss_mib_at_end": server_stats.rss_kib as f64 / 1024.0,
                "rss_mib_after_load": load_rss.rss_kib as f64 / 1024.0,
                "cpu_s_total": server_stats.cpu_s,
                "stderr_tail": stderr_tail,
            },
        },
        "direct": {
            "level": direct.json(),
            "bench_process_peak_rss_mib": bench_rss.hwm_kib as f64 / 1024.0,
        },
        "overhead": overhead.json(),
    });
    common::write_results("serve", &results);
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    quick: bool,
    docs: usize,
    levels: Vec<usize>,
    /// `HEARTH_BENCH_REQUESTS`: `(per_client, fixed)`.
    requests: (usize, Option<usize>),
    warmup: usize,
    level_timeout: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        let levels = common::env_levels(256, if quick { &[1, 2] } else { &[1, 8, 32] });
        let requests = common::env_requests(2);
        let docs = std::env::var("HEARTH_BENCH_DOCS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &usize| n >= 10)
            .unwrap_or(if quick { 50 } else { 1000 });
        let level_timeout = Duration::from_secs(
            std::env::var("HEARTH_BENCH_LEVEL_TIMEOUT_S")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1800),
        );
        Self {
            quick,
            docs,
            levels,
            requests,
            warmup: if quick { 1 } else { 2 },
            level_timeout,
        }
    }

    /// Requests sent at concurrency `n`: a fixed count (at least `n`), else `per_client × n`
    /// (at least 8; at least 2 in quick mode).
    fn requests(&self, n: usize) -> usize {
        match self.requests {
            (_, Some(fixed)) => fixed.max(n),
            (k, None) => (k * n).max(if self.quick { 2 } else { 8 }),
        }
    }

    /// The level compared with the direct run: the one nearest 8.
    fn compare_level(&self) -> usize {
        self.levels
            .iter()
            .copied()
            .min_by_key(|n| n.abs_diff(8))
            .unwrap_or(1)
    }
}

fn phase(name: &str) {
    println!("\n== {name} (load average {:.2})", common::load_avg());
}

// ---------------------------------------------------------------------------------------------
// Corpus

/// An operations topic: what its documents talk about.
struct Topic {
    area: &'static str,
    components: [&'static str; 4],
    terms: [&'static str; 8],
    /// (setting, unit, lowest value, highest value)
    settings: [(&'static str, &'static str, u64, u64); 3],
}

const TOPICS: [Topic; 20] = [
    Topic {
        area: "backup and restore",
        components: [
            "snapshot scheduler",
            "archive writer",
            "restore planner",
            "catalog service",
        ],
        terms: [
            "retention window",
            "incremental chain",
            "full snapshot",
            "restore point",
            "checksum manifest",
            "offsite copy",
            "backup window",
            "deduplication index",
        ],
        settings: [
            ("retention period", "days", 7, 90),
            ("snapshot interval", "hours", 1, 24),
            ("number of parallel upload streams", "streams", 2, 16),
        ],
    },
    Topic {
        area: "network firewall",
        components: [
            "packet filter",
            "rule compiler",
            "connection tracker",
            "audit recorder",
        ],
        terms: [
            "ingress rule",
            "egress policy",
            "port range",
            "address set",
            "stateful session",
            "drop counter",
            "zone boundary",
            "NAT mapping",
        ],
        settings: [
            ("connection tracking timeout", "seconds", 30, 600),
            ("rule reload interval", "seconds", 5, 120),
            ("maximum rule count", "rules", 500, 20000),
        ],
    },
    Topic {
        area: "database replication",
        components: [
            "write-ahead log shipper",
            "replica applier",
            "failover coordinator",
            "lag monitor",
        ],
        terms: [
            "replication slot",
            "commit record",
            "standby replica",
            "replication lag",
            "primary election",
            "transaction log segment",
            "consistency check",
            "read replica",
        ],
        settings: [
            ("maximum replication lag", "seconds", 1, 60),
            ("log segment size", "megabytes", 16, 1024),
            ("failover grace period", "seconds", 5, 90),
        ],
    },
    Topic {
        area: "container orchestration",
        components: [
            "pod scheduler",
            "node agent",
            "image puller",
            "health prober",
        ],
        terms: [
            "resource quota",
            "liveness probe",
            "rolling update",
            "node affinity",
            "pod disruption budget",
            "container image",
            "namespace",
            "replica set",
        ],
        settings: [
            ("probe interval", "seconds", 5, 60),
            ("rollout surge", "pods", 1, 10),
            ("image pull timeout", "seconds", 30, 600),
        ],
    },
    Topic {
        area: "TLS certificate management",
        components: [
            "certificate issuer",
            "renewal daemon",
            "key vault",
            "revocation checker",
        ],
        terms: [
            "certificate chain",
            "private key",
            "signing request",
            "expiry date",
            "trust anchor",
            "OCSP response",
            "wildcard certificate",
            "cipher suite",
        ],
        settings: [
            ("renewal lead time", "days", 7, 45),
            ("key size", "bits", 2048, 4096),
            ("OCSP cache lifetime", "minutes", 10, 720),
        ],
    },
    Topic {
        area: "log collection",
        components: [
            "log shipper",
            "parsing pipeline",
            "index writer",
            "retention sweeper",
        ],
        terms: [
            "log stream",
            "field extraction",
            "ingest buffer",
            "severity level",
            "trace identifier",
            "index shard",
            "sampling rate",
            "parsing rule",
        ],
        settings: [
            ("buffer flush interval", "seconds", 1, 30),
            ("index retention", "days", 3, 60),
            ("maximum line length", "kilobytes", 4, 256),
        ],
    },
    Topic {
        area: "identity and single sign-on",
        components: [
            "login portal",
            "token service",
            "directory connector",
            "session manager",
        ],
        terms: [
            "access token",
            "refresh token",
            "group claim",
            "signing key",
            "session cookie",
            "consent screen",
            "identity provider",
            "multi-factor prompt",
        ],
        settings: [
            ("access token lifetime", "minutes", 5, 120),
            ("session idle timeout", "minutes", 15, 480),
            ("directory sync interval", "minutes", 5, 240),
        ],
    },
    Topic {
        area: "disk encryption",
        components: [
            "key manager",
            "volume unlocker",
            "recovery escrow",
            "tamper monitor",
        ],
        terms: [
            "encryption key",
            "recovery passphrase",
            "key slot",
            "unlock policy",
            "boot measurement",
            "sealed secret",
            "header backup",
            "cipher mode",
        ],
        settings: [
            ("key derivation cost", "thousand rounds", 100, 2000),
            ("unlock retry limit", "attempts", 3, 10),
            ("escrow sync interval", "hours", 1, 48),
        ],
    },
    Topic {
        area: "continuous integration",
        components: [
            "build runner",
            "artifact cache",
            "pipeline scheduler",
            "test reporter",
        ],
        terms: [
            "build matrix",
            "pipeline stage",
            "cache key",
            "flaky test",
            "artifact bundle",
            "merge queue",
            "runner label",
            "job timeout",
        ],
        settings: [
            ("job timeout", "minutes", 10, 180),
            ("artifact retention", "days", 1, 30),
            ("number of concurrent jobs per runner", "jobs", 1, 8),
        ],
    },
    Topic {
        area: "DNS resolution",
        components: [
            "recursive resolver",
            "zone publisher",
            "cache layer",
            "resolver health checker",
        ],
        terms: [
            "resource record",
            "zone transfer",
            "time to live",
            "negative cache",
            "delegation",
            "DNSSEC signature",
            "split horizon view",
            "query log",
        ],
        settings: [
            ("default record TTL", "seconds", 60, 86400),
            ("negative cache time", "seconds", 30, 3600),
            ("zone refresh interval", "minutes", 5, 120),
        ],
    },
    Topic {
        area: "message queueing",
        components: [
            "broker node",
            "partition leader",
            "consumer coordinator",
            "dead letter handler",
        ],
        terms: [
            "message offset",
            "consumer group",
            "partition key",
            "acknowledgement",
            "delivery guarantee",
            "dead letter queue",
            "retention policy",
            "backpressure signal",
        ],
        settings: [
            ("message retention", "hours", 6, 168),
            ("maximum message size", "kilobytes", 64, 8192),
            ("redelivery limit", "attempts", 3, 20),
        ],
    },
    Topic {
        area: "monitoring and alerting",
        components: [
            "metrics scraper",
            "rule evaluator",
            "alert router",
            "dashboard service",
        ],
        terms: [
            "alert rule",
            "scrape target",
            "time series",
            "silence window",
            "on-call rotation",
            "recording rule",
            "label set",
            "notification channel",
        ],
        settings: [
            ("scrape interval", "seconds", 10, 120),
            ("alert evaluation period", "seconds", 15, 300),
            ("metrics retention", "days", 7, 400),
        ],
    },
    Topic {
        area: "VPN access",
        components: [
            "tunnel gateway",
            "client profile builder",
            "route announcer",
            "posture checker",
        ],
        terms: [
            "tunnel session",
            "split tunnel",
            "client certificate",
            "route table",
            "keepalive packet",
            "device posture",
            "MTU setting",
            "access group",
        ],
        settings: [
            ("keepalive interval", "seconds", 10, 60),
            ("session lifetime", "hours", 4, 24),
            ("tunnel MTU", "bytes", 1280, 1500),
        ],
    },
    Topic {
        area: "email delivery",
        components: [
            "mail relay",
            "spam filter",
            "bounce processor",
            "DKIM signer",
        ],
        terms: [
            "delivery queue",
            "bounce message",
            "SPF record",
            "DKIM selector",
            "sender reputation",
            "greylisting",
            "mailbox quota",
            "suppression list",
        ],
        settings: [
            ("queue retry interval", "minutes", 5, 60),
            ("maximum attachment size", "megabytes", 10, 50),
            ("bounce retention", "days", 7, 90),
        ],
    },
    Topic {
        area: "block storage",
        components: [
            "volume controller",
            "replica placer",
            "snapshot engine",
            "rebalancer",
        ],
        terms: [
            "storage volume",
            "replica count",
            "placement group",
            "thin provisioning",
            "IO throttle",
            "volume snapshot",
            "scrub schedule",
            "rebuild priority",
        ],
        settings: [
            ("default replica count", "copies", 2, 5),
            ("scrub interval", "days", 7, 60),
            ("IO throttle limit", "thousand IOPS", 1, 50),
        ],
    },
    Topic {
        area: "load balancing",
        components: [
            "traffic router",
            "backend pool manager",
            "health checker",
            "session affinity tracker",
        ],
        terms: [
            "backend pool",
            "health check",
            "connection draining",
            "weighted routing",
            "sticky session",
            "listener",
            "timeout budget",
            "circuit breaker",
        ],
        settings: [
            ("health check interval", "seconds", 2, 30),
            ("draining timeout", "seconds", 10, 300),
            ("idle connection timeout", "seconds", 30, 900),
        ],
    },
    Topic {
        area: "package updates",
        components: [
            "update agent",
            "mirror synchronizer",
            "patch planner",
            "reboot coordinator",
        ],
        terms: [
            "package repository",
            "security advisory",
            "maintenance window",
            "pinned version",
            "repository signing key",
            "staged rollout",
            "reboot policy",
            "dependency lock",
        ],
        settings: [
            ("mirror sync interval", "hours", 1, 24),
            ("maintenance window length", "hours", 1, 8),
            ("staged rollout batch", "percent of hosts", 5, 50),
        ],
    },
    Topic {
        area: "job scheduling",
        components: [
            "cron dispatcher",
            "worker pool",
            "lease manager",
            "history recorder",
        ],
        terms: [
            "cron expression",
            "job lease",
            "retry budget",
            "missed run",
            "execution history",
            "time zone",
            "concurrency limit",
            "job payload",
        ],
        settings: [
            ("lease duration", "seconds", 30, 900),
            ("history retention", "days", 7, 180),
            ("maximum retries", "attempts", 1, 10),
        ],
    },
    Topic {
        area: "secrets management",
        components: [
            "secret store",
            "rotation worker",
            "access auditor",
            "lease broker",
        ],
        terms: [
            "secret version",
            "rotation policy",
            "access policy",
            "dynamic credential",
            "audit trail",
            "lease renewal",
            "unseal key",
            "secret path",
        ],
        settings: [
            ("rotation interval", "days", 7, 180),
            ("lease lifetime", "hours", 1, 72),
            ("audit log retention", "days", 30, 365),
        ],
    },
    Topic {
        area: "power and hardware monitoring",
        components: [
            "sensor poller",
            "UPS controller",
            "firmware tracker",
            "inventory service",
        ],
        terms: [
            "battery runtime",
            "temperature threshold",
            "fan speed",
            "firmware version",
            "power supply",
            "graceful shutdown",
            "sensor reading",
            "rack position",
        ],
        settings: [
            ("sensor polling interval", "seconds", 5, 120),
            ("shutdown battery threshold", "percent", 10, 40),
            ("temperature alarm threshold", "degrees Celsius", 60, 95),
        ],
    },
];

/// Filler sentences; `{E}` the system, `{area}` its topic, `{c}`/`{c2}` components, `{t}`/`{t2}`
/// terms, `{n}` a number.
const FILLER: [&str; 16] = [
    "{E} is the {area} service that the platform team runs for internal applications.",
    "Its {c} talks to the {c2} over an authenticated channel and records every {t} it handles.",
    "Operators usually review the {t} before they change anything in the {c}.",
    "During an upgrade, {E} drains the {c} first, then migrates the {t}, and finally restarts the {c2}.",
    "A misconfigured {t} is the most common reason for failed {area} jobs in {E}.",
    "The dashboard shows the {t} and the {t2} for each {c} side by side.",
    "Alerts fire when the {t} grows beyond {n} percent of its budget.",
    "The {c} writes structured logs, so the {t} of every request can be traced afterwards.",
    "Teams that share {E} agree on a naming scheme for each {t} before onboarding.",
    "Backward compatibility of the {t} is guaranteed for two major releases of {E}.",
    "To test a change safely, run the {c} in dry-run mode and compare the resulting {t2}.",
    "The runbook for {E} lists {n} steps for rotating the {t2} without downtime.",
    "Capacity planning for the {c} depends mostly on the {t} and on peak traffic.",
    "When the {c2} is unavailable, {E} queues each {t} and retries with exponential backoff.",
    "Every {t2} change in {E} is reviewed by a second engineer and announced in the {area} channel.",
    "Older releases of {E} kept the {t} inside the {c2}, which made recovery slow.",
];

/// Planted facts: (statement, question); `{s}` a setting, `{u}` its unit, `{n}` its value.
const FACTS: [(&str, &str); 3] = [
    (
        "By default the {c} of {E} uses a {s} of {n} {u}.",
        "What {s} does the {c} of {E} use by default?",
    ),
    (
        "When the {t} is lost, {E} rebuilds it from the {c} and records the event in its audit log.",
        "How does {E} recover when the {t} is lost?",
    ),
    (
        "Operators change the {s} of {E} in the {c} settings; values above {n} {u} need approval from the {area} team.",
        "Where do operators change the {s} of {E}?",
    ),
];

const SECTIONS: [&str; 5] = [
    "Overview",
    "Architecture",
    "Configuration",
    "Operations",
    "Troubleshooting",
];

const SYLLABLES: [&str; 16] = [
    "ka", "vel", "mor", "tri", "zan", "lo", "quin", "ber", "sol", "dax", "rim", "ot", "pal", "nuv",
    "ek", "sha",
];

/// A unique invented name for document `i` (< 4096).
fn system_name(i: usize) -> String {
    let a = ((i % 16) * 5 + 3) % 16;
    let b = (((i / 16) % 16) * 7 + 1) % 16;
    let c = (((i / 256) % 16) * 3 + 9) % 16;
    let raw = format!("{}{}{}", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c]);
    let mut chars = raw.chars();
    chars
        .next()
        .map(|f| f.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

struct Doc {
    file_name: String,
    markdown: String,
    words: usize,
    /// (statement, question) of each planted fact.
    facts: Vec<(String, String)>,
}

fn pick<'a>(rng: &mut common::Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len() as u64) as usize]
}

/// Fills a filler template with random choices from the topic.
fn fill(template: &str, name: &str, topic: &Topic, rng: &mut common::Rng) -> String {
    let ci = rng.below(4) as usize;
    let c = topic.components[ci];
    let c2 = topic.components[(ci + 1 + rng.below(3) as usize) % 4];
    let t = pick(rng, &topic.terms);
    let t2 = pick(rng, &topic.terms);
    let n = 2 + rng.below(40);
    template
        .replace("{E}", name)
        .replace("{area}", topic.area)
        .replace("{c2}", c2)
        .replace("{c}", c)
        .replace("{t2}", t2)
        .replace("{t}", t)
        .replace("{n}", &n.to_string())
}

/// Document `i` of the corpus, deterministic.
fn document(i: usize) -> Doc {
    let mut rng = common::Rng::new(SEED ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let topic = &TOPICS[i % TOPICS.len()];
    let name = system_name(i);
    let target_words = 300 + rng.below(300) as usize;
    // The planted facts: each names one component, term and setting with its value.
    let mut facts = Vec::new();
    let mut fact_sentences: Vec<(usize, String)> = Vec::new();
    for (f, (statement, q)) in FACTS.iter().enumerate() {
        let (setting, unit, lo, hi) = topic.settings[rng.below(3) as usize];
        let value = lo + rng.below(hi - lo + 1);
        let c = pick(&mut rng, &topic.components);
        let t = pick(&mut rng, &topic.terms);
        let subst = |s: &str| {
            s.replace("{E}", &name)
                .replace("{area}", topic.area)
                .replace("{c}", c)
                .replace("{t}", t)
                .replace("{s}", setting)
                .replace("{u}", unit)
                .replace("{n}", &value.to_string())
        };
        let statement = subst(statement);
        facts.push((statement.clone(), subst(q)));
        // Configuration, Operations, Troubleshooting.
        fact_sentences.push((2 + f, statement));
    }
    let mut sections: Vec<Vec<String>> = vec![Vec::new(); SECTIONS.len()];
    let mut words = 0;
    for (s, text) in fact_sentences {
        words += text.split_whitespace().count();
        sections[s].push(text);
    }
    sections[0].insert(
        0,
        format!(
            "{name} is a {} system used by several product teams.",
            topic.area
        ),
    );
    let mut s = 0;
    while words < target_words {
        let template = FILLER[rng.below(FILLER.len() as u64) as usize];
        let sentence = fill(template, &name, topic, &mut rng);
        words += sentence.split_whitespace().count();
        let at = rng.below(sections[s].len() as u64 + 1) as usize;
        sections[s].push(sentence);
        let len = sections[s].len();
        sections[s].swap(at, len - 1);
        s = (s + 1) % SECTIONS.len();
    }
    let mut markdown = format!("# {name}: {} guide\n\n", topic.area);
    for (title, sentences) in SECTIONS.iter().zip(&sections) {
        markdown.push_str(&format!("## {title}\n\n"));
        // Paragraphs of up to four sentences.
        for para in sentences.chunks(4) {
            markdown.push_str(&para.join(" "));
            markdown.push_str("\n\n");
        }
    }
    Doc {
        file_name: format!("{i:04}-{}.md", name.to_ascii_lowercase()),
        markdown,
        words,
        facts,
    }
}

struct Question {
    text: String,
    doc: usize,
}

/// Question `q`: about fact `q mod 3` of document `(389 q + 17) mod docs` (a permutation of the
/// documents for the corpus sizes used here, so the first `docs` questions hit distinct
/// documents).
fn question(q: usize, docs: usize) -> Question {
    let doc = (q * 389 + 17) % docs;
    let d = document(doc);
    Question {
        text: d.facts[q % d.facts.len()].1.clone(),
        doc,
    }
}

/// The cached, ingested data directory for this corpus (created on first use) and the ingest
/// summary (or what is known of the cached one).
fn prepare_data(s: &Settings, hearth: &Path) -> (PathBuf, Value) {
    let dir = common::target_dir().join("bench-data").join(format!(
        "serve-v{CORPUS_VERSION}-n{}-f{}",
        s.docs,
        hearth_index::FORMAT_VERSION
    ));
    let ready = dir.join("ingest.json");
    if ready.is_file() && !common::env_flag("HEARTH_BENCH_FRESH") {
        let v: Value = std::fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        println!(
            "using the cached data directory {} (ingested in {:.1} s; HEARTH_BENCH_FRESH=1 re-ingests)",
            dir.display(),
            v["seconds"].as_f64().unwrap_or(f64::NAN)
        );
        return (dir, v);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).expect("create the corpus directory");
    let (mut words, mut bytes) = (0usize, 0usize);
    for i in 0..s.docs {
        let d = document(i);
        words += d.words;
        bytes += d.markdown.len();
        std::fs::write(corpus.join(&d.file_name), &d.markdown).expect("write a document");
    }
    println!(
        "generated {} documents, {words} words ({:.0} per document), {:.2} MB in {}",
        s.docs,
        words as f64 / s.docs as f64,
        bytes as f64 / 1e6,
        corpus.display()
    );
    let partial = dir.join("data.partial");
    println!("ingesting with `hearth ingest --json -c {COLLECTION}` (once; cached for later runs)");
    let t0 = Instant::now();
    let out = hearth_command(hearth, &dir, &partial)
        .args(["ingest", "--json", "-c", COLLECTION])
        .arg(&corpus)
        .stdin(Stdio::null())
        .output()
        .expect("run hearth ingest");
    let seconds = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "hearth ingest failed ({}): {}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("hearth ingest --json output");
    let ok = summary["ok"].as_u64().unwrap_or(0);
    assert_eq!(
        ok as usize,
        s.docs,
        "hearth ingest indexed {ok} of {} documents: {}",
        s.docs,
        tail(&String::from_utf8_lossy(&out.stdout), 5)
    );
    let chunks = summary["chunks"].as_u64().unwrap_or(0);
    println!(
        "ingested {ok} documents, {chunks} chunks in {seconds:.1} s ({:.1} docs/s)",
        ok as f64 / seconds
    );
    std::fs::rename(&partial, dir.join("data")).expect("rename the data directory");
    let v = json!({
        "docs": ok, "chunks": chunks, "seconds": seconds, "words": words, "bytes": bytes,
        "words_per_doc": words as f64 / s.docs as f64,
    });
    std::fs::write(&ready, serde_json::to_vec_pretty(&v).unwrap_or_default())
        .expect("write ingest.json");
    (dir, v)
}

/// `hearth` with a clean configuration: no `hearth.toml` (runs in `cwd`), no `HEARTH__*`
/// overrides, default logging.
fn hearth_command(hearth: &Path, cwd: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(hearth);
    cmd.current_dir(cwd)
        .env_remove("HEARTH_CONFIG")
        .env_remove("HEARTH_LOG")
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_MODELS", common::models_dir());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HEARTH__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Copies a directory tree (regular files and directories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The server

const RATE_OVERRIDE: &str = "1000000";
const CONCURRENCY_OVERRIDE: &str = "4096";

struct Server {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(hearth: &Path, cwd: &Path, data: &Path) -> Self {
        use std::io::BufRead;
        let mut child = hearth_command(hearth, cwd, data)
            .args(["serve", "--open", "--bind", "127.0.0.1:0"])
            .env("HEARTH__SERVER__RATE_PER_MINUTE", RATE_OVERRIDE)
            .env("HEARTH__SERVER__CONCURRENCY_PER_KEY", CONCURRENCY_OVERRIDE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hearth serve");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        // Keep the last lines of stderr (and never let the pipe fill up).
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr_pipe)
                .lines()
                .map_while(Result::ok)
            {
                let mut v = keep.lock().unwrap_or_else(|e| e.into_inner());
                if v.len() >= 200 {
                    v.remove(0);
                }
                v.push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("hearth is listening on http://") {
                        break rest.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                            server.fail(&format!("bad address line {line:?}: {e}"))
                        });
                    }
                }
                Err(_) => server.fail("hearth serve printed no address"),
            }
        };
        server.addr = addr;
        loop {
            if let Ok((200, _)) =
                common::http_request(addr, "GET", "/readyz", None, Duration::from_secs(10))
            {
                break;
            }
            if Instant::now() > deadline {
                server.fail("/readyz did not answer 200 in time");
            }
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                server.fail(&format!("hearth serve exited ({status})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn stderr_tail(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!(
            "{why}; the server's stderr ended with:\n{}",
            self.stderr_tail().join("\n")
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to a minute) for the graceful shutdown; kills it after that.
    /// Returns the last lines of its stderr.
    fn stop(&mut self) -> Vec<String> {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            println!("warning: hearth serve exited with {status}");
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(None) | Err(_) => {
                        println!("warning: hearth serve did not stop on SIGTERM; killed");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.stderr_tail()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens the collection through the API (not timed) and checks its size.
fn check_collection_http(addr: SocketAddr, docs: usize) {
    let (status, body) = common::http_request(
        addr,
        "GET",
        &format!("/v1/collections/{COLLECTION}"),
        None,
        IO_TIMEOUT,
    )
    .expect("GET the collection");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "GET /v1/collections/{COLLECTION}: {v}");
    let found = v["documents"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        found, docs,
        "the served collection has {found} documents, expected {docs} (HEARTH_BENCH_FRESH=1 rebuilds the cached data): {v}"
    );
    println!(
        "collection {COLLECTION:?}: {found} documents, {} chunks",
        v["chunks"]
    );
}

// ---------------------------------------------------------------------------------------------
// Requests and their outcomes

/// Whether the answers are quoted (`HEARTH_BENCH_ANSWER=quote`) rather than generated (the
/// default of this bench, which measures the engine under load).
fn quoted() -> bool {
    std::env::var("HEARTH_BENCH_ANSWER").is_ok_and(|v| v.trim() == "quote")
}

fn ask_body(question: &str) -> Value {
    if quoted() {
        return json!({
            "question": question,
            "stream": true,
            "top_k": TOP_K,
            "answer": "quote",
        });
    }
    json!({
        "question": question,
        "stream": true,
        "top_k": TOP_K,
        "sampling": {"max_tokens": MAX_TOKENS},
    })
}

/// What one request did.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// The question's index.
    q: usize,
    error: Option<String>,
    grounded: bool,
    /// Request start → first token (NaN when none came).
    ttft_ms: f64,
    /// Request start → end of the answer.
    latency_ms: f64,
    /// The engine's TTFT (generation submission → first token) and its other timings.
    engine_ttft_ms: f64,
    queue_ms: f64,
    retrieval_ms: f64,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_prompt_tokens: usize,
    passages: usize,
    /// Text pieces received.
    pieces: usize,
}

impl Outcome {
    fn new(q: usize) -> Self {
        Self {
            q,
            ttft_ms: f64::NAN,
            latency_ms: f64::NAN,
            engine_ttft_ms: f64::NAN,
            queue_ms: f64::NAN,
            retrieval_ms: f64::NAN,
            ..Default::default()
        }
    }

    fn measured(&self) -> bool {
        self.error.is_none() && self.grounded
    }
}

/// One `/ask` over HTTP with SSE: TTFT at the first `token` event, latency at the end.
fn http_ask(addr: SocketAddr, q: usize, question: &str) -> Outcome {
    let mut o = Outcome::new(q);
    let body = serde_json::to_vec(&ask_body(question)).unwrap_or_default();
    let path = format!("/v1/collections/{COLLECTION}/ask");
    let t0 = Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    let mut event = String::new();
    let mut done: Option<Value> = None;
    let mut raw = Vec::new();
    let res = common::http_exchange(addr, "POST", &path, Some(&body), IO_TIMEOUT, &mut |piece| {
        if raw.len() < 4096 {
            raw.extend_from_slice(piece);
        }
        pending.extend_from_slice(piece);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                event.clear();
            } else if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_str() {
                    "token" => {
                        if o.pieces == 0 {
                            o.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
                        }
                        o.pieces += 1;
                    }
                    "done" => {
                        o.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
                        done = serde_json::from_str(data.trim_start()).ok();
                    }
                    "error" => o.error = Some(format!("error event: {}", data.trim())),
                    _ => {}
                }
            }
        }
    });
    let end_ms = t0.elapsed().as_secs_f64() * 1e3;
    match res {
        Ok(200) => {}
        Ok(status) => {
            o.error = Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&raw)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
            return o;
        }
        Err(e) => {
            o.error = Some(format!("I/O: {e}"));
            return o;
        }
    }
    if o.error.is_some() {
        return o;
    }
    let Some(d) = done else {
        o.error = Some("the stream ended without a done event".into());
        return o;
    };
    // The stream ends right after `done`; the end of the response is the latency.
    o.latency_ms = end_ms;
    o.grounded = d["grounded"].as_bool().unwrap_or(false);
    o.engine_ttft_ms = d["timings"]["ttft_ms"].as_f64().unwrap_or(f64::NAN);
    o.queue_ms = d["timings"]["queue_ms"].as_f64().unwrap_or(f64::NAN);
    o.retrieval_ms = d["timings"]["retrieval_ms"].as_f64().unwrap_or(f64::NAN);
    let count = |k: &str| d["usage"][k].as_u64().unwrap_or(0) as usize;
    o.prompt_tokens = count("prompt_tokens");
    o.completion_tokens = count("completion_tokens");
    o.cached_prompt_tokens = count("cached_prompt_tokens");
    o.passages = d["passages"].as_array().map_or(0, Vec::len);
    o
}

/// A batch of requests at one concurrency.
struct Run {
    concurrency: usize,
    wall_s: f64,
    /// CPU seconds of the process doing the work (the server; this process for direct runs).
    cpu_s: f64,
    load: f64,
    /// Questions not sent because the level's deadline passed.
    skipped: usize,
    outcomes: Vec<Outcome>,
}

/// Runs `ids` (question indices, in order) with `n` closed-loop clients over HTTP.
fn run_http(
    server: &Server,
    n: usize,
    ids: &[usize],
    questions: &[Question],
    timeout: Duration,
) -> Run {
    let load = common::load_avg();
    let cpu0 = common::proc_stats(server.pid).unwrap_or_default().cpu_s;
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(ids.len()));
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ids.len() || Instant::now() > deadline {
                        break;
                    }
                    let q = ids[i];
                    let o = http_ask(server.addr, q, &questions[q].text);
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                }
            });
        }
    });
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = common::proc_stats(server.pid).unwrap_or_default().cpu_s - cpu0;
    let mut outcomes = out.into_inner().unwrap_or_else(|e| e.into_inner());
    outcomes.sort_by_key(|o| o.q);
    Run {
        concurrency: n,
        wall_s,
        cpu_s,
        load,
        skipped: ids.len() - outcomes.len(),
        outcomes,
    }
}

/// Builds the service in this process (the server's default configuration) over a fresh copy
/// of the data directory, warms it up like the HTTP run, and runs `ids` with `n` tasks.
#[allow(clippy::too_many_arguments)]
fn run_direct(
    hearth: &Path,
    cached_data: &Path,
    docs: usize,
    n: usize,
    warmup: &[usize],
    ids: &[usize],
    questions: &[Question],
    timeout: Duration,
) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    copy_dir(cached_data, &data);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sampling: Option<SamplingParams> = (!quoted()).then(|| {
        serde_json::from_value(ask_body("")["sampling"].clone()).expect("sampling parameters")
    });
    rt.block_on(async {
        let t0 = Instant::now();
        let store = Store::open(&StorageConfig {
            data_dir: data.clone(),
            ..StorageConfig::default()
        })
        .await
        .expect("open the object store");
        let service = Arc::new(
            Service::new(ServiceParts {
                store,
                data_dir: data.clone(),
                engine: EngineConfig {
                    models_dir: common::models_dir(),
                    ..EngineConfig::default()
                },
                ingest: IngestConfig::default(),
                index: IndexConfig::default(),
                extractor: ExtractorCommand {
                    program: hearth.to_path_buf(),
                    args: vec!["extract-worker".into()],
                },
                generator: true,
                ask: Default::default(),
                backlog_limit: 10_000,
                cluster: Default::default(),
            })
            .expect("build the service"),
        );
        let col = service
            .open(&CollectionName::new(COLLECTION).expect("collection name"))
            .await
            .expect("open the collection");
        let found = col.stats().docs;
        assert_eq!(
            found, docs,
            "the collection has {found} documents, expected {docs}"
        );
        println!(
            "service loaded and collection opened in {:.1} s ({found} documents)",
            t0.elapsed().as_secs_f64()
        );
        let warm = direct_level(&service, &col, 1, warmup, questions, &sampling, timeout).await;
        warm.print_brief("direct warm-up");
        direct_level(&service, &col, n, ids, questions, &sampling, timeout).await
    })
}

async fn direct_level(
    service: &Arc<Service>,
    col: &Arc<hearth_api::Collection>,
    n: usize,
    ids: &[usize],
    questions: &[Question],
    sampling: &Option<SamplingParams>,
    timeout: Duration,
) -> Run {
    let load = common::load_avg();
    let cpu0 = common::cpu_time();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let ids: Arc<Vec<(usize, String)>> = Arc::new(
        ids.iter()
            .map(|&q| (q, questions[q].text.clone()))
            .collect(),
    );
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (service, col, next, ids, sampling) = (
            service.clone(),
            col.clone(),
            next.clone(),
            ids.clone(),
            sampling.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids.len() || Instant::now() > deadline {
                    break;
                }
                let (q, text) = &ids[i];
                out.push(direct_ask(&service, &col, *q, text, &sampling).await);
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.expect("client task"));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = (common::cpu_time() - cpu0).as_secs_f64();
    outcomes.sort_by_key(|o| o.q);
    Run {
        concurrency: n,
        wall_s,
        cpu_s,
        load,
        skipped: ids.len() - outcomes.len(),
        outcomes,
    }
}

/// One `Service::ask`, consuming the generation stream like the HTTP handler does.
async fn direct_ask(
    service: &Service,
    col: &Arc<hearth_api::Collection>,
    q: usize,
    question: &str,
    sampling: &Option<SamplingParams>,
) -> Outcome {
    let mut o = Outcome::new(q);
    let t0 = Instant::now();
    let mut answering = match service
        .ask(
            col,
            AskRequest {
                question: question.to_owned(),
                top_k: Some(TOP_K),
                sampling: sampling.clone(),
                answer: Some(if quoted() {
                    AnswerMode::Quote
                } else {
                    AnswerMode::Generate
                }),
                ..Default::default()
            },
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            o.error = Some(format!("ask: {e}"));
            return o;
        }
    };
    while let Some(ev) = answering.next().await {
        match ev {
            Ok(AnswerEvent::Passages(p)) => {
                o.retrieval_ms = p.retrieval_ms;
                o.passages = p.passages.len();
            }
            Ok(AnswerEvent::Token(_)) => {
                if o.pieces == 0 {
                    o.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
                }
                o.pieces += 1;
            }
            Ok(AnswerEvent::Done(a)) => {
                o.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
                o.grounded = a.grounded;
                o.engine_ttft_ms = a.timings.ttft_ms.unwrap_or(0.0);
                o.queue_ms = a.timings.queue_ms.unwrap_or(0.0);
                o.prompt_tokens = a.usage.prompt_tokens;
                o.completion_tokens = a.usage.completion_tokens;
                o.cached_prompt_tokens = a.usage.cached_prompt_tokens;
                return o;
            }
            Err(e) => {
                o.error = Some(format!("generation: {e}"));
                return o;
            }
        }
    }
    o.error = Some("the answer stream ended without Done".into());
    o
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl Run {
    fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error.is_none()).count()
    }

    fn errors(&self) -> usize {
        self.outcomes.len() - self.ok()
    }

    fn ungrounded(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.error.is_none() && !o.grounded)
            .count()
    }

    /// Completed requests per second of wall time.
    fn rps(&self) -> f64 {
        self.ok() as f64 / self.wall_s
    }

    /// A field over the grounded successes, ascending, finite values only.
    fn field(&self, f: impl Fn(&Outcome) -> f64) -> Vec<f64> {
        sorted(self.outcomes.iter().filter(|o| o.measured()).map(f))
    }

    fn pct(&self, f: impl Fn(&Outcome) -> f64, p: f64) -> f64 {
        common::percentile(&self.field(f), p)
    }

    fn avg(&self, f: impl Fn(&Outcome) -> f64) -> f64 {
        mean(&self.field(f))
    }

    fn cpu_ms_per_request(&self) -> f64 {
        self.cpu_s * 1e3 / self.ok().max(1) as f64
    }

    fn print_brief(&self, label: &str) {
        println!(
            "{label}: {} requests, {} ok, {} errors, {} ungrounded, {} skipped in {:.1} s: {:.2} req/s, TTFT p50 {:.0} ms, latency p50 {:.0} ms, {:.0} prompt tokens, {:.1} completion tokens (means)",
            self.outcomes.len() + self.skipped,
            self.ok(),
            self.errors(),
            self.ungrounded(),
            self.skipped,
            self.wall_s,
            self.rps(),
            self.pct(|o| o.ttft_ms, 50.0),
            self.pct(|o| o.latency_ms, 50.0),
            self.avg(|o| o.prompt_tokens as f64),
            self.avg(|o| o.completion_tokens as f64),
        );
        for o in self.outcomes.iter().filter(|o| o.error.is_some()).take(3) {
            println!(
                "  error (question {}): {}",
                o.q,
                o.error.as_deref().unwrap_or("")
            );
        }
    }

    fn json(&self) -> Value {
        let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        json!({
            "concurrency": self.concurrency,
            "requests": self.outcomes.len() + self.skipped,
            "ok": self.ok(), "errors": self.errors(), "ungrounded": self.ungrounded(),
            "skipped": self.skipped,
            "wall_s": self.wall_s, "load_avg_1m_before": finite(self.load),
            "requests_per_s": finite(self.rps()),
            "ttft_ms": {"p50": finite(self.pct(|o| o.ttft_ms, 50.0)), "p95": finite(self.pct(|o| o.ttft_ms, 95.0)), "mean": finite(self.avg(|o| o.ttft_ms))},
            "latency_ms": {"p50": finite(self.pct(|o| o.latency_ms, 50.0)), "p95": finite(self.pct(|o| o.latency_ms, 95.0)), "mean": finite(self.avg(|o| o.latency_ms))},
            "engine_ttft_ms": {"p50": finite(self.pct(|o| o.engine_ttft_ms, 50.0)), "p95": finite(self.pct(|o| o.engine_ttft_ms, 95.0))},
            "engine_queue_ms_p50": finite(self.pct(|o| o.queue_ms, 50.0)),
            "retrieval_ms_p50": finite(self.pct(|o| o.retrieval_ms, 50.0)),
            "mean_prompt_tokens": finite(self.avg(|o| o.prompt_tokens as f64)),
            "mean_completion_tokens": finite(self.avg(|o| o.completion_tokens as f64)),
            "mean_cached_prompt_tokens": finite(self.avg(|o| o.cached_prompt_tokens as f64)),
            "mean_passages": finite(self.avg(|o| o.passages as f64)),
            "cpu_s": self.cpu_s, "cpu_ms_per_request": finite(self.cpu_ms_per_request()),
            "errors_sample": self.outcomes.iter().filter_map(|o| o.error.clone()).take(5).collect::<Vec<_>>(),
        })
    }
}

/// HTTP against direct at the compared level, over the questions grounded in both runs.
struct Overhead {
    pairs: usize,
    http_latency_ms: f64,
    direct_latency_ms: f64,
    http_ttft_ms: f64,
    direct_ttft_ms: f64,
    http_cpu_ms: f64,
    direct_cpu_ms: f64,
    http_completion_tokens: f64,
    direct_completion_tokens: f64,
}

impl Overhead {
    fn new(http: &Run, direct: &Run) -> Self {
        let mut pairs = Vec::new();
        for h in http.outcomes.iter().filter(|o| o.measured()) {
            if let Some(d) = direct.outcomes.iter().find(|d| d.q == h.q && d.measured()) {
                pairs.push((h, d));
            }
        }
        let m = |f: &dyn Fn(&(&Outcome, &Outcome)) -> f64| {
            mean(
                &pairs
                    .iter()
                    .map(f)
                    .filter(|x| x.is_finite())
                    .collect::<Vec<_>>(),
            )
        };
        Self {
            pairs: pairs.len(),
            http_latency_ms: m(&|p| p.0.latency_ms),
            direct_latency_ms: m(&|p| p.1.latency_ms),
            http_ttft_ms: m(&|p| p.0.ttft_ms),
            direct_ttft_ms: m(&|p| p.1.ttft_ms),
            http_cpu_ms: http.cpu_ms_per_request(),
            direct_cpu_ms: direct.cpu_ms_per_request(),
            http_completion_tokens: m(&|p| p.0.completion_tokens as f64),
            direct_completion_tokens: m(&|p| p.1.completion_tokens as f64),
        }
    }

    fn pct(h: f64, d: f64) -> f64 {
        (h - d) / d * 100.0
    }

    fn latency_pct(&self) -> f64 {
        Self::pct(self.http_latency_ms, self.direct_latency_ms)
    }

    fn met(&self) -> Option<bool> {
        let p = self.latency_pct();
        p.is_finite().then_some(p <= TARGET_PCT)
    }

    fn json(&self) -> Value {
        let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        json!({
            "pairs": self.pairs,
            "latency_ms": {"http_mean": finite(self.http_latency_ms), "direct_mean": finite(self.direct_latency_ms),
                "diff_ms": finite(self.http_latency_ms - self.direct_latency_ms), "overhead_pct": finite(self.latency_pct())},
            "ttft_ms": {"http_mean": finite(self.http_ttft_ms), "direct_mean": finite(self.direct_ttft_ms),
                "diff_ms": finite(self.http_ttft_ms - self.direct_ttft_ms), "overhead_pct": finite(Self::pct(self.http_ttft_ms, self.direct_ttft_ms))},
            "cpu_ms_per_request": {"http_server": finite(self.http_cpu_ms), "direct_process": finite(self.direct_cpu_ms),
                "overhead_pct": finite(Self::pct(self.http_cpu_ms, self.direct_cpu_ms))},
            "mean_completion_tokens": {"http": finite(self.http_completion_tokens), "direct": finite(self.direct_completion_tokens)},
            "target_pct": TARGET_PCT,
            "target_met": self.met(),
        })
    }
}

fn print_table(
    s: &Settings,
    levels: &[Run],
    direct: &Run,
    o: &Overhead,
    compare: usize,
    server: &common::ProcStats,
    bench_rss: &common::Rss,
) {
    let f0 = |x: f64| common::num(Some(x), 0);
    println!(
        "\n== /ask end to end: {} documents, top_k {TOP_K}, max_tokens {MAX_TOKENS}, streamed (client-side times in ms)\n",
        s.docs
    );
    println!(
        "| run | conc | requests | ok | errors | ungrounded | req/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | engine TTFT p50 | prompt tok | out tok | cached tok | CPU ms/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let rows = levels
        .iter()
        .map(|r| ("HTTP", r))
        .chain(std::iter::once(("direct", direct)));
    for (name, r) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.concurrency,
            r.outcomes.len() + r.skipped,
            r.ok(),
            r.errors(),
            r.ungrounded(),
            common::num(Some(r.rps()), 2),
            f0(r.pct(|o| o.ttft_ms, 50.0)),
            f0(r.pct(|o| o.ttft_ms, 95.0)),
            f0(r.pct(|o| o.latency_ms, 50.0)),
            f0(r.pct(|o| o.latency_ms, 95.0)),
            f0(r.pct(|o| o.engine_ttft_ms, 50.0)),
            f0(r.avg(|o| o.prompt_tokens as f64)),
            common::num(Some(r.avg(|o| o.completion_tokens as f64)), 1),
            f0(r.avg(|o| o.cached_prompt_tokens as f64)),
            f0(r.cpu_ms_per_request()),
        );
    }
    println!(
        "\nserver peak RSS (VmHWM) {:.0} MiB; this process after the direct run {:.0} MiB peak",
        server.hwm_kib as f64 / 1024.0,
        bench_rss.hwm_kib as f64 / 1024.0
    );
    let pct = |x: f64| {
        if x.is_finite() {
            format!("{x:+.1} %")
        } else {
            "-".into()
        }
    };
    println!(
        "\nAPI overhead at concurrency {compare} ({} questions grounded in both runs):",
        o.pairs
    );
    println!(
        "  latency mean: HTTP {} ms, direct {} ms: {} ms, {}",
        f0(o.http_latency_ms),
        f0(o.direct_latency_ms),
        common::num(Some(o.http_latency_ms - o.direct_latency_ms), 1),
        pct(o.latency_pct())
    );
    println!(
        "  TTFT mean:    HTTP {} ms, direct {} ms: {} ms, {}",
        f0(o.http_ttft_ms),
        f0(o.direct_ttft_ms),
        common::num(Some(o.http_ttft_ms - o.direct_ttft_ms), 1),
        pct(Overhead::pct(o.http_ttft_ms, o.direct_ttft_ms))
    );
    println!(
        "  CPU per request: server {} ms, in-process {} ms: {}",
        f0(o.http_cpu_ms),
        f0(o.direct_cpu_ms),
        pct(Overhead::pct(o.http_cpu_ms, o.direct_cpu_ms))
    );
    println!(
        "  completion tokens (mean): HTTP {}, direct {} (should match: greedy, same prompts)",
        common::num(Some(o.http_completion_tokens), 1),
        common::num(Some(o.direct_completion_tokens), 1)
    );
    let verdict = match o.met() {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    println!(
        "  target: latency overhead ≤ {TARGET_PCT} % at concurrency 8; at concurrency {compare}: {verdict}"
    );
    if compare != 8 {
        println!("  (8 is not among the levels: the verdict is for concurrency {compare})");
    }
    let _ = std::io::stdout().flush();
}
