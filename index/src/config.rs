//! Storage and retrieval-index configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::crypto::EncryptionConfig;
use crate::error::{IndexError, Result};
use crate::hybrid::Fusion;
use crate::lexical::Analyzer;
use crate::retrieval::IndexParams;
use crate::vector::AnnKind;

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
    /// Encryption at rest of everything in the object store.
    pub encryption: EncryptionConfig,
    /// With the local backend: each object and the directory entries naming it reach the disk
    /// (fsync) before a write or delete is acknowledged, so a power cut loses nothing hearth
    /// said it had stored or forgets nothing it said it had deleted. Off, the OS writes them
    /// back in its own time (a crash of hearth alone still loses nothing). Default: on.
    pub fsync: bool,
    /// At `hearth serve` start-up, check with a few throwaway objects that the store keeps its
    /// promises on conditional writes (what `hearth store check` reports); a store that lets
    /// two creates of one key both succeed is refused, since the audit log of every process
    /// writing the store relies on them. Default: on.
    pub check_writes: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./hearth-data"),
            backend: StorageBackend::Local,
            s3: S3Config::default(),
            encryption: EncryptionConfig::default(),
            fsync: true,
            check_writes: true,
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
    /// The jurisdiction the store's data stays in (any label, e.g. `eu`); must equal
    /// `residency.jurisdiction` when that is set, or start-up is refused.
    pub jurisdiction: String,
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
            .field("jurisdiction", &self.jurisdiction)
            .finish()
    }
}

impl StorageConfig {
    /// Checks the settings; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        self.encryption.validate()?;
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

    /// Checks the store against the node's jurisdiction: an S3 store must declare the same
    /// label. The local backend is the node's own disk, inside the node's jurisdiction.
    pub fn check_jurisdiction(&self, jurisdiction: &str) -> Result<()> {
        if self.backend == StorageBackend::Local {
            return Ok(());
        }
        let declared = self.s3.jurisdiction.trim();
        if declared.is_empty() {
            return Err(IndexError::InvalidInput(format!(
                "storage.s3.jurisdiction is not declared for {}; residency.jurisdiction = {jurisdiction:?} requires every store to declare it",
                self.s3.endpoint
            )));
        }
        if declared != jurisdiction {
            return Err(IndexError::InvalidInput(format!(
                "storage.s3 at {} is in jurisdiction {declared:?}, but residency.jurisdiction = {jurisdiction:?}; refusing to store data there",
                self.s3.endpoint
            )));
        }
        Ok(())
    }

    /// The storage endpoints this configuration sends data to: `(backend, location,
    /// declared jurisdiction)`; the local backend declares none of its own.
    pub fn endpoints(&self) -> Vec<(&'static str, String, Option<String>)> {
        match self.backend {
            StorageBackend::Local => vec![(
                "local",
                self.data_dir.join("store").display().to_string(),
                None,
            )],
            StorageBackend::S3 => {
                let s3 = &self.s3;
                let mut location = format!("{}/{}", s3.endpoint.trim_end_matches('/'), s3.bucket);
                let prefix = s3.prefix.trim_matches('/');
                if !prefix.is_empty() {
                    location = format!("{location}/{prefix}");
                }
                let j = s3.jurisdiction.trim();
                vec![("s3", location, (!j.is_empty()).then(|| j.to_owned()))]
            }
        }
    }

    /// The origins (`scheme://host:port`) hearth may open connections to: the S3 endpoint, or
    /// none for the local backend.
    pub fn egress_allowlist(&self) -> Result<Vec<String>> {
        match self.backend {
            StorageBackend::Local => Ok(Vec::new()),
            StorageBackend::S3 => Ok(vec![
                crate::egress::Origin::of_url(&self.s3.endpoint)?
                    .as_str()
                    .to_owned(),
            ]),
        }
    }
}

/// Settings of the per-collection retrieval index (`[index]`).
///
/// `hnsw_m`, `ef_construction` and `analyzer` are format-affecting: they apply to collections
/// created afterwards and are checked against each existing collection's manifest on open.
/// `ef_search` and the fusion settings may change freely.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// HNSW neighbours per node (`M`), 2–256. Default: 16.
    pub hnsw_m: usize,
    /// HNSW candidate list size while building, 1–10 000. Default: 200.
    pub ef_construction: usize,
    /// HNSW candidate list size while searching, 1–10 000. Default: 64.
    pub ef_search: usize,
    /// Text analyzer for BM25. Default: `english_stem`.
    pub analyzer: Analyzer,
    /// The approximate vector index: `graph` (hearth's own, on 7-bit codes with exact
    /// rescoring) or `hnsw_rs` (the crate, kept for comparison). May change at any time: a
    /// collection builds the graph of the new kind at its next open. Default: `graph`.
    pub ann: AnnKind,
    /// Hybrid fusion method, `weighted` or `rrf`. Default: `weighted` (on hearth's labelled
    /// retrieval set it beats both dense and BM25 alone; RRF trails dense on nDCG@10 there —
    /// BENCHMARKS.md has the figures).
    pub fusion: FusionKind,
    /// RRF rank constant `k`, finite and >= 0. Default: 60.
    pub rrf_k: f32,
    /// Weight of the dense side, in [0, 1]: of its normalised score for `weighted`, of its
    /// reciprocal ranks for `rrf` (0.5 = classic RRF). Default: 0.6.
    pub dense_weight: f32,
    /// Settings of the collections of one embedding model (`engine.embedders`), by its name,
    /// over the ones above: a multilingual model's collections want BM25 in each chunk's
    /// language and more weight on the dense side, which is what carries a question across
    /// languages. Built in, under a setting left out here: `embeddinggemma-300m` has
    /// `dense_weight = 0.8, analyzer = "auto"` (measured on the multilingual set,
    /// BENCHMARKS.md "EmbeddingGemma-300M"). Default: none.
    pub models: BTreeMap<String, ModelIndexConfig>,
    /// Seal the node's local index cache with the store's data keys (needs
    /// `storage.encryption`): no chunk text, title, source name or vector is written to the
    /// data directory in plaintext. BM25 and the HNSW graph then live in memory and are
    /// rebuilt at every open. Default: false.
    pub encrypt_cache: bool,
    /// Publish each collection's index to the object store after its commits (segments,
    /// graph, BM25 and a manifest, `published.rs`), so that a node with an empty cache fetches
    /// it instead of rebuilding it from every document. Costs store space about the size of
    /// the local index. Default: true.
    pub publish: bool,
    /// Seconds a published file no manifest names is left in the store before it is
    /// collected (a writer between its upload and its commit, or a fetch of a generation just
    /// superseded), at most a week. Default: 900.
    pub publish_grace_s: u64,
}

/// The index settings of one embedding model's collections (`[index.models.NAME]`); what is
/// left out is the node's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelIndexConfig {
    /// Weight of the dense side, in [0, 1].
    pub dense_weight: Option<f32>,
    /// Text analyzer for BM25 (format-affecting, as `index.analyzer`).
    pub analyzer: Option<Analyzer>,
}

impl ModelIndexConfig {
    /// The built-in settings of the model named `model`, as `engine.embedders` names it in
    /// `hearth.toml.example` and `scripts/fetch-models.sh`.
    fn known(model: &str) -> Self {
        match model {
            "embeddinggemma-300m" => Self {
                dense_weight: Some(0.8),
                analyzer: Some(Analyzer::Auto),
            },
            _ => Self::default(),
        }
    }
}

/// The fusion methods, as named in configuration.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FusionKind {
    /// Reciprocal rank fusion.
    Rrf,
    /// Weighted sum of min-max normalised scores.
    Weighted,
}

/// The method of [`Fusion::default`].
impl Default for FusionKind {
    fn default() -> Self {
        IndexConfig::default().fusion
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        // The fusion settings are `Fusion::default()` taken apart, so that there is one default.
        let (fusion, rrf_k, dense_weight) = match Fusion::default() {
            Fusion::Rrf { k, dense_weight } => (FusionKind::Rrf, k, dense_weight),
            Fusion::Weighted { dense_weight } => {
                (FusionKind::Weighted, Fusion::DEFAULT_RRF_K, dense_weight)
            }
        };
        Self {
            hnsw_m: 16,
            ef_construction: 200,
            ef_search: 64,
            analyzer: Analyzer::EnglishStem,
            ann: AnnKind::Graph,
            fusion,
            rrf_k,
            dense_weight,
            models: BTreeMap::new(),
            encrypt_cache: false,
            publish: true,
            publish_grace_s: 900,
        }
    }
}

impl IndexConfig {
    /// Checks the settings; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(IndexError::InvalidInput(format!(
                    "index.{key} must be between {lo} and {hi}, got {v}"
                )))
            }
        };
        range("hnsw_m", self.hnsw_m, 2, 256)?;
        range("ef_construction", self.ef_construction, 1, 10_000)?;
        range("ef_search", self.ef_search, 1, 10_000)?;
        if self.publish_grace_s > 7 * 24 * 3600 {
            return Err(IndexError::InvalidInput(format!(
                "index.publish_grace_s must be at most 604800 (a week), got {}",
                self.publish_grace_s
            )));
        }
        if !(self.rrf_k.is_finite() && self.rrf_k >= 0.0) {
            return Err(IndexError::InvalidInput(format!(
                "index.rrf_k must be finite and >= 0, got {}",
                self.rrf_k
            )));
        }
        if !(0.0..=1.0).contains(&self.dense_weight) {
            return Err(IndexError::InvalidInput(format!(
                "index.dense_weight must be between 0 and 1, got {}",
                self.dense_weight
            )));
        }
        for (name, m) in &self.models {
            if let Some(w) = m.dense_weight
                && !(0.0..=1.0).contains(&w)
            {
                return Err(IndexError::InvalidInput(format!(
                    "index.models.{name}.dense_weight must be between 0 and 1, got {w}"
                )));
            }
        }
        Ok(())
    }

    /// The index parameters for a collection of the embedding model `model` (its name), whose
    /// embeddings have width `dim`.
    pub fn params(&self, dim: usize, model: &str) -> IndexParams {
        IndexParams {
            dim,
            hnsw_m: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
            analyzer: self.model(model, |m| m.analyzer).unwrap_or(self.analyzer),
            ann: self.ann,
        }
    }

    /// One setting of the collections of `model`: configured, else built in, else `None`.
    fn model<T>(&self, model: &str, field: impl Fn(&ModelIndexConfig) -> Option<T>) -> Option<T> {
        self.models
            .get(model)
            .and_then(&field)
            .or_else(|| field(&ModelIndexConfig::known(model)))
    }

    /// The configured fusion with its parameter, for a collection of the embedding model
    /// `model` (its name).
    pub fn fusion(&self, model: &str) -> Fusion {
        let dense_weight = self
            .model(model, |m| m.dense_weight)
            .unwrap_or(self.dense_weight);
        match self.fusion {
            FusionKind::Rrf => Fusion::Rrf {
                k: self.rrf_k,
                dense_weight,
            },
            FusionKind::Weighted => Fusion::Weighted { dense_weight },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_config_defaults_parse_and_validate() {
        let c: IndexConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, IndexConfig::default());
        c.validate().unwrap();
        assert_eq!(c.fusion("m"), Fusion::Weighted { dense_weight: 0.6 });
        assert_eq!(c.fusion("m"), Fusion::default());
        // EmbeddingGemma's collections: its built-in weight and analyzer.
        let gemma = |c: &IndexConfig| {
            let g = "embeddinggemma-300m";
            (c.fusion(g), c.params(768, g).analyzer)
        };
        assert_eq!(
            gemma(&c),
            (Fusion::Weighted { dense_weight: 0.8 }, Analyzer::Auto)
        );
        assert_eq!((c.fusion, c.rrf_k), (FusionKind::default(), 60.0));
        let r = IndexConfig {
            fusion: FusionKind::Rrf,
            ..IndexConfig::default()
        };
        assert_eq!(
            r.fusion("m"),
            Fusion::Rrf {
                k: 60.0,
                dense_weight: 0.6
            }
        );
        let p = c.params(384, "m");
        assert_eq!(
            (p.dim, p.hnsw_m, p.analyzer),
            (384, 16, Analyzer::EnglishStem)
        );

        let w: IndexConfig =
            serde_json::from_str(r#"{"fusion":"weighted","dense_weight":0.7,"analyzer":"simple"}"#)
                .unwrap();
        assert_eq!(w.fusion("m"), Fusion::Weighted { dense_weight: 0.7 });
        assert_eq!(w.analyzer, Analyzer::Simple);

        assert!(serde_json::from_str::<IndexConfig>(r#"{"hnsw_mm":3}"#).is_err());
        let bad = IndexConfig {
            hnsw_m: 1000,
            ..IndexConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("index.hnsw_m"), "{err}");
        let bad = IndexConfig {
            dense_weight: 2.0,
            ..IndexConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("index.dense_weight")
        );
        let own: IndexConfig = serde_json::from_str(
            r#"{"models":{"x":{"dense_weight":0.3},"y":{"analyzer":"simple"}}}"#,
        )
        .unwrap();
        assert_eq!(own.fusion("x"), Fusion::Weighted { dense_weight: 0.3 });
        assert_eq!(own.fusion("y"), Fusion::Weighted { dense_weight: 0.6 });
        assert_eq!(own.params(8, "y").analyzer, Analyzer::Simple);
        assert_eq!(own.params(8, "x").analyzer, Analyzer::EnglishStem);
        // A built-in setting stays under a configured one of the same model.
        let weighted: IndexConfig =
            serde_json::from_str(r#"{"models":{"embeddinggemma-300m":{"dense_weight":0.7}}}"#)
                .unwrap();
        assert_eq!(
            gemma(&weighted),
            (Fusion::Weighted { dense_weight: 0.7 }, Analyzer::Auto)
        );
        let mut bad = IndexConfig::default();
        bad.models.insert(
            "z".into(),
            ModelIndexConfig {
                dense_weight: Some(-1.0),
                analyzer: None,
            },
        );
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("index.models.z.dense_weight"), "{err}");
    }
}
