//! `hearth tenants set|list|delete`: tenants, their collections and quotas, written straight
//! to the object store (a running server reads them again within seconds).

use std::process::ExitCode;

use hearth_api::tenants::TenantRecord;

use crate::config::AppConfig;

#[derive(clap::Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant, or replace its collections and quotas.
    Set {
        /// The tenant's name (a-z, 0-9, - and _).
        name: String,
        /// Its collections: a name, or a prefix ending in * (acme-*); repeatable.
        #[arg(long = "collection", short = 'c', required = true)]
        collections: Vec<String>,
        /// Most bytes of original documents its collections may hold.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Most documents its collections may hold.
        #[arg(long)]
        max_documents: Option<u64>,
        /// Requests per minute of all its keys together.
        #[arg(long)]
        rate_per_minute: Option<u32>,
        /// Generated tokens per day (UTC), answers and chat together.
        #[arg(long)]
        tokens_per_day: Option<u64>,
    },
    /// List tenants and their quotas.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a tenant (its collections stay; its keys are refused until given another).
    Delete {
        /// The tenant's name.
        name: String,
    },
}

pub async fn run(cfg: AppConfig, cmd: TenantsCommand) -> anyhow::Result<ExitCode> {
    let tenants = super::open_store(&cfg).await?.tenants();
    match cmd {
        TenantsCommand::Set {
            name,
            collections,
            max_bytes,
            max_documents,
            rate_per_minute,
            tokens_per_day,
        } => {
            let created_ms = tenants.get(&name).await?.map_or(0, |t| t.created_ms);
            let t = tenants
                .put(TenantRecord {
                    name,
                    collections,
                    max_bytes,
                    max_documents,
                    rate_per_minute,
                    tokens_per_day,
                    created_ms,
                })
                .await?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        TenantsCommand::List { json } => {
            let list = tenants.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no tenants (create one with `hearth tenants set NAME -c 'NAME-*'`)");
            } else {
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
                for t in list {
                    println!(
                        "{:<16} {:<24} bytes {} documents {} rate/min {} tokens/day {}",
                        t.name,
                        t.collections.join(","),
                        show(t.max_bytes),
                        show(t.max_documents),
                        show(t.rate_per_minute.map(u64::from)),
                        show(t.tokens_per_day)
                    );
                }
            }
        }
        TenantsCommand::Delete { name } => {
            if tenants.delete(&name).await? {
                println!("deleted tenant {name}");
            } else {
                eprintln!("no tenant {name}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
