//! `hearth residency`: the residency report from this node's configuration, as
//! `GET /v1/residency` gives it: jurisdiction, storage endpoints, egress allowlist, SHA-256 of
//! the model files and of the adapters kept in the object store, encryption, build.

use std::process::ExitCode;

use hearth_api::Store;
use hearth_api::residency::{
    BuildInfo, EncryptionStatus, Residency, ResidencyParts, ResidencyReport,
};

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct ResidencyArgs {
    /// Print the report as JSON (the same document as GET /v1/residency).
    #[arg(long)]
    json: bool,
}

/// The static part of the report for this configuration and the store as opened
/// (`generator`: whether the generator's files are in use).
pub fn residency(cfg: &AppConfig, store: &Store, generator: bool) -> anyhow::Result<Residency> {
    let encryption = store.encryption(&cfg.storage);
    Ok(Residency::new(ResidencyParts {
        config: &cfg.residency,
        storage: &cfg.storage,
        models: cfg.engine.model_files(generator),
        encryption: EncryptionStatus {
            // Only an encrypted store can seal it (the service refuses the option otherwise).
            index_cache_sealed: encryption.at_rest && cfg.index.encrypt_cache,
            ..encryption
        },
        build: build_info(),
    })?)
}

fn build_info() -> BuildInfo {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda".to_owned());
    }
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("HEARTH_COMMIT").to_owned(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        features,
    }
}

pub async fn run(cfg: AppConfig, args: ResidencyArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&cfg).await?;
    let res = residency(&cfg, &store, true)?;
    let mut report = tokio::task::spawn_blocking(move || res.report(Vec::new())).await??;
    report.adapters = store.adapter_digests().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &ResidencyReport) {
    match &r.jurisdiction {
        Some(j) => println!("jurisdiction: {j} (enforced at start-up)"),
        None => {
            println!("jurisdiction: none configured (set residency.jurisdiction to enforce one)")
        }
    }
    println!("storage:");
    for s in &r.storage {
        println!(
            "  {} {} (jurisdiction: {})",
            s.backend,
            s.location,
            s.jurisdiction.as_deref().unwrap_or("undeclared")
        );
    }
    if r.egress_allowlist.is_empty() {
        println!("outbound connections: none allowed");
    } else {
        println!(
            "outbound connections: only to {}",
            r.egress_allowlist.join(", ")
        );
    }
    println!("telemetry: none");
    println!("models (local files, never downloaded at run time):");
    for m in &r.models {
        println!(
            "  {:<20} {}  {} ({} bytes)",
            m.role, m.sha256, m.path, m.bytes
        );
    }
    if r.adapters.is_empty() {
        println!("adapters: none");
    }
    for a in &r.adapters {
        println!("adapter {}:", a.name);
        for f in &a.files {
            println!("  {:<26} {}  ({} bytes)", f.role, f.sha256, f.bytes);
        }
    }
    match &r.encryption {
        e if e.at_rest => println!(
            "encryption at rest: {} (key-encryption key from {}); local index cache: {}",
            e.algorithm.as_deref().unwrap_or("?"),
            e.key_source.as_deref().unwrap_or("?"),
            if e.index_cache_sealed {
                "sealed"
            } else {
                "plaintext"
            }
        ),
        _ => println!("encryption at rest: off"),
    }
    let b = &r.build;
    println!(
        "build: hearth {} ({}, {}{})",
        b.version,
        b.commit,
        b.profile,
        if b.features.is_empty() {
            String::new()
        } else {
            format!(", features: {}", b.features.join(" "))
        }
    );
}
