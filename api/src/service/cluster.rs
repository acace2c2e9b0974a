//! Several `hearth serve` replicas over one object store (`[cluster]`), coordinated by the
//! store alone.
//!
//! Every replica accepts uploads, deletes and access changes: each is durable in the store
//! before it is acknowledged, as on one node, and leaves a change marker
//! (`changes/{c}/{doc}`). One replica per collection indexes it: the holder of the
//! collection's lease (`index/{c}/lease`, [`hearth_index::Lease`]), renewed every poll and
//! taken over by another replica once unrenewed for its whole term. The holder processes the
//! documents the markers name, publishes its index after each commit, and deletes a marker
//! once a published generation reflects the change. Every other replica polls the newest
//! published generation and brings its own index in line with the documents it names: adds
//! the new ones from their chunk files in the store (no embedding), removes the gone ones,
//! applies changed access lists.
//!
//! The holder publishes generation N+1 only on top of the generation N its index was last in
//! line with ([`hearth_index::PublishedIndex::publish_after`]): two replicas that both
//! believe they hold the lease (one paused past its term) cannot both commit N+1, and the
//! loser loads the winner's generation before it publishes again. Nothing is lost meanwhile:
//! the markers of changes not yet published stay, and the next holder works through them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hearth_index::{Access, CollectionName, DocId, Lease, LeaseStatus, keys};
use hearth_ingest::DocState;
use serde::Deserialize;
use tokio::sync::watch;

use super::Service;
use super::collection::{Collection, blocking, indexed_doc, read};
use crate::error::{Result, ServiceError};

/// Settings of replicas (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Run as one of several replicas over one store (`hearth serve` only). Needs a store
    /// whose conditional updates hold (`hearth store check --replicas`): S3 stores; not the
    /// local directory.
    pub enabled: bool,
    /// Milliseconds between two looks at the store: lease renewals, new markers on the
    /// holder, new published generations on the other replicas.
    pub poll_ms: u64,
    /// Seconds a lease holds without renewal; a replica takes a collection over once its
    /// holder has not renewed for that long.
    pub lease_s: u64,
    /// This replica's name in leases and logs; by default the host name, process id and a
    /// random suffix. Two processes must never share one.
    pub name: Option<String>,
    /// Milliseconds a search with `min_generation` waits, at most, for this replica to load
    /// that generation before it is answered 503.
    pub read_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            poll_ms: 1000,
            lease_s: 10,
            name: None,
            read_wait_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// Checks the ranges: a poll between 50 ms and a minute, a lease of at least three polls
    /// and at most ten minutes.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ServiceError::InvalidInput(m));
        if !(50..=60_000).contains(&self.poll_ms) {
            return bad(format!(
                "cluster.poll_ms is {}; it must be between 50 and 60000",
                self.poll_ms
            ));
        }
        if self.lease_s * 1000 < 3 * self.poll_ms || self.lease_s > 600 {
            return bad(format!(
                "cluster.lease_s is {}; it must be at least three polls (cluster.poll_ms {}) and at most 600",
                self.lease_s, self.poll_ms
            ));
        }
        if self.read_wait_ms > 60_000 {
            return bad(format!(
                "cluster.read_wait_ms is {}; it must be at most 60000",
                self.read_wait_ms
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.len() > 128 || n.chars().any(char::is_control))
        {
            return bad("cluster.name must be 1 to 128 printable characters".into());
        }
        Ok(())
    }
}

/// A replica's part in the cluster.
pub(crate) struct Cluster {
    poll: Duration,
    read_wait: Duration,
    term: Duration,
    name: String,
    /// This replica's contender for each collection's lease.
    leases: tokio::sync::Mutex<HashMap<CollectionName, Lease>>,
    /// The collections whose lease this replica holds, and until when (its own clock).
    held: std::sync::Mutex<HashMap<CollectionName, Instant>>,
    /// The collections being brought up to date now (one task each at a time).
    busy: std::sync::Mutex<HashSet<CollectionName>>,
    /// The collections whose lease this replica has taken and whose next holder round has
    /// yet to take the published files over (a round still running when the lease was
    /// taken would otherwise let it pass).
    taken: std::sync::Mutex<HashSet<CollectionName>>,
}

/// A collection being brought up to date; released when dropped.
struct Busy {
    service: Arc<Service>,
    c: CollectionName,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(cl) = &self.service.cluster {
            cl.busy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&self.c);
        }
    }
}

impl Cluster {
    pub(crate) fn new(config: &ClusterConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let name = config.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "replica".into());
            let mut suffix = [0u8; 4];
            // A clock-derived suffix when the system has no randomness to give: names need
            // only differ between processes.
            if getrandom::fill(&mut suffix).is_err() {
                suffix = (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()))
                .to_le_bytes();
            }
            format!("{host}-{}-{}", std::process::id(), hex::encode(suffix))
        });
        Some(Self {
            poll: Duration::from_millis(config.poll_ms),
            read_wait: Duration::from_millis(config.read_wait_ms),
            term: Duration::from_secs(config.lease_s),
            name,
            leases: tokio::sync::Mutex::new(HashMap::new()),
            held: std::sync::Mutex::new(HashMap::new()),
            busy: std::sync::Mutex::new(HashSet::new()),
            taken: std::sync::Mutex::new(HashSet::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<CollectionName, Instant>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Service {
    /// This replica's name, when it runs as one of several (`cluster.enabled`).
    pub fn replica_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.name.as_str())
    }

    /// Whether this process may index and publish collection `c`: always on a single node;
    /// as a replica, while it holds the collection's lease.
    pub(super) fn leads(&self, c: &CollectionName) -> bool {
        self.cluster.as_ref().is_none_or(|cl| {
            cl.held()
                .get(c)
                .is_some_and(|until| *until > Instant::now())
        })
    }

    /// The generation of the collection's published index that this replica's index holds
    /// (fetched, published or loaded), if any.
    pub fn loaded_generation(&self, col: &Collection) -> Option<u64> {
        col.aligned()
    }

    /// Read-your-writes: returns once this replica holds generation `min` (or a later one) of
    /// the collection's published index, looking at the store meanwhile; unavailable after
    /// `cluster.read_wait_ms` (on a single node, at once) when it does not.
    pub async fn await_generation(&self, col: &Arc<Collection>, min: u64) -> Result<u64> {
        let wait = self
            .cluster
            .as_ref()
            .map_or(Duration::ZERO, |cl| cl.read_wait);
        let started = Instant::now();
        loop {
            let loaded = self.loaded_generation(col);
            if let Some(g) = loaded.filter(|g| *g >= min) {
                return Ok(g);
            }
            if started.elapsed() >= wait {
                return Err(ServiceError::Unavailable(format!(
                    "generation {min} of collection {}'s index is not loaded here yet (this node holds {}); try again shortly",
                    col.name(),
                    loaded.map_or_else(|| "none".to_owned(), |g| g.to_string())
                )));
            }
            if self.cluster.is_some()
                && let Err(e) = self.follow(col).await
            {
                tracing::debug!(collection = %col.name(), error = %e, "replica: could not look for a newer generation");
            }
            // A listing of the store per look: at most 50 for a request that waits 10 s.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The newest published generation that holds the document as it now is, for a
    /// read-your-writes search elsewhere (`min_generation`): on a replica, once the document
    /// is indexed and its change was published (its marker is gone). `None` otherwise, and on
    /// a single node (which reads its own writes).
    pub async fn published_generation(
        &self,
        col: &Collection,
        rec: &hearth_ingest::DocRecord,
    ) -> Result<Option<u64>> {
        if self.cluster.is_none() || rec.state != DocState::Indexed {
            return Ok(None);
        }
        if self
            .store
            .exists(&keys::change_marker(col.name(), &rec.doc_id))
            .await?
        {
            return Ok(None);
        }
        Ok(self
            .published_index(col.name(), col.model().vectors)
            .latest_generation()
            .await?)
    }

    /// Leaves a change marker for document `doc` of `c` (replicas only): the collection's
    /// indexer, wherever it runs, brings the change into the published index.
    pub(super) async fn mark_changed(&self, c: &CollectionName, doc: &DocId) -> Result<()> {
        if self.cluster.is_some() {
            self.store
                .put(&keys::change_marker(c, doc), bytes::Bytes::new())
                .await?;
        }
        Ok(())
    }

    /// Runs the replica's part until `stop` turns true, then gives up the leases it holds
    /// (another replica takes over at its next poll rather than after the term). Returns at
    /// once on a single node.
    pub async fn run_cluster(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        tracing::info!(replica = %cluster.name, poll_ms = cluster.poll.as_millis() as u64, lease_s = cluster.term.as_secs(), "running as a replica");
        while !*stop.borrow() {
            if let Err(e) = self.cluster_tick().await {
                tracing::warn!(error = %e, "replica: could not look at the store");
            }
            tokio::select! {
                () = tokio::time::sleep(cluster.poll) => {}
                _ = stop.changed() => {}
            }
        }
        cluster.held().clear();
        for (c, lease) in cluster.leases.lock().await.iter_mut() {
            if let Err(e) = lease.release().await {
                tracing::warn!(collection = %c, error = %e, "could not give up the lease");
            }
        }
    }

    /// One look at the store: every collection's lease, then, in a task of its own that
    /// no lease renewal waits for (a publish of a large index takes longer than a term), its
    /// markers (held) or its newest published generation (taken); collections deleted
    /// through another replica are dropped.
    async fn cluster_tick(self: &Arc<Self>) -> Result<()> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let names: HashSet<CollectionName> = self.collections().await?.into_iter().collect();
        let open: Vec<CollectionName> = self.open.lock().await.keys().cloned().collect();
        for c in open {
            if !names.contains(&c) && !self.exists(&c).await? {
                tracing::info!(collection = %c, "the collection was deleted through another replica");
                self.drop_local(&c).await?;
            }
        }
        cluster.leases.lock().await.retain(|c, _| names.contains(c));
        for c in names {
            let held = match self.tick_lease(&c).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(collection = %c, error = %e, "replica: could not renew or read the lease");
                    continue;
                }
            };
            let started = cluster
                .busy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(c.clone());
            if !started {
                continue;
            }
            let busy = Busy {
                service: self.clone(),
                c: c.clone(),
            };
            tokio::spawn(async move {
                let this = &busy.service;
                let r = match held {
                    true => this.lead(&busy.c).await,
                    false => this.follow_open(&busy.c).await,
                };
                if let Err(e) = r {
                    tracing::warn!(collection = %busy.c, error = %e, "replica: could not bring the collection up to date");
                }
            });
        }
        Ok(())
    }

    /// The holder's round: in line with the newest generation (the first round after taking
    /// the lease: with its very files), then the markers.
    async fn lead(&self, c: &CollectionName) -> Result<()> {
        let col = self.open_existing(c).await?;
        self.follow(&col).await?;
        let newly = self.cluster.as_ref().is_some_and(|cl| {
            cl.taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(c)
        });
        if newly && let Err(e) = self.install_published(&col).await {
            tracing::warn!(collection = %c, error = %e, "replica: could not take the published index's files over; publishing its own");
        }
        self.take_changes(&col).await
    }

    /// Another replica's round: in line with the newest generation, if the collection is open
    /// here (one opened later is brought in line by its open).
    async fn follow_open(&self, c: &CollectionName) -> Result<()> {
        let col = self.open.lock().await.get(c).cloned();
        match col {
            Some(col) => self.follow(&col).await,
            None => Ok(()),
        }
    }

    /// Takes, renews or observes the collection's lease; whether this replica holds it.
    async fn tick_lease(&self, c: &CollectionName) -> Result<bool> {
        let Some(cluster) = &self.cluster else {
            return Ok(true);
        };
        let status = {
            let mut leases = cluster.leases.lock().await;
            let lease = leases.entry(c.clone()).or_insert_with(|| {
                Lease::new(
                    self.store.clone(),
                    keys::index_lease(c),
                    cluster.name.clone(),
                    cluster.term,
                )
            });
            lease.tick().await?
        };
        Ok(match status {
            LeaseStatus::Held { until, epoch } => {
                if cluster.held().insert(c.clone(), until).is_none() {
                    tracing::info!(collection = %c, epoch, replica = %cluster.name, "indexing the collection");
                    cluster
                        .taken
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(c.clone());
                }
                true
            }
            LeaseStatus::Taken { holder, .. } => {
                if cluster.held().remove(c).is_some() {
                    tracing::info!(collection = %c, %holder, "another replica indexes the collection now");
                }
                cluster
                    .taken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(c);
                false
            }
        })
    }

    /// Brings the local index in line with the newest published generation, when it is
    /// newer than the one the index was last in line with: documents it names and the index
    /// lacks are added from their chunk files, documents the index holds and it does not
    /// name are removed, access lists it changed are applied.
    async fn follow(&self, col: &Arc<Collection>) -> Result<()> {
        let vectors = col.model().vectors;
        let published = self.published_index(col.name(), vectors);
        let Some(latest) = published.latest_generation().await? else {
            return Ok(());
        };
        let _writing = col.writing.read().await;
        // Held throughout: no publish runs while the index is brought in line.
        let _publishing = col.publish_state.lock().await;
        if col.aligned() == Some(latest) || col.model().vectors != vectors {
            return Ok(());
        }
        let Some((generation, docs)) = published.latest_documents().await? else {
            return Ok(());
        };
        let docs: HashMap<DocId, Access> = docs.into_iter().collect();
        let local: HashMap<DocId, Option<Access>> = {
            let index = read(&col.index);
            index
                .doc_ids()
                .into_iter()
                .map(|d| (d, index.access(&d).cloned()))
                .collect()
        };
        let gone: Vec<DocId> = local
            .keys()
            .filter(|d| !docs.contains_key(d))
            .copied()
            .collect();
        let regranted: Vec<(DocId, Access)> = docs
            .iter()
            .filter(|(d, a)| local.get(d).is_some_and(|l| l.as_ref() != Some(a)))
            .map(|(d, a)| (*d, a.clone()))
            .collect();
        let mut added = 0usize;
        // Records and chunk files read eight documents at a time; added one at a time.
        let missing: Vec<DocId> = docs
            .keys()
            .filter(|d| !local.contains_key(d))
            .copied()
            .collect();
        let mut loads = futures::stream::iter(missing)
            .map(|d| async move {
                // Gone from the store since (deleted): the next generation leaves it out too.
                let Some(rec) = self.registry.get(col.name(), &d).await? else {
                    return Ok::<_, ServiceError>(None);
                };
                let chunks = self.load_chunks(col, &rec).await?;
                Ok(Some((rec, chunks)))
            })
            .buffer_unordered(8);
        while let Some(loaded) = loads.next().await {
            let Some((mut rec, chunks)) = loaded? else {
                continue;
            };
            match chunks {
                Ok(chunks) if chunks.iter().all(|c| c.embedding.is_some()) => {
                    rec.access = docs[&rec.doc_id].clone();
                    let doc = indexed_doc(&rec);
                    col.note_source(&rec);
                    let col2 = col.clone();
                    blocking(move || col2.index_mut().map_or(Ok(()), |mut i| i.add(doc, &chunks)))
                        .await?;
                    added += 1;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(collection = %col.name(), doc = %rec.doc_id, "replica: the published document's chunk file cannot be read; left out");
                }
            }
        }
        drop(loads);
        for d in &gone {
            col.forget(d);
        }
        let (removed, changed) = (gone.len(), regranted.len());
        let col2 = col.clone();
        blocking(move || {
            if let Some(mut index) = col2.index_mut() {
                for d in &gone {
                    index.delete(d)?;
                }
                for (d, a) in regranted {
                    index.set_access(&d, a);
                }
                index.commit()?;
            }
            Ok(())
        })
        .await?;
        col.set_aligned(Some(generation));
        tracing::info!(collection = %col.name(), generation, added, removed, access_changed = changed, "replica: loaded a published generation");
        Ok(())
    }

    /// The holder's look at the collection's change markers: documents to process are
    /// queued, deleted ones leave the index, indexed ones the index lacks (processed by a
    /// holder that stopped before publishing) are added from their chunk files, changed
    /// access lists are applied. Then commits and publishes, which deletes the markers of
    /// every change the published generation reflects.
    async fn take_changes(&self, col: &Arc<Collection>) -> Result<()> {
        let prefix = keys::change_markers_prefix(col.name());
        let markers = self.store.list(&prefix).await?;
        if markers.is_empty() {
            return Ok(());
        }
        let mut changed = false;
        let mut queued = 0usize;
        for key in &markers {
            let Some(doc) = key
                .strip_prefix(&prefix)
                .and_then(|d| d.parse::<DocId>().ok())
            else {
                continue;
            };
            if col.is_busy(&doc) || col.is_settling(&doc) || self.is_queued(col.name(), &doc) {
                continue;
            }
            let rec = self.registry.get(col.name(), &doc).await?;
            let (contains, access) = {
                let index = read(&col.index);
                (index.contains(&doc), index.access(&doc).cloned())
            };
            match rec {
                None if contains => {
                    self.forget_document(col, &doc).await?;
                    changed = true;
                }
                None => {}
                // The worker marks it settling when it is done with it.
                Some(r) if r.state.is_pending() || r.state == DocState::Chunked => {
                    self.queue_resumed(col.name(), doc);
                    queued += 1;
                    continue;
                }
                Some(r) if r.state == DocState::Embedded && !contains => {
                    self.queue_resumed(col.name(), doc);
                    queued += 1;
                    continue;
                }
                Some(r) if r.state == DocState::Indexed && !contains => {
                    if let Ok(chunks) = self.load_chunks(col, &r).await?
                        && chunks.iter().all(|c| c.embedding.is_some())
                    {
                        self.add_to_index(col, &r, chunks).await?;
                        changed = true;
                    } else {
                        self.queue_resumed(col.name(), doc);
                        queued += 1;
                        continue;
                    }
                }
                Some(r) if r.state == DocState::Indexed && access.as_ref() != Some(&r.access) => {
                    col.forget(&doc);
                    col.note_source(&r);
                    let col2 = col.clone();
                    blocking(move || {
                        if let Some(mut index) = col2.index_mut() {
                            index.set_access(&doc, r.access);
                        }
                        Ok(())
                    })
                    .await?;
                    changed = true;
                }
                Some(_) => {}
            }
            col.settle_later(doc);
        }
        if queued > 0 {
            tracing::debug!(collection = %col.name(), documents = queued, "replica: queued documents uploaded through other replicas");
        }
        if changed {
            self.commit(col).await
        } else {
            // Markers of changes a generation already reflects (a holder that stopped before
            // deleting them): the publish finds the state published and deletes them.
            self.publish(col).await;
            Ok(())
        }
    }

    /// Deletes the change markers of the documents the holder dealt with (`Collection::settling`)
    /// whose change the published snapshot `docs` reflects: a deleted document it does not
    /// hold, an indexed one it holds with the record's access list, a failed one. The others
    /// wait for a later publish. One record read per document dealt with, none for the
    /// markers still waiting for the worker.
    pub(super) async fn settle_changes(
        &self,
        col: &Collection,
        docs: &HashMap<DocId, Access>,
    ) -> Result<usize> {
        if self.cluster.is_none() {
            return Ok(0);
        }
        let c = col.name();
        let mut settled = 0;
        for doc in col.settling() {
            let rec = self.registry.get(c, &doc).await?;
            let done = match &rec {
                None => !docs.contains_key(&doc),
                Some(r) if r.state == DocState::Indexed => docs.get(&doc) == Some(&r.access),
                Some(r) => r.state == DocState::Failed,
            };
            if done {
                self.store.delete(&keys::change_marker(c, &doc)).await?;
                col.settled(&doc);
                settled += 1;
            } else if rec.is_none_or(|r| matches!(r.state, DocState::Indexed | DocState::Failed)) {
                // Changed again since it was dealt with (its access, say), or committed after
                // this snapshot: the next round looks at it afresh.
                col.settled(&doc);
            }
        }
        Ok(settled)
    }

    /// Takes a document out of the local index (deleted through another replica; its
    /// objects are gone already, and go again in case work under way wrote them back).
    async fn forget_document(&self, col: &Arc<Collection>, doc: &DocId) -> Result<()> {
        col.mark_erased(doc);
        self.erase_keys(col, doc).await?;
        col.forget(doc);
        let col2 = col.clone();
        let doc = *doc;
        blocking(move || {
            col2.index_mut()
                .map_or(Ok(()), |mut i| i.delete(&doc).map(|_| ()))
        })
        .await
    }
}
