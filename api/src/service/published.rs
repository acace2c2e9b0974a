//! A collection's index in the object store (`hearth_index::PublishedIndex`): published after
//! commits, fetched by a node whose cache for it is empty, and collected.
//!
//! Publishing is best effort: the records and chunk files in the store stay the truth, and a
//! failed publish only means that a node with an empty cache fetches an older generation (and
//! brings it in line with the records, as every open does) or rebuilds from the documents.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_index::{CollectionName, PublishedIndex, Uploaded, keys};

use super::Service;
use super::collection::{Collection, blocking, read};

/// Collect the store's superseded files after every this many publishes of a collection
/// (and at every compaction).
const COLLECT_EVERY: u64 = 8;

/// While documents are still being processed, the worker publishes a collection at most this
/// often (it publishes at once when it runs out of work): each publish uploads the manifest
/// and new tantivy and graph files, which an ingestion committing every second would churn.
const PUBLISH_EVERY: Duration = Duration::from_secs(30);

/// The same for a replica's indexer: the other replicas see a document only once it is
/// published, and should within seconds.
const REPLICA_PUBLISH_EVERY: Duration = Duration::from_secs(3);

/// What a collection remembers of its published index.
#[derive(Debug, Default)]
pub(crate) struct PublishState {
    /// The model number the state is for: a re-embedding's switch starts over.
    vectors: u32,
    /// The files known to be in the store.
    uploaded: Uploaded,
    /// The local generation last published.
    published: Option<u64>,
    /// Publishes since the process started.
    count: u64,
    /// When the last publish ended.
    last: Option<Instant>,
}

impl PublishState {
    /// The state after an open: what a fetch brought, if it did.
    pub(crate) fn new(vectors: u32, uploaded: Uploaded) -> Self {
        Self {
            vectors,
            uploaded,
            published: None,
            count: 0,
            last: None,
        }
    }

    /// The generation whose files the local index's files are known to be.
    pub(crate) fn files_of(&self) -> Option<u64> {
        self.uploaded.generation()
    }

    /// Whether a publish is due for a commit that need not publish (`PUBLISH_EVERY`, or
    /// `REPLICA_PUBLISH_EVERY` for a replica).
    pub(crate) fn due(&self, replica: bool) -> bool {
        let every = if replica {
            REPLICA_PUBLISH_EVERY
        } else {
            PUBLISH_EVERY
        };
        self.last.is_none_or(|t| t.elapsed() >= every)
    }
}

impl Service {
    pub(super) fn published_index(&self, c: &CollectionName, vectors: u32) -> PublishedIndex {
        PublishedIndex::new(self.store.clone(), c, vectors)
            .with_grace(Duration::from_secs(self.index.publish_grace_s))
    }

    /// Fills the empty cache `dir` of collection `c` (model `vectors`) from the store. `None`
    /// when publishing is off, the cache holds an index already, nothing is published, or the
    /// fetch failed (logged: the open then rebuilds from the documents).
    pub(super) async fn fetch_published(
        &self,
        c: &CollectionName,
        vectors: u32,
        dir: &Path,
    ) -> Option<Uploaded> {
        if !self.index.publish {
            return None;
        }
        let (d, sealer) = (dir.to_path_buf(), self.cache_sealer.clone());
        let empty = blocking(move || Ok(hearth_index::cache_is_empty(&d, sealer.as_ref())))
            .await
            .unwrap_or(false);
        if !empty {
            return None;
        }
        let started = Instant::now();
        match self
            .published_index(c, vectors)
            .fetch(dir, self.cache_sealer.clone())
            .await
        {
            Ok(Some(f)) => {
                tracing::info!(collection = %c, generation = f.generation, files = f.files, bytes = f.bytes, seconds = started.elapsed().as_secs_f64(), "fetched the collection's index from the object store");
                Some(f.uploaded)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(collection = %c, error = %e, "could not fetch the collection's published index; rebuilding it from the documents");
                None
            }
        }
    }

    /// Publishes the collection's last commit, unless it was published already. Failures are
    /// logged: the commit stands, and the next one publishes again. Returns whether the store
    /// now holds that commit.
    ///
    /// A replica publishes only the collections whose lease it holds, and only on top of the
    /// generation its index was last in line with; once published, the change markers the
    /// generation reflects are deleted.
    pub(super) async fn publish(&self, col: &Arc<Collection>) -> bool {
        if !self.index.publish || col.is_deleted() || !self.leads(col.name()) {
            return false;
        }
        let mut state = col.publish_state.lock().await;
        let col2 = col.clone();
        // The model and the snapshot under one read lock: a switch changes both under the
        // write lock.
        let snap = blocking(move || {
            let index = read(&col2.index);
            Ok((col2.model().vectors, index.snapshot()?))
        })
        .await;
        let (vectors, snap) = match snap {
            Ok((v, Some(s))) => (v, s),
            Ok((_, None)) => return false,
            Err(e) => {
                tracing::warn!(collection = %col.name(), error = %e, "could not read the index to publish it");
                return false;
            }
        };
        if state.vectors != vectors {
            *state = PublishState::new(vectors, Uploaded::default());
            col.set_aligned(None);
        }
        if state.published == Some(snap.generation()) {
            self.settle(col, &snap).await;
            return true;
        }
        let published = self.published_index(col.name(), vectors);
        let started = Instant::now();
        let outcome = match self.cluster {
            Some(_) => {
                let after = col.aligned().unwrap_or(0);
                published
                    .publish_after(&snap, &mut state.uploaded, after)
                    .await
            }
            None => published.publish(&snap, &mut state.uploaded).await,
        };
        state.last = Some(Instant::now());
        let done = match outcome {
            Ok(Some(p)) => {
                state.published = Some(snap.generation());
                col.set_aligned(Some(p.generation));
                state.count += 1;
                self.settle(col, &snap).await;
                tracing::debug!(collection = %col.name(), generation = p.generation, uploaded = p.uploaded, bytes = p.uploaded_bytes, seconds = started.elapsed().as_secs_f64(), "published the index");
                if state.count.is_multiple_of(COLLECT_EVERY) {
                    collect(&published, col.name()).await;
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(collection = %col.name(), error = %e, "could not publish the index to the object store; the next commit tries again");
                false
            }
        };
        // The collection was deleted meanwhile: what this wrote after the deletion listed the
        // store goes too (no collection of the name exists while this handle is held).
        if col.is_deleted() {
            for key in self
                .store
                .list(&keys::index_prefix(col.name()))
                .await
                .unwrap_or_default()
            {
                if let Err(e) = self.store.delete(&key).await {
                    tracing::warn!(collection = %col.name(), %key, error = %e, "could not remove a deleted collection's published index file");
                }
            }
            return false;
        }
        done
    }

    /// Deletes the change markers the published snapshot reflects (replicas; logged).
    async fn settle(&self, col: &Collection, snap: &hearth_index::Snapshot) {
        if self.cluster.is_none() {
            return;
        }
        let c = col.name();
        let settled = match snap.documents() {
            Ok(docs) => self.settle_changes(col, &docs.into_iter().collect()).await,
            Err(e) => Err(e.into()),
        };
        match settled {
            Ok(0) => {}
            Ok(n) => tracing::debug!(collection = %c, changes = n, "replica: changes published"),
            Err(e) => {
                tracing::warn!(collection = %c, error = %e, "could not settle the change markers; the next publish tries again")
            }
        }
    }

    /// At compaction: publishes the compacted index and purges every older generation and
    /// every file it does not name, at once (the documents the compaction erased must not
    /// stay in the store in an older generation); when the compacted index could not be
    /// published, removes the published index altogether (nodes then rebuild from the
    /// documents). Also removes the published indexes of models the collection no longer uses.
    pub(super) async fn publish_and_collect(
        &self,
        col: &Arc<Collection>,
    ) -> hearth_index::Result<()> {
        let m = col.model();
        if self.publish(col).await {
            self.published_index(col.name(), m.vectors).purge().await?;
        } else {
            self.remove_published(col.name(), m.vectors).await?;
        }
        let root = keys::index_prefix(col.name());
        for key in self.store.list(&root).await? {
            let v = key
                .strip_prefix(&root)
                .and_then(|k| k.strip_prefix('v'))
                .and_then(|k| k.split('/').next())
                .and_then(|n| n.parse::<u32>().ok());
            if v.is_some_and(|v| v != m.vectors && Some(v) != m.reembed) {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Removes the published index of model `vectors` of collection `c` (one the collection
    /// no longer uses).
    pub(super) async fn remove_published(
        &self,
        c: &CollectionName,
        vectors: u32,
    ) -> hearth_index::Result<()> {
        for key in self.store.list(&keys::index_of(c, vectors)).await? {
            self.store.delete(&key).await?;
        }
        Ok(())
    }
}

async fn collect(published: &PublishedIndex, c: &CollectionName) {
    match published.collect().await {
        Ok(done) => {
            tracing::debug!(collection = %c, manifests = done.manifests, files = done.files, young = done.young, "collected the published index");
        }
        Err(e) => {
            tracing::warn!(collection = %c, error = %e, "could not collect the published index");
        }
    }
}
