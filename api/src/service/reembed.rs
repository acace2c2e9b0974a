//! Re-embedding a collection into another embedding model, without downtime.
//!
//! The new model's vectors are built beside the old ones: for every document the old index
//! serves, its stored chunk text is embedded again and written to a chunk file of the new
//! model (`keys::chunks_of`, model number one higher) and added to a second local index
//! (`{data_dir}/index/{c}.v{n}`), while searches, uploads and deletes go on against the old
//! one. Documents that arrive meanwhile are caught by a second pass. The switch takes the
//! collection's `writing` lock exclusively (no document is then being processed, deleted or
//! committed), adds what is still missing, copies access changes, commits the new index, and
//! writes the collection's settings once: that write is the commit point. The new index and
//! model then replace the old ones under the index's write lock, so every search runs against
//! one model's vectors, embedded with that model. The old files go afterwards.
//!
//! Interrupted, the settings still name the re-embedding (and the old model in use): running
//! it again keeps every chunk file already written and the new index's committed documents,
//! and embeds only the rest. Deleting a document meanwhile removes its chunk files of both
//! models (see `Service::erase_keys`), and a file written after the delete is removed again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures::StreamExt;
use hearth_index::{CollectionIndex, DocId, keys};
use hearth_ingest::{CollectionModel, DocRecord};

use super::collection::{blocking, read, write};
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// Documents re-embedded between commits of the new index (what an interruption may cost
/// again, beyond the chunk files already written).
const COMMIT_EVERY: usize = 64;

/// How far a re-embedding running in this process got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReembedStatus {
    /// The model it moves to.
    pub embedder: String,
    /// Documents in the new model's index.
    pub done: usize,
    /// Documents to have there (those the collection serves; it may grow meanwhile).
    pub total: usize,
    /// Why it stopped, when it failed (it resumes when started again).
    pub error: Option<String>,
}

/// What [`Service::reembed`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct ReembedReport {
    /// The model the collection uses now.
    pub embedder: String,
    /// The model it used before.
    pub previous: String,
    /// Documents in the collection when it switched.
    pub documents: usize,
    /// Chunks embedded by this run.
    pub embedded_chunks: usize,
    /// Documents whose new chunk files an interrupted run had already written.
    pub resumed_documents: usize,
    /// Documents that arrived while it ran and were caught up before the switch.
    pub caught_up: usize,
    /// Seconds from start to switch.
    pub seconds: f64,
}

/// Marks a collection as re-embedding in this process; clears the mark when released or
/// dropped.
struct Running<'a> {
    col: &'a Collection,
    armed: bool,
}

impl Running<'_> {
    /// Clears the mark now (the switch is done: what remains is removing the old files, and
    /// another re-embedding may start beside it).
    fn release(&mut self) {
        if std::mem::take(&mut self.armed) {
            *self
                .col
                .reembedding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

impl Collection {
    /// The re-embedding running in this process, if any.
    pub fn reembedding(&self) -> Option<ReembedStatus> {
        self.reembedding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records why a re-embedding started in the background failed.
    pub fn note_reembed_failure(&self, embedder: &str, error: String) {
        *self
            .reembedding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ReembedStatus {
            embedder: embedder.to_owned(),
            done: 0,
            total: 0,
            error: Some(error),
        });
    }

    fn note_progress(&self, done: usize, total: usize) {
        if let Some(s) = self
            .reembedding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            s.done = done;
            s.total = total;
        }
    }
}

fn already_running(col: &Collection, other: &ReembedStatus) -> ServiceError {
    ServiceError::Index(hearth_index::IndexError::Conflict(format!(
        "collection {} is being re-embedded with {} ({} of {} documents done)",
        col.name(),
        other.embedder,
        other.done,
        other.total
    )))
}

/// The new model's index while it is built.
type Building = Arc<RwLock<CollectionIndex>>;

/// Counts of one pass.
#[derive(Clone, Copy, Default)]
struct Pass {
    /// Documents added to the new index.
    added: usize,
    embedded_chunks: usize,
    resumed: usize,
}

impl Service {
    /// Re-embeds collection `col` with the embedding model `embedder` (a name from
    /// [`Service::embedders`]) and switches it to that model; see the module documentation.
    /// `progress` is called with the documents done and to do.
    ///
    /// Fails with a conflict when a re-embedding of the collection already runs here, and
    /// with invalid input for an unknown model or the one the collection uses.
    pub async fn reembed(
        &self,
        col: &Arc<Collection>,
        embedder: &str,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<ReembedReport> {
        let r = self.reembed_running(col, embedder, progress).await;
        if r.is_err() {
            // The collection was deleted under it (its new index's directory went too, which
            // is the error seen): say so, and remove what it wrote.
            self.stop_if_deleted(col).await?;
        }
        r
    }

    /// Whether a re-embedding of `col` with `embedder` may start: a model this node loads,
    /// not the one in use, and none running here already (invalid input, invalid input,
    /// conflict). [`Service::reembed`] checks the same before it claims the collection; the
    /// HTTP route asks first, so that it can answer before starting the work.
    pub fn check_reembed(&self, col: &Collection, embedder: &str) -> Result<()> {
        if let Some(replica) = self.replica_name() {
            // Another replica would go on indexing with the old model meanwhile.
            return Err(ServiceError::Index(hearth_index::IndexError::Conflict(
                format!(
                    "re-embedding is not coordinated between replicas yet: stop the others and run it with cluster.enabled off (this is replica {replica})"
                ),
            )));
        }
        self.embedder_named(embedder)?;
        if self.embedder_name(col) == embedder {
            return Err(ServiceError::InvalidInput(format!(
                "collection {} already uses the embedding model {embedder:?}",
                col.name()
            )));
        }
        match col.reembedding().filter(|s| s.error.is_none()) {
            Some(other) => Err(already_running(col, &other)),
            None => Ok(()),
        }
    }

    async fn reembed_running(
        &self,
        col: &Arc<Collection>,
        embedder: &str,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<ReembedReport> {
        let started = Instant::now();
        self.check_reembed(col, embedder)?;
        let mut running = {
            let mut r = col
                .reembedding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(other) = r.as_ref().filter(|s| s.error.is_none()) {
                return Err(already_running(col, other));
            }
            *r = Some(ReembedStatus {
                embedder: embedder.to_owned(),
                done: 0,
                total: 0,
                error: None,
            });
            Running { col, armed: true }
        };
        // Recorded in the settings while no settings change is under way.
        let plan = {
            let _switch = col.writing.write().await;
            if col.is_deleted() {
                return Err(ServiceError::NotFound(format!("collection {}", col.name())));
            }
            let plan = self.pipeline.begin_reembed(col.name(), embedder).await?;
            col.set_model(plan.from);
            self.stop_if_deleted(col).await?;
            plan
        };
        let c = col.name().clone();
        if let Some(stale) = plan.stale {
            // A re-embedding to another model was abandoned: its files go.
            self.remove_chunk_files(&c, stale).await?;
            self.remove_published(&c, stale).await?;
            self.trash_dir(&c, &self.index_dir(&c, stale));
        }
        let dir = self.index_dir(&c, plan.to.vectors);
        if !plan.resumed {
            self.trash_dir(&c, &dir);
        }
        let e = &self.embedders[plan.to.embedder];
        let params = self.index.params(e.dim, &e.name);
        let sealer = self.cache_sealer.clone();
        let new: Building = Arc::new(RwLock::new(
            blocking(move || CollectionIndex::open_sealed(&dir, params, sealer)).await?,
        ));
        tracing::info!(collection = %c, embedder, resumed = plan.resumed, "re-embedding");

        let mut total = Pass::default();
        let first = self
            .reembed_pass(col, &new, plan.from, plan.to, progress)
            .await?;
        // Documents that arrived during the first pass.
        let second = self
            .reembed_pass(col, &new, plan.from, plan.to, progress)
            .await?;
        let (documents, last) = {
            let _switch = col.writing.write().await;
            let _access = col.access_change.lock().await;
            if col.is_deleted() {
                return Err(ServiceError::NotFound(format!("collection {}", col.name())));
            }
            let last = self
                .reembed_pass(col, &new, plan.from, plan.to, progress)
                .await?;
            // Access changed while the new index was built: the served index is the truth.
            let (col2, new2) = (col.clone(), new.clone());
            let documents = blocking(move || {
                let old = read(&col2.index);
                let mut new = write(&new2);
                for d in new.doc_ids() {
                    if let Some(a) = old.access(&d)
                        && new.access(&d) != Some(a)
                    {
                        new.set_access(&d, a.clone());
                    }
                }
                new.commit()?;
                Ok(new.doc_ids().len())
            })
            .await?;
            let Some(built) = Arc::into_inner(new) else {
                return Err(ServiceError::Internal(
                    "the new index is still shared after the re-embedding".into(),
                ));
            };
            let built = built
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // The commit point: from here the collection uses the new model.
            self.pipeline.finish_reembed(&c).await?;
            // A delete of the whole collection does not wait for this; the settings written
            // after it listed the store go again.
            self.stop_if_deleted(col).await?;
            let col2 = col.clone();
            let to = plan.to;
            blocking(move || {
                let mut index = write(&col2.index);
                let old = std::mem::replace(&mut *index, built);
                col2.set_model(to);
                drop(index);
                drop(old);
                Ok(())
            })
            .await?;
            (documents, last)
        };
        running.release();
        for p in [first, second, last] {
            total.added += p.added;
            total.embedded_chunks += p.embedded_chunks;
            total.resumed += p.resumed;
        }
        // The old model's files are no longer read: they go (a failure leaves them to
        // `hearth compact` and the next open).
        self.trash_dir(&c, &self.index_dir(&c, plan.from.vectors));
        if let Err(e) = self.remove_chunk_files(&c, plan.from.vectors).await {
            tracing::warn!(collection = %c, error = %e, "the old model's chunk files are left for compaction");
        }
        self.publish(col).await;
        if let Err(e) = self.remove_published(&c, plan.from.vectors).await {
            tracing::warn!(collection = %c, error = %e, "the old model's published index is left for compaction");
        }
        let report = ReembedReport {
            embedder: self.embedders[plan.to.embedder].name.clone(),
            previous: self.embedders[plan.from.embedder].name.clone(),
            documents,
            embedded_chunks: total.embedded_chunks,
            resumed_documents: total.resumed,
            caught_up: second.added + last.added,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(collection = %c, embedder = %report.embedder, documents, chunks = report.embedded_chunks, seconds = report.seconds, "re-embedded");
        Ok(report)
    }

    /// The model a re-embedding recorded in the collection's settings is moving it to, if
    /// one is under way or was interrupted.
    pub async fn pending_reembed(&self, col: &Collection) -> Result<Option<String>> {
        Ok(
            hearth_index::CollectionSettings::read(&self.store, col.name())
                .await?
                .and_then(|s| s.reembed)
                .map(|t| t.embedder),
        )
    }

    /// Brings the new index in line with the documents the collection serves: embeds (or
    /// reads, when an interrupted run wrote them) the new model's chunk files of those it
    /// lacks, and removes those the collection no longer has.
    async fn reembed_pass(
        &self,
        col: &Arc<Collection>,
        new: &Building,
        from: CollectionModel,
        to: CollectionModel,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<Pass> {
        let served: HashSet<DocId> = read(&col.index).doc_ids().into_iter().collect();
        let records: HashMap<DocId, DocRecord> = self
            .registry
            .list(col.name())
            .await?
            .into_iter()
            .filter(|r| served.contains(&r.doc_id))
            .map(|r| (r.doc_id, r))
            .collect();
        let have: HashSet<DocId> = read(new).doc_ids().into_iter().collect();
        let gone: Vec<DocId> = have
            .iter()
            .filter(|d| !records.contains_key(d))
            .copied()
            .collect();
        if !gone.is_empty() {
            let new2 = new.clone();
            blocking(move || {
                let mut new = write(&new2);
                for d in &gone {
                    new.delete(d)?;
                }
                Ok(())
            })
            .await?;
        }
        let todo: Vec<DocRecord> = records
            .values()
            .filter(|r| !have.contains(&r.doc_id))
            .cloned()
            .collect();
        let total = records.len();
        let mut done = total - todo.len();
        col.note_progress(done, total);
        progress(done, total);
        let mut pass = Pass::default();
        // Reading and writing chunk files overlaps with embedding; the embedder's batcher
        // keeps the model busy.
        let mut work = futures::stream::iter(todo)
            .map(|rec| async move {
                let r = self.reembed_document(col, &rec, from, to).await;
                (rec, r)
            })
            .buffer_unordered(4);
        let mut since_commit = 0;
        while let Some((rec, r)) = work.next().await {
            let Some((chunks, embedded)) = r? else {
                continue;
            };
            if embedded == 0 {
                pass.resumed += 1;
            }
            pass.embedded_chunks += embedded;
            let doc = super::collection::indexed_doc(&rec);
            since_commit += 1;
            let commit = since_commit >= COMMIT_EVERY;
            if commit {
                since_commit = 0;
            }
            let new2 = new.clone();
            blocking(move || {
                let mut new = write(&new2);
                new.add(doc, &chunks)?;
                if commit {
                    new.commit()?;
                }
                Ok(())
            })
            .await?;
            // Deleted while it was re-embedded: the delete may have come before the new file
            // was written, so it goes again.
            if col.is_erased(&rec.doc_id) {
                self.store
                    .delete(&keys::chunks_of(col.name(), to.vectors, &rec.doc_id))
                    .await?;
                let (new2, d) = (new.clone(), rec.doc_id);
                blocking(move || write(&new2).delete(&d).map(|_| ())).await?;
                continue;
            }
            self.stop_if_deleted(col).await?;
            pass.added += 1;
            done += 1;
            col.note_progress(done, total);
            progress(done, total);
        }
        let new2 = new.clone();
        blocking(move || write(&new2).commit()).await?;
        Ok(pass)
    }

    /// The new model's chunks of one document: from its chunk file when an interrupted run
    /// wrote it, else embedded from the old file's text and written. `None` when the old file
    /// is gone (the document was deleted meanwhile) or unreadable (left to the old index's
    /// checks; the document keeps serving from the old model until the switch, and is then
    /// missing from the new index, which the report's count shows).
    async fn reembed_document(
        &self,
        col: &Collection,
        rec: &DocRecord,
        from: CollectionModel,
        to: CollectionModel,
    ) -> Result<Option<(Vec<hearth_index::Chunk>, usize)>> {
        let model = &self.embedders[to.embedder];
        if let Ok(chunks) = self.load_chunks_of(rec, to.vectors).await?
            && chunks
                .iter()
                .all(|c| c.embedding.as_ref().is_some_and(|v| v.len() == model.dim))
        {
            return Ok(Some((chunks, 0)));
        }
        let chunks = match self.load_chunks_of(rec, from.vectors).await? {
            Ok(c) => c,
            Err(reason) => {
                if !col.is_erased(&rec.doc_id) {
                    tracing::warn!(collection = %col.name(), doc = %rec.doc_id, %reason, "not re-embedded");
                }
                return Ok(None);
            }
        };
        let n = chunks.len();
        let key = keys::chunks_of(&rec.collection, to.vectors, &rec.doc_id);
        let chunks = self.embed_and_store(model, chunks, &key).await?;
        Ok(Some((chunks, n)))
    }

    /// Stops a re-embedding of a collection deleted under it, removing again what it wrote
    /// (the delete marks the handle before it lists the store, so whatever was written after
    /// that listing is found here).
    async fn stop_if_deleted(&self, col: &Collection) -> Result<()> {
        if !col.is_deleted() {
            return Ok(());
        }
        self.remove_stored(col.name()).await?;
        Err(ServiceError::NotFound(format!(
            "collection {} (deleted during the re-embedding)",
            col.name()
        )))
    }

    /// Removes the chunk files of model number `vectors` of collection `c`.
    async fn remove_chunk_files(
        &self,
        c: &hearth_index::CollectionName,
        vectors: u32,
    ) -> Result<()> {
        let doomed: Vec<String> = self
            .store
            .list(&keys::chunks_prefix(c, vectors))
            .await?
            .into_iter()
            .filter(|k| keys::chunks_doc(c, vectors, k).is_some())
            .collect();
        let store = &self.store;
        let results: Vec<_> = futures::stream::iter(doomed)
            .map(|k| async move { store.delete(&k).await })
            .buffer_unordered(8)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(())
    }
}
