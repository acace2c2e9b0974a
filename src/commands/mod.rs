//! One module per subcommand.

pub mod docs;
pub mod ingest;

use anyhow::Context;
use hearth_api::{IngestService, IngestServiceParts};
use hearth_index::BlobStore;
use hearth_ingest::ExtractorCommand;

use crate::config::AppConfig;

/// Opens the object store and builds the ingestion service, with this very binary as the
/// extraction process.
pub fn ingest_service(cfg: &AppConfig) -> anyhow::Result<IngestService> {
    let store = BlobStore::open(&cfg.storage).context("opening the object store")?;
    let program = std::env::current_exe().context("locating the hearth executable")?;
    let service = IngestService::new(IngestServiceParts {
        store,
        engine: cfg.engine.clone(),
        ingest: cfg.ingest.clone(),
        extractor: ExtractorCommand {
            program,
            args: vec!["extract-worker".into()],
        },
    })?;
    Ok(service)
}
