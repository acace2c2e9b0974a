//! Background ingestion for the server: uploads are stored and acknowledged at once, then a
//! worker runs the remaining stages (extract, chunk, embed, index) for up to
//! `ingest.workers` documents at a time, each in a task of its own, and commits the touched
//! collections about a second after documents finish (at once when it runs out of work), so
//! commits are shared by the documents that finish together and a slow document holds back
//! no other.
//!
//! The queue holds only ids (the bytes are already in the object store), and it is bounded:
//! when it is full an upload is refused as overloaded. Whatever is queued when the process
//! stops is found again at the next start from the records' states.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_index::{CollectionName, DocId};
use hearth_ingest::DocState;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Collection, Processed, Service};
use crate::error::{Result, ServiceError};

/// How long after a document finishes its collection is committed, at the latest, while other
/// documents are still being processed (when nothing is, the commit is at once).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

fn log_outcome(col: &Collection, doc: DocId, r: &Result<Processed>) {
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

    /// Queues a document found unfinished (after a restart, or through a change marker),
    /// past the backlog limit if need be: it was accepted already.
    pub(super) fn queue_resumed(&self, c: &CollectionName, doc: DocId) {
        self.backlog.lock().push_back((c.clone(), doc));
        self.backlog.notify.notify_one();
    }

    /// Whether the document waits in the queue.
    pub(super) fn is_queued(&self, c: &CollectionName, doc: &DocId) -> bool {
        self.backlog
            .lock()
            .iter()
            .any(|(qc, qd)| qd == doc && qc == c)
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

    /// Runs the ingestion worker until `stop` turns true; the documents under way when it does
    /// are finished and committed first.
    ///
    /// Up to `ingest.workers` documents are processed at once, each as a task of its own; a
    /// slot that frees up takes the next queued document at once. Touched collections are
    /// committed when the worker runs out of work, and otherwise `COMMIT_EVERY` (1 s) after the
    /// first document finished since the last commit (longer when commits are slow: at most a
    /// tenth of the time goes to them), so one slow document never holds back the documents
    /// that finished beside it.
    pub async fn run_worker(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let slots = self.pipeline.workers().max(1);
        let mut tasks: JoinSet<(Arc<Collection>, DocId, Result<Processed>)> = JoinSet::new();
        let mut touched: HashMap<CollectionName, Arc<Collection>> = HashMap::new();
        let mut due: Option<Instant> = None;
        let mut interval = COMMIT_EVERY;
        let mut stopping = false;
        loop {
            stopping |= *stop.borrow();
            while !stopping && tasks.len() < slots {
                let Some((c, doc)) = self.backlog.lock().pop_front() else {
                    break;
                };
                if !self.leads(&c) {
                    // A replica that does not index the collection: its indexer finds the
                    // document through its change marker.
                    continue;
                }
                self.backlog.running.fetch_add(1, Ordering::Relaxed);
                // Not cached here: an idle worker holding a deleted collection's handle would
                // keep a new collection of its name from being created.
                let col = match self.open_existing(&c).await {
                    Ok(col) => col,
                    Err(e) => {
                        tracing::warn!(collection = %c, doc = %doc, error = %e, "skipping a queued document");
                        self.backlog.running.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let this = self.clone();
                tasks.spawn(async move {
                    let r = this.process(&col, doc).await;
                    // Whatever the outcome, what it wrote goes if it was deleted meanwhile.
                    let erased = this.erase_if_deleted(&col, &doc).await;
                    let r = r.and_then(|p| erased.map(|()| p));
                    (col, doc, r)
                });
            }
            if tasks.is_empty() {
                interval = self
                    .commit_touched(&mut touched, true)
                    .await
                    .unwrap_or(interval);
                due = None;
                if stopping {
                    return;
                }
                if self.backlog.lock().is_empty() {
                    tokio::select! {
                        () = self.backlog.notify.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
                continue;
            }
            let wake = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(joined) = tasks.join_next() => {
                    self.backlog.running.fetch_sub(1, Ordering::Relaxed);
                    match joined {
                        Ok((col, doc, r)) => {
                            log_outcome(&col, doc, &r);
                            if self.replica_name().is_some() {
                                col.settle_later(doc);
                            }
                            touched.insert(col.name().clone(), col);
                        }
                        Err(e) => tracing::error!(error = %e, "an ingestion task panicked"),
                    }
                    due.get_or_insert_with(|| Instant::now() + interval);
                }
                () = self.backlog.notify.notified(), if !stopping && tasks.len() < slots => {}
                _ = stop.changed(), if !stopping => {}
                () = tokio::time::sleep_until(wake), if due.is_some() => {
                    interval = self
                        .commit_touched(&mut touched, false)
                        .await
                        .unwrap_or(interval);
                    due = None;
                }
            }
        }
    }

    /// Commits every touched collection (deleted ones are skipped) and empties the set;
    /// publishes each when `idle` (the worker ran out of work), else only when its last
    /// publish is old enough. Returns the interval to wait before the next commit:
    /// `COMMIT_EVERY`, or ten times what this commit took when that is longer.
    async fn commit_touched(
        &self,
        touched: &mut HashMap<CollectionName, Arc<Collection>>,
        idle: bool,
    ) -> Option<Duration> {
        if touched.is_empty() {
            return None;
        }
        let started = Instant::now();
        for (c, col) in touched.drain() {
            if col.is_deleted() {
                continue;
            }
            if let Err(e) = self.commit_and_publish(&col, idle).await {
                tracing::error!(collection = %c, error = %e, "commit after ingestion failed");
            }
        }
        Some(COMMIT_EVERY.max(started.elapsed() * 10))
    }
}
