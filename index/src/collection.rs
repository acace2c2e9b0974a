//! Collection settings: the format-affecting parameters, fixed when a collection is created.

use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::blob::BlobStore;
use crate::error::{IndexError, Result};
use crate::format::{FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT};
use crate::ids::CollectionName;
use crate::keys;

/// Settings that change what is stored, so they may not change after creation: chunks made with
/// one tokenizer or chunk size must not be mixed with chunks made with another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSettings {
    /// The persisted format version the collection was created with.
    pub format_version: u32,
    /// Maximum tokens per chunk, counted with the embedding model's tokenizer.
    pub chunk_tokens: u32,
    /// Tokens shared between consecutive chunks.
    pub chunk_overlap: u32,
    /// SHA-256 of the tokenizer file used for chunking.
    pub tokenizer_sha256: String,
    /// Width of the embedding column.
    pub embedding_dim: u32,
    /// Name of the embedding model the collection was made with (`engine.embedders`, or the
    /// default's); empty in collections made before models had names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub embedder: String,
    /// SHA-256 of that model's weights file; empty where `embedder` is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub embedder_sha256: String,
    /// PII redaction applied to this collection's documents before chunking (off by default).
    #[serde(default, skip_serializing_if = "Redaction::is_off")]
    pub redaction: Redaction,
    /// Tesseract languages OCR reads this collection's scans in (`eng`, `deu`, ...); empty
    /// means the node's default (`ingest.ocr_languages`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ocr_languages: Vec<String>,
    /// Who may read a document uploaded without an access list of its own. Unlike the rest,
    /// it may change ([`CollectionSettings::set_default_access`]); documents keep the list they
    /// were given.
    #[serde(default, skip_serializing_if = "Access::is_everyone")]
    pub default_access: Access,
    /// Which model's vectors the chunk files hold: 0 for the model the collection was made
    /// with, one more after each re-embedding ([`keys::chunks_of`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vectors: u32,
    /// A re-embedding under way: the model it moves to and where its chunk files go. The
    /// fields above still describe the model in use until it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reembed: Option<ReembedTarget>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The model a re-embedding moves a collection to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReembedTarget {
    /// The model's name.
    pub embedder: String,
    /// SHA-256 of its weights.
    pub embedder_sha256: String,
    /// SHA-256 of its tokenizer (chunks made after the switch are counted with it).
    pub tokenizer_sha256: String,
    /// Width of its vectors.
    pub embedding_dim: u32,
    /// Where its chunk files go ([`keys::chunks_of`]).
    pub vectors: u32,
}

/// What a collection redacts: built-in PII kinds and named patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redaction {
    /// Built-in kinds: `email`, `phone`, `iban`, `card`, `ip`.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The collection's own patterns.
    #[serde(default)]
    pub patterns: Vec<RedactionPattern>,
}

impl Redaction {
    /// Whether nothing is redacted.
    pub fn is_off(&self) -> bool {
        self.kinds.is_empty() && self.patterns.is_empty()
    }
}

/// A named regular expression whose matches are redacted as `[REDACTED:NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionPattern {
    /// 1-32 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// The expression (Rust `regex` syntax).
    pub regex: String,
}

impl CollectionSettings {
    /// Opens the collection with these settings, creating it if it does not exist yet, and
    /// returns the settings it has. An existing collection keeps its chunking whatever `self`
    /// asks for, and its redaction rules when `self` asks for none; when `self` asks for some,
    /// they must be the stored ones.
    ///
    /// Fails with [`IndexError::Conflict`] when the collection exists with different settings,
    /// naming each difference, and with [`IndexError::Corrupt`] when its settings cannot be read.
    pub async fn open_or_create(
        &self,
        store: &BlobStore,
        name: &CollectionName,
    ) -> Result<CollectionSettings> {
        let stored = Self::read(store, name).await?;
        self.open_or_create_from(store, name, stored).await
    }

    /// [`CollectionSettings::open_or_create`] with the stored settings already read (`None`:
    /// there are none yet).
    pub async fn open_or_create_from(
        &self,
        store: &BlobStore,
        name: &CollectionName,
        stored: Option<CollectionSettings>,
    ) -> Result<CollectionSettings> {
        match stored {
            None => {
                // invariant: a plain struct of integers and strings always serialises.
                let json = serde_json::to_vec_pretty(self).expect("settings serialise");
                store.put(&keys::collection(name), json.into()).await?;
                Ok(self.clone())
            }
            Some(stored) => {
                stored.check_compatible(self, name)?;
                Ok(stored)
            }
        }
    }

    /// Changes the default access of an existing collection; returns the settings it now has,
    /// or `None` when there is no such collection.
    pub async fn set_default_access(
        store: &BlobStore,
        name: &CollectionName,
        access: Access,
    ) -> Result<Option<CollectionSettings>> {
        let Some(mut s) = Self::read(store, name).await? else {
            return Ok(None);
        };
        s.default_access = access;
        // invariant: a plain struct of integers and strings always serialises.
        let json = serde_json::to_vec_pretty(&s).expect("settings serialise");
        store.put(&keys::collection(name), json.into()).await?;
        Ok(Some(s))
    }

    /// Writes these settings over the stored ones (a re-embedding's start and switch).
    pub async fn write(&self, store: &BlobStore, name: &CollectionName) -> Result<()> {
        // invariant: a plain struct of integers and strings always serialises.
        let json = serde_json::to_vec_pretty(self).expect("settings serialise");
        store.put(&keys::collection(name), json.into()).await
    }

    /// The stored settings of a collection, or `None` if it does not exist.
    pub async fn read(store: &BlobStore, name: &CollectionName) -> Result<Option<Self>> {
        let key = keys::collection(name);
        let Some(bytes) = store.get_opt(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IndexError::Corrupt {
                key,
                detail: e.to_string(),
            })
    }

    /// Lists the collections in the store.
    pub async fn list(store: &BlobStore) -> Result<Vec<CollectionName>> {
        let mut out = Vec::new();
        for key in store.list(keys::COLLECTIONS_PREFIX).await? {
            let name = key
                .strip_prefix(keys::COLLECTIONS_PREFIX)
                .and_then(|k| k.strip_suffix(".json"));
            if let Some(Ok(name)) = name.map(CollectionName::new) {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn check_compatible(&self, wanted: &Self, name: &CollectionName) -> Result<()> {
        if !(OLDEST_SUPPORTED_FORMAT..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(IndexError::Conflict(format!(
                "collection {name} uses format version {}, this build reads {OLDEST_SUPPORTED_FORMAT}..={FORMAT_VERSION}",
                self.format_version
            )));
        }
        // The chunking is the collection's own: documents added later are cut as it says,
        // whatever the configuration of the node that adds them (it applies to new ones).
        let mut diffs = Vec::new();
        if self.tokenizer_sha256 != wanted.tokenizer_sha256 {
            diffs.push(format!(
                "tokenizer sha256 {} (config: {})",
                short(&self.tokenizer_sha256),
                short(&wanted.tokenizer_sha256)
            ));
        }
        if !self.embedder.is_empty() && !wanted.embedder.is_empty() {
            if self.embedder != wanted.embedder {
                diffs.push(format!(
                    "embedder {} (asked: {})",
                    self.embedder, wanted.embedder
                ));
            } else if self.embedder_sha256 != wanted.embedder_sha256 {
                diffs.push(format!(
                    "embedder {} with sha256 {} (this node's: {})",
                    self.embedder,
                    short(&self.embedder_sha256),
                    short(&wanted.embedder_sha256)
                ));
            }
        }
        if self.embedding_dim != wanted.embedding_dim {
            diffs.push(format!(
                "embedding_dim {} (config: {})",
                self.embedding_dim, wanted.embedding_dim
            ));
        }
        if !wanted.redaction.is_off() && self.redaction != wanted.redaction {
            diffs.push(format!(
                "redaction {} (asked: {})",
                describe(&self.redaction),
                describe(&wanted.redaction)
            ));
        }
        if !wanted.ocr_languages.is_empty() && self.ocr_languages != wanted.ocr_languages {
            let shown = |l: &[String]| {
                if l.is_empty() {
                    "the node default".to_owned()
                } else {
                    l.join("+")
                }
            };
            diffs.push(format!(
                "OCR languages {} (asked: {})",
                shown(&self.ocr_languages),
                shown(&wanted.ocr_languages)
            ));
        }
        if diffs.is_empty() {
            if !wanted.default_access.is_everyone() && self.default_access != wanted.default_access
            {
                return Err(IndexError::Conflict(format!(
                    "collection {name} exists with default access {} (asked: {}); an admin changes it with PATCH /v1/collections/{name}",
                    self.default_access, wanted.default_access
                )));
            }
            Ok(())
        } else {
            Err(IndexError::Conflict(format!(
                "collection {name} was created with {}; these settings cannot change after creation (use a new collection)",
                diffs.join(", ")
            )))
        }
    }
}

fn describe(r: &Redaction) -> String {
    if r.is_off() {
        return "off".into();
    }
    let mut parts = r.kinds.clone();
    parts.extend(r.patterns.iter().map(|p| format!("{}={}", p.name, p.regex)));
    parts.join(",")
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}
