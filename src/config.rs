//! Configuration layering: embedded defaults < `hearth.toml` < `HEARTH__SECTION__KEY`
//! environment variables < command-line flags. Validated once; every error names its key.

use std::path::{Path, PathBuf};

use hearth_api::config::{
    AskConfig, ClusterConfig, EngineConfig, IndexConfig, IngestConfig, ResidencyConfig,
    ServerConfig, StorageConfig,
};
use serde::Deserialize;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Object store and data directory.
    pub storage: StorageConfig,
    /// Ingestion.
    pub ingest: IngestConfig,
    /// Models and the embedder.
    pub engine: EngineConfig,
    /// The per-collection indexes.
    pub index: IndexConfig,
    /// `hearth serve`.
    pub server: ServerConfig,
    /// Grounded answers.
    pub ask: AskConfig,
    /// The node's jurisdiction.
    pub residency: ResidencyConfig,
    /// Replicas over one store.
    pub cluster: ClusterConfig,
}

/// A configuration problem: reported as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Values given as flags (or their `HEARTH_*` shortcut variables), applied last.
#[derive(Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
}

const ENV_PREFIX: &str = "HEARTH__";

impl AppConfig {
    /// Loads the configuration. `file` is the `--config` path; without it `./hearth.toml` is
    /// read when present.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(p) => read_table(p)?,
            None if Path::new("hearth.toml").is_file() => read_table(Path::new("hearth.toml"))?,
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError(format!(
                    "environment variable {name} has an empty key segment"
                )));
            }
            set_path(&mut table, &path, parse_env_value(&value))
                .map_err(|e| ConfigError(format!("{name}: {e}")))?;
        }
        let mut cfg: AppConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError(format!("{}: {}", e.path(), e.inner())))?;
        if let Some(d) = &overrides.data_dir {
            cfg.storage.data_dir = d.clone();
        }
        if let Some(m) = &overrides.models_dir {
            cfg.engine.models_dir = m.clone();
        }
        cfg.storage
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.ingest
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.engine
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.index
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.server
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.ask
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.residency
            .validate(&cfg.storage)
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        cfg.cluster
            .validate()
            .map_err(|e| ConfigError(strip_kind(e.to_string())))?;
        Ok(cfg)
    }
}

fn strip_kind(s: String) -> String {
    s.strip_prefix("invalid input: ")
        .map(str::to_owned)
        .unwrap_or(s)
}

fn read_table(p: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError(format!("{}: {e}", p.display())))
}

/// An environment value is read as a TOML value when it parses as one (numbers, booleans,
/// quoted strings, arrays), else as a bare string.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: Option<&str>, env: &[(&str, &str)]) -> Result<AppConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = toml_text.map(|t| {
            let p = dir.path().join("hearth.toml");
            std::fs::write(&p, t).unwrap();
            p
        });
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        AppConfig::load(file.as_deref(), env, &Overrides::default())
    }

    #[test]
    fn defaults_need_no_file() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("./hearth-data"));
        assert_eq!(c.ingest.chunk_tokens, 384);
        assert_eq!(c.ingest.chunk_overlap, 48);
    }

    #[test]
    fn the_example_file_lists_exactly_the_defaults() {
        let path = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("hearth.toml.example");
        let c = AppConfig::load(Some(&path), std::iter::empty(), &Overrides::default()).unwrap();
        let d = AppConfig::default();
        assert_eq!(c.storage, d.storage);
        assert_eq!(c.ingest, d.ingest);
        assert_eq!(c.engine, d.engine);
        assert_eq!(c.index, d.index);
        assert_eq!(c.server, d.server);
        assert_eq!(c.ask, d.ask);
        assert_eq!(c.residency, d.residency);
        assert_eq!(c.cluster, d.cluster);
    }

    #[test]
    fn cluster_settings_are_checked() {
        let c = load(None, &[("HEARTH__CLUSTER__ENABLED", "true")]).unwrap();
        assert!(c.cluster.enabled);
        for (k, v, needle) in [
            ("HEARTH__CLUSTER__POLL_MS", "10", "cluster.poll_ms"),
            ("HEARTH__CLUSTER__LEASE_S", "1", "cluster.lease_s"),
            ("HEARTH__CLUSTER__NAME", "", "cluster.name"),
        ] {
            let e = load(None, &[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let c = load(
            Some("[ingest]\nchunk_tokens = 128\nworkers = 3\n"),
            &[("HEARTH__INGEST__WORKERS", "5")],
        )
        .unwrap();
        assert_eq!(c.ingest.chunk_tokens, 128);
        assert_eq!(c.ingest.workers, 5);
        let o = Overrides {
            data_dir: Some("/x".into()),
            models_dir: None,
        };
        let c = AppConfig::load(None, std::iter::empty(), &o).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(Some("[ingest]\nchunk_tokens = \"big\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.chunk_tokens"), "{e}");
        let e = load(None, &[("HEARTH__INGEST__CHUNK_OVERLAP", "300")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.chunk_overlap"), "{e}");
        let e = load(Some("[storage]\nbogus = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load(Some("[storage]\nbackend = \"s3\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.s3.endpoint"), "{e}");
        let e = load(None, &[("HEARTH__ENGINE__EMBED_PRECISION", "int4")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("engine.embed_precision") && e.contains("int8"),
            "{e}"
        );
        let c = load(Some("[engine]\nembed_precision = \"f32\"\n"), &[]).unwrap();
        assert_eq!(
            c.engine.embed_precision,
            hearth_api::config::EmbedPrecision::F32
        );
        let c = load(None, &[("HEARTH__ENGINE__KV_PRECISION", "f16")]).unwrap();
        assert_eq!(c.engine.kv_precision, hearth_api::config::KvPrecision::F16);
        let e = load(Some("[engine]\nkv_precision = \"f8\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("engine.kv_precision") && e.contains("f16"),
            "{e}"
        );
    }
}
