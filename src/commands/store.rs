//! `hearth store check`: does the configured object store keep its promises on conditional
//! writes? A few throwaway objects under `_probe/`, removed afterwards; each check named with
//! what it saw.

use std::process::ExitCode;

use hearth_api::{WriteChecks, WriteOutcome};

use crate::config::AppConfig;

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Check the store's conditional writes: exclusive creates (If-None-Match), which every
    /// process writing the store relies on, and ETag updates (If-Match), which replicas'
    /// leases need. Exits 1 when a create check fails (with --replicas: when any check does
    /// not pass).
    Check {
        /// Require the update checks too (a store for several replicas).
        #[arg(long)]
        replicas: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: AppConfig, cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    let StoreCommand::Check { replicas, json } = cmd;
    let store = super::open_store(&cfg).await?;
    let report = store.check_conditional_writes().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let fit = report.create_failure().is_none() && (!replicas || report.all_passed());
    Ok(if fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &WriteChecks) {
    println!("store: {}", r.store);
    for c in &r.checks {
        let mark = match c.outcome {
            WriteOutcome::Passed => "passed",
            WriteOutcome::Failed => "FAILED",
            WriteOutcome::Unsupported => "unsupported",
        };
        println!("  {:<16} {:<12} {}", c.name, mark, c.detail);
    }
    let verdict = match (r.create_failure(), r.update_failure()) {
        (Some(c), _) => format!(
            "unfit: writers overwrite each other ({} failed); hearth refuses this store",
            c.name
        ),
        (None, Some(u)) if u.outcome == WriteOutcome::Unsupported => {
            "fit for one node (no conditional updates: not for several replicas)".to_owned()
        }
        (None, Some(u)) => format!(
            "fit for one node; not for several replicas ({} failed)",
            u.name
        ),
        (None, None) => "fit for one node and for several replicas".to_owned(),
    };
    println!("verdict: {verdict}");
}
