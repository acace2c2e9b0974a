//! `hearth keys create|list|revoke`: API keys for `hearth serve`, written straight to the
//! object store (a running server sees a new key at once and a revoked one within seconds).
//! `hearth keys rotate-kek`: re-wraps the store's data keys under a new key-encryption key.

use std::process::ExitCode;

use hearth_api::Store;
use hearth_api::config::EncryptionConfig;
use hearth_api::keys::{NewKey, Role};

use crate::config::AppConfig;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; its token is printed once and never stored.
    Create {
        /// A label (who or what uses the key).
        #[arg(long)]
        name: String,
        /// admin, writer or reader.
        #[arg(long, default_value = "reader")]
        role: String,
        /// A collection the key may use; repeatable. * (the default) is every collection.
        #[arg(long = "collection", short = 'c', default_value = "*")]
        collections: Vec<String>,
        /// The user the key acts for: documents listing `user:NAME` are readable with it.
        #[arg(long)]
        user: Option<String>,
        /// Groups of the key's user, comma-separated: documents listing one of them (or `*`)
        /// are readable with it. Admin keys read every document anyway.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The tenant whose quotas the key's requests count against (`hearth tenants set`);
        /// without --collection the key gets the tenant's collections.
        #[arg(long)]
        tenant: Option<String>,
        /// Requests per minute (default: server.rate_per_minute).
        #[arg(long)]
        rate_per_minute: Option<u32>,
        /// Requests in flight at once (default: server.concurrency_per_key).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Print the key as JSON (token included).
        #[arg(long)]
        json: bool,
    },
    /// List keys (ids, names, roles, collections; never the tokens).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id, as `hearth keys list` shows it.
        id: String,
    },
    /// Re-wrap the store's data keys under a new key-encryption key (content is not
    /// re-encrypted); the configured key is the current one. Afterwards configure the new key.
    RotateKek {
        /// File holding the new key (64 hex characters).
        #[arg(
            long,
            conflicts_with = "new_kek_env",
            required_unless_present = "new_kek_env"
        )]
        new_kek_file: Option<std::path::PathBuf>,
        /// Environment variable holding the new key (64 hex characters).
        #[arg(long)]
        new_kek_env: Option<String>,
    },
}

pub async fn run(cfg: AppConfig, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let keys = super::open_store(&cfg).await?.keys();
    match cmd {
        KeysCommand::Create {
            name,
            role,
            collections,
            user,
            groups,
            tenant,
            rate_per_minute,
            concurrency,
            json,
        } => {
            let role: Role = role.parse()?;
            let mut collections = collections;
            if let Some(name) = &tenant {
                let store = super::open_store(&cfg).await?;
                let Some(t) = store.tenants().get(name).await? else {
                    anyhow::bail!("no tenant {name} (create it with `hearth tenants set`)");
                };
                if collections == ["*"] {
                    collections = t.collections.clone();
                } else if let Some(c) = collections
                    .iter()
                    .find(|c| !t.owns(c.trim_end_matches('*')))
                {
                    anyhow::bail!(
                        "collection {c} is not tenant {name}'s (its collections: {})",
                        t.collections.join(", ")
                    );
                }
            }
            let (rec, token) = keys
                .create(NewKey {
                    name,
                    role,
                    collections,
                    user,
                    groups,
                    tenant,
                    rate_per_minute,
                    concurrency,
                })
                .await?;
            if json {
                let mut v = serde_json::to_value(&rec)?;
                v["token"] = token.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{token}");
                let groups = if rec.groups.is_empty() {
                    String::new()
                } else {
                    format!(", groups {}", rec.groups.join(","))
                };
                eprintln!(
                    "key {} ({}, {} on {}{groups}) created; the token above is shown only now",
                    rec.id,
                    rec.name,
                    rec.role.as_str(),
                    rec.collections.join(", ")
                );
            }
        }
        KeysCommand::List { json } => {
            let list = keys.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no keys (create one with `hearth keys create --name NAME --role ROLE`)");
            } else {
                for k in list {
                    let mut who = k.groups.join(",");
                    if let Some(u) = &k.user {
                        who = if who.is_empty() {
                            format!("user:{u}")
                        } else {
                            format!("user:{u},{who}")
                        };
                    }
                    println!(
                        "{}  {:<7} {:<24} {:<24} {}",
                        k.id,
                        k.role.as_str(),
                        k.collections.join(","),
                        if who.is_empty() { "-" } else { &who },
                        k.name
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if keys.revoke(&id).await? {
                println!("revoked {id}");
            } else {
                eprintln!("no key {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
        KeysCommand::RotateKek {
            new_kek_file,
            new_kek_env,
        } => {
            let new = EncryptionConfig {
                kek_file: new_kek_file,
                kek_env: new_kek_env,
            };
            // Opening the store above checked the current key.
            if let Err(e) = Store::rotate_kek(&cfg.storage, &new).await {
                super::audit::record(&cfg, "admin", "keys rotate-kek", None, false).await;
                return Err(e.into());
            }
            // Only the new key opens the store now: record under it.
            let mut rotated = cfg.clone();
            rotated.storage.encryption = new;
            super::audit::record(&rotated, "admin", "keys rotate-kek", None, true).await;
            println!(
                "data keys re-wrapped under the new key-encryption key; configure it (storage.encryption) before the next start: the old key no longer opens the store"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
