//! `hearth audit verify`: walks the audit chain in the object store and reports the first
//! edited, removed, inserted or reordered entry (exit 1), or that it is intact.

use std::process::ExitCode;

use crate::config::AppConfig;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain.
    Verify,
}

pub async fn run(cfg: AppConfig, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify => {
            let v = super::open_store(&cfg).await?.audit().verify().await?;
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
    }
}
