//! `hearth delete`, `hearth compact` and `hearth reembed`.

use std::process::ExitCode;

use anyhow::bail;
use hearth_api::{CollectionName, DocId};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Collection the documents belong to.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// Document ids (64 hex characters, as `hearth docs` shows them).
    #[arg(value_name = "DOC_ID")]
    ids: Vec<String>,
    /// Delete the documents ingested under this external name (file path) instead.
    #[arg(long)]
    source: Option<String>,
}

#[derive(clap::Args)]
pub struct CompactArgs {
    /// Collection to compact.
    #[arg(long, short)]
    pub(crate) collection: String,
}

#[derive(clap::Args)]
pub struct ReembedArgs {
    /// Collection to re-embed.
    #[arg(long, short)]
    pub(crate) collection: String,
    /// The embedding model to move it to (the default's name or one of `engine.embedders`).
    #[arg(long)]
    embedder: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn delete(cfg: AppConfig, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let c = CollectionName::new(&args.collection)?;
    let mut ids = args
        .ids
        .iter()
        .map(|s| s.parse::<DocId>())
        .collect::<Result<Vec<_>, _>>()?;
    let service = super::service(&cfg).await?;
    let col = service.open(&c).await?;
    if let Some(source) = &args.source {
        let records = service.documents(&col).await?;
        ids.extend(
            records
                .iter()
                .filter(|r| &r.source == source)
                .map(|r| r.doc_id),
        );
    }
    if ids.is_empty() {
        bail!("nothing to delete: give document ids or a --source that exists");
    }
    let mut missing = 0;
    for id in &ids {
        if service.delete_document(&col, id).await? {
            println!("deleted {id}");
        } else {
            println!("not found: {id}");
            missing += 1;
        }
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn compact(cfg: AppConfig, args: CompactArgs) -> anyhow::Result<ExitCode> {
    let c = CollectionName::new(&args.collection)?;
    let service = super::service(&cfg).await?;
    let col = service.open(&c).await?;
    let report = service.compact(&col).await?;
    let stats = col.stats();
    println!(
        "compacted {c:?}: dropped {} deleted chunks, removed {} orphaned objects; {} documents, {} chunks",
        report.chunks_dropped, report.orphans_removed, stats.docs, stats.live_chunks
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn reembed(cfg: AppConfig, args: ReembedArgs) -> anyhow::Result<ExitCode> {
    let c = CollectionName::new(&args.collection)?;
    let service = super::service(&cfg).await?;
    if !service.exists(&c).await? {
        bail!("no collection named {c:?}");
    }
    let col = service.open(&c).await?;
    let bar = super::progress_bar(0, "documents");
    bar.set_message(format!("re-embedding with {}", args.embedder));
    let shown = bar.clone();
    let report = service
        .reembed(&col, &args.embedder, &move |done, total| {
            shown.set_length(total as u64);
            shown.set_position(done as u64);
        })
        .await;
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "collection": c.as_str(),
                "embedder": report.embedder,
                "previous": report.previous,
                "documents": report.documents,
                "embedded_chunks": report.embedded_chunks,
                "resumed_documents": report.resumed_documents,
                "caught_up": report.caught_up,
                "seconds": report.seconds,
            })
        );
    } else {
        println!(
            "re-embedded {c:?} with {} (was {}): {} documents, {} chunks embedded, {} documents kept from an interrupted run, {} caught up while it ran, {:.1} s",
            report.embedder,
            report.previous,
            report.documents,
            report.embedded_chunks,
            report.resumed_documents,
            report.caught_up,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
