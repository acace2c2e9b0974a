//! Storage configuration.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{IndexError, Result};

/// Where hearth keeps its data.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Local data directory: caches, and the object store itself when `backend = "local"`.
    /// Default: `./hearth-data`.
    pub data_dir: PathBuf,
    /// Which object store is the source of truth. Default: `local`.
    pub backend: StorageBackend,
    /// Settings of the S3-compatible store, used when `backend = "s3"`.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./hearth-data"),
            backend: StorageBackend::Local,
            s3: S3Config::default(),
        }
    }
}

/// The object-store backend.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// A directory on local disk: `{data_dir}/store`.
    Local,
    /// An S3-compatible store (R2, MinIO, SeaweedFS, Ceph...).
    S3,
}

/// An S3-compatible endpoint.
#[derive(Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:8333` or `https://<account>.eu.r2.cloudflarestorage.com`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region (`auto` for R2). Default: `us-east-1`, which most S3-compatible stores accept.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key. Never logged.
    pub secret_access_key: String,
    /// Key prefix inside the bucket, so several deployments can share one bucket.
    pub prefix: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StorageConfig {
    /// Checks the settings; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(IndexError::InvalidInput(
                "storage.data_dir must not be empty".into(),
            ));
        }
        if self.backend == StorageBackend::S3 {
            let s3 = &self.s3;
            for (key, value) in [
                ("storage.s3.endpoint", &s3.endpoint),
                ("storage.s3.bucket", &s3.bucket),
            ] {
                if value.trim().is_empty() {
                    return Err(IndexError::InvalidInput(format!(
                        "{key} must be set when storage.backend = \"s3\""
                    )));
                }
            }
            if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
                return Err(IndexError::InvalidInput(format!(
                    "storage.s3.endpoint must be an http:// or https:// URL, got {:?}",
                    s3.endpoint
                )));
            }
        }
        Ok(())
    }
}
