//! Opening a collection, keeping its local index in line with the object store, committing,
//! deleting and compacting.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{StreamExt, TryStreamExt};
use hearth_index::{
    Access, Chunk, CollectionIndex, CollectionName, CollectionSettings, DocId, IndexError,
    IndexStats, IndexedDoc, Redaction, keys,
};
use hearth_ingest::{CollectionModel, DocRecord, DocState, MetaValue};

use super::Service;
use crate::error::{Result, ServiceError};

/// How long opening a collection waits for the work still holding a deleted collection of the
/// same name, before answering 409.
const DYING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn still_dying(c: &CollectionName) -> ServiceError {
    ServiceError::Index(IndexError::Conflict(format!(
        "collection {c} was deleted and work on its documents is still finishing; \
         try again in a few seconds"
    )))
}

/// A document's name and access list: what a newer upload replaces by.
type SourceKey = (String, Access);

/// An open collection: its local index and what the service remembers about its documents.
pub struct Collection {
    name: CollectionName,
    pub(super) index: RwLock<CollectionIndex>,
    /// Records added to the index since the last commit, to be marked `indexed` by it.
    pending: Mutex<Vec<DocRecord>>,
    /// Live documents by external name (source), oldest first: a newer upload of the same name
    /// and access replaces the older ones at the next commit.
    /// Keyed by name and access list: a document replaces only older ones of the same name
    /// that the same people may read (a writer cannot replace what it may not read).
    sources: Mutex<HashMap<SourceKey, Vec<(u64, DocId)>>>,
    /// Documents deleted while this handle was open: work still under way on one of them
    /// (ingestion, a commit) erases what it wrote again, so a delete is never undone.
    erased: Mutex<HashSet<DocId>>,
    /// The whole collection was deleted.
    deleted: AtomicBool,
    /// Documents being processed now: a document reached twice at once (a mailbox's message
    /// processed after its mailbox while the queue, resumed after a crash, holds it too) is
    /// processed by the first caller only.
    working: Mutex<HashSet<DocId>>,
    /// Held while a document's access list changes, so two changes apply in one order to
    /// both the record and the index.
    pub(super) access_change: tokio::sync::Mutex<()>,
    /// The collection's embedding model, and where its chunk files are. Changed only by a
    /// re-embedding's switch, under the index's write lock together with the index, so a
    /// search that reads it while holding the index's read lock sees the model of the index
    /// it searches.
    model: RwLock<CollectionModel>,
    /// Held (shared) by work that writes the collection's documents: processing one, deleting
    /// one, committing, changing the settings. A re-embedding takes it exclusively to switch
    /// models, so no document is half in the old model's files and half in the new one's.
    pub(super) writing: tokio::sync::RwLock<()>,
    /// The re-embedding running in this process, if any, and how far it got.
    pub(super) reembedding: Mutex<Option<super::reembed::ReembedStatus>>,
    /// What was published of the index to the object store; held by a publish.
    pub(super) publish_state: tokio::sync::Mutex<super::published::PublishState>,
    /// Replicas: documents whose change marker the indexer dealt with, to be deleted once a
    /// published generation reflects the change.
    settling: Mutex<HashSet<DocId>>,
    /// The store's generation of the published index that the local index was last in line
    /// with (fetched, published, or loaded by a replica), 0 for none: a replica publishes
    /// only the generation after it; searches read it without waiting for a publish.
    aligned: std::sync::atomic::AtomicU64,
}

/// A claim on processing one document; released when dropped.
pub(super) struct Working<'a> {
    col: &'a Collection,
    doc: DocId,
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        lock(&self.col.working).remove(&self.doc);
    }
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.name
    }

    /// The collection's embedding model now.
    pub(super) fn model(&self) -> CollectionModel {
        *read(&self.model)
    }

    /// Records the collection's model: a change of embedding model (a re-embedding's switch)
    /// is made with the index's write lock held, together with the index.
    pub(super) fn set_model(&self, m: CollectionModel) {
        *write(&self.model) = m;
    }

    /// Sizes of the local index.
    pub fn stats(&self) -> IndexStats {
        read(&self.index).stats()
    }

    /// Live documents and chunks `reader` may read.
    pub fn readable_counts(&self, reader: &hearth_index::Reader) -> (usize, usize) {
        read(&self.index).readable_counts(reader)
    }

    pub(super) fn note_source(&self, rec: &DocRecord) {
        let mut sources = lock(&self.sources);
        let docs = sources
            .entry((rec.source.clone(), rec.access.clone()))
            .or_default();
        if !docs.iter().any(|(_, d)| *d == rec.doc_id) {
            docs.push((rec.created_ms, rec.doc_id));
            docs.sort_unstable();
        }
    }

    /// Claims `doc` for processing, or `None` when another task is processing it.
    pub(super) fn claim(&self, doc: DocId) -> Option<Working<'_>> {
        lock(&self.working)
            .insert(doc)
            .then_some(Working { col: self, doc })
    }

    pub(super) fn push_pending(&self, rec: DocRecord) {
        lock(&self.pending).push(rec);
    }

    /// Whether the document is being processed, or waits for a commit to be marked indexed:
    /// its record is about to be written by that work.
    pub(super) fn is_busy(&self, doc: &DocId) -> bool {
        lock(&self.working).contains(doc) || lock(&self.pending).iter().any(|r| r.doc_id == *doc)
    }

    /// Whether the document (or the whole collection) was deleted through this handle.
    pub(super) fn is_erased(&self, doc: &DocId) -> bool {
        self.is_deleted() || lock(&self.erased).contains(doc)
    }

    /// Whether the collection was deleted.
    pub(super) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// The index, to change it; `None` once the collection is deleted. The delete removes the
    /// index directory under this lock, so a change that comes after it writes nothing there
    /// (a commit racing the removal once left a segment of deleted text, and "Directory not
    /// empty").
    pub(super) fn index_mut(&self) -> Option<std::sync::RwLockWriteGuard<'_, CollectionIndex>> {
        let index = write(&self.index);
        (!self.is_deleted()).then_some(index)
    }

    /// The document was deleted (through another replica): work under way on it erases
    /// what it writes.
    pub(super) fn mark_erased(&self, doc: &DocId) {
        lock(&self.erased).insert(*doc);
    }

    /// The store's generation the local index was last in line with (see `aligned`).
    pub(super) fn aligned(&self) -> Option<u64> {
        Some(self.aligned.load(Ordering::SeqCst)).filter(|g| *g > 0)
    }

    /// The local index now holds the documents of the store's `generation` (or none).
    pub(super) fn set_aligned(&self, generation: Option<u64>) {
        self.aligned
            .store(generation.unwrap_or(0), Ordering::SeqCst);
    }

    /// Replicas: the indexer dealt with the document's change marker (see `settling`).
    pub(super) fn settle_later(&self, doc: DocId) {
        lock(&self.settling).insert(doc);
    }

    /// Whether the document's marker waits for a publish.
    pub(super) fn is_settling(&self, doc: &DocId) -> bool {
        lock(&self.settling).contains(doc)
    }

    /// The documents whose markers wait for a publish.
    pub(super) fn settling(&self) -> Vec<DocId> {
        lock(&self.settling).iter().copied().collect()
    }

    /// The document's marker is gone.
    pub(super) fn settled(&self, doc: &DocId) {
        lock(&self.settling).remove(doc);
    }

    /// A document of this id was submitted again: it is no longer deleted.
    pub(crate) fn revive(&self, doc: &DocId) {
        lock(&self.erased).remove(doc);
    }

    pub(super) fn forget(&self, doc: &DocId) {
        let mut sources = lock(&self.sources);
        sources.retain(|_, docs| {
            docs.retain(|(_, d)| d != doc);
            !docs.is_empty()
        });
    }
}

/// What [`Service::open`] had to do to bring the local index in line with the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Documents added to the index from their stored chunk files.
    pub added: usize,
    /// Documents removed from the index because the store no longer has them.
    pub removed: usize,
}

/// What [`Service::compact`] reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Chunks dropped from the local index (deleted or replaced documents).
    pub chunks_dropped: u64,
    /// Objects removed from the store that no document record pointed at any more.
    pub orphans_removed: usize,
}

pub(super) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // invariant: index operations do not panic while holding the lock; if one did, the data
    // is still consistent (each operation validates before it mutates), so recover it.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs blocking index work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, IndexError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("index task: {e}")))?
        .map_err(ServiceError::from)
}

/// Takes the verdict of the checks the open left to the background (the vectors' and graph's
/// checksums) as soon as it is in, so that a damaged file is rebuilt then rather than at the
/// next commit. Waits without holding the index; holds only a weak reference meanwhile.
fn verify_when_checked(col: &Arc<Collection>) {
    let verification = read(&col.index).verification();
    let weak = Arc::downgrade(col);
    tokio::task::spawn_blocking(move || {
        verification.wait();
        let Some(col) = weak.upgrade() else { return };
        let Some(mut index) = col.index_mut() else {
            return;
        };
        if let Err(error) = index.verify() {
            tracing::error!(collection = %col.name, %error, "could not repair the collection's index after its background check");
        }
    });
}

impl Service {
    /// Creates a collection with PII redaction rules, OCR languages, the access its
    /// documents get when uploaded without their own and an embedding model (by name; `None`:
    /// the default, or the one it has) (or opens it when it
    /// exists with the same settings; a conflict otherwise; empty ones accept what it has),
    /// like [`Service::open`].
    pub async fn create(
        &self,
        c: &CollectionName,
        redaction: &Redaction,
        ocr_languages: &[String],
        default_access: &Access,
        embedder: Option<&str>,
    ) -> Result<Arc<Collection>> {
        self.wait_for_dying(c).await;
        if self.is_dying(c) {
            return Err(still_dying(c));
        }
        self.pipeline
            .create_collection(c, redaction, ocr_languages, default_access, embedder)
            .await?;
        self.open(c).await
    }

    /// Opens a collection (creating it on first use), loads its local index and brings it in
    /// line with the object store. Later calls return the same handle.
    pub async fn open(&self, c: &CollectionName) -> Result<Arc<Collection>> {
        self.wait_for_dying(c).await;
        let mut open = self.open.lock().await;
        self.open_locked(&mut open, c).await
    }

    async fn open_locked(
        &self,
        open: &mut HashMap<CollectionName, Arc<Collection>>,
        c: &CollectionName,
    ) -> Result<Arc<Collection>> {
        if let Some(col) = open.get(c) {
            return Ok(col.clone());
        }
        if self.is_dying(c) {
            return Err(still_dying(c));
        }
        let model = self.pipeline.open_collection(c).await?;
        self.remove_stale_index_dirs(c, model);
        let dir = self.index_dir(c, model.vectors);
        let fetched = self.fetch_published(c, model.vectors, &dir).await;
        let fetched_generation = fetched
            .as_ref()
            .and_then(hearth_index::Uploaded::generation);
        let e = &self.embedders[model.embedder];
        let params = self.index.params(e.dim, &e.name);
        let sealer = self.cache_sealer.clone();
        let index = blocking(move || CollectionIndex::open_sealed(&dir, params, sealer)).await?;
        let col = Arc::new(Collection {
            name: c.clone(),
            index: RwLock::new(index),
            pending: Mutex::new(Vec::new()),
            sources: Mutex::new(HashMap::new()),
            erased: Mutex::new(HashSet::new()),
            deleted: AtomicBool::new(false),
            working: Mutex::new(HashSet::new()),
            access_change: tokio::sync::Mutex::new(()),
            model: RwLock::new(model),
            writing: tokio::sync::RwLock::new(()),
            reembedding: Mutex::new(None),
            publish_state: tokio::sync::Mutex::new(super::published::PublishState::new(
                model.vectors,
                fetched.unwrap_or_default(),
            )),
            settling: Mutex::new(HashSet::new()),
            aligned: std::sync::atomic::AtomicU64::new(fetched_generation.unwrap_or(0)),
        });
        let report = self.sync(&col).await?;
        if report != SyncReport::default() {
            tracing::info!(collection = %c, added = report.added, removed = report.removed, "index brought in line with the object store");
        }
        open.insert(c.clone(), col.clone());
        verify_when_checked(&col);
        Ok(col)
    }

    /// Brings the local index in line with the store's records, then commits.
    async fn sync(&self, col: &Arc<Collection>) -> Result<SyncReport> {
        let records = self.registry.list(&col.name).await?;
        let live: HashMap<DocId, &DocRecord> = records
            .iter()
            .filter(|r| is_searchable(r.state))
            .map(|r| (r.doc_id, r))
            .collect();
        for r in live.values() {
            col.note_source(r);
        }
        let indexed: HashSet<DocId> = read(&col.index).doc_ids().into_iter().collect();
        let stale: Vec<DocId> = indexed
            .iter()
            .filter(|d| !live.contains_key(d))
            .copied()
            .collect();
        let missing: Vec<DocRecord> = live
            .values()
            .filter(|r| !indexed.contains(&r.doc_id))
            .map(|r| (*r).clone())
            .collect();
        let report = SyncReport {
            added: missing.len(),
            removed: stale.len(),
        };
        let mut loads = futures::stream::iter(missing)
            .map(|rec| async move {
                let chunks = self.load_chunks(col, &rec).await;
                (rec, chunks)
            })
            .buffer_unordered(8);
        while let Some((mut rec, chunks)) = loads.next().await {
            let chunks = match chunks? {
                Ok(c) if c.iter().all(|c| c.embedding.is_some()) => c,
                // Chunks without vectors (written by an interrupted run): embed them again.
                Ok(_) => match self.embed_document(col, &mut rec).await? {
                    Some(c) => c,
                    None => continue,
                },
                Err(reason) => {
                    self.fail(&mut rec, reason).await?;
                    continue;
                }
            };
            self.add_to_index(col, &rec, chunks).await?;
            col.push_pending(rec);
        }
        // Access changed in the store whose index change did not reach a commit (a crash
        // between the two): the record is the truth.
        let regranted: Vec<(DocId, Access)> = {
            let index = read(&col.index);
            live.values()
                .filter(|r| index.access(&r.doc_id).is_some_and(|a| *a != r.access))
                .map(|r| (r.doc_id, r.access.clone()))
                .collect()
        };
        if !stale.is_empty() || !regranted.is_empty() {
            let col2 = col.clone();
            blocking(move || {
                if let Some(mut index) = col2.index_mut() {
                    for d in &stale {
                        index.delete(d)?;
                    }
                    for (d, a) in regranted {
                        index.set_access(&d, a);
                    }
                }
                Ok(())
            })
            .await?;
        }
        // Records that say `embedded` but are already in the index (a commit happened, the
        // record update did not): finish them too.
        for r in live.values() {
            if r.state == DocState::Embedded && indexed.contains(&r.doc_id) {
                col.push_pending((*r).clone());
            }
        }
        self.commit(col).await?;
        Ok(report)
    }

    /// Reads a document's chunks, with the vectors of the collection's model, from the store.
    /// The error is the document's fate (a reason).
    pub(super) async fn load_chunks(
        &self,
        col: &Collection,
        rec: &DocRecord,
    ) -> Result<std::result::Result<Vec<Chunk>, String>> {
        self.load_chunks_of(rec, col.model().vectors).await
    }

    /// Reads a document's chunk file of model number `vectors`.
    pub(super) async fn load_chunks_of(
        &self,
        rec: &DocRecord,
        vectors: u32,
    ) -> Result<std::result::Result<Vec<Chunk>, String>> {
        let key = keys::chunks_of(&rec.collection, vectors, &rec.doc_id);
        let Some(bytes) = self.store.get_opt(&key).await? else {
            return Ok(Err("the chunk file is missing from the object store".into()));
        };
        Ok(hearth_index::decode_chunks(&key, &bytes).map_err(|e| e.to_string()))
    }

    pub(super) async fn add_to_index(
        &self,
        col: &Arc<Collection>,
        rec: &DocRecord,
        chunks: Vec<Chunk>,
    ) -> Result<()> {
        let doc = indexed_doc(rec);
        col.note_source(rec);
        let col2 = col.clone();
        blocking(move || col2.index_mut().map_or(Ok(()), |mut i| i.add(doc, &chunks))).await
    }

    /// Makes everything added since the last commit durable and searchable by a fresh process:
    /// replaces older documents of the same external name, commits the index, and marks the
    /// added documents `indexed`; then publishes the index to the object store.
    pub async fn commit(&self, col: &Arc<Collection>) -> Result<()> {
        self.commit_and_publish(col, true).await
    }

    /// Commits like [`Service::commit`], publishing the index only when `always` or when the
    /// last publish is `PUBLISH_EVERY` old (the worker's commits while documents are still
    /// being processed: it publishes when it runs out of work).
    pub(super) async fn commit_and_publish(
        &self,
        col: &Arc<Collection>,
        always: bool,
    ) -> Result<()> {
        // The documents this commit finishes are those added before it starts: one added while
        // the index commits (the background worker adds beside commits) may or may not be in
        // it, so it waits for the next commit to be marked `indexed`. Those a failed commit
        // did not mark wait for the next one too.
        let writing = col.writing.read().await;
        let mut pending = std::mem::take(&mut *lock(&col.pending));
        let r = self.commit_pending(col, &mut pending).await;
        if r.is_err() {
            lock(&col.pending).append(&mut pending);
        }
        drop(writing);
        if r.is_ok() && (always || col.publish_state.lock().await.due(self.cluster.is_some())) {
            self.publish(col).await;
        }
        r
    }

    async fn commit_pending(
        &self,
        col: &Arc<Collection>,
        pending: &mut Vec<DocRecord>,
    ) -> Result<()> {
        let replaced: Vec<DocId> = {
            let sources = lock(&col.sources);
            sources
                .values()
                .filter(|docs| docs.len() > 1)
                .flat_map(|docs| docs[..docs.len() - 1].iter().map(|(_, d)| *d))
                .collect()
        };
        for d in &replaced {
            self.erase(col, d).await?;
        }
        let col2 = col.clone();
        blocking(move || col2.index_mut().map_or(Ok(()), |mut i| i.commit())).await?;
        while let Some(mut rec) = pending.pop() {
            if replaced.contains(&rec.doc_id) {
                continue;
            }
            let before = rec.state;
            rec.state = DocState::Indexed;
            if let Err(e) = self.registry.put(&mut rec).await {
                rec.state = before;
                pending.push(rec);
                return Err(e.into());
            }
            self.erase_if_deleted(col, &rec.doc_id).await?;
        }
        Ok(())
    }

    /// Erases a document again if it was deleted while work on it was under way (that work
    /// may have written its record or chunks after the delete).
    ///
    /// When the whole collection was deleted, everything under it goes again: what this work
    /// wrote (a record, chunks, the documents found inside this one) may have come after the
    /// delete listed the store. No new collection of the name exists while this work holds the
    /// deleted one's handle (see [`Service::open`]), so there is nothing else to meet.
    pub(super) async fn erase_if_deleted(&self, col: &Arc<Collection>, doc: &DocId) -> Result<()> {
        if col.is_deleted() {
            self.remove_stored(&col.name).await?;
        } else if col.is_erased(doc) {
            self.erase_keys(col, doc).await?;
        }
        Ok(())
    }

    /// Deletes a document: its record, original bytes and chunks leave the store, and its
    /// chunks leave every search result at once. Returns whether the document existed.
    ///
    /// The documents that came out of it (an e-mail's attachments, a mailbox's messages, and
    /// theirs) go with it: an erasure request names the message, not each attachment.
    pub async fn delete_document(&self, col: &Arc<Collection>, doc: &DocId) -> Result<bool> {
        let _writing = col.writing.read().await;
        let existed = self.registry.get(&col.name, doc).await?.is_some();
        let family = self.descendants(col, doc).await?;
        if self.replica_name().is_some() && !self.leads(&col.name) {
            // The indexer is another process: what its work under way writes (the record, at
            // each stage) would bring the document back after this delete.
            for d in std::iter::once(doc).chain(&family) {
                if let Some(r) = self.registry.get(&col.name, d).await?
                    && !matches!(r.state, DocState::Indexed | DocState::Failed)
                {
                    return Err(ServiceError::Index(IndexError::Conflict(format!(
                        "document {d} is still being processed ({}) by the replica that indexes {}; delete it once it is indexed",
                        r.state.as_str(),
                        col.name
                    ))));
                }
            }
        }
        for d in std::iter::once(doc).chain(&family) {
            lock(&col.erased).insert(*d);
            self.erase(col, d).await?;
        }
        let col2 = col.clone();
        blocking(move || col2.index_mut().map_or(Ok(()), |mut i| i.commit())).await?;
        self.recount_usage(&col.name);
        for d in std::iter::once(doc).chain(&family) {
            self.mark_changed(&col.name, d).await?;
        }
        Ok(existed)
    }

    /// The documents inside `doc`, and inside those, that name it (or one of them) as their
    /// `parent`: an attachment two messages share belongs to the first and goes with it only.
    pub(super) async fn descendants(&self, col: &Collection, doc: &DocId) -> Result<Vec<DocId>> {
        let mut found: Vec<DocId> = Vec::new();
        let mut todo = vec![*doc];
        while let Some(d) = todo.pop() {
            let Some(rec) = self.registry.get(&col.name, &d).await? else {
                continue;
            };
            for child in &rec.children {
                if found.contains(child) || child == doc {
                    continue;
                }
                let owned = self.registry.get(&col.name, child).await?.is_some_and(|c| {
                    c.metadata.get("parent") == Some(&MetaValue::Text(d.to_hex()))
                });
                if owned {
                    found.push(*child);
                    todo.push(*child);
                }
            }
        }
        Ok(found)
    }

    /// Removes one document everywhere (record first: once it is gone the document is gone,
    /// whatever happens next), without committing the index.
    async fn erase(&self, col: &Arc<Collection>, doc: &DocId) -> Result<()> {
        self.erase_keys(col, doc).await?;
        col.forget(doc);
        lock(&col.pending).retain(|r| r.doc_id != *doc);
        let col2 = col.clone();
        let doc = *doc;
        blocking(move || {
            col2.index_mut()
                .map_or(Ok(()), |mut i| i.delete(&doc).map(|_| ()))
        })
        .await
    }

    /// Removes a document's objects: its record, original and chunk files (those of the
    /// model in use and of a re-embedding under way).
    pub(super) async fn erase_keys(&self, col: &Collection, doc: &DocId) -> Result<()> {
        let c = &col.name;
        self.registry.delete(c, doc).await?;
        self.store.delete(&keys::raw(c, doc)).await?;
        let m = col.model();
        for vectors in std::iter::once(m.vectors).chain(m.reembed) {
            self.store.delete(&keys::chunks_of(c, vectors, doc)).await?;
        }
        Ok(())
    }

    /// Replaces the local index by the files of the store's newest published generation: a
    /// replica that takes a collection over has built its index by loading generations (its
    /// files are not the published ones, and its first publish would upload them all). Call
    /// it once the index holds that generation's documents (its `sources` then are right).
    /// Returns whether it replaced anything; on an error the old index stays.
    pub(super) async fn install_published(&self, col: &Arc<Collection>) -> Result<bool> {
        let _writing = col.writing.write().await;
        let mut state = col.publish_state.lock().await;
        let m = col.model();
        let published = self.published_index(&col.name, m.vectors);
        let Some(latest) = published.latest_generation().await? else {
            return Ok(false);
        };
        if state.files_of() == Some(latest) || col.aligned() != Some(latest) {
            // Its files are the store's already, or it does not hold that generation yet.
            return Ok(false);
        }
        let root = self.data_dir.join("index");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Under the prefix a start removes: a process killed meanwhile leaves nothing behind.
        let at = |what: &str| root.join(format!("{DELETED_PREFIX}{what}-{}-{stamp}", col.name));
        let (fresh, empty, old) = (at("fetch"), at("empty"), at("replaced"));
        let Some(fetched) = published.fetch(&fresh, self.cache_sealer.clone()).await? else {
            return Ok(false);
        };
        let dir = self.index_dir(&col.name, m.vectors);
        let e = &self.embedders[m.embedder];
        let params = self.index.params(e.dim, &e.name);
        let sealer = self.cache_sealer.clone();
        let (col2, fetched_dir) = (col.clone(), fresh.clone());
        let swapped = blocking(move || {
            let fresh = fetched_dir;
            let io = |what: &str, e: std::io::Error| {
                IndexError::Internal(format!("replacing the index of {}: {what}: {e}", col2.name))
            };
            let Some(mut index) = col2.index_mut() else {
                return Ok(false);
            };
            // The old index lets go of its directory (its lock, its mapped files) first.
            let placeholder = CollectionIndex::open_sealed(&empty, params, sealer.clone())?;
            drop(std::mem::replace(&mut *index, placeholder));
            std::fs::rename(&dir, &old).map_err(|e| io("moving the old one aside", e))?;
            std::fs::rename(&fresh, &dir).map_err(|e| io("moving the new one in", e))?;
            match CollectionIndex::open_sealed(&dir, params, sealer.clone()) {
                Ok(new) => *index = new,
                Err(e) => {
                    let _ = std::fs::rename(&dir, &fresh);
                    let _ = std::fs::rename(&old, &dir);
                    *index = CollectionIndex::open_sealed(&dir, params, sealer)?;
                    return Err(e);
                }
            }
            drop(index);
            remove_trash(&old);
            remove_trash(&empty);
            Ok(true)
        })
        .await;
        remove_trash(&fresh);
        if !swapped? {
            return Ok(false);
        }
        *state = super::published::PublishState::new(m.vectors, fetched.uploaded);
        col.set_aligned(Some(fetched.generation));
        drop(state);
        verify_when_checked(col);
        tracing::info!(collection = %col.name, generation = fetched.generation, files = fetched.files, "replica: took the published index's files over");
        Ok(true)
    }

    /// Where the local index of collection `c` with model number `vectors` lives:
    /// `{data_dir}/index/{c}`, or `{c}.v{n}` after re-embeddings (no collection name holds a
    /// dot).
    pub(super) fn index_dir(&self, c: &CollectionName, vectors: u32) -> std::path::PathBuf {
        let root = self.data_dir.join("index");
        match vectors {
            0 => root.join(c.as_str()),
            n => root.join(format!("{c}.v{n}")),
        }
    }

    /// The local index directories of collection `c`, whatever their model number.
    fn index_dirs(&self, c: &CollectionName) -> Vec<(std::path::PathBuf, u32)> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("index")) else {
            return Vec::new();
        };
        let dotted = format!("{c}.v");
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let n = if name == c.as_str() {
                    0
                } else {
                    name.strip_prefix(&dotted)?.parse().ok()?
                };
                Some((e.path(), n))
            })
            .collect()
    }

    /// Removes index directories of models the collection no longer uses (a re-embedding
    /// switched and the process stopped before removing the old one; or one abandoned).
    fn remove_stale_index_dirs(&self, c: &CollectionName, m: CollectionModel) {
        for (dir, n) in self.index_dirs(c) {
            if n != m.vectors && Some(n) != m.reembed {
                self.trash_dir(c, &dir);
            }
        }
    }

    /// Moves an index directory aside and removes it.
    pub(super) fn trash_dir(&self, c: &CollectionName, dir: &std::path::Path) {
        let trash = self.data_dir.join("index").join(format!(
            "{DELETED_PREFIX}{c}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        match std::fs::rename(dir, &trash) {
            Ok(()) => remove_trash(&trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old index directory");
            }
        }
    }

    /// The collections in the store, by name.
    pub async fn collections(&self) -> Result<Vec<CollectionName>> {
        let mut names = CollectionSettings::list(&self.store).await?;
        names.sort();
        Ok(names)
    }

    /// Whether a collection exists in the store.
    pub async fn exists(&self, c: &CollectionName) -> Result<bool> {
        Ok(self.store.exists(&keys::collection(c)).await?)
    }

    /// A collection's settings as stored, read once (what describing it needs), with the OCR
    /// languages made effective (its own, or the node's default).
    pub async fn settings(&self, col: &Collection) -> Result<CollectionSettings> {
        let mut s = CollectionSettings::read(&self.store, col.name())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("collection {}", col.name())))?;
        s.ocr_languages = self.pipeline.effective_ocr_languages(Some(&s));
        Ok(s)
    }

    /// Opens a collection that exists, or fails with `NotFound`; never creates one.
    pub async fn open_existing(&self, c: &CollectionName) -> Result<Arc<Collection>> {
        let mut open = self.open.lock().await;
        if let Some(col) = open.get(c) {
            return Ok(col.clone());
        }
        // Under the lock: a delete holds it until the settings are gone, so a request that
        // waited on it finds no collection instead of creating it again (uploads that came
        // after a delete were accepted into a collection brought back to life).
        if !self.store.exists(&keys::collection(c)).await? {
            return Err(ServiceError::NotFound(format!("collection {c}")));
        }
        self.open_locked(&mut open, c).await
    }

    /// Whether a deleted collection's handle is still held by work under way.
    fn is_dying(&self, c: &CollectionName) -> bool {
        let mut dying = self
            .dying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let alive = dying.get(c).is_some_and(|w| w.strong_count() > 0);
        if !alive {
            dying.remove(c);
        }
        alive
    }

    /// Waits up to `DYING_WAIT` for the work still holding a deleted collection of this name
    /// to finish: until it has, that work may erase what it wrote, which must not meet the
    /// documents of a new collection of the same name.
    async fn wait_for_dying(&self, c: &CollectionName) {
        let until = tokio::time::Instant::now() + DYING_WAIT;
        while self.is_dying(c) && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Deletes a collection and everything under it: document records, original bytes, chunk
    /// files, its settings and its local index. Returns whether it existed. Ingestion still
    /// under way for one of its documents erases what it writes.
    pub async fn delete_collection(&self, c: &CollectionName) -> Result<bool> {
        let mut open = self.open.lock().await;
        let existed = self.store.exists(&keys::collection(c)).await?;
        let col = self.retire(&mut open, c);
        self.remove_stored(c).await?;
        self.recount_usage(c);
        self.remove_local(c, col).await?;
        drop(open);
        Ok(existed)
    }

    /// Forgets a collection deleted through another replica: its handle and its local index
    /// (the store's objects are that replica's to remove).
    pub(super) async fn drop_local(&self, c: &CollectionName) -> Result<()> {
        let mut open = self.open.lock().await;
        let col = self.retire(&mut open, c);
        self.remove_local(c, col).await
    }

    /// Takes a collection's handle out of the open ones and marks it deleted: work still
    /// holding it writes nothing more, and no collection of the name opens until it is gone.
    fn retire(
        &self,
        open: &mut HashMap<CollectionName, Arc<Collection>>,
        c: &CollectionName,
    ) -> Option<Arc<Collection>> {
        let col = open.remove(c);
        // A collection made again under the name (by another tenant, say) must not find the
        // reranker's cached vectors of this one: its latency would tell what this one held.
        self.forget_reranked();
        if let Some(col) = &col {
            col.deleted.store(true, Ordering::SeqCst);
            self.dying
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(c.clone(), Arc::downgrade(col));
        }
        col
    }

    /// Removes a retired collection's local index directories.
    async fn remove_local(&self, c: &CollectionName, col: Option<Arc<Collection>>) -> Result<()> {
        // Those of other models first (an abandoned re-embedding); the one in use below.
        let dir = self.index_dir(c, col.as_ref().map_or(0, |col| col.model().vectors));
        for (other, _) in self.index_dirs(c) {
            if other != dir {
                self.trash_dir(c, &other);
            }
        }
        let trash = self.data_dir.join("index").join(format!(
            "{DELETED_PREFIX}{c}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        tokio::task::spawn_blocking(move || {
            // Under the index lock: a commit under way finishes first, and those after it see
            // the collection deleted and write nothing.
            let _index = col.as_ref().map(|col| write(&col.index));
            // Moved aside first, in one step: the full-text index's own threads (a merge that
            // finishes late) may still write a file into it, which would make removing it in
            // place fail with "directory not empty"; a new collection of the name starts clean.
            match std::fs::rename(&dir, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(ServiceError::Internal(format!(
                        "removing the index directory {}: {e}",
                        dir.display()
                    )));
                }
            }
            remove_trash(&trash);
            Ok(())
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("index removal task: {e}")))?
    }

    /// Removes every object of a collection from the store: document records, original bytes,
    /// chunk files, conversations, then its settings (last: a half-deleted collection still lists, so a retry
    /// finishes it).
    pub(super) async fn remove_stored(&self, c: &CollectionName) -> Result<()> {
        self.registry.forget(c);
        for prefix in [
            keys::doc_records_prefix(c),
            format!("raw/{c}/"),
            format!("chunks/{c}/"),
            keys::index_prefix(c),
            keys::change_markers_prefix(c),
            super::conversation::prefix(c),
        ] {
            let keys = self.store.list(&prefix).await?;
            let store = &self.store;
            futures::stream::iter(keys)
                .map(|k| async move { store.delete(&k).await })
                .buffer_unordered(8)
                .try_collect::<Vec<()>>()
                .await?;
        }
        // The catalog file last, once no record is left for a listing to put in one; a
        // listing under way removes what it writes (`Registry::forget`).
        self.registry.forget(c);
        for key in self.store.list(&keys::catalog_prefix(c)).await? {
            self.store.delete(&key).await?;
        }
        self.store.delete(&keys::collection(c)).await?;
        Ok(())
    }

    /// Reclaims space: rewrites the local index without deleted chunks, and removes objects
    /// from the store that no document record points at (left behind by an interrupted delete).
    pub async fn compact(&self, col: &Arc<Collection>) -> Result<CompactReport> {
        if let Some(replica) = self.replica_name() {
            // Only the indexer may publish and purge; a command-line run holds no lease.
            return Err(ServiceError::Index(IndexError::Conflict(format!(
                "compaction is not coordinated between replicas yet: stop the others and run it with cluster.enabled off (this is replica {replica})"
            ))));
        }
        let col2 = col.clone();
        let stats = blocking(move || match col2.index_mut() {
            Some(mut index) => index.compact().map(Some),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("collection {}", col.name)))?;
        let c = &col.name;
        let all = self.registry.list(c).await?;
        let records: HashSet<DocId> = all.iter().map(|r| r.doc_id).collect();
        // Originals a redacting collection discarded, if a crash came between the record and
        // the delete.
        let mut orphans = Vec::new();
        for r in all.iter().filter(|r| r.original_discarded) {
            let key = keys::raw(c, &r.doc_id);
            if self.store.exists(&key).await? {
                orphans.push(key);
            }
        }
        let raw = format!("raw/{c}/");
        for key in self.store.list(&raw).await? {
            let id = key.strip_prefix(&raw).and_then(|k| k.parse::<DocId>().ok());
            if id.is_some_and(|d| !records.contains(&d)) {
                orphans.push(key);
            }
        }
        // Chunk files of documents without a record, and those of models the collection no
        // longer uses (left by a re-embedding that switched and stopped before removing them,
        // or by one abandoned for another model).
        let m = col.model();
        for key in self.store.list(&format!("chunks/{c}/")).await? {
            let ours = std::iter::once(m.vectors)
                .chain(m.reembed)
                .find_map(|v| keys::chunks_doc(c, v, &key));
            if ours.is_none_or(|d| !records.contains(&d)) {
                orphans.push(key);
            }
        }
        futures::stream::iter(orphans.iter())
            .map(|k| self.store.delete(k))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        // The catalog file written anew: no deleted document's record stays in the store.
        self.registry.save_catalog(c).await?;
        // The compacted index published, and what no generation needs any more collected.
        self.publish_and_collect(col).await?;
        Ok(CompactReport {
            chunks_dropped: stats.removed_chunks as u64,
            orphans_removed: orphans.len(),
        })
    }

    pub(super) async fn fail(&self, rec: &mut DocRecord, reason: String) -> Result<()> {
        rec.state = DocState::Failed;
        rec.reason = Some(reason);
        self.registry.put(rec).await?;
        Ok(())
    }
}

/// Index directories of deleted collections, moved aside before removal, start with this (no
/// collection name does).
pub(super) const DELETED_PREFIX: &str = ".deleted-";

/// Removes a deleted collection's index directory, trying again while late writes land in it
/// (for up to 2 s); what is left is removed at the next start.
pub(super) fn remove_trash(trash: &std::path::Path) {
    for attempt in 0..20 {
        match std::fs::remove_dir_all(trash) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 19 => {
                tracing::warn!(dir = %trash.display(), error = %e, "a deleted collection's index directory is left for the next start");
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// A document as the index records it, from its record.
pub(super) fn indexed_doc(rec: &DocRecord) -> IndexedDoc {
    IndexedDoc {
        doc_id: rec.doc_id,
        source: rec.source.clone(),
        title: rec.title.clone(),
        metadata: rec.metadata.clone(),
        access: rec.access.clone(),
    }
}

fn is_searchable(s: DocState) -> bool {
    matches!(s, DocState::Embedded | DocState::Indexed)
}
