//! The object store: our narrow, typed view of the `object_store` crate.
//!
//! Two backends: a local directory (the default) and any S3-compatible store. Both give the same
//! guarantees hearth relies on: a `put` replaces the whole object atomically (readers see the old
//! or the new bytes, never a mix), and an acknowledged `put` survives a crash of this process.
//! (The local backend writes to a staging file and renames it into place.) With
//! `storage.fsync` (the default) the local backend also syncs the file and the directories
//! naming it before a put or a delete returns, so acknowledged writes and deletes survive a
//! power cut as well, as an S3 store's do.
//!
//! With `[storage.encryption]` configured, every object but the keyring is sealed on `put` and
//! opened on `get` (see `crypto`); callers never see ciphertext.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::{S3Config, StorageBackend, StorageConfig};
use crate::crypto::{KEYRING_KEY, Kek, Sealer};
use crate::egress::{AllowlistConnector, Origin};
use crate::error::{IndexError, Result};

mod probe;
pub use probe::{Outcome, WriteCheck, WriteChecks};

/// A handle on the object store. Cheap to clone; safe to share across tasks.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    describe: Arc<str>,
    sealer: Option<Arc<Sealer>>,
    /// The local backend's directory when deletes are synced (`storage.fsync`).
    synced_root: Option<Arc<std::path::Path>>,
    /// A store across a network (S3), whose listings are worth splitting.
    remote: bool,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlobStore").field(&self.describe).finish()
    }
}

impl BlobStore {
    /// Opens the store the configuration names, with encryption at rest when it is configured.
    /// For the local backend the directory `{data_dir}/store` is created if missing.
    ///
    /// An encrypted store (one with a keyring) cannot be opened without its key-encryption key,
    /// nor with a wrong one; encryption can be turned on only for an empty store, whose keyring
    /// is then created.
    pub async fn open(config: &StorageConfig) -> Result<Self> {
        let plain = Self::open_plain(config)?;
        let kek = config.encryption.load()?;
        plain.with_encryption(kek).await
    }

    fn open_plain(config: &StorageConfig) -> Result<Self> {
        config.validate()?;
        match config.backend {
            StorageBackend::Local => {
                Self::local_synced(&config.data_dir.join("store"), config.fsync)
            }
            StorageBackend::S3 => Self::s3(&config.s3),
        }
    }

    async fn with_encryption(mut self, kek: Option<Kek>) -> Result<Self> {
        let ring = self.get_opt(KEYRING_KEY).await?;
        let sealer = match (kek, ring) {
            (None, None) => return Ok(self),
            (None, Some(_)) => {
                return Err(IndexError::InvalidInput(format!(
                    "the store {} is encrypted ({KEYRING_KEY} exists): set storage.encryption.kek_file or kek_env to its key-encryption key",
                    self.describe
                )));
            }
            (Some(kek), Some(ring)) => Sealer::open(&kek, &ring)?,
            (Some(kek), None) => {
                if !self.list("").await?.is_empty() {
                    return Err(IndexError::InvalidInput(format!(
                        "storage.encryption is configured, but the store {} already holds unencrypted objects; encryption can only be turned on for an empty store",
                        self.describe
                    )));
                }
                let (sealer, bytes) = Sealer::create(&kek)?;
                // No sealer yet: the keyring goes in as it is.
                if self.put_new(KEYRING_KEY, bytes).await? {
                    tracing::info!(store = %self.describe, "created the encryption keyring");
                    sealer
                } else {
                    // Another process created it first: use theirs.
                    Sealer::open(&kek, &self.get(KEYRING_KEY).await?)?
                }
            }
        };
        self.sealer = Some(Arc::new(sealer));
        Ok(self)
    }

    /// Whether objects are encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// What seals a local index cache with this store's data keys; `None` for a plain store.
    pub fn cache_sealer(&self) -> Option<crate::crypto::CacheSealer> {
        self.sealer.clone().map(crate::crypto::CacheSealer::new)
    }

    /// Re-wraps the data keys of the encrypted store `config` names from its configured
    /// key-encryption key to `new` (one atomic put of the keyring; content is not re-encrypted).
    /// Afterwards only `new` opens the store.
    pub async fn rotate_kek(config: &StorageConfig, new: &Kek) -> Result<()> {
        let store = Self::open_plain(config)?;
        let old = config.encryption.load()?.ok_or_else(|| {
            IndexError::InvalidInput(
                "rotating needs the current key: set storage.encryption.kek_file or kek_env".into(),
            )
        })?;
        let ring = store.get_opt(KEYRING_KEY).await?.ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "the store {} is not encrypted (no {KEYRING_KEY})",
                store.describe
            ))
        })?;
        let rotated = crate::crypto::rewrap(&ring, &old, new)?;
        store.put(KEYRING_KEY, rotated).await
    }

    /// A store rooted at a local directory (created if missing), synced as with
    /// `storage.fsync` on.
    pub fn local(dir: &std::path::Path) -> Result<Self> {
        Self::local_synced(dir, true)
    }

    /// A store rooted at a local directory (created if missing); with `fsync`, writes and
    /// deletes reach the disk before they return (see the module documentation).
    pub fn local_synced(dir: &std::path::Path, fsync: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Store {
            key: dir.display().to_string(),
            source: Box::new(e),
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| store_error(&dir.display().to_string(), e))?
            .with_automatic_cleanup(true)
            .with_fsync(fsync);
        Ok(Self {
            inner: Arc::new(fs),
            describe: format!("local:{}", dir.display()).into(),
            sealer: None,
            synced_root: fsync.then(|| Arc::from(dir)),
            remote: false,
        })
    }

    /// A store in an S3-compatible bucket. Plain `http://` endpoints are allowed (a store on the
    /// same host or a private network inside the jurisdiction). Its HTTP client can reach the
    /// endpoint's origin and nothing else (see `egress`).
    pub fn s3(cfg: &S3Config) -> Result<Self> {
        let region = if cfg.region.is_empty() {
            "us-east-1"
        } else {
            &cfg.region
        };
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_bucket_name(&cfg.bucket)
            .with_region(region)
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_http_connector(AllowlistConnector::new(vec![Origin::of_url(
                &cfg.endpoint,
            )?]));
        if cfg.access_key_id.is_empty() {
            builder = builder.with_skip_signature(true);
        } else {
            builder = builder
                .with_access_key_id(&cfg.access_key_id)
                .with_secret_access_key(&cfg.secret_access_key);
        }
        let s3 = builder
            .build()
            .map_err(|e| IndexError::InvalidInput(format!("storage.s3: {e}")))?;
        let describe = format!("s3:{}/{}", cfg.endpoint.trim_end_matches('/'), cfg.bucket);
        let prefix = cfg.prefix.trim_matches('/');
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            inner,
            describe: describe.into(),
            sealer: None,
            synced_root: None,
            remote: true,
        })
    }

    /// A human-readable description of the backend (`local:/path` or `s3:endpoint/bucket`).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Writes `bytes` at `key`, replacing any previous object atomically.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let bytes = match &self.sealer {
            Some(s) => s.seal(key, &bytes)?,
            None => bytes,
        };
        self.inner
            .put(&path(key)?, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| store_error(key, e))?;
        Ok(())
    }

    /// Writes `bytes` at `key` only if no object is there yet (a conditional put: the local
    /// backend's exclusive create, S3's `If-None-Match: *`): `Ok(false)`, and nothing written,
    /// when one is. Two writers racing for one key: exactly one gets `true`.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        Ok(self
            .put_conditional(key, bytes, PutMode::Create)
            .await?
            .is_some())
    }

    /// Reads the object at `key` with its version tag (the store's ETag), or `None`.
    pub async fn get_tagged(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        match self.inner.get(&path(key)?).await {
            Ok(r) => {
                let tag = r
                    .meta
                    .e_tag
                    .clone()
                    .ok_or_else(|| no_tag(&self.describe, key))?;
                let bytes = r.bytes().await.map_err(|e| store_error(key, e))?;
                let bytes = match &self.sealer {
                    Some(s) => s.open_object(key, bytes)?,
                    None => bytes,
                };
                Ok(Some((bytes, tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(key, e)),
        }
    }

    /// [`BlobStore::put_new`] that gives the new object's version tag: `Ok(None)`, and nothing
    /// written, when an object is there already.
    pub async fn put_new_tagged(&self, key: &str, bytes: Bytes) -> Result<Option<String>> {
        let put = self.put_conditional(key, bytes, PutMode::Create).await?;
        put.map(|r| r.e_tag.ok_or_else(|| no_tag(&self.describe, key)))
            .transpose()
    }

    /// Replaces the object at `key` only if its version tag is still `tag` (S3's `If-Match`):
    /// `Ok(Some(new tag))`, or `Ok(None)` and nothing written when it changed or went. Two
    /// writers naming one tag: at most one succeeds. The local backend has no such write:
    /// [`IndexError::InvalidInput`].
    pub async fn put_if_tag(&self, key: &str, bytes: Bytes, tag: &str) -> Result<Option<String>> {
        let mode = PutMode::Update(object_store::UpdateVersion {
            e_tag: Some(tag.to_owned()),
            version: None,
        });
        let put = self.put_conditional(key, bytes, mode).await?;
        put.map(|r| r.e_tag.ok_or_else(|| no_tag(&self.describe, key)))
            .transpose()
    }

    /// A conditional put: `Ok(None)`, and nothing written, when the condition did not hold.
    async fn put_conditional(
        &self,
        key: &str,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<Option<object_store::PutResult>> {
        let bytes = match &self.sealer {
            Some(s) => s.seal(key, &bytes)?,
            None => bytes,
        };
        let what = if matches!(mode, PutMode::Create) {
            "create (If-None-Match)"
        } else {
            "update (If-Match)"
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&path(key)?, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(None),
            Err(object_store::Error::NotImplemented { .. }) => {
                Err(IndexError::InvalidInput(format!(
                    "the store {} has no conditional {what}: several writers need a shared store that has one, such as S3",
                    self.describe
                )))
            }
            Err(e) => Err(store_error(key, e)),
        }
    }

    /// Whether no object's key starts with `prefix` (one listing request at most).
    pub async fn is_empty_under(&self, prefix: &str) -> Result<bool> {
        let p = path(prefix.trim_end_matches('/'))?;
        let first = self
            .inner
            .list(Some(&p))
            .try_next()
            .await
            .map_err(|e| store_error(prefix, e))?;
        Ok(first.is_none())
    }

    /// Reads the whole object at `key`; [`IndexError::NotFound`] if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_opt(key)
            .await?
            .ok_or_else(|| IndexError::NotFound(key.to_owned()))
    }

    /// Reads the whole object at `key`, or `None` if it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.inner.get(&path(key)?).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| store_error(key, e))?;
                match &self.sealer {
                    Some(s) => s.open_object(key, bytes).map(Some),
                    None => Ok(Some(bytes)),
                }
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(key, e)),
        }
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.inner.head(&path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(key, e)),
        }
    }

    /// Deletes the object at `key`. Deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let p = path(key)?;
        match self.inner.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(key, e)),
        }
        if let Some(root) = &self.synced_root {
            // The crate syncs puts, not deletes: an erased document must not come back after
            // a power cut. The directory that held the entry is synced; where the automatic
            // cleanup removed it (it was left empty), the nearest one still there, whose entry
            // for it went.
            let mut dir = p
                .parts()
                .fold(root.to_path_buf(), |d, part| d.join(part.as_ref()));
            let root = root.clone();
            let synced = tokio::task::spawn_blocking(move || {
                while dir.pop() && dir.starts_with(&root) {
                    match std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        other => return other,
                    }
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            synced.map_err(|e| IndexError::Store {
                key: key.to_owned(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Every key under `prefix` with its version tag (the ETag; the modification time and size
    /// where a store gives none), sorted by key: listings only, no object read. On S3 the
    /// key space is listed in 16 ranges at once (by the first character after the prefix,
    /// as hex names spread), since one listing pages through 1,000 keys a request.
    pub async fn list_tagged(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut keys = if self.remote {
            self.list_tagged_ranges(prefix).await?
        } else {
            self.list_tagged_range(prefix, None, None).await?
        };
        keys.sort_unstable();
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }

    async fn list_tagged_ranges(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let ranges = (0..DIGITS.len()).map(|i| {
            // Range i: after every key that starts with the previous digit (`~` sorts after
            // every name character), up to the first that starts with the next one. The
            // first and last ranges are open, so a key of any name is listed, at worst twice.
            let after = (i > 0).then(|| format!("{prefix}{}~", char::from(DIGITS[i - 1])));
            let until =
                (i + 1 < DIGITS.len()).then(|| format!("{prefix}{}", char::from(DIGITS[i + 1])));
            self.list_tagged_range(prefix, after, until)
        });
        let parts: Vec<Vec<(String, String)>> = futures::stream::iter(ranges)
            .buffer_unordered(DIGITS.len())
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// The keys under `prefix` after `after` (all when `None`) and before `until`.
    async fn list_tagged_range(
        &self,
        prefix: &str,
        after: Option<String>,
        until: Option<String>,
    ) -> Result<Vec<(String, String)>> {
        let p = path(prefix.trim_end_matches('/'))?;
        let mut stream = match &after {
            Some(a) => self.inner.list_with_offset(Some(&p), &path(a)?),
            None => self.inner.list(Some(&p)),
        };
        let mut keys = Vec::new();
        while let Some(meta) = stream
            .try_next()
            .await
            .map_err(|e| store_error(prefix, e))?
        {
            let key = meta.location.to_string();
            if until.as_ref().is_some_and(|u| key >= *u) {
                break;
            }
            let tag = meta.e_tag.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
                    meta.size
                )
            });
            keys.push((key, tag));
        }
        Ok(keys)
    }

    /// Every key under `prefix` with the time its object was last written, sorted by key.
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>> {
        let p = path(prefix.trim_end_matches('/'))?;
        let mut keys: Vec<(String, std::time::SystemTime)> = self
            .inner
            .list(Some(&p))
            .map_ok(|meta| (meta.location.to_string(), meta.last_modified.into()))
            .try_collect()
            .await
            .map_err(|e| store_error(prefix, e))?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// Every key under `prefix` (a folder-like prefix ending in `/`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = path(prefix.trim_end_matches('/'))?;
        let mut keys: Vec<String> = self
            .inner
            .list(Some(&p))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| store_error(prefix, e))?;
        keys.sort_unstable();
        Ok(keys)
    }
}

fn path(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|e| IndexError::InvalidInput(format!("invalid key {key:?}: {e}")))
}

fn no_tag(store: &str, key: &str) -> IndexError {
    IndexError::Store {
        key: key.to_owned(),
        source: format!("the store {store} gave no ETag: conditional writes need one").into(),
    }
}

fn store_error(key: &str, e: object_store::Error) -> IndexError {
    IndexError::Store {
        key: key.to_owned(),
        source: Box::new(e),
    }
}
