//! Residency: the node's jurisdiction (`[residency]`), and the report a compliance officer
//! attaches to an audit (`GET /v1/residency`, `hearth residency`): where data is stored and in
//! which jurisdiction, the only origins the process may connect to, the SHA-256 of every model
//! and adapter file, whether data is encrypted at rest, and the build.
//!
//! File digests are computed on first use and cached by (path, size, modification time), so a
//! report costs one pass over the model files per process, not one per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use hearth_index::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};

/// `[residency]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResidencyConfig {
    /// The jurisdiction this node and its data stay in (any label, e.g. `eu`, `de`, `ch-health`).
    /// When set, every object store must declare the same label or start-up is refused.
    pub jurisdiction: Option<String>,
    /// Origins (`scheme://host:port`) the node may connect to besides its object store: the
    /// identity provider whose signing keys `server.oidc` fetches. Nothing else is reached.
    #[serde(default)]
    pub egress_allow: Vec<String>,
}

impl ResidencyConfig {
    /// Checks the label and the storage configuration against it.
    pub fn validate(&self, storage: &StorageConfig) -> Result<()> {
        hearth_index::EgressClient::new(&self.egress_allow)
            .map_err(|e| ServiceError::InvalidInput(format!("residency.egress_allow: {e}")))?;
        let Some(j) = &self.jurisdiction else {
            return Ok(());
        };
        let ok = (1..=64).contains(&j.len())
            && j.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(ServiceError::InvalidInput(format!(
                "residency.jurisdiction {j:?} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'"
            )));
        }
        storage.check_jurisdiction(j)?;
        Ok(())
    }
}

/// One storage endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StorageEndpoint {
    /// `local` or `s3`.
    pub backend: String,
    /// Directory, or endpoint/bucket[/prefix].
    pub location: String,
    /// The jurisdiction the endpoint declares; for the local backend, the node's.
    pub jurisdiction: Option<String>,
}

/// A file and its SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FileDigest {
    /// What the file is (`generator`, `embedding model`, `embedding tokenizer`, ...), or the
    /// file name for an adapter's files.
    pub role: String,
    /// Where it was read from.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// A LoRA adapter's files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AdapterDigest {
    /// Adapter name.
    pub name: String,
    /// Its files.
    pub files: Vec<FileDigest>,
}

/// Encryption at rest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EncryptionStatus {
    /// Whether objects written to the store are encrypted.
    pub at_rest: bool,
    /// The content cipher, when encrypting.
    pub algorithm: Option<String>,
    /// Where the key-encryption key comes from (`file:PATH` or `env:NAME`), never the key.
    pub key_source: Option<String>,
    /// Whether the node's local index cache is sealed too (`index.encrypt_cache`); when false
    /// it holds chunk text, names and vectors in plaintext on the node's disk.
    #[serde(default)]
    pub index_cache_sealed: bool,
}

impl EncryptionStatus {
    /// Nothing is encrypted.
    pub fn off() -> Self {
        Self {
            at_rest: false,
            algorithm: None,
            key_source: None,
            index_cache_sealed: false,
        }
    }
}

/// The build.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BuildInfo {
    /// Package version.
    pub version: String,
    /// Source revision (`git rev-parse`), `unknown` outside a checkout.
    pub commit: String,
    /// `release` or `debug`.
    pub profile: String,
    /// Cargo features compiled in.
    pub features: Vec<String>,
}

/// The residency report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ResidencyReport {
    /// The node's jurisdiction, or `null` when none is configured.
    pub jurisdiction: Option<String>,
    /// Whether start-up checked every store against the jurisdiction.
    pub enforced: bool,
    /// Where data is stored.
    pub storage: Vec<StorageEndpoint>,
    /// The only origins the process may open connections to (`scheme://host:port`); empty
    /// with the local backend. Inbound connections (the API) are not listed.
    pub egress_allowlist: Vec<String>,
    /// Telemetry sent anywhere: always `false`.
    pub telemetry: bool,
    /// Models are read from local files only; nothing is downloaded at run time.
    pub models: Vec<FileDigest>,
    /// Registered LoRA adapters.
    pub adapters: Vec<AdapterDigest>,
    /// Encryption at rest.
    pub encryption: EncryptionStatus,
    /// The build.
    pub build: BuildInfo,
}

/// What does not change while the process runs, plus the digest cache.
pub struct Residency {
    jurisdiction: Option<String>,
    storage: Vec<StorageEndpoint>,
    egress_allowlist: Vec<String>,
    models: Vec<(String, PathBuf)>,
    encryption: EncryptionStatus,
    build: BuildInfo,
    cache: Mutex<HashMap<PathBuf, Hashed>>,
}

/// A file's digest and the size and modification time it was computed at.
struct Hashed {
    len: u64,
    modified: Option<SystemTime>,
    sha256: String,
}

/// What a [`Residency`] is built from.
pub struct ResidencyParts<'a> {
    /// `[residency]`.
    pub config: &'a ResidencyConfig,
    /// `[storage]`.
    pub storage: &'a StorageConfig,
    /// Model files in use: (role, path).
    pub models: Vec<(String, PathBuf)>,
    /// Encryption at rest.
    pub encryption: EncryptionStatus,
    /// The build.
    pub build: BuildInfo,
}

impl Residency {
    /// Collects the static part of the report.
    pub fn new(parts: ResidencyParts<'_>) -> Result<Self> {
        let jurisdiction = parts.config.jurisdiction.clone();
        let storage = parts
            .storage
            .endpoints()
            .into_iter()
            .map(|(backend, location, declared)| StorageEndpoint {
                backend: backend.to_owned(),
                location,
                jurisdiction: declared
                    .or_else(|| (backend == "local").then(|| jurisdiction.clone()).flatten()),
            })
            .collect();
        Ok(Self {
            egress_allowlist: {
                let mut all = parts.storage.egress_allowlist()?;
                for o in &parts.config.egress_allow {
                    // Shown as the allowlist normalises it.
                    let url = url::Url::parse(o).map_err(|e| {
                        ServiceError::InvalidInput(format!("residency.egress_allow {o:?}: {e}"))
                    })?;
                    let origin = format!(
                        "{}://{}:{}",
                        url.scheme(),
                        url.host_str().unwrap_or_default(),
                        url.port_or_known_default().unwrap_or_default()
                    );
                    if !all.contains(&origin) {
                        all.push(origin);
                    }
                }
                all
            },
            jurisdiction,
            storage,
            models: parts.models,
            encryption: parts.encryption,
            build: parts.build,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The report, with `adapters` as (name, files) pairs. Reads (and hashes, once) every
    /// file: call it off the async threads.
    pub fn report(&self, adapters: Vec<(String, Vec<PathBuf>)>) -> Result<ResidencyReport> {
        let models = self
            .models
            .iter()
            .map(|(role, path)| self.digest(role, path))
            .collect::<Result<Vec<_>>>()?;
        let mut adapter_digests = Vec::with_capacity(adapters.len());
        for (name, files) in adapters {
            let files = files
                .iter()
                .map(|p| {
                    let role = p
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    self.digest(&role, p)
                })
                .collect::<Result<Vec<_>>>()?;
            adapter_digests.push(AdapterDigest { name, files });
        }
        adapter_digests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ResidencyReport {
            enforced: self.jurisdiction.is_some(),
            jurisdiction: self.jurisdiction.clone(),
            storage: self.storage.clone(),
            egress_allowlist: self.egress_allowlist.clone(),
            telemetry: false,
            models,
            adapters: adapter_digests,
            encryption: self.encryption.clone(),
            build: self.build.clone(),
        })
    }

    fn digest(&self, role: &str, path: &Path) -> Result<FileDigest> {
        let io = |e: std::io::Error| {
            ServiceError::Internal(format!("reading {} for its digest: {e}", path.display()))
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .filter(|h| h.len == len && h.modified == modified)
            .map(|h| h.sha256.clone());
        let sha256 = match cached {
            Some(sha) => sha,
            None => {
                let sha = hearth_index::sha256_file(path)?;
                self.cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        path.to_owned(),
                        Hashed {
                            len,
                            modified,
                            sha256: sha.clone(),
                        },
                    );
                sha
            }
        };
        Ok(FileDigest {
            role: role.to_owned(),
            path: path.display().to_string(),
            bytes: meta.len(),
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_index::{S3Config, StorageBackend};

    fn s3(jurisdiction: &str) -> StorageConfig {
        StorageConfig {
            backend: StorageBackend::S3,
            s3: S3Config {
                endpoint: "http://10.1.2.3:8333".into(),
                bucket: "b".into(),
                jurisdiction: jurisdiction.into(),
                ..S3Config::default()
            },
            ..StorageConfig::default()
        }
    }

    fn policy(j: &str) -> ResidencyConfig {
        ResidencyConfig {
            jurisdiction: Some(j.into()),
            egress_allow: Vec::new(),
        }
    }

    #[test]
    fn stores_must_declare_the_nodes_jurisdiction() {
        assert!(policy("eu").validate(&s3("eu")).is_ok());
        assert!(policy("eu").validate(&StorageConfig::default()).is_ok());
        assert!(ResidencyConfig::default().validate(&s3("")).is_ok());
        let msg = policy("eu").validate(&s3("us")).unwrap_err().to_string();
        assert!(msg.contains("\"us\"") && msg.contains("\"eu\""), "{msg}");
        let msg = policy("eu").validate(&s3("")).unwrap_err().to_string();
        assert!(
            msg.contains("storage.s3.jurisdiction is not declared"),
            "{msg}"
        );
        for bad in ["", "e u", "../x", &"x".repeat(65)] {
            assert!(policy(bad).validate(&s3(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_is_truthful_and_digests_follow_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"abc").unwrap();
        let r = Residency::new(ResidencyParts {
            config: &policy("eu"),
            storage: &s3("eu"),
            models: vec![("generator".into(), model.clone())],
            encryption: EncryptionStatus::off(),
            build: BuildInfo {
                version: "0".into(),
                commit: "c".into(),
                profile: "debug".into(),
                features: vec![],
            },
        })
        .unwrap();
        let rep = r.report(vec![]).unwrap();
        assert_eq!(
            rep.egress_allowlist,
            vec!["http://10.1.2.3:8333".to_owned()]
        );
        assert_eq!(rep.storage[0].jurisdiction.as_deref(), Some("eu"));
        assert!(rep.enforced && !rep.telemetry);
        // SHA-256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(rep.models[0].sha256, abc);
        std::fs::write(&model, b"abcd").unwrap();
        let rep = r.report(vec![]).unwrap();
        assert_ne!(rep.models[0].sha256, abc, "a changed file is hashed again");
        assert_eq!(rep.models[0].bytes, 4);
        std::fs::remove_file(&model).unwrap();
        assert!(
            r.report(vec![]).is_err(),
            "a missing model file is an error, not a stale digest"
        );
    }
}
