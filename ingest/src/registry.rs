//! The document registry: one JSON record per document in the object store, holding the
//! document's source, metadata and place in the state machine, and per collection a catalog
//! file of them all (`hearth_index::encode_catalog`), so that listing reads only the records
//! that changed since it was written (the record objects stay the truth; the file is a cache
//! checked against their version tags).
//!
//! ```text
//! queued ──► extracting ──► chunked ──► embedded ──► indexed
//!    └───────────┴──────────────┴───────────┴──► failed(reason)
//! ```
//!
//! Every transition is a whole-object put, so a crash leaves each record in its last
//! acknowledged state; `queued` and `extracting` records are picked up again on restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use hearth_index::{
    Access, BlobStore, CatalogRow, CollectionName, DocId, FORMAT_VERSION, IndexError,
    decode_catalog, encode_catalog, keys,
};
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

/// Reads and writes document records. Clones share one view of each collection's catalog.
#[derive(Clone, Debug)]
pub struct Registry {
    store: BlobStore,
    views: Arc<Mutex<HashMap<CollectionName, Arc<View>>>>,
    /// Per collection, how many deletions of it began ([`Registry::forget`]): a listing that
    /// overlapped one removes the catalog file it wrote, so that no file of a deleted
    /// collection's records outlives the deletion.
    deletions: Arc<Mutex<HashMap<CollectionName, u64>>>,
}

/// What one [`Registry::list_counted`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListStats {
    /// Records in the collection.
    pub records: usize,
    /// Records read from their objects (new or changed since the view or the catalog file).
    pub read: usize,
    /// Whether the catalog file was read (no view of the collection in memory yet).
    pub catalog_read: bool,
    /// Whether the catalog file was written afterwards.
    pub catalog_written: bool,
}

/// A collection's records as last listed, by record key, with the tag each was read at; and
/// what the catalog file in the store holds (key -> tag).
#[derive(Debug, Default)]
struct View {
    rows: BTreeMap<String, (String, DocRecord)>,
    in_file: Arc<HashMap<String, String>>,
}

/// The catalog file is written again once this many rows differ from it (or a record it holds
/// was deleted: an erased document's record must not stay in the store).
fn rewrite_threshold(records: usize) -> usize {
    (records / 50).max(256)
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: BlobStore) -> Self {
        Self {
            store,
            views: Arc::new(Mutex::new(HashMap::new())),
            deletions: Arc::new(Mutex::new(HashMap::new())),
        }
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
        Ok(self.list_counted(c).await?.0)
    }

    /// [`Registry::list`], with what it read. One listing of the record objects (their keys
    /// and version tags; one request per thousand on S3); then only the records that are new
    /// or changed since this registry's view (or, the first time, the collection's catalog
    /// file) are read. The catalog file is written again when enough rows differ from it, or
    /// when it holds a record that was deleted.
    pub async fn list_counted(&self, c: &CollectionName) -> Result<(Vec<DocRecord>, ListStats)> {
        self.refresh(c, false).await
    }

    /// Writes the collection's catalog file now (after deletes, so that no erased record stays
    /// in it) and returns how many records it holds.
    pub async fn save_catalog(&self, c: &CollectionName) -> Result<usize> {
        let (records, stats) = self.refresh(c, true).await?;
        if !stats.catalog_written {
            return Err(IngestError::Index(IndexError::Internal(format!(
                "the catalog file of {c} could not be written (see the log)"
            ))));
        }
        Ok(records.len())
    }

    async fn refresh(
        &self,
        c: &CollectionName,
        force_write: bool,
    ) -> Result<(Vec<DocRecord>, ListStats)> {
        let deletions = self.deletions_of(c);
        let listed = self.store.list_tagged(&keys::doc_records_prefix(c)).await?;
        let mut stats = ListStats {
            records: listed.len(),
            ..ListStats::default()
        };
        let known = self.view_lock().get(c).cloned();
        let known = match known {
            Some(v) => v,
            None => {
                stats.catalog_read = true;
                Arc::new(self.read_catalog(c).await)
            }
        };
        // Nothing changed since the view (the common case: a page view, a count): the view
        // as it is, without rebuilding it.
        if !force_write
            && listed.len() == known.rows.len()
            && listed
                .iter()
                .zip(&known.rows)
                .all(|((k, t), (key, (tag, _)))| k == key && t == tag)
        {
            let records = known.rows.values().map(|(_, r)| r.clone()).collect();
            self.view_lock().insert(c.clone(), known);
            return Ok((records, stats));
        }
        let changed: Vec<String> = listed
            .iter()
            .filter(|(k, t)| known.rows.get(k).is_none_or(|(tag, _)| tag != t))
            .map(|(k, _)| k.clone())
            .collect();
        stats.read = changed.len();
        let fresh: Vec<Option<(String, String, DocRecord)>> = futures::stream::iter(changed)
            .map(|key| async move {
                // Gone between the listing and the read: deleted meanwhile.
                let Some((bytes, tag)) = self.store.get_tagged(&key).await? else {
                    return Ok(None);
                };
                let rec = decode(&key, &bytes)?;
                Ok::<_, IngestError>(Some((key, tag, rec)))
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut fresh: HashMap<String, (String, DocRecord)> = fresh
            .into_iter()
            .flatten()
            .map(|(k, t, r)| (k, (t, r)))
            .collect();
        let mut rows = BTreeMap::new();
        for (key, tag) in listed {
            if let Some(row) = fresh.remove(&key) {
                rows.insert(key, row);
            } else if let Some((t, r)) = known.rows.get(&key)
                && *t == tag
            {
                rows.insert(key, (t.clone(), r.clone()));
            }
        }
        let differ = rows
            .iter()
            .filter(|(k, (t, _))| known.in_file.get(*k) != Some(t))
            .count();
        let erased = known.in_file.keys().any(|k| !rows.contains_key(k));
        let mut view = View {
            rows,
            in_file: Arc::default(),
        };
        if force_write || erased || differ >= rewrite_threshold(view.rows.len()) {
            match self.write_catalog(c, &view).await {
                Ok(()) => {
                    stats.catalog_written = true;
                    view.in_file = Arc::new(
                        view.rows
                            .iter()
                            .map(|(k, (t, _))| (k.clone(), t.clone()))
                            .collect(),
                    );
                }
                Err(e) => {
                    // The catalog is a cache: a store that refuses the write (read-only
                    // credentials) costs reads, not answers.
                    tracing::warn!(collection = %c, error = %e, "writing the catalog file failed");
                    view.in_file = known.in_file.clone();
                }
            }
        } else {
            view.in_file = known.in_file.clone();
        }
        let records = view.rows.values().map(|(_, r)| r.clone()).collect();
        if self.deletions_of(c) != deletions {
            // The collection is being deleted: what this listing wrote must not stay.
            if stats.catalog_written {
                self.store.delete(&keys::catalog(c)).await?;
                stats.catalog_written = false;
            }
            return Ok((records, stats));
        }
        self.view_lock().insert(c.clone(), Arc::new(view));
        Ok((records, stats))
    }

    /// Forgets this registry's view of a collection being deleted. Call it when the deletion
    /// begins and again just before the catalog files go: a listing under way in between
    /// then removes the file it writes itself.
    pub fn forget(&self, c: &CollectionName) {
        self.view_lock().remove(c);
        *self
            .deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(c.clone())
            .or_default() += 1;
    }

    fn deletions_of(&self, c: &CollectionName) -> u64 {
        self.deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(c)
            .copied()
            .unwrap_or(0)
    }

    async fn read_catalog(&self, c: &CollectionName) -> View {
        let key = keys::catalog(c);
        let rows = match self.store.get_opt(&key).await {
            Ok(Some(bytes)) => decode_catalog(&key, bytes),
            Ok(None) => return View::default(),
            Err(e) => Err(e),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(collection = %c, error = %e, "the catalog file is unreadable; reading every record");
                return View::default();
            }
        };
        let mut view = View::default();
        let mut in_file = HashMap::with_capacity(rows.len());
        for row in rows {
            // A row that does not decode is read again from its object.
            if let Ok(rec) = decode(&row.key, &row.record) {
                in_file.insert(row.key.clone(), row.tag.clone());
                view.rows.insert(row.key, (row.tag, rec));
            }
        }
        view.in_file = Arc::new(in_file);
        view
    }

    async fn write_catalog(&self, c: &CollectionName, view: &View) -> Result<()> {
        if view.rows.is_empty() {
            // No records, no file (a collection emptied or being deleted).
            return Ok(self.store.delete(&keys::catalog(c)).await?);
        }
        let rows: Vec<CatalogRow> = view
            .rows
            .iter()
            .map(|(k, (t, r))| CatalogRow {
                key: k.clone(),
                tag: t.clone(),
                // invariant: records hold only strings, numbers and enums.
                record: serde_json::to_vec(r).expect("record serialises").into(),
            })
            .collect();
        let bytes = encode_catalog(&rows)?;
        Ok(self.store.put(&keys::catalog(c), bytes).await?)
    }

    fn view_lock(&self) -> std::sync::MutexGuard<'_, HashMap<CollectionName, Arc<View>>> {
        self.views.lock().unwrap_or_else(PoisonError::into_inner)
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
    use bytes::Bytes;

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

    fn record(c: &CollectionName, i: u32) -> DocRecord {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let mut rec = DocRecord::new_queued(
            DocId::from_bytes(id),
            c.clone(),
            format!("file-{i}.txt"),
            DocKind::Text,
            u64::from(i),
            Metadata::new(),
        );
        rec.attempts = i;
        rec
    }

    /// The records as the registry read them before the catalog: every object, one by one.
    async fn every_record(store: &BlobStore, c: &CollectionName) -> Vec<DocRecord> {
        let mut out = Vec::new();
        for key in store.list(&keys::doc_records_prefix(c)).await.unwrap() {
            out.push(decode(&key, &store.get(&key).await.unwrap()).unwrap());
        }
        out
    }

    async fn catalog_keys(store: &BlobStore, c: &CollectionName) -> Vec<String> {
        let key = keys::catalog(c);
        let bytes = store.get(&key).await.unwrap();
        decode_catalog(&key, bytes)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    async fn reads_only_what_changed(store: BlobStore) {
        let c = CollectionName::new("cat").unwrap();
        let a = Registry::new(store.clone());
        for i in 0..300 {
            a.put(&mut record(&c, i)).await.unwrap();
        }
        // The first listing reads every record and writes the catalog file.
        let (recs, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(recs, every_record(&store, &c).await);
        assert_eq!((st.records, st.read), (300, 300));
        assert!(st.catalog_read && st.catalog_written, "{st:?}");
        // Again: nothing read.
        let (again, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(again, recs);
        assert_eq!(st.read, 0);
        assert!(!st.catalog_read && !st.catalog_written, "{st:?}");

        // Another process: the catalog file instead of 300 reads.
        let b = Registry::new(store.clone());
        let (theirs, st) = b.list_counted(&c).await.unwrap();
        assert_eq!(theirs, recs);
        assert_eq!(st.read, 0);
        assert!(st.catalog_read && !st.catalog_written, "{st:?}");

        // It changes three records and deletes two, and adds one; the first registry reads
        // exactly those four, and the deleted records leave the catalog file at once.
        for i in [5, 77, 299] {
            let mut r = record(&c, i);
            r.state = DocState::Indexed;
            b.put(&mut r).await.unwrap();
        }
        for i in [10, 11] {
            store
                .delete(&keys::doc_record(&c, &record(&c, i).doc_id))
                .await
                .unwrap();
        }
        b.put(&mut record(&c, 1000)).await.unwrap();
        let (now, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(now, every_record(&store, &c).await);
        assert_eq!((st.records, st.read), (299, 4), "{st:?}");
        assert!(
            st.catalog_written,
            "a deleted record stayed in the catalog file"
        );
        assert_eq!(
            now.iter().filter(|r| r.state == DocState::Indexed).count(),
            3
        );
        let in_file = catalog_keys(&store, &c).await;
        assert_eq!(in_file.len(), 299);
        for i in [10, 11] {
            assert!(!in_file.contains(&keys::doc_record(&c, &record(&c, i).doc_id)));
        }
        // A third process reads nothing.
        let (third, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(third, now);
        assert_eq!(st.read, 0);

        // A damaged catalog file: every record is read again, and the file rewritten.
        store
            .put(&keys::catalog(&c), Bytes::from_static(b"not a catalog"))
            .await
            .unwrap();
        let (fixed, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(fixed, now);
        assert_eq!(st.read, 299);
        assert!(st.catalog_written);
        assert_eq!(catalog_keys(&store, &c).await.len(), 299);

        // A row whose record changed under the same key is caught by its tag even when the
        // file is older than the change (a writer that did not rewrite the file).
        let mut r = record(&c, 42);
        r.reason = Some("changed behind the file".into());
        b.put(&mut r).await.unwrap();
        let (seen, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(st.read, 1);
        assert_eq!(seen, every_record(&store, &c).await);

        // save_catalog writes it now, whatever changed.
        assert_eq!(a.save_catalog(&c).await.unwrap(), 299);
        let (_, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(st.read, 0);
    }

    #[tokio::test]
    async fn no_catalog_file_outlives_a_deletion_that_overlaps_a_listing() {
        use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};
        use std::time::Duration;
        let weed = SeaweedFs::shared();
        let cfg = weed.fresh_bucket();
        let direct = BlobStore::s3(&cfg).unwrap();
        // The listing's requests are held 1.5 s each, so that the whole deletion happens while
        // its catalog write is on the way.
        let proxy =
            ConditionIgnoringProxy::delaying(&weed.endpoint, Duration::from_millis(1500)).unwrap();
        let slow = BlobStore::s3(&proxy.bucket(&cfg.bucket)).unwrap();
        let c = CollectionName::new("gone").unwrap();
        let reg = Registry::new(slow);
        let writer = Registry::new(direct.clone());
        for i in 0..40 {
            writer.put(&mut record(&c, i)).await.unwrap();
        }
        reg.save_catalog(&c).await.unwrap();
        // One document deleted: the next listing rewrites the file without it.
        direct
            .delete(&keys::doc_record(&c, &record(&c, 0).doc_id))
            .await
            .unwrap();
        let listing = reg.list_counted(&c);
        let deleting = async {
            // After the listing's listing came back (1.5 s), while its put is held.
            tokio::time::sleep(Duration::from_millis(2000)).await;
            reg.forget(&c);
            for key in direct.list(&keys::doc_records_prefix(&c)).await.unwrap() {
                direct.delete(&key).await.unwrap();
            }
            reg.forget(&c);
            for key in direct.list(&keys::catalog_prefix(&c)).await.unwrap() {
                direct.delete(&key).await.unwrap();
            }
            std::time::Instant::now()
        };
        let ((_, stats), deleted_at) = {
            let (l, d) = tokio::join!(listing, deleting);
            (l.unwrap(), d)
        };
        assert!(
            deleted_at.elapsed() > Duration::from_millis(200),
            "the deletion did not finish while the listing was under way"
        );
        assert!(!stats.catalog_written, "{stats:?}");
        assert!(
            direct.list("").await.unwrap().is_empty(),
            "left behind: {:?}",
            direct.list("").await
        );
    }

    #[tokio::test]
    async fn listing_reads_only_what_changed_on_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        reads_only_what_changed(BlobStore::local(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn listing_reads_only_what_changed_on_seaweedfs() {
        let cfg = hearth_index::fixtures::SeaweedFs::shared().fresh_bucket();
        reads_only_what_changed(BlobStore::s3(&cfg).unwrap()).await;
    }

    #[test]
    fn metadata_json_is_plain_strings_and_numbers() {
        let m: Metadata = serde_json::from_str(r#"{"a": "x", "b": 2.5}"#).unwrap();
        assert_eq!(m["a"], MetaValue::Text("x".into()));
        assert_eq!(m["b"], MetaValue::Number(2.5));
    }
}
