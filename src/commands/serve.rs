//! `hearth serve`: the HTTP API, with background ingestion, until SIGTERM or Ctrl-C; then the
//! requests in flight and the ingestion batch under way are finished before the process exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hearth_api::http::{ServerParts, router, serve};
use hearth_api::{CollectionName, Submission, Submitted};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.bind); port 0 picks a free port.
    #[arg(long)]
    bind: Option<String>,
    /// Files or directories to ingest into --collection at start-up (already stored documents
    /// are skipped); they are processed in the background like uploads.
    #[arg(long = "ingest", value_name = "PATH")]
    ingest: Vec<PathBuf>,
    /// Collection for --ingest (created if missing).
    #[arg(long, short, default_value = "demo")]
    collection: String,
    /// Serve without API keys, every caller an admin (server.open); loopback addresses only.
    #[arg(long)]
    open: bool,
}

pub async fn run(mut cfg: AppConfig, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(b) = args.bind {
        cfg.server.bind = b;
    }
    cfg.server.open |= args.open;
    cfg.server
        .validate()
        .map_err(|e| crate::config::ConfigError(strip_kind(&e.to_string())))?;
    let listener = tokio::net::TcpListener::bind(&cfg.server.bind)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.bind))?;
    let addr = listener.local_addr()?;
    let service = Arc::new(super::service_with_generator(&cfg).await?);
    let store = service.storage();
    if cfg.cluster.enabled {
        // Leases and the published index's generations rest on conditional writes.
        let report = store.require_exclusive_creates().await?;
        if let Some(u) = report.update_failure() {
            anyhow::bail!(
                "cluster.enabled: the object store {} failed the check {}: {}; replicas need a store whose conditional updates hold (see `hearth store check --replicas`)",
                report.store,
                u.name,
                u.detail
            );
        }
    } else if cfg.storage.check_writes {
        let report = store.require_exclusive_creates().await?;
        match report.update_failure() {
            Some(u) => tracing::info!(
                store = %report.store,
                check = u.name,
                detail = %u.detail,
                "the store's creates are exclusive; it cannot hold replicas' leases"
            ),
            None => tracing::info!(store = %report.store, "the store's conditional writes hold"),
        }
    }
    let residency = Arc::new(super::residency::residency(&cfg, &store, true)?);
    let oidc = match &cfg.server.oidc {
        Some(o) => {
            o.validate(&cfg.residency.egress_allow)
                .map_err(|e| crate::config::ConfigError(strip_kind(&e.to_string())))?;
            Some(Arc::new(
                hearth_api::oidc::OidcVerifier::new(o.clone(), &cfg.residency.egress_allow).await?,
            ))
        }
        None => None,
    };
    let adapters = service.restore_adapters().await?;
    if adapters > 0 {
        tracing::info!(adapters, "LoRA adapters registered from the object store");
    }
    let resumed = service.resume_all().await?;
    if resumed > 0 {
        tracing::info!(documents = resumed, "resuming unfinished ingestion");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(service.clone().run_conversation_sweeper(stop_rx.clone()));
    let worker = tokio::spawn(service.clone().run_worker(stop_rx));
    // Stopped after the worker: the batch under way is published while the leases hold.
    let (cluster_stop, cluster_rx) = tokio::sync::watch::channel(false);
    let cluster = tokio::spawn(service.clone().run_cluster(cluster_rx));
    let mut queued = 0;
    if !args.ingest.is_empty() {
        let c = CollectionName::new(&args.collection)?;
        let col = service.open(&c).await?;
        for path in super::ingest::walk(&args.ingest)? {
            let bytes = tokio::fs::read(&path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            let sub = Submission {
                source: path.display().to_string(),
                bytes: bytes.into(),
                metadata: Default::default(),
                access: None,
            };
            match service.submit(&col, sub).await {
                Ok(Submitted::Accepted(id)) => {
                    service.enqueue(&c, id)?;
                    queued += 1;
                }
                Ok(Submitted::Duplicate(_)) => {}
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "not ingested"),
            }
        }
    }
    let model_id = cfg
        .engine
        .generator_model
        .file_stem()
        .map_or_else(|| "generator".into(), |s| s.to_string_lossy().into_owned());
    let embedding_model_id = cfg.engine.default_embedder_name();
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let app = router(ServerParts {
        service: service.clone(),
        config: cfg.server.clone(),
        max_document_bytes: cfg.ingest.max_document_bytes,
        model_id,
        embedding_model_id,
        residency,
        oidc,
    });
    println!("hearth is listening on http://{addr}");
    if !args.ingest.is_empty() {
        println!(
            "ingesting {queued} new documents into \"{}\" in the background",
            args.collection
        );
        println!(
            "ask:  curl -s http://{addr}/v1/collections/{}/ask -H 'Content-Type: application/json' -d '{{\"question\": \"How do I convert a disk image to qcow2?\"}}'",
            args.collection
        );
    }
    if !cfg.server.open && !store.keys().any().await? {
        println!(
            "no API keys yet: /v1 requests get 401 until you create one (hearth keys create --name NAME --role admin), or serve with --open on loopback"
        );
    }
    match &cfg.residency.jurisdiction {
        Some(j) => {
            tracing::info!(jurisdiction = %j, store = %store.describe(), "residency policy enforced")
        }
        None => tracing::warn!(
            "no residency.jurisdiction configured: stores are not checked against one"
        ),
    }
    println!("Ctrl-C stops the server");
    if queued > 0 {
        let service = service.clone();
        tokio::spawn(async move {
            while service.ingest_backlog() > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            println!(
                "ingestion done: the documents are searchable; the curl line above answers from them"
            );
        });
    }
    let header_timeout = Duration::from_secs(cfg.server.header_timeout_secs);
    serve(listener, app, shutdown_signal(), grace, header_timeout).await?;
    tracing::info!("shutting down: finishing the ingestion batch under way");
    let _ = stop_tx.send(true);
    sweeper.abort();
    if tokio::time::timeout(grace, worker).await.is_err() {
        tracing::warn!("the ingestion batch did not finish in time; it resumes at the next start");
    }
    let _ = cluster_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), cluster)
        .await
        .is_err()
    {
        tracing::warn!("the replica's leases were not given up in time; they expire by themselves");
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_kind(s: &str) -> String {
    s.strip_prefix("invalid input: ").unwrap_or(s).to_owned()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
