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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
///
/// Every change of a record is announced in the collection's change journal
/// ([`keys::journal_prefix`]): an empty object named by the document, the writer and a sequence
/// number, written *before* the record (a writer killed between the two leaves an entry whose
/// record did not change, never a change without an entry). A registry that listed the
/// collection a moment ago ([`JournalTiming::gap`]) lists only the journal and reads the
/// records that entries it has not settled name; an entry is settled once its record was read
/// at least [`JournalTiming::settle`] after the entry was first seen (a writer whose entry and
/// record took longer writes a second entry after the record). The catalog file records the
/// settled entries it covers, so a fresh process reads the file and the uncovered entries'
/// records; covered entries are removed once seen [`JournalTiming::grace`] ago, longer than any
/// registry may go between two journal listings, so none misses an entry it has not read.
/// Durations are measured by one process's monotonic clock, except that an entry the store
/// dates long before (`STORE_CLOCK_SLACK`) may go at once.
#[derive(Clone, Debug)]
pub struct Registry {
    store: BlobStore,
    views: Arc<Mutex<HashMap<CollectionName, Arc<View>>>>,
    /// Per collection, how many deletions of it began ([`Registry::forget`]): a listing that
    /// overlapped one removes the catalog file it wrote, so that no file of a deleted
    /// collection's records outlives the deletion.
    deletions: Arc<Mutex<HashMap<CollectionName, u64>>>,
    /// This registry's name in journal entries, and its next sequence number.
    writer: Arc<str>,
    seq: Arc<AtomicU64>,
    timing: JournalTiming,
}

/// The durations of the change journal's protocol (see [`Registry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalTiming {
    /// A writer whose entry and record puts took longer than this writes a second entry after
    /// the record; a reader settles an entry by a read that began this long after it first
    /// saw the entry. Default 10 s.
    pub settle: Duration,
    /// A listing lists the journal alone when the registry's previous listing began less than
    /// this ago; otherwise it lists every record object. Default 60 s.
    pub gap: Duration,
    /// An entry the catalog file covers is removed once it was first seen this long ago. Must
    /// exceed `gap` (with room for a slow listing). Default 180 s.
    pub grace: Duration,
}

impl Default for JournalTiming {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(10),
            gap: Duration::from_secs(60),
            grace: Duration::from_secs(180),
        }
    }
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
    /// Whether the record objects were listed (otherwise the journal alone was).
    pub records_listed: bool,
    /// Journal entries listed.
    pub journal: usize,
    /// Journal entries removed (covered by the catalog file and old enough).
    pub journal_removed: usize,
}

/// A collection's records as last listed, by record key, with the tag each was read at; what
/// the catalog file in the store holds (key -> tag) and which journal entries it covers; the
/// journal entries seen, and when the listing that saw them began.
#[derive(Debug, Default)]
struct View {
    rows: Arc<BTreeMap<String, Row>>,
    in_file: Arc<HashMap<String, String>>,
    covered: Arc<HashSet<String>>,
    journal: HashMap<String, Seen>,
    /// When the journal listing of the listing that made this view began; `None` for a view
    /// read from the catalog file alone.
    listed_at: Option<Instant>,
    /// Read from a catalog file that names the journal entries it covers (version 2).
    file_covers: bool,
}

/// A record as read, with the version tag it was read at (shared between views: a view that
/// changes a few rows copies the map, not the records; 0.22-0.38 s at 100,000 records before).
type Row = Arc<(String, DocRecord)>;

/// A journal entry as a registry saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    first: Instant,
    /// Its record was read (or listed) at least `settle` after `first`.
    settled: bool,
    /// Written long before this registry first saw it (by the store's clock): its record has
    /// changed, and every other registry has had time to see it.
    long_ago: bool,
}

/// One listing of the journal: when it came back, and the entries written long before.
struct Sight {
    at: Instant,
    old: HashSet<String>,
}

impl Sight {
    /// How an entry no view holds yet is seen.
    fn first(&self, name: &str) -> Seen {
        Seen {
            first: self.at,
            settled: false,
            long_ago: self.old.contains(name),
        }
    }
}

/// How far the store's clock may be from ours, for entries that count as written long ago
/// (their modification time older than `grace + settle` and this): S3 refuses requests
/// signed 15 minutes off its clock, and a local directory shares ours. Without it, a journal
/// that only short-lived processes (`hearth docs`, `hearth ingest`) list would never shrink.
const STORE_CLOCK_SLACK: Duration = Duration::from_secs(15 * 60);

/// The catalog file is written again once this many rows differ from it (or a record it holds
/// was deleted: an erased document's record must not stay in the store).
fn rewrite_threshold(records: usize) -> usize {
    (records / 50).max(256)
}

/// Covered journal entries are removed (and the file rewritten to say so) once this many may go.
const REMOVE_AT_LEAST: usize = 64;

impl Registry {
    /// A registry over `store`.
    pub fn new(store: BlobStore) -> Self {
        Self::with_timing(store, JournalTiming::default())
    }

    /// A registry over `store` with the journal's durations set (tests and benchmarks).
    pub fn with_timing(store: BlobStore, timing: JournalTiming) -> Self {
        // Unique enough: a clash of two writers' names costs at most a re-announced change.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let writer = format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id());
        Self {
            store,
            views: Arc::new(Mutex::new(HashMap::new())),
            deletions: Arc::new(Mutex::new(HashMap::new())),
            writer: writer.into(),
            seq: Arc::new(AtomicU64::new(0)),
            timing,
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
        let started = self.announce(&rec.collection, &rec.doc_id).await?;
        self.store.put(&key, json.into()).await?;
        self.announce_again(&rec.collection, &rec.doc_id, started)
            .await
    }

    /// Deletes a document's record (a missing one is not an error).
    pub async fn delete(&self, c: &CollectionName, d: &DocId) -> Result<()> {
        let started = self.announce(c, d).await?;
        self.store.delete(&keys::doc_record(c, d)).await?;
        self.announce_again(c, d, started).await
    }

    /// Writes a journal entry for a change of `d`'s record; returns when it began.
    async fn announce(&self, c: &CollectionName, d: &DocId) -> Result<Instant> {
        let started = Instant::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = keys::journal_entry(d, &self.writer, seq);
        let key = format!("{}{name}", keys::journal_prefix(c));
        self.store.put(&key, bytes::Bytes::new()).await?;
        Ok(started)
    }

    /// After the record's put: a second entry when the two took longer than `settle` (a reader
    /// may have settled the first before the record changed).
    async fn announce_again(&self, c: &CollectionName, d: &DocId, started: Instant) -> Result<()> {
        if started.elapsed() >= self.timing.settle {
            self.announce(c, d).await?;
        }
        Ok(())
    }

    /// Every record of a collection, in doc-id order.
    pub async fn list(&self, c: &CollectionName) -> Result<Vec<DocRecord>> {
        Ok(self.list_counted(c).await?.0)
    }

    /// [`Registry::list`], with what it read: the journal and the records its new entries
    /// name when this registry listed the collection a moment ago (or the catalog file covers
    /// all but a few entries); otherwise one listing of the record objects (their keys and
    /// version tags; one request per thousand on S3) and the records that are new or changed
    /// since the view or the catalog file. The catalog file is written again when enough rows
    /// differ from it, when it holds a record that was deleted, or when enough journal entries
    /// may go.
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
        let known = self.view_lock().get(c).cloned();
        let prefix = keys::journal_prefix(c);
        let listed_at = Instant::now();
        let listed = self.store.list_modified(&prefix).await?;
        let seen_at = Instant::now();
        let wall = SystemTime::now();
        let long_ago = self.timing.grace + self.timing.settle + STORE_CLOCK_SLACK;
        let mut old = HashSet::new();
        let mut entries = Vec::with_capacity(listed.len());
        for (key, modified) in listed {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if wall
                .duration_since(modified)
                .is_ok_and(|age| age > long_ago)
            {
                old.insert(name.to_owned());
            }
            entries.push(name.to_owned());
        }
        let sight = Sight { at: seen_at, old };
        let mut stats = ListStats {
            journal: entries.len(),
            ..ListStats::default()
        };
        let base = match known {
            Some(v) => v,
            None => {
                stats.catalog_read = true;
                Arc::new(self.read_catalog(c, seen_at).await)
            }
        };
        let journal_only = !force_write
            && match base.listed_at {
                Some(t) => listed_at.duration_since(t) < self.timing.gap,
                None => base.file_covers,
            };
        let mut view = None;
        if journal_only {
            view = self
                .view_by_journal(c, &base, &entries, &sight, &mut stats)
                .await?;
        }
        let mut view = match view {
            Some(v) => v,
            None => {
                self.view_by_listing(c, &base, &entries, &sight, &mut stats)
                    .await?
            }
        };
        view.listed_at = Some(listed_at);
        stats.records = view.rows.len();

        // The catalog file: rewritten when it holds an erased record, when enough rows differ
        // from it, or when enough covered journal entries may go.
        // One pass (a lookup of every file key in the rows cost ~0.2 s at 100,000).
        let (mut differ, mut in_both) = (0, 0);
        for (k, row) in view.rows.iter() {
            match base.in_file.get(k) {
                Some(t) => {
                    in_both += 1;
                    differ += usize::from(*t != row.0);
                }
                None => differ += 1,
            }
        }
        let erased = in_both < base.in_file.len();
        let now = Instant::now();
        let settled: Vec<&String> = entries
            .iter()
            .filter(|n| view.journal.get(*n).is_some_and(|s| s.settled))
            .collect();
        let removable: Vec<String> = settled
            .iter()
            .filter(|n| {
                view.journal
                    .get(**n)
                    .is_some_and(|s| s.long_ago || now.duration_since(s.first) >= self.timing.grace)
            })
            .map(|n| (*n).clone())
            .collect();
        if force_write
            || erased
            || differ >= rewrite_threshold(view.rows.len())
            || removable.len() >= REMOVE_AT_LEAST
        {
            // The entries about to go are left out (the file would carry their names for
            // nothing); if removing them fails, a fresh process reads their records again.
            let going: HashSet<&String> = removable.iter().collect();
            let covered: Vec<String> = settled
                .into_iter()
                .filter(|n| !going.contains(n))
                .cloned()
                .collect();
            match self.write_catalog(c, &view.rows, &covered).await {
                Ok(()) => {
                    stats.catalog_written = true;
                    view.in_file = Arc::new(
                        view.rows
                            .iter()
                            .map(|(k, row)| (k.clone(), row.0.clone()))
                            .collect(),
                    );
                    view.covered = Arc::new(covered.into_iter().collect());
                    // Only after the file that covers them is in the store.
                    let store = &self.store;
                    let gone: Vec<String> =
                        removable.iter().map(|n| format!("{prefix}{n}")).collect();
                    let removed = futures::stream::iter(gone)
                        .map(|key| async move { store.delete(&key).await })
                        .buffer_unordered(16)
                        .try_collect::<Vec<()>>()
                        .await;
                    match removed {
                        Ok(_) => {
                            for n in &removable {
                                view.journal.remove(n);
                            }
                            stats.journal_removed = removable.len();
                        }
                        // Entries left behind are removed by a later listing; the listing
                        // itself is right.
                        Err(e) => {
                            tracing::warn!(collection = %c, error = %e, "removing covered journal entries failed")
                        }
                    }
                }
                Err(e) => {
                    // The catalog is a cache: a store that refuses the write (read-only
                    // credentials) costs reads, not answers.
                    tracing::warn!(collection = %c, error = %e, "writing the catalog file failed");
                }
            }
        }
        let records = view.rows.values().map(|row| row.1.clone()).collect();
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

    /// The view after reading the records that journal entries not yet settled name; `None`
    /// when the records must be listed instead (a catalog file that leaves too many entries
    /// uncovered).
    async fn view_by_journal(
        &self,
        c: &CollectionName,
        base: &View,
        entries: &[String],
        sight: &Sight,
        stats: &mut ListStats,
    ) -> Result<Option<View>> {
        let listed: HashSet<&String> = entries.iter().collect();
        let mut docs: BTreeSet<DocId> = BTreeSet::new();
        for n in entries {
            if !base.journal.get(n).is_some_and(|s| s.settled) {
                docs.extend(keys::journal_entry_doc(n));
            }
        }
        // Unsettled entries that went meanwhile (covered and removed by another registry):
        // their records are read once more.
        for (n, s) in &base.journal {
            if !s.settled && !listed.contains(n) {
                docs.extend(keys::journal_entry_doc(n));
            }
        }
        if base.listed_at.is_none() && docs.len() > base.rows.len() / 8 + 64 {
            // A fresh process after much has changed: one listing is cheaper.
            return Ok(None);
        }
        // The journal was listed before the catalog file was read: an entry another registry
        // removed meanwhile is covered by the file read (or the file changed its record since),
        // and one written after the listing began is the next listing's.
        let read_at = Instant::now();
        let fresh = self.read_records(c, docs.into_iter().collect()).await?;
        stats.read = fresh.len();
        let mut rows = base.rows.clone();
        if !fresh.is_empty() {
            let rows = Arc::make_mut(&mut rows);
            for (key, row) in fresh {
                match row {
                    Some(row) => rows.insert(key, Arc::new(row)),
                    None => rows.remove(&key),
                };
            }
        }
        let journal = self.journal_after(base, entries, sight, read_at);
        Ok(Some(View {
            rows,
            in_file: base.in_file.clone(),
            covered: base.covered.clone(),
            journal,
            listed_at: None,
            file_covers: false,
        }))
    }

    /// The view after one listing of the record objects, reading those whose tag changed.
    async fn view_by_listing(
        &self,
        c: &CollectionName,
        base: &View,
        entries: &[String],
        sight: &Sight,
        stats: &mut ListStats,
    ) -> Result<View> {
        let listed_at = Instant::now();
        let listed = self.store.list_tagged(&keys::doc_records_prefix(c)).await?;
        stats.records_listed = true;
        let journal = self.journal_after(base, entries, sight, listed_at);
        let unchanged = listed.len() == base.rows.len()
            && listed
                .iter()
                .zip(base.rows.iter())
                .all(|((k, t), (key, row))| k == key && *t == row.0);
        let rows = if unchanged {
            base.rows.clone()
        } else {
            let changed: Vec<String> = listed
                .iter()
                .filter(|(k, t)| base.rows.get(k).is_none_or(|row| row.0 != *t))
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
                    rows.insert(key, Arc::new(row));
                } else if let Some(row) = base.rows.get(&key)
                    && row.0 == tag
                {
                    rows.insert(key, row.clone());
                }
            }
            Arc::new(rows)
        };
        Ok(View {
            rows,
            in_file: base.in_file.clone(),
            covered: base.covered.clone(),
            journal,
            listed_at: None,
            file_covers: false,
        })
    }

    /// The journal as seen after a read (or a listing of the records) that began at `read_at`:
    /// an entry settles when that began `settle` after the entry was first seen (its record
    /// had changed by then), or when the store dates the entry long before.
    fn journal_after(
        &self,
        base: &View,
        entries: &[String],
        sight: &Sight,
        read_at: Instant,
    ) -> HashMap<String, Seen> {
        entries
            .iter()
            .map(|n| {
                let seen = base.journal.get(n).copied().unwrap_or(sight.first(n));
                let settled = seen.settled
                    || seen.long_ago
                    || read_at.duration_since(seen.first) >= self.timing.settle;
                (n.clone(), Seen { settled, ..seen })
            })
            .collect()
    }

    /// The records of `docs` as they are now, by record key (`None`: deleted).
    async fn read_records(
        &self,
        c: &CollectionName,
        docs: Vec<DocId>,
    ) -> Result<Vec<(String, Option<(String, DocRecord)>)>> {
        let record_keys: Vec<String> = docs.iter().map(|d| keys::doc_record(c, d)).collect();
        futures::stream::iter(record_keys)
            .map(|key| async move {
                let row = match self.store.get_tagged(&key).await? {
                    Some((bytes, tag)) => Some((tag, decode(&key, &bytes)?)),
                    None => None,
                };
                Ok::<_, IngestError>((key, row))
            })
            .buffered(16)
            .try_collect()
            .await
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

    /// The catalog file as a view (empty when there is none or it is unreadable); the journal
    /// entries it covers count as settled, first seen at `seen_at`.
    async fn read_catalog(&self, c: &CollectionName, seen_at: Instant) -> View {
        let key = keys::catalog(c);
        let read = match self.store.get_opt(&key).await {
            Ok(Some(bytes)) => decode_catalog(&key, bytes),
            Ok(None) => return View::default(),
            Err(e) => Err(e),
        };
        let catalog = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(collection = %c, error = %e, "the catalog file is unreadable; reading every record");
                return View::default();
            }
        };
        let mut rows = BTreeMap::new();
        let mut in_file = HashMap::with_capacity(catalog.rows.len());
        for row in catalog.rows {
            // A row that does not decode is read again from its object.
            if let Ok(rec) = decode(&row.key, &row.record) {
                in_file.insert(row.key.clone(), row.tag.clone());
                rows.insert(row.key, Arc::new((row.tag, rec)));
            }
        }
        let covers = catalog.journal.is_some();
        let covered: HashSet<String> = catalog.journal.unwrap_or_default().into_iter().collect();
        let journal = covered
            .iter()
            .map(|n| {
                let seen = Seen {
                    first: seen_at,
                    settled: true,
                    long_ago: false,
                };
                (n.clone(), seen)
            })
            .collect();
        View {
            rows: Arc::new(rows),
            in_file: Arc::new(in_file),
            covered: Arc::new(covered),
            journal,
            listed_at: None,
            file_covers: covers,
        }
    }

    async fn write_catalog(
        &self,
        c: &CollectionName,
        rows: &BTreeMap<String, Row>,
        covered: &[String],
    ) -> Result<()> {
        if rows.is_empty() && covered.is_empty() {
            // No records, no file (a collection emptied or being deleted).
            return Ok(self.store.delete(&keys::catalog(c)).await?);
        }
        let rows: Vec<CatalogRow> = rows
            .iter()
            .map(|(k, row)| CatalogRow {
                key: k.clone(),
                tag: row.0.clone(),
                // invariant: records hold only strings, numbers and enums.
                record: serde_json::to_vec(&row.1)
                    .expect("record serialises")
                    .into(),
            })
            .collect();
        let bytes = encode_catalog(&rows, covered)?;
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
            .rows
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    /// Entries settle at once, listings a minute apart use the journal, nothing is removed.
    fn settled_at_once() -> JournalTiming {
        JournalTiming {
            settle: Duration::ZERO,
            gap: Duration::from_secs(60),
            grace: Duration::from_secs(3600),
        }
    }

    async fn reads_only_what_changed(store: BlobStore) {
        let c = CollectionName::new("cat").unwrap();
        let registry = || Registry::with_timing(store.clone(), settled_at_once());
        let a = registry();
        for i in 0..300 {
            a.put(&mut record(&c, i)).await.unwrap();
        }
        // The first listing reads every record and writes the catalog file.
        let (recs, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(recs, every_record(&store, &c).await);
        // Two entries a change: with `settle` zero every put announces again after its record.
        assert_eq!((st.records, st.read, st.journal), (300, 300, 600));
        assert!(
            st.catalog_read && st.catalog_written && st.records_listed,
            "{st:?}"
        );
        // Again: the journal alone, nothing read.
        let (again, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(again, recs);
        assert_eq!(st.read, 0);
        assert!(
            !st.catalog_read && !st.catalog_written && !st.records_listed,
            "{st:?}"
        );

        // Another process: the catalog file (which covers the 300 entries) instead of 300
        // reads, and no listing of the records.
        let b = registry();
        let (theirs, st) = b.list_counted(&c).await.unwrap();
        assert_eq!(theirs, recs);
        assert_eq!(st.read, 0);
        assert!(
            st.catalog_read && !st.catalog_written && !st.records_listed,
            "{st:?}"
        );

        // It changes three records, deletes two and adds one; the first registry reads
        // exactly those six (from their journal entries), and the deleted records leave the
        // catalog file at once.
        for i in [5, 77, 299] {
            let mut r = record(&c, i);
            r.state = DocState::Indexed;
            b.put(&mut r).await.unwrap();
        }
        for i in [10, 11] {
            b.delete(&c, &record(&c, i).doc_id).await.unwrap();
        }
        b.put(&mut record(&c, 1000)).await.unwrap();
        let (now, st) = a.list_counted(&c).await.unwrap();
        assert_eq!(now, every_record(&store, &c).await);
        assert_eq!((st.records, st.read), (299, 6), "{st:?}");
        assert!(!st.records_listed, "{st:?}");
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
        let (third, st) = registry().list_counted(&c).await.unwrap();
        assert_eq!(third, now);
        assert_eq!(st.read, 0);
        assert!(!st.records_listed, "{st:?}");

        // A damaged catalog file: every record is read again, and the file rewritten.
        store
            .put(&keys::catalog(&c), Bytes::from_static(b"not a catalog"))
            .await
            .unwrap();
        let (fixed, st) = registry().list_counted(&c).await.unwrap();
        assert_eq!(fixed, now);
        assert_eq!(st.read, 299);
        assert!(st.catalog_written && st.records_listed, "{st:?}");
        assert_eq!(catalog_keys(&store, &c).await.len(), 299);

        // A change after the file was written: a fresh process reads that one record.
        let mut r = record(&c, 42);
        r.reason = Some("changed behind the file".into());
        b.put(&mut r).await.unwrap();
        let (seen, st) = registry().list_counted(&c).await.unwrap();
        assert_eq!(st.read, 1);
        assert_eq!(seen, every_record(&store, &c).await);

        // save_catalog writes it now, whatever changed.
        assert_eq!(a.save_catalog(&c).await.unwrap(), 299);
        let (_, st) = registry().list_counted(&c).await.unwrap();
        assert_eq!(st.read, 0);
    }

    /// The journal's protocol with short durations: an entry whose record had not changed yet
    /// when first read is read again until it settles; a registry idle longer than `gap`
    /// lists the records (an entry it never saw may have been removed); covered entries go
    /// after `grace`, and a fresh process then reads the file alone.
    async fn journal_protocol(store: BlobStore) {
        let timing = JournalTiming {
            settle: Duration::from_millis(400),
            gap: Duration::from_millis(1500),
            grace: Duration::from_millis(2500),
        };
        let c = CollectionName::new("journal").unwrap();
        let writer = Registry::with_timing(store.clone(), timing);
        for i in 0..100 {
            writer.put(&mut record(&c, i)).await.unwrap();
        }
        let reader = Registry::with_timing(store.clone(), timing);
        let (recs, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!((recs.len(), st.journal), (100, 100));
        assert!(st.records_listed, "{st:?}");
        // Read again once `settle` has passed, the entries settle: nothing more is read.
        tokio::time::sleep(timing.settle).await;
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!(st.read, 100, "{st:?}");
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!(st.read, 0, "{st:?}");

        // A writer that announced a change and has not written the record yet (paused
        // between the two): the reader reads the old record, and reads it again at every
        // listing until the entry settles, so the late record is seen.
        let mut late = record(&c, 7);
        late.reason = Some("written late".into());
        let entry = keys::journal_entry(&late.doc_id, "paused", 0);
        store
            .put(
                &format!("{}{entry}", keys::journal_prefix(&c)),
                Bytes::new(),
            )
            .await
            .unwrap();
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!(st.read, 1, "{st:?}");
        let json = serde_json::to_vec(&late).unwrap();
        store
            .put(&keys::doc_record(&c, &late.doc_id), json.into())
            .await
            .unwrap();
        let (recs, st) = reader.list_counted(&c).await.unwrap();
        assert!(!st.records_listed, "{st:?}");
        assert_eq!(
            recs.iter()
                .find(|r| r.doc_id == late.doc_id)
                .unwrap()
                .reason,
            late.reason,
            "the record written after its entry was first read was not read again"
        );
        tokio::time::sleep(timing.settle).await;
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!(st.read, 1, "read once more, after settle: {st:?}");
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert_eq!(st.read, 0, "settled: {st:?}");

        // Past the grace, the next listing writes the file and removes the entries it covers.
        tokio::time::sleep(timing.grace).await;
        let idle = Registry::with_timing(store.clone(), timing);
        idle.list_counted(&c).await.unwrap();
        let (recs, st) = reader.list_counted(&c).await.unwrap();
        assert!(st.catalog_written && st.journal_removed == 101, "{st:?}");
        assert!(
            store
                .list(&keys::journal_prefix(&c))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(recs, every_record(&store, &c).await);
        let (fresh, st) = Registry::with_timing(store.clone(), timing)
            .list_counted(&c)
            .await
            .unwrap();
        assert_eq!(fresh, recs);
        assert_eq!((st.read, st.journal), (0, 0), "{st:?}");
        assert!(!st.records_listed, "{st:?}");

        // A registry that last listed before a change whose entry another removed: idle
        // longer than `gap` (grace > gap), it lists the records and sees the change.
        let mut changed = record(&c, 50);
        changed.reason = Some("changed while idle".into());
        writer.put(&mut changed).await.unwrap();
        for i in 200..300 {
            writer.put(&mut record(&c, i)).await.unwrap();
        }
        reader.list_counted(&c).await.unwrap();
        tokio::time::sleep(timing.grace).await;
        let (_, st) = reader.list_counted(&c).await.unwrap();
        assert!(st.journal_removed > 100, "{st:?}");
        let (recs, st) = idle.list_counted(&c).await.unwrap();
        assert!(st.records_listed, "{st:?}");
        assert_eq!(recs, every_record(&store, &c).await);
        assert_eq!(
            recs.iter()
                .find(|r| r.doc_id == changed.doc_id)
                .unwrap()
                .reason,
            changed.reason
        );
    }

    /// Entries written long ago by the store's clock (a bulk import by a process that has
    /// ended): a fresh process covers and removes them at its first listing, so a journal
    /// that only short-lived processes list still shrinks.
    #[tokio::test]
    async fn entries_written_long_ago_go_at_the_first_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let c = CollectionName::new("old").unwrap();
        let writer = Registry::new(store.clone());
        for i in 0..100 {
            writer.put(&mut record(&c, i)).await.unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        let log = dir.path().join(keys::journal_prefix(&c));
        for e in std::fs::read_dir(&log).unwrap() {
            let f = std::fs::File::options()
                .write(true)
                .open(e.unwrap().path())
                .unwrap();
            f.set_modified(two_hours_ago).unwrap();
        }
        let (recs, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(recs, every_record(&store, &c).await);
        assert!(st.catalog_written && st.journal_removed == 100, "{st:?}");
        assert_eq!(std::fs::read_dir(&log).map_or(0, |d| d.count()), 0);
        let (again, st) = Registry::new(store.clone()).list_counted(&c).await.unwrap();
        assert_eq!(again, recs);
        assert!(st.read == 0 && !st.records_listed, "{st:?}");
    }

    #[tokio::test]
    async fn the_journal_settles_entries_and_removes_covered_ones_local() {
        let dir = tempfile::tempdir().unwrap();
        journal_protocol(BlobStore::local(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn the_journal_settles_entries_and_removes_covered_ones_seaweedfs() {
        let cfg = hearth_index::fixtures::SeaweedFs::shared().fresh_bucket();
        journal_protocol(BlobStore::s3(&cfg).unwrap()).await;
    }

    #[tokio::test]
    async fn no_catalog_file_outlives_a_deletion_that_overlaps_a_listing() {
        use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};
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
        writer.delete(&c, &record(&c, 0).doc_id).await.unwrap();
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
