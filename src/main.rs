//! `hearth`: the command-line entry point. Parses flags, loads the configuration and hands off
//! to a command; all real work lives in the library crates.

mod commands;
mod config;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{AppConfig, ConfigError, Overrides};

/// hearth: a residency-bound RAG appliance — object store, hybrid index and local inference in
/// one service.
#[derive(Parser)]
#[command(name = "hearth", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: ./hearth.toml when present).
    #[arg(long, env = "HEARTH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long, env = "HEARTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Models directory (overrides engine.models_dir).
    #[arg(long, env = "HEARTH_MODELS", global = true)]
    models: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files and directories into a collection (and resume interrupted work).
    Ingest(commands::ingest::IngestArgs),
    /// List the documents of a collection with their state.
    Docs(commands::docs::DocsArgs),
    /// Search a collection: dense, BM25 or hybrid, with metadata filters.
    Search(commands::search::SearchArgs),
    /// Answer a question from a collection, with its sources (embedded or via --server).
    Ask(commands::ask::AskArgs),
    /// Score a collection's answers on labelled questions (JSON Lines): retrieval, correctness,
    /// citations, abstention, timings.
    Eval(commands::eval::EvalArgs),
    /// Check the hash-chained audit log.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Manage API keys: create, list, revoke.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Manage tenants: their collections and quotas.
    #[command(subcommand)]
    Tenants(commands::tenants::TenantsCommand),
    /// Report jurisdiction, storage, egress, model digests, encryption and build.
    Residency(commands::residency::ResidencyArgs),
    /// Check the object store: its conditional writes, as several writers need them.
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// Run the HTTP API (REST, OpenAI-compatible endpoints) with background ingestion.
    Serve(commands::serve::ServeArgs),
    /// Delete documents: their bytes, chunks and vectors, from the store and the index.
    Delete(commands::manage::DeleteArgs),
    /// Reclaim the space of deleted documents in the index and the store.
    Compact(commands::manage::CompactArgs),
    /// Move a collection to another embedding model, while it keeps serving (resumes an
    /// interrupted run).
    Reembed(commands::manage::ReembedArgs),
    /// Print the effective configuration (secrets redacted).
    Config,
    /// Internal: serve extraction requests on stdin/stdout (started by hearth itself).
    #[command(hide = true, name = "extract-worker")]
    ExtractWorker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::ExtractWorker) {
        let code = hearth_api::extract_worker_main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    telemetry::init(cli.log_json);
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        models_dir: cli.models.clone(),
    };
    let cfg = match AppConfig::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e.into()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    let audited = audited(&cli.command);
    let audit_cfg = audited.as_ref().map(|_| cfg.clone());
    let result = runtime.block_on(async move {
        let result = match cli.command {
            Command::Ingest(args) => commands::ingest::run(cfg, args).await,
            Command::Docs(args) => commands::docs::run(cfg, args).await,
            Command::Search(args) => commands::search::run(cfg, args).await,
            Command::Ask(args) => commands::ask::run(cfg, args).await,
            Command::Eval(args) => commands::eval::run(cfg, args).await,
            Command::Audit(cmd) => commands::audit::run(cfg, cmd).await,
            Command::Keys(cmd) => commands::keys::run(cfg, cmd).await,
            Command::Tenants(cmd) => commands::tenants::run(cfg, cmd).await,
            Command::Residency(args) => commands::residency::run(cfg, args).await,
            Command::Store(cmd) => commands::store::run(cfg, cmd).await,
            Command::Serve(args) => commands::serve::run(cfg, args).await,
            Command::Delete(args) => commands::manage::delete(cfg, args).await,
            Command::Compact(args) => commands::manage::compact(cfg, args).await,
            Command::Reembed(args) => commands::manage::reembed(cfg, args).await,
            Command::Config => {
                println!("{cfg:#?}");
                Ok(ExitCode::SUCCESS)
            }
            Command::ExtractWorker => Ok(ExitCode::SUCCESS),
        };
        if let (Some((action, command, collection)), Some(cfg)) = (audited, audit_cfg) {
            let ok = matches!(result, Ok(ExitCode::SUCCESS));
            commands::audit::record(&cfg, action, command, collection, ok).await;
        }
        result
    });
    result.unwrap_or_else(|e| fail(&e))
}

/// The audit entry a command leaves (action, command, collection): every command that reads
/// documents or changes the store, as the API records its requests. `keys rotate-kek` records
/// itself (the store opens with the new key afterwards); `ask --server` is recorded by the
/// server it asks.
fn audited(cmd: &Command) -> Option<(&'static str, &'static str, Option<String>)> {
    use commands::keys::KeysCommand;
    let c = |s: &String| Some(s.clone());
    Some(match cmd {
        Command::Ingest(a) => ("upload", "ingest", c(&a.collection)),
        Command::Docs(a) => ("read", "docs", c(&a.collection)),
        Command::Search(a) => ("search", "search", c(&a.collection)),
        Command::Ask(a) if a.server.is_none() => ("ask", "ask", c(&a.collection)),
        Command::Eval(a) => ("eval", "eval", c(&a.collection)),
        Command::Delete(a) => ("delete", "delete", c(&a.collection)),
        Command::Compact(a) => ("admin", "compact", c(&a.collection)),
        Command::Reembed(a) => ("admin", "reembed", c(&a.collection)),
        Command::Keys(KeysCommand::Create { .. }) => ("admin", "keys create", None),
        Command::Keys(KeysCommand::List { .. }) => ("read", "keys list", None),
        Command::Keys(KeysCommand::Revoke { .. }) => ("admin", "keys revoke", None),
        Command::Tenants(commands::tenants::TenantsCommand::List { .. }) => {
            ("read", "tenants list", None)
        }
        Command::Tenants(_) => ("admin", "tenants", None),
        Command::Store(_) => ("admin", "store check", None),
        // Recorded by the server asked, by itself (rotate-kek), or reading no documents.
        Command::Ask(_)
        | Command::Keys(KeysCommand::RotateKek { .. })
        | Command::Audit(_)
        | Command::Residency(_)
        | Command::Serve(_)
        | Command::Config
        | Command::ExtractWorker => return None,
    })
}

/// Prints an error chain; configuration errors exit with 2, everything else with 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    if e.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}
