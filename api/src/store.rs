//! [`Store`]: the object store as the light commands see it (document lists, API keys, the
//! audit log, the residency report, key rotation), without loading any model. The
//! [`crate::Service`] is built on one.

use hearth_index::{
    BlobStore, CIPHER, CollectionName, EncryptionConfig, StorageConfig, WriteChecks,
};
use hearth_ingest::{DocRecord, DocState, Registry};
use sha2::{Digest, Sha256};

use crate::audit::AuditLog;
use crate::error::{Result, ServiceError};
use crate::keys::KeyStore;
use crate::residency::{AdapterDigest, EncryptionStatus, FileDigest};

/// An opened object store (local directory or S3), with encryption at rest when configured.
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) blob: BlobStore,
    /// This node's data directory, when known (for the audit log's node folder).
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// The document records, with the collections' catalog views (shared with the service's
    /// when the store is the service's).
    pub(crate) registry: Registry,
}

impl From<BlobStore> for Store {
    fn from(blob: BlobStore) -> Self {
        Self {
            registry: Registry::new(blob.clone()),
            blob,
            data_dir: None,
        }
    }
}

impl Store {
    /// Opens the store `cfg` describes (checking the key-encryption key of an encrypted one).
    pub async fn open(cfg: &StorageConfig) -> Result<Self> {
        let blob = BlobStore::open(cfg).await?;
        Ok(Self {
            registry: Registry::new(blob.clone()),
            blob,
            data_dir: Some(cfg.data_dir.clone()),
        })
    }

    /// Re-wraps the data keys of the encrypted store `cfg` names under the key-encryption key
    /// `new` names (one put of the keyring; content is not re-encrypted). Afterwards only the
    /// new key opens the store.
    pub async fn rotate_kek(cfg: &StorageConfig, new: &EncryptionConfig) -> Result<()> {
        let kek = new.load()?.ok_or_else(|| {
            ServiceError::InvalidInput(
                "name the new key-encryption key (a file or a variable)".into(),
            )
        })?;
        Ok(BlobStore::rotate_kek(cfg, &kek).await?)
    }

    /// Where the store is, for logs (`local DIR` or `s3 ENDPOINT/BUCKET`).
    pub fn describe(&self) -> &str {
        self.blob.describe()
    }

    /// Checks that the store keeps its promises on conditional writes, with a few throwaway
    /// objects (`hearth store check`; see [`WriteChecks`]).
    pub async fn check_conditional_writes(&self) -> Result<WriteChecks> {
        Ok(self.blob.check_conditional_writes().await?)
    }

    /// [`Store::check_conditional_writes`], refusing a store whose creates are not exclusive
    /// (the audit log's entries rely on them whenever two processes write the store: a node
    /// and a command-line run already are two) with a message naming the failed check.
    pub async fn require_exclusive_creates(&self) -> Result<WriteChecks> {
        let report = self.check_conditional_writes().await?;
        if let Some(c) = report.create_failure() {
            return Err(ServiceError::Unavailable(format!(
                "the object store {} failed the check {}: {}; hearth does not run on a store that loses concurrent writes (see `hearth store check`)",
                report.store, c.name, c.detail
            )));
        }
        Ok(report)
    }

    /// The API keys kept in this store.
    pub fn keys(&self) -> KeyStore {
        KeyStore::new(self.blob.clone())
    }

    /// The tenants kept in this store.
    pub fn tenants(&self) -> crate::tenants::TenantStore {
        crate::tenants::TenantStore::new(self.blob.clone())
    }

    /// The audit log kept in this store, with this node's audit folder (`{data_dir}/audit`:
    /// its witness and signing key) when the data directory is known.
    pub fn audit(&self) -> AuditLog {
        match &self.data_dir {
            Some(d) => AuditLog::with_local_dir(self.blob.clone(), d.join("audit")),
            None => AuditLog::new(self.blob.clone()),
        }
    }

    /// The records of a collection's documents, in id order, optionally only those in `state`.
    pub async fn documents(
        &self,
        c: &CollectionName,
        state: Option<DocState>,
    ) -> Result<Vec<DocRecord>> {
        let mut records = self.registry.list(c).await?;
        if let Some(s) = state {
            records.retain(|r| r.state == s);
        }
        Ok(records)
    }

    /// Encryption at rest as the residency report states it (`key_source` from `cfg`).
    pub fn encryption(&self, cfg: &StorageConfig) -> EncryptionStatus {
        if self.blob.encrypted() {
            EncryptionStatus {
                at_rest: true,
                algorithm: Some(format!(
                    "{CIPHER} per object, data keys wrapped by the key-encryption key"
                )),
                key_source: cfg.encryption.source(),
                index_cache_sealed: false,
            }
        } else {
            EncryptionStatus::off()
        }
    }

    /// SHA-256 of the adapter files kept in the store (what `hearth serve` registers at start).
    pub async fn adapter_digests(&self) -> Result<Vec<AdapterDigest>> {
        let mut out: Vec<AdapterDigest> = Vec::new();
        for key in self.blob.list("adapters/").await? {
            let Some((name, file)) = key
                .strip_prefix("adapters/")
                .and_then(|k| k.split_once('/'))
            else {
                continue;
            };
            let bytes = self.blob.get(&key).await?;
            let digest = FileDigest {
                role: file.to_owned(),
                path: key.clone(),
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            };
            match out.last_mut() {
                Some(a) if a.name == name => a.files.push(digest),
                _ => out.push(AdapterDigest {
                    name: name.to_owned(),
                    files: vec![digest],
                }),
            }
        }
        Ok(out)
    }
}
