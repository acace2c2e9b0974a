//! The stages after chunking: embedding (vectors written back into the chunk file) and adding
//! to the collection's index.

use std::sync::Arc;

use bytes::Bytes;
use hearth_engine::{Priority, Role};
use hearth_index::{Chunk, CollectionName, DocId, encode_chunks, keys};
use hearth_ingest::{DocRecord, DocState, MailboxSubmitted, Submission, Submitted};
use unicode_normalization::UnicodeNormalization;

use super::collection::read;
use super::{Collection, NamedEmbedder, Service};

/// How long stored-usage counts are trusted before the records are counted again.
const USAGE_RECOUNT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::error::{Result, ServiceError};

/// Most texts sent to the embedder in one request; a long document is embedded in several.
const EMBED_REQUEST_TEXTS: usize = 256;

/// A document after [`Service::process`].
#[derive(Clone, Debug)]
pub struct Processed {
    /// Its record, in its final state for this run (`embedded`, `indexed` or `failed`).
    pub record: DocRecord,
    /// Chunks embedded by this call (0 when they already had vectors).
    pub embedded: u32,
}

impl Service {
    /// Stores a document's bytes and records it as queued (a document already there is
    /// reported as a duplicate). It is processed by [`Service::process`] or, on a server, by
    /// the background worker after [`Service::enqueue`].
    ///
    /// A collection deleted before or while the bytes are stored refuses the document (not
    /// found), and what was stored goes again.
    pub async fn submit(&self, col: &Collection, doc: Submission) -> Result<Submitted> {
        let gone = || ServiceError::NotFound(format!("collection {} (deleted)", col.name()));
        if col.is_deleted() {
            return Err(gone());
        }
        let size = doc.bytes.len() as u64;
        let submitted = self.pipeline.submit(col.name(), doc).await;
        if col.is_deleted() {
            self.remove_stored(col.name()).await?;
            return Err(gone());
        }
        let submitted = submitted?;
        match &submitted {
            Submitted::Accepted(id) => {
                col.revive(id);
                self.count_upload(col.name(), size);
                self.mark_changed(col.name(), id).await?;
            }
            // Marked again: the upload that stored it may have failed before its marker.
            Submitted::Duplicate(rec) => self.mark_changed(col.name(), &rec.doc_id).await?,
        }
        Ok(submitted)
    }

    /// Submits a mailbox (mbox) too large to be one document, read from the file at `path`
    /// as a stream: its messages become documents, the mailbox a listing of them whose
    /// children they are (see [`hearth_ingest::Pipeline::submit_mailbox`]). Memory: one
    /// message. The listing is queued like any document; processing it processes the messages.
    pub async fn submit_mailbox(
        &self,
        col: &Collection,
        path: &std::path::Path,
        sub: Submission,
    ) -> Result<MailboxSubmitted> {
        let gone = || ServiceError::NotFound(format!("collection {} (deleted)", col.name()));
        if col.is_deleted() {
            return Err(gone());
        }
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| {
                ServiceError::InvalidInput(format!("cannot read {}: {e}", path.display()))
            })?
            .len();
        let submitted = self.pipeline.submit_mailbox(col.name(), path, sub).await;
        if col.is_deleted() {
            self.remove_stored(col.name()).await?;
            return Err(gone());
        }
        let submitted = submitted?;
        if let Submitted::Accepted(id) = &submitted.submitted {
            col.revive(id);
            self.count_upload(col.name(), size);
            self.mark_changed(col.name(), id).await?;
        }
        Ok(submitted)
    }

    /// Documents and bytes of originals stored in collection `c` (every state counted).
    pub async fn stored_usage(&self, c: &CollectionName) -> Result<(u64, u64)> {
        if let Some(&(docs, bytes, at)) = self.usage_lock().get(c)
            && at.elapsed() < USAGE_RECOUNT
        {
            return Ok((docs, bytes));
        }
        let records = self.registry.list(c).await?;
        let (docs, bytes) = (
            records.len() as u64,
            records.iter().map(|r| r.size).sum::<u64>(),
        );
        self.usage_lock()
            .insert(c.clone(), (docs, bytes, std::time::Instant::now()));
        Ok((docs, bytes))
    }

    fn usage_lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<CollectionName, (u64, u64, std::time::Instant)>,
    > {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count_upload(&self, c: &CollectionName, bytes: u64) {
        if let Some(u) = self.usage_lock().get_mut(c) {
            u.0 += 1;
            u.1 += bytes;
        }
    }

    /// Counts collection `c` again when next asked (after documents came out of others, or
    /// went).
    pub(super) fn recount_usage(&self, c: &CollectionName) {
        self.usage_lock().remove(c);
    }

    /// Refuses a document of `bytes` bytes when it is over `ingest.max_document_bytes`, before
    /// anything is read.
    pub fn check_size(&self, bytes: u64) -> Result<()> {
        self.pipeline
            .check_size(bytes)
            .map_err(|reason| ServiceError::Ingest(hearth_ingest::IngestError::Rejected(reason)))
    }

    /// The records of a collection's documents, in id order.
    pub async fn documents(&self, col: &Collection) -> Result<Vec<DocRecord>> {
        Ok(self.registry.list(col.name()).await?)
    }

    /// The record of one document, if the collection has it.
    pub async fn document(&self, col: &Collection, doc: &DocId) -> Result<Option<DocRecord>> {
        Ok(self.registry.get(col.name(), doc).await?)
    }

    /// The original bytes of a document, if they are still kept.
    pub async fn original(&self, rec: &DocRecord) -> Result<Option<Bytes>> {
        Ok(self
            .store
            .get_opt(&keys::raw(&rec.collection, &rec.doc_id))
            .await?)
    }

    /// The documents of a collection that a previous run left unfinished: not yet extracted,
    /// or chunked but not embedded.
    pub async fn pending(&self, col: &Collection) -> Result<Vec<DocId>> {
        Ok(self
            .registry
            .list(col.name())
            .await?
            .into_iter()
            .filter(|r| r.state.is_pending() || r.state == DocState::Chunked)
            .map(|r| r.doc_id)
            .collect())
    }

    /// Runs every remaining stage for one document: extraction and chunking (in an isolated
    /// process), embedding, and adding to the index. The document becomes searchable for a
    /// fresh process, and its record says `indexed`, after the next [`Service::commit`]. A
    /// document that cannot be read ends in `failed` with a reason; that is not an error.
    ///
    /// Documents found inside it (an e-mail's attachments, a mailbox's messages) are stored as
    /// documents of their own when it is extracted, and processed here right after it.
    pub async fn process(&self, col: &Arc<Collection>, doc: DocId) -> Result<Processed> {
        let processed = self.process_one(col, doc).await?;
        for child in &processed.record.children {
            if col.is_erased(&doc) {
                // Deleted while it was being processed: what came out of it goes with it.
                self.delete_document(col, child).await?;
                continue;
            }
            // Nesting is bounded when children are stored (hearth-ingest's MAX_NESTING), so the
            // recursion is too.
            let id = *child;
            let child = Box::pin(self.process(col, id)).await?;
            self.erase_if_deleted(col, &id).await?;
            if child.record.state == DocState::Failed {
                tracing::info!(
                    collection = %col.name(), doc = %child.record.doc_id,
                    reason = child.record.reason.as_deref().unwrap_or(""),
                    "attachment failed"
                );
            }
        }
        Ok(processed)
    }

    async fn process_one(&self, col: &Arc<Collection>, doc: DocId) -> Result<Processed> {
        // Held until the document is in the index: a re-embedding switches models between
        // documents, never inside one.
        let _writing = col.writing.read().await;
        let Some(_working) = col.claim(doc) else {
            // Another task is processing it and will finish it; report where it stands.
            let record = self.registry.get(col.name(), &doc).await?.ok_or_else(|| {
                ServiceError::NotFound(format!("document {doc} in collection {}", col.name()))
            })?;
            return Ok(Processed {
                record,
                embedded: 0,
            });
        };
        let mut rec = self.pipeline.process(col.name(), doc).await?;
        let mut embedded = 0;
        if rec.state == DocState::Chunked {
            match self.embed_document(col, &mut rec).await? {
                Some(chunks) => {
                    embedded = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
                    self.add_to_index(col, &rec, chunks).await?;
                    col.push_pending(rec.clone());
                }
                None => {
                    return Ok(Processed {
                        record: rec,
                        embedded,
                    });
                }
            }
        } else if rec.state == DocState::Embedded && !read(&col.index).contains(&rec.doc_id) {
            match self.load_chunks(col, &rec).await? {
                Ok(chunks) if chunks.iter().all(|c| c.embedding.is_some()) => {
                    self.add_to_index(col, &rec, chunks).await?;
                    col.push_pending(rec.clone());
                }
                Ok(_) | Err(_) => {
                    // Vectors missing or unreadable: embed again from the chunk file (a chunk
                    // file that cannot be read at all fails the document there).
                    if let Some(chunks) = self.embed_document(col, &mut rec).await? {
                        embedded = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
                        self.add_to_index(col, &rec, chunks).await?;
                        col.push_pending(rec.clone());
                    }
                }
            }
        }
        Ok(Processed {
            record: rec,
            embedded,
        })
    }

    /// Embeds a chunked document and writes the vectors into its chunk file, then records it as
    /// `embedded`. Returns the chunks, or `None` when the document failed (its record says why).
    pub(super) async fn embed_document(
        &self,
        col: &Collection,
        rec: &mut DocRecord,
    ) -> Result<Option<Vec<Chunk>>> {
        let chunks = match self.load_chunks(col, rec).await? {
            Ok(c) => c,
            Err(reason) => {
                self.fail(rec, reason).await?;
                return Ok(None);
            }
        };
        let key = keys::chunks_of(&rec.collection, col.model().vectors, &rec.doc_id);
        let chunks = self
            .embed_and_store(self.embedder_of(col), chunks, &key)
            .await?;
        rec.state = DocState::Embedded;
        self.registry.put(rec).await?;
        Ok(Some(chunks))
    }

    /// Embeds chunks' text as passages with `model` (bulk priority, in requests of
    /// `EMBED_REQUEST_TEXTS`) and writes them, vectors included, to the chunk file `key`.
    pub(super) async fn embed_and_store(
        &self,
        model: &NamedEmbedder,
        mut chunks: Vec<Chunk>,
        key: &str,
    ) -> Result<Vec<Chunk>> {
        for batch in chunks.chunks_mut(EMBED_REQUEST_TEXTS) {
            let texts: Vec<String> = batch.iter().map(|c| embedding_text(&c.text)).collect();
            let vectors = model
                .embedder
                .embed(texts, Role::Passage, Priority::Bulk)
                .await?;
            for (c, v) in batch.iter_mut().zip(vectors.iter()) {
                c.embedding = Some(v.to_vec());
            }
        }
        let dim = model.dim;
        let (bytes, chunks) =
            tokio::task::spawn_blocking(move || (encode_chunks(&chunks, dim), chunks))
                .await
                .map_err(|e| ServiceError::Internal(format!("encoding task: {e}")))?;
        self.store.put(key, bytes?).await?;
        Ok(chunks)
    }
}

/// What the embedder and the lexical index see of a chunk: its text with compatibility
/// characters folded (NFKC), so that "ﬁrst" from a PDF matches "first" in a question.
pub(crate) fn embedding_text(text: &str) -> String {
    text.nfkc().collect()
}
