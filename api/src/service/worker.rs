//! Background ingestion for the server: uploads are stored and acknowledged at once, then a
//! worker runs the remaining stages (extract, chunk, embed, index) for up to
//! `ingest.workers` documents at a time and commits each touched collection after every
//! batch, so commits are shared by the documents that arrived together.
//!
//! The queue holds only ids (the bytes are already in the object store), and it is bounded:
//! when it is full an upload is refused as overloaded. Whatever is queued when the process
//! stops is found again at the next start from the records' states.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hearth_index::{CollectionName, DocId};
use hearth_ingest::DocState;
use tokio::sync::{Notify, watch};

use super::Service;
use crate::error::{Result, ServiceError};

/// Most documents taken into one batch (one commit per touched collection per batch).
const BATCH: usize = 64;

/// The queue of documents waiting for the worker.
pub(super) struct Backlog {
    queue: Mutex<VecDeque<(CollectionName, DocId)>>,
    notify: Notify,
    limit: usize,
    /// Documents taken by the worker and not finished yet.
    running: AtomicUsize,
}

impl Backlog {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            limit,
            running: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(CollectionName, DocId)>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Service {
    /// Queues an accepted document for background processing. Fails as overloaded when the
    /// backlog is full (the document stays stored and `queued`; the next start picks it up).
    pub fn enqueue(&self, c: &CollectionName, doc: DocId) -> Result<()> {
        let mut q = self.backlog.lock();
        if q.len() >= self.backlog.limit {
            return Err(ServiceError::Overloaded(format!(
                "{} documents are already waiting for ingestion",
                self.backlog.limit
            )));
        }
        q.push_back((c.clone(), doc));
        drop(q);
        self.backlog.notify.notify_one();
        Ok(())
    }

    /// Documents waiting for the worker or being processed by it.
    pub fn ingest_backlog(&self) -> usize {
        self.backlog.lock().len() + self.backlog.running.load(Ordering::Relaxed)
    }

    /// Queues every unfinished document of every collection (after a restart), past the
    /// backlog limit if need be. Returns how many.
    pub async fn resume_all(&self) -> Result<usize> {
        let mut n = 0;
        for c in self.collections().await? {
            let col = self.open(&c).await?;
            let pending = self.pending(&col).await?;
            n += pending.len();
            let mut q = self.backlog.lock();
            q.extend(pending.into_iter().map(|d| (c.clone(), d)));
        }
        self.backlog.notify.notify_one();
        Ok(n)
    }

    /// Runs the ingestion worker until `stop` turns true; the batch under way when it does is
    /// finished and committed first.
    pub async fn run_worker(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let batch: Vec<(CollectionName, DocId)> = {
                let mut q = self.backlog.lock();
                let n = q.len().min(BATCH);
                self.backlog.running.fetch_add(n, Ordering::Relaxed);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.backlog.notify.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            self.run_batch(batch).await;
        }
    }

    async fn run_batch(&self, batch: Vec<(CollectionName, DocId)>) {
        let mut cols = HashMap::new();
        for (c, _) in &batch {
            if !cols.contains_key(c) {
                match self.open_existing(c).await {
                    Ok(col) => {
                        cols.insert(c.clone(), col);
                    }
                    Err(e) => {
                        tracing::warn!(collection = %c, error = %e, "skipping queued documents")
                    }
                }
            }
        }
        let n = batch.len();
        let work = batch
            .into_iter()
            .filter_map(|(c, d)| Some((cols.get(&c)?.clone(), d)));
        let mut done = futures::stream::iter(work)
            .map(|(col, doc)| async move {
                let r = self.process(&col, doc).await;
                let r = match r {
                    Ok(p) => self.erase_if_deleted(&col, &doc).await.map(|()| p),
                    Err(e) => Err(e),
                };
                (col, doc, r)
            })
            .buffer_unordered(self.pipeline.workers());
        while let Some((col, doc, r)) = done.next().await {
            match r {
                Ok(p) if p.record.state == DocState::Failed => tracing::info!(
                    collection = %col.name(), doc = %doc,
                    reason = p.record.reason.as_deref().unwrap_or(""),
                    "document failed"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(collection = %col.name(), doc = %doc, error = %e, "ingestion error")
                }
            }
        }
        drop(done);
        for (c, col) in cols {
            if col.is_deleted() {
                continue;
            }
            if let Err(e) = self.commit(&col).await {
                tracing::error!(collection = %c, error = %e, "commit after ingestion failed");
            }
        }
        self.backlog.running.fetch_sub(n, Ordering::Relaxed);
    }
}
