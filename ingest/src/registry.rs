//! The document registry: one JSON record per document in the object store, holding the
//! document's source, metadata and place in the state machine
//!
//! ```text
//! queued ──► extracting ──► chunked ──► embedded ──► indexed
//!    └───────────┴──────────────┴───────────┴──► failed(reason)
//! ```
//!
//! Every transition is a whole-object put, so a crash leaves each record in its last
//! acknowledged state; `queued` and `extracting` records are picked up again on restart.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use hearth_index::{Access, BlobStore, CollectionName, DocId, FORMAT_VERSION, IndexError, keys};
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};
use crate::parse::OcrSummary;
use crate::sniff::DocKind;

/// Where a document is in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocState {
    /// Accepted and stored; waiting for extraction.
    Queued,
    /// An extraction is (or was, if the process died) under way.
    Extracting,
    /// Text extracted and chunks written.
    Chunked,
    /// Chunks carry embeddings.
    Embedded,
    /// Chunks are searchable.
    Indexed,
    /// Gave up; `reason` says why.
    Failed,
}

impl DocState {
    /// Whether extraction still has to run for a document in this state. (Chunked and embedded
    /// documents still have later stages ahead; those run in the service layer.)
    pub fn is_pending(self) -> bool {
        matches!(self, DocState::Queued | DocState::Extracting)
    }

    /// The state's name, as in records and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            DocState::Queued => "queued",
            DocState::Extracting => "extracting",
            DocState::Chunked => "chunked",
            DocState::Embedded => "embedded",
            DocState::Indexed => "indexed",
            DocState::Failed => "failed",
        }
    }

    /// Every state, in pipeline order.
    pub const ALL: [DocState; 6] = [
        DocState::Queued,
        DocState::Extracting,
        DocState::Chunked,
        DocState::Embedded,
        DocState::Indexed,
        DocState::Failed,
    ];
}

impl std::str::FromStr for DocState {
    type Err = IngestError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                IngestError::InvalidInput(format!(
                    "a document state is queued, extracting, chunked, embedded, indexed or failed, got {s:?}"
                ))
            })
    }
}

pub use hearth_index::{MetaValue, Metadata};

const MAX_META_KEYS: usize = 64;
const MAX_META_VALUE_CHARS: usize = 1024;

/// Checks user metadata: at most 64 keys of 1–64 characters `[A-Za-z0-9_.-]`, string values of
/// at most 1024 characters, finite numbers.
pub fn validate_metadata(meta: &Metadata) -> Result<()> {
    let bad = |m: String| Err(IngestError::InvalidInput(m));
    if meta.len() > MAX_META_KEYS {
        return bad(format!(
            "at most {MAX_META_KEYS} metadata keys are allowed, got {}",
            meta.len()
        ));
    }
    for (k, v) in meta {
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return bad(format!(
                "metadata key {:?} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'",
                k.chars().take(80).collect::<String>()
            ));
        }
        match v {
            MetaValue::Number(n) if !n.is_finite() => {
                return bad(format!("metadata value of {k:?} must be a finite number"));
            }
            MetaValue::Text(s) if s.chars().count() > MAX_META_VALUE_CHARS => {
                return bad(format!(
                    "metadata value of {k:?} exceeds {MAX_META_VALUE_CHARS} characters"
                ));
            }
            MetaValue::Number(_) | MetaValue::Text(_) => {}
        }
    }
    Ok(())
}

/// The registry record of one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Format version of this record.
    pub format_version: u32,
    /// Content hash of the original bytes.
    pub doc_id: DocId,
    /// The collection the document belongs to.
    pub collection: CollectionName,
    /// The external name: a file path or upload name.
    pub source: String,
    /// Detected format.
    pub kind: DocKind,
    /// Size of the original bytes.
    pub size: u64,
    /// User metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Who may read the document (absent in records written before access lists:
    /// everyone who may read the collection).
    #[serde(default, skip_serializing_if = "Access::is_everyone")]
    pub access: Access,
    /// Pipeline state.
    pub state: DocState,
    /// Why the document failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Title declared by the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// PDF page count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    /// The engine that produced the text, when it is not the format's first (a PDF read by
    /// poppler's pdftotext because pdf-extract could not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// What OCR read: pages, words and the mean word confidence (0-100), when it read any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<OcrSummary>,
    /// How far a long extraction has come ("OCR: 12 of 5000 pages recognised"); only while
    /// it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Number of chunks written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// Non-fatal extraction problems (e.g. unreadable pages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// PII matches redacted from the text (collections with redaction).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redactions: u32,
    /// The original bytes were deleted once chunked (collections with redaction keep no
    /// unredacted copy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original_discarded: bool,
    /// Documents found inside this one (an e-mail's attachments, a mailbox's messages),
    /// ingested as documents of their own with metadata `parent` naming this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<DocId>,
    /// How many times extraction was started.
    pub attempts: u32,
    /// When the document was accepted (ms since the Unix epoch).
    pub created_ms: u64,
    /// When the record last changed (ms since the Unix epoch).
    pub updated_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DocRecord {
    pub(crate) fn new_queued(
        doc_id: DocId,
        collection: CollectionName,
        source: String,
        kind: DocKind,
        size: u64,
        metadata: Metadata,
    ) -> Self {
        let now = now_ms();
        Self {
            format_version: FORMAT_VERSION,
            doc_id,
            collection,
            source,
            kind,
            size,
            metadata,
            access: Access::everyone(),
            state: DocState::Queued,
            reason: None,
            title: None,
            pages: None,
            engine: None,
            ocr: None,
            progress: None,
            chunks: None,
            warnings: Vec::new(),
            redactions: 0,
            original_discarded: false,
            children: Vec::new(),
            attempts: 0,
            created_ms: now,
            updated_ms: now,
        }
    }

    pub(crate) fn fail(&mut self, reason: impl Into<String>) {
        self.state = DocState::Failed;
        self.reason = Some(reason.into());
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads and writes document records.
#[derive(Clone, Debug)]
pub struct Registry {
    store: BlobStore,
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: BlobStore) -> Self {
        Self { store }
    }

    /// The record of a document, if it exists.
    pub async fn get(&self, c: &CollectionName, d: &DocId) -> Result<Option<DocRecord>> {
        let key = keys::doc_record(c, d);
        match self.store.get_opt(&key).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
        }
    }

    /// Writes a record (durably, replacing the previous version), stamping `updated_ms`.
    pub async fn put(&self, rec: &mut DocRecord) -> Result<()> {
        rec.updated_ms = now_ms();
        // invariant: records hold only strings, numbers and enums.
        let json = serde_json::to_vec(rec).expect("record serialises");
        let key = keys::doc_record(&rec.collection, &rec.doc_id);
        Ok(self.store.put(&key, json.into()).await?)
    }

    /// Every record of a collection, in doc-id order.
    pub async fn list(&self, c: &CollectionName) -> Result<Vec<DocRecord>> {
        let keys = self.store.list(&keys::doc_records_prefix(c)).await?;
        futures::stream::iter(keys)
            .map(|key| async move {
                let bytes = self.store.get(&key).await?;
                decode(&key, &bytes)
            })
            .buffered(16)
            .try_collect()
            .await
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<DocRecord> {
    serde_json::from_slice(bytes).map_err(|e| {
        IngestError::Index(IndexError::Corrupt {
            key: key.to_owned(),
            detail: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_rules() {
        let ok: Metadata = [
            ("team".into(), MetaValue::Text("ops".into())),
            ("year".into(), MetaValue::Number(2024.0)),
        ]
        .into();
        assert!(validate_metadata(&ok).is_ok());
        let bad_key: Metadata = [("../x".into(), MetaValue::Number(1.0))].into();
        assert!(validate_metadata(&bad_key).is_err());
        let nan: Metadata = [("x".into(), MetaValue::Number(f64::NAN))].into();
        assert!(validate_metadata(&nan).is_err());
    }

    #[test]
    fn metadata_json_is_plain_strings_and_numbers() {
        let m: Metadata = serde_json::from_str(r#"{"a": "x", "b": 2.5}"#).unwrap();
        assert_eq!(m["a"], MetaValue::Text("x".into()));
        assert_eq!(m["b"], MetaValue::Number(2.5));
    }
}
