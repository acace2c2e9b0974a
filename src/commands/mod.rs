//! One module per subcommand.

pub mod ask;
pub mod audit;
pub mod docs;
pub mod eval;
pub mod ingest;
pub mod keys;
pub mod manage;
pub mod residency;
pub mod search;
pub mod serve;
pub mod store;
pub mod tenants;

use std::time::Duration;

use anyhow::Context;
use hearth_api::{ExtractorCommand, Service, ServiceParts, Store};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::AppConfig;

/// Opens the object store, loads the models and builds the service, with this very binary as
/// the extraction process.
pub async fn service(cfg: &AppConfig) -> anyhow::Result<Service> {
    build_service(cfg, false).await
}

/// [`service`] with the generator loaded too (for answering questions).
pub async fn service_with_generator(cfg: &AppConfig) -> anyhow::Result<Service> {
    build_service(cfg, true).await
}

/// Opens the object store (with encryption at rest when configured).
pub async fn open_store(cfg: &AppConfig) -> anyhow::Result<Store> {
    Store::open(&cfg.storage)
        .await
        .context("opening the object store")
}

async fn build_service(cfg: &AppConfig, generator: bool) -> anyhow::Result<Service> {
    let store = open_store(cfg).await?;
    let program = std::env::current_exe().context("locating the hearth executable")?;
    let service = Service::new(ServiceParts {
        store,
        data_dir: cfg.storage.data_dir.clone(),
        engine: cfg.engine.clone(),
        ingest: cfg.ingest.clone(),
        index: cfg.index.clone(),
        extractor: ExtractorCommand {
            program,
            args: vec!["extract-worker".into()],
        },
        generator,
        ask: cfg.ask.clone(),
        backlog_limit: cfg.server.ingest_backlog,
        cluster: cfg.cluster.clone(),
    })?;
    Ok(service)
}

/// A progress bar on stderr for `len` items called `unit` (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    // invariant: the template is a valid literal with a plain word spliced in.
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:32}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}  {{msg}}"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
