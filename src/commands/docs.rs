//! `hearth docs`: the registry of a collection.

use std::process::ExitCode;

use anyhow::Context;
use hearth_api::{CollectionName, DocState};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct DocsArgs {
    /// Collection to list.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// Only documents in this state (queued, extracting, chunked, embedded, indexed, failed).
    #[arg(long)]
    state: Option<String>,
    /// Print JSON (one array of document records).
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: AppConfig, args: DocsArgs) -> anyhow::Result<ExitCode> {
    let c = CollectionName::new(&args.collection)?;
    let state = args
        .state
        .as_deref()
        .map(str::parse::<DocState>)
        .transpose()
        .context("--state")?;
    let store = super::open_store(&cfg).await?;
    let records = store.documents(&c, state).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &records {
        let detail = match (&r.reason, r.chunks) {
            (Some(reason), _) => reason.clone(),
            (None, Some(n)) => format!("{n} chunks"),
            (None, None) => String::new(),
        };
        println!(
            "{}  {:<10} {}  {}",
            &r.doc_id.to_hex()[..12],
            r.state.as_str(),
            r.source,
            detail
        );
    }
    println!("{} documents", records.len());
    Ok(ExitCode::SUCCESS)
}
