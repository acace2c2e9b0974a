//! `hearth audit verify`: walks the audit chain in the object store and reports the first
//! edited, removed, inserted or reordered entry, a chain cut back below this node's witness or
//! below an expected head, or a deleted log (exit 1); or that it is intact.
//! `hearth audit head`: prints the chain's head signed with the node's key, to keep outside the
//! store and give back to `verify --expect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hearth_api::audit::{AuditEvent, SignedHead};

use crate::config::AppConfig;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain.
    Verify {
        /// A head printed earlier by `hearth audit head` (a file, or - for stdin): the chain
        /// must still reach it.
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
    },
    /// Print the chain's head signed with this node's key (JSON), after verifying the chain.
    Head,
}

pub async fn run(cfg: AppConfig, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let log = super::open_store(&cfg).await?.audit();
    match cmd {
        AuditCommand::Verify { expect } => {
            let expected = match expect {
                None => None,
                Some(p) => {
                    let text = if p.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
                    } else {
                        std::fs::read_to_string(&p)
                            .with_context(|| format!("reading {}", p.display()))?
                    };
                    Some(SignedHead::parse(&text)?)
                }
            };
            let v = log.verify_expecting(expected.as_ref()).await?;
            match v.problem {
                None => {
                    println!("audit log intact: {} entries", v.entries);
                    Ok(ExitCode::SUCCESS)
                }
                Some(p) => {
                    println!("audit log BROKEN after {} good entries: {p}", v.entries);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Head => {
            let h = log.signed_head().await?;
            println!("{}", serde_json::to_string(&h)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Records a command that read or changed the store in the audit log (actor `cli`), with
/// `outcome` 0 for success and 1 for failure. A failure to record is logged, not fatal: the
/// command's own work is done by then.
pub async fn record(
    cfg: &AppConfig,
    action: &str,
    command: &str,
    collection: Option<String>,
    ok: bool,
) {
    let ev = AuditEvent {
        actor: "cli".into(),
        action: action.into(),
        target: format!("hearth {command}"),
        collection,
        document: None,
        outcome: u16::from(!ok),
        query: None,
    };
    let result = match super::open_store(cfg).await {
        Ok(store) => store
            .audit()
            .append(ev)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %format!("{e:#}"), "recording the command in the audit log failed");
    }
}
