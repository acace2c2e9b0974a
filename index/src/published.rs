//! Retrieval indexes published in the object store, so that a node whose cache is empty (a
//! new replica, a wiped or replaced disk) serves a collection by fetching files instead of
//! rebuilding the graph and BM25 from every document's chunk file.
//!
//! ```text
//! index/{c}/v{n}/files/{id}/{part:06}       one file of a snapshot (`retrieval/publish.rs`):
//!                                            a segment, the graph, a tantivy file, in parts
//!                                            of 64 MiB; written once under a random id,
//!                                            never changed
//! index/{c}/v{n}/manifests/{generation:020}  a published snapshot: the index manifest and,
//!                                            per file, its id, SHA-256 and length;
//!                                            committed with a conditional create
//! ```
//!
//! **Publish**: upload the snapshot's files the store lacks (each under a new random id;
//! one the store already holds with the same name and SHA-256 is named again, not uploaded),
//! then commit the next generation. A writer killed between the two leaves files no manifest
//! names; they are collected once older than a grace period. Two writers cannot both commit
//! one generation; the one that lost publishes at the next one. Every published manifest is
//! complete by itself, and records in the store stay the truth: a node that fetched an older
//! generation adds and removes the documents that changed since, as after any open.
//!
//! **Fetch**: read the newest manifest, download its files, check each against its SHA-256
//! and length, write them into the empty cache directory and the manifest last. A file
//! pruned meanwhile (a newer generation was published and an older one collected) makes it
//! start over with the newest, at most three times.
//!
//! **Collect**: keep the two newest generations (a fetch reading the older one can finish),
//! delete older manifests, then every file no kept manifest names and older than the grace.
//!
//! Ids are random, not content hashes: an encrypted store's keys then say nothing about
//! what the files hold. The store seals each file like every other object.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use std::io::Read;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Access;
use crate::blob::BlobStore;
use crate::coord::Generations;
use crate::crypto::{CacheSealer, random};
use crate::error::{IndexError, Result};
use crate::ids::{CollectionName, DocId};
use crate::keys;
use crate::retrieval::{Install, Snapshot, manifest_documents, rewritten_in_place};

/// Version of the published manifest's layout.
const FORMAT_VERSION: u32 = 1;
/// Bytes of one stored part of a file by default: what a publish or a fetch holds in memory
/// per file moved (a sealed cache's files are opened whole, as their seal covers the whole
/// file).
pub const PART: usize = 64 << 20;
/// Generations kept by [`PublishedIndex::collect`].
const KEEP_GENERATIONS: usize = 2;
/// Files moved at once.
const PARALLEL: usize = 4;
/// How long an unreferenced file is left alone by default: a writer between uploading its
/// files and committing its manifest, or a fetch of a generation just pruned.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    /// The index manifest of the snapshot (`retrieval/persist.rs`), without its vectors file.
    index: serde_json::Value,
    files: Vec<StoredFile>,
}

/// One file of a published snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFile {
    /// Its name in the index directory.
    pub name: String,
    /// Its object: `index/{c}/v{n}/files/{id}`.
    pub id: String,
    /// Lowercase hex SHA-256 of its plaintext.
    pub sha256: String,
    /// Its plaintext length.
    pub bytes: u64,
    /// Objects it is stored in, `part_bytes` each but the last: `files/{id}/{part:06}`.
    pub parts: u32,
    /// Bytes of each part but the last.
    pub part_bytes: u64,
}

/// The files one process knows to be in the store, by name in its index directory: what
/// the next publish need not upload again. Valid for one index directory's lifetime (file
/// names are not reused within it).
///
/// Only files a committed manifest names are known (those of an upload whose commit failed
/// may be collected), and only while that manifest is the newest: when another writer
/// published since, the next publish checks its files against the newest manifest again.
#[derive(Clone, Debug, Default)]
pub struct Uploaded {
    files: HashMap<String, StoredFile>,
    /// The generation that names them.
    generation: Option<u64>,
}

impl Uploaded {
    /// The committed generation that names the files, if known.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Files known.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The generation committed.
    pub generation: u64,
    /// Files uploaded (the others were in the store already).
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Files the snapshot holds.
    pub files: usize,
}

/// What a fetch did.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The generation fetched.
    pub generation: u64,
    /// Files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The fetched files, known to be in the store (seeds the next publish).
    pub uploaded: Uploaded,
}

/// What a collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Manifests of older generations deleted.
    pub manifests: usize,
    /// Files deleted (no kept manifest named them, and they were older than the grace).
    pub files: usize,
    /// Unreferenced files left because they are younger than the grace.
    pub young: usize,
}

/// The published retrieval index of one collection and model. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PublishedIndex {
    store: BlobStore,
    prefix: String,
    generations: Generations,
    grace: Duration,
    part: usize,
}

impl PublishedIndex {
    /// The index of collection `c` built with model number `vectors`.
    pub fn new(store: BlobStore, c: &CollectionName, vectors: u32) -> Self {
        let prefix = keys::index_of(c, vectors);
        Self {
            generations: Generations::new(store.clone(), format!("{prefix}manifests/")),
            store,
            prefix,
            grace: DEFAULT_GRACE,
            part: PART,
        }
    }

    /// Sets how old an unreferenced file must be before [`PublishedIndex::collect`] deletes it.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the size of the parts files are uploaded in (at least 1 byte; 64 MiB by
    /// default). Fetches read any part size.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part = bytes.max(1);
        self
    }

    fn part_key(&self, id: &str, part: u32) -> String {
        format!("{}files/{id}/{part:06}", self.prefix)
    }

    /// The newest generation published, if any.
    pub async fn latest_generation(&self) -> Result<Option<u64>> {
        Ok(self.generations.list().await?.last().copied())
    }

    async fn latest(&self) -> Result<Option<(u64, Manifest)>> {
        let Some((generation, bytes)) = self.generations.latest().await? else {
            return Ok(None);
        };
        Ok(Some((generation, self.parse(generation, &bytes)?)))
    }

    fn parse(&self, generation: u64, bytes: &[u8]) -> Result<Manifest> {
        let key = format!("{}manifests/{generation:020}", self.prefix);
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(IndexError::Corrupt {
                key,
                detail: format!(
                    "published index format {} (this build reads {FORMAT_VERSION})",
                    m.format_version
                ),
            });
        }
        for f in &m.files {
            crate::retrieval::check_snapshot_name(&f.name)?;
            if f.id.is_empty() || !f.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(IndexError::Corrupt {
                    key,
                    detail: format!("file id {:?} is not hex", f.id),
                });
            }
            if f.part_bytes == 0 || u64::from(f.parts) != f.bytes.div_ceil(f.part_bytes).max(1) {
                return Err(IndexError::Corrupt {
                    key,
                    detail: format!("{} has {} parts for {} bytes", f.name, f.parts, f.bytes),
                });
            }
        }
        Ok(m)
    }

    /// Uploads `snap` and commits it as the next generation. `Ok(None)` when a file of the
    /// snapshot was removed meanwhile (a later commit took its place: publish that one).
    pub async fn publish(
        &self,
        snap: &Snapshot,
        known: &mut Uploaded,
    ) -> Result<Option<Published>> {
        self.publish_with(snap, known, None).await
    }

    /// Publishes like [`PublishedIndex::publish`], but only as generation `after + 1` (`after`
    /// 0: the first): a replica whose index was built on generation `after` fails with
    /// [`IndexError::Conflict`], committing nothing, when another writer published since
    /// (its state would not include the other's changes, so it must load them first).
    pub async fn publish_after(
        &self,
        snap: &Snapshot,
        known: &mut Uploaded,
        after: u64,
    ) -> Result<Option<Published>> {
        self.publish_with(snap, known, Some(after)).await
    }

    async fn publish_with(
        &self,
        snap: &Snapshot,
        known: &mut Uploaded,
        after: Option<u64>,
    ) -> Result<Option<Published>> {
        let superseded = |g: u64| {
            IndexError::Conflict(format!(
                "generation {g} of the index under {} was published by another writer after generation {}",
                self.prefix,
                after.unwrap_or(0)
            ))
        };
        let (known_files, candidates) = match self.check_known(known).await? {
            Known::Valid => (known.files.clone(), HashMap::new()),
            Known::Stale(Some((generation, _))) if after.is_some_and(|a| generation > a) => {
                return Err(superseded(generation));
            }
            Known::Stale(Some((generation, m))) if self.same_state(snap, &m)? => {
                // Another process (or this one, before a restart) published this very state.
                let files = m.files.len();
                *known = Uploaded {
                    files: m.files.into_iter().map(|f| (f.name.clone(), f)).collect(),
                    generation: Some(generation),
                };
                return Ok(Some(Published {
                    generation,
                    uploaded: 0,
                    uploaded_bytes: 0,
                    files,
                }));
            }
            Known::Stale(m) => (HashMap::new(), by_name(m.map(|(_, m)| m.files))),
        };
        let Some((files, uploaded, uploaded_bytes)) =
            self.upload_with(snap, &known_files, candidates).await?
        else {
            return Ok(None);
        };
        let count = files.len();
        let generation = match after {
            None => self.commit(snap, files.clone()).await?,
            Some(a) => {
                if !self.commit_as(snap, files.clone(), a + 1).await? {
                    return Err(superseded(a + 1));
                }
                a + 1
            }
        };
        *known = Uploaded {
            files: by_name(Some(files)),
            generation: Some(generation),
        };
        Ok(Some(Published {
            generation,
            uploaded,
            uploaded_bytes,
            files: count,
        }))
    }

    /// Whether what `known` says still holds: its generation is the newest. Otherwise the
    /// newest manifest, if it can be read, tells which files are there already.
    async fn check_known(&self, known: &Uploaded) -> Result<Known> {
        let latest = self.latest_generation().await?;
        if latest.is_some() && known.generation == latest {
            return Ok(Known::Valid);
        }
        Ok(Known::Stale(self.latest().await.ok().flatten()))
    }

    /// Whether the published manifest `m` describes the snapshot's state: the same index
    /// manifest (documents, pids, segments, graph and its hash) and the same files.
    fn same_state(&self, snap: &Snapshot, m: &Manifest) -> Result<bool> {
        let index: serde_json::Value = serde_json::from_slice(snap.manifest()).map_err(|e| {
            IndexError::Internal(format!("re-reading the snapshot's manifest: {e}"))
        })?;
        let names: HashSet<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        Ok(index == m.index
            && names.len() == snap.files().len()
            && snap.files().iter().all(|n| names.contains(n.as_str())))
    }

    /// The first half of a publish: puts the files of `snap` the store lacks and returns the
    /// snapshot's files as stored (with how many were uploaded, and their bytes); `None` when
    /// one was removed locally meanwhile. Nothing names them until [`PublishedIndex::commit`],
    /// and `known` learns them only from [`PublishedIndex::publish`] once committed.
    pub async fn upload(
        &self,
        snap: &Snapshot,
        known: &Uploaded,
    ) -> Result<Option<(Vec<StoredFile>, usize, u64)>> {
        match self.check_known(known).await? {
            Known::Valid => self.upload_with(snap, &known.files, HashMap::new()).await,
            Known::Stale(m) => {
                let candidates = by_name(m.map(|(_, m)| m.files));
                self.upload_with(snap, &HashMap::new(), candidates).await
            }
        }
    }

    /// Uploads the files of `snap` not in `known_files`; one in `candidates` (a name in the
    /// store's newest manifest) with the same SHA-256 is named again instead.
    async fn upload_with(
        &self,
        snap: &Snapshot,
        known_files: &HashMap<String, StoredFile>,
        mut candidates: HashMap<String, StoredFile>,
    ) -> Result<Option<(Vec<StoredFile>, usize, u64)>> {
        // A known file whose name is reused is named again only if its bytes are the same.
        for (name, f) in known_files {
            if rewritten_in_place(name) {
                candidates.insert(name.clone(), f.clone());
            }
        }
        let todo: Vec<String> = snap
            .files()
            .iter()
            .filter(|n| !known_files.contains_key(*n) || rewritten_in_place(n))
            .cloned()
            .collect();
        let candidates = Arc::new(candidates);
        let results: Vec<Option<(StoredFile, bool)>> = futures::stream::iter(todo)
            .map(|name| {
                let candidates = candidates.clone();
                async move {
                    // A file the newest manifest holds under this name with the same bytes
                    // is named again.
                    if let Some(f) = candidates.get(&name) {
                        let (s, n) = (snap.clone(), name.clone());
                        match blocking(move || hash_file(&s, &n)).await? {
                            None => return Ok(None),
                            Some((sha, len))
                                if sha == f.sha256
                                    && len == f.bytes
                                    && self.store.exists(&self.part_key(&f.id, 0)).await? =>
                            {
                                return Ok(Some((f.clone(), false)));
                            }
                            Some(_) => {}
                        }
                    }
                    Ok::<_, IndexError>(self.upload_file(snap, name).await?.map(|f| (f, true)))
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut uploaded = 0;
        let mut uploaded_bytes = 0;
        let mut got: HashMap<String, StoredFile> = HashMap::new();
        for r in results {
            let Some((file, new)) = r else {
                return Ok(None);
            };
            if new {
                uploaded += 1;
                uploaded_bytes += file.bytes;
            }
            got.insert(file.name.clone(), file);
        }
        let files: Vec<StoredFile> = snap
            .files()
            .iter()
            .map(|n| {
                got.get(n)
                    .or_else(|| known_files.get(n).filter(|_| !rewritten_in_place(n)))
                    .cloned()
                    .ok_or_else(|| {
                        IndexError::Internal(format!("{n} was neither uploaded nor known"))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Some((files, uploaded, uploaded_bytes)))
    }

    /// Uploads one file of `snap` under a new id, a part at a time, hashing it as it
    /// goes; `None` when it was removed locally meanwhile.
    async fn upload_file(&self, snap: &Snapshot, name: String) -> Result<Option<StoredFile>> {
        let (s, n) = (snap.clone(), name.clone());
        let Some((mut reader, len)) = blocking(move || s.open(&n)).await? else {
            return Ok(None);
        };
        let id = hex::encode(random::<16>()?);
        let mut hasher = Sha256::new();
        let (mut parts, mut bytes) = (0u32, 0u64);
        let size = self.part;
        loop {
            let (r, h, part) = blocking(move || {
                let mut part = Vec::with_capacity(size);
                reader
                    .by_ref()
                    .take(size as u64)
                    .read_to_end(&mut part)
                    .map_err(|e| IndexError::Internal(format!("reading a snapshot file: {e}")))?;
                hasher.update(&part);
                Ok((reader, hasher, part))
            })
            .await?;
            (reader, hasher) = (r, h);
            let n = part.len();
            if n == 0 && parts > 0 {
                break;
            }
            self.store
                .put(&self.part_key(&id, parts), Bytes::from(part))
                .await?;
            parts += 1;
            bytes += n as u64;
            if n < size {
                break;
            }
        }
        if bytes != len {
            // Shorter or longer than when opened: not the file the snapshot named.
            return Ok(None);
        }
        Ok(Some(StoredFile {
            name,
            id,
            sha256: hex::encode(hasher.finalize()),
            bytes,
            parts,
            part_bytes: size as u64,
        }))
    }

    /// Downloads one stored file into `install`, part by part, checking its SHA-256 and
    /// length: `false` when a part is missing (pruned meanwhile).
    async fn fetch_file(&self, install: Arc<Install>, f: StoredFile) -> Result<bool> {
        let name = f.name.clone();
        let mut out = blocking(move || install.create(&name)).await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        for part in 0..f.parts {
            let key = self.part_key(&f.id, part);
            let Some(data) = self.store.get_opt(&key).await? else {
                return Ok(false);
            };
            bytes += data.len() as u64;
            if bytes > f.bytes {
                break;
            }
            (out, hasher) = blocking(move || {
                hasher.update(&data);
                out.append(&data)?;
                Ok((out, hasher))
            })
            .await?;
        }
        if bytes != f.bytes || hex::encode(hasher.finalize()) != f.sha256 {
            return Err(IndexError::Corrupt {
                key: self.part_key(&f.id, 0),
                detail: format!("{} does not match its manifest (SHA-256 or length)", f.name),
            });
        }
        blocking(move || out.finish()).await?;
        Ok(true)
    }

    /// The second half of a publish: commits `files` (from [`PublishedIndex::upload`]) with
    /// the snapshot's manifest as the generation after the newest, and returns it. A writer
    /// that loses a generation to another tries the next (three times).
    pub async fn commit(&self, snap: &Snapshot, files: Vec<StoredFile>) -> Result<u64> {
        let bytes = manifest_bytes(snap, files)?;
        for _ in 0..3 {
            let next = self.latest_generation().await?.unwrap_or(0) + 1;
            if self.generations.commit(next, bytes.clone()).await? {
                return Ok(next);
            }
        }
        Err(IndexError::Conflict(format!(
            "another writer kept committing the index under {} first",
            self.prefix
        )))
    }

    /// Commits `files` with the snapshot's manifest as `generation` exactly: `false`, and
    /// nothing written, when another writer committed it first.
    async fn commit_as(
        &self,
        snap: &Snapshot,
        files: Vec<StoredFile>,
        generation: u64,
    ) -> Result<bool> {
        let bytes = manifest_bytes(snap, files)?;
        self.generations.commit(generation, bytes).await
    }

    /// The newest published generation and the documents its index holds, with their access
    /// lists: what a replica brings its own index in line with. `None` when nothing is
    /// published.
    pub async fn latest_documents(&self) -> Result<Option<(u64, Vec<(DocId, Access)>)>> {
        let Some((generation, m)) = self.latest().await? else {
            return Ok(None);
        };
        let docs = manifest_documents(m.index).map_err(|e| IndexError::Corrupt {
            key: format!("{}manifests/{generation:020}", self.prefix),
            detail: format!("its documents: {e}"),
        })?;
        Ok(Some((generation, docs)))
    }

    /// Fills the empty cache directory `dir` with the newest published generation; `None`
    /// when nothing is published. On an error `dir` is left without a manifest (an empty
    /// cache); the caller rebuilds from the documents.
    pub async fn fetch(&self, dir: &Path, sealer: Option<CacheSealer>) -> Result<Option<Fetched>> {
        for _ in 0..3 {
            let Some((generation, m)) = self.latest().await? else {
                return Ok(None);
            };
            let (d, s) = (dir.to_path_buf(), sealer.clone());
            let install = Arc::new(blocking(move || Install::begin(&d, s)).await?);
            let complete: Vec<bool> = futures::stream::iter(m.files.clone())
                .map(|f| self.fetch_file(install.clone(), f))
                .buffer_unordered(PARALLEL)
                .try_collect()
                .await?;
            if complete.iter().any(|ok| !ok) {
                continue;
            }
            let install = Arc::into_inner(install)
                .ok_or_else(|| IndexError::Internal("an install is still shared".into()))?;
            let manifest = serde_json::to_vec(&m.index)
                .map_err(|e| IndexError::Internal(format!("serialising a manifest: {e}")))?;
            blocking(move || install.finish(&manifest)).await?;
            let bytes = m.files.iter().map(|f| f.bytes).sum();
            return Ok(Some(Fetched {
                generation,
                files: m.files.len(),
                bytes,
                uploaded: Uploaded {
                    files: m.files.into_iter().map(|f| (f.name.clone(), f)).collect(),
                    generation: Some(generation),
                },
            }));
        }
        Err(IndexError::Conflict(format!(
            "the published index under {} kept changing while fetched",
            self.prefix
        )))
    }

    /// Deletes older generations and files no kept generation names (see the module docs).
    pub async fn collect(&self) -> Result<Collected> {
        self.collect_keeping(KEEP_GENERATIONS, self.grace).await
    }

    /// Keeps the newest generation alone and deletes every file it does not name at once,
    /// whatever its age: after a compaction that erased documents, no older generation's
    /// files may keep their text. A fetch of an older generation under way starts over with
    /// the newest; a writer's uploads not yet committed are lost (its generation is then
    /// refused by fetches, which rebuild from the documents).
    pub async fn purge(&self) -> Result<Collected> {
        self.collect_keeping(1, Duration::ZERO).await
    }

    async fn collect_keeping(&self, keep: usize, grace: Duration) -> Result<Collected> {
        let generations = self.generations.list().await?;
        let kept = &generations[generations.len().saturating_sub(keep)..];
        let mut named: HashSet<String> = HashSet::new();
        for &g in kept {
            // A kept manifest that cannot be read: delete nothing it might name.
            let Some(bytes) = self.generations.get(g).await? else {
                return Ok(Collected::default());
            };
            named.extend(self.parse(g, &bytes)?.files.into_iter().map(|f| f.id));
        }
        let mut out = Collected::default();
        if let Some(&first) = kept.first() {
            out.manifests = self.generations.prune(first).await?;
        }
        let now = SystemTime::now();
        let files_prefix = format!("{}files/", self.prefix);
        let mut gone: HashSet<String> = HashSet::new();
        let mut young: HashSet<String> = HashSet::new();
        for (key, modified) in self.store.list_modified(&files_prefix).await? {
            let Some(id) = key
                .strip_prefix(&files_prefix)
                .and_then(|k| k.split('/').next())
            else {
                continue;
            };
            if named.contains(id) {
                continue;
            }
            let age = now.duration_since(modified).unwrap_or_default();
            if age < grace {
                young.insert(id.to_owned());
                continue;
            }
            self.store.delete(&key).await?;
            gone.insert(id.to_owned());
        }
        // A file some of whose parts were young is counted as young.
        out.files = gone.difference(&young).count();
        out.young = young.len();
        Ok(out)
    }
}

/// The SHA-256 and length of one of a snapshot's files, read as a stream; `None` when it
/// was removed.
fn hash_file(snap: &Snapshot, name: &str) -> Result<Option<(String, u64)>> {
    let Some((mut reader, _)) = snap.open(name)? else {
        return Ok(None);
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| IndexError::Internal(format!("reading a snapshot file: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Some((hex::encode(hasher.finalize()), len)))
}

/// A published manifest naming `files` for the snapshot.
fn manifest_bytes(snap: &Snapshot, files: Vec<StoredFile>) -> Result<Bytes> {
    let index: serde_json::Value = serde_json::from_slice(snap.manifest())
        .map_err(|e| IndexError::Internal(format!("re-reading the snapshot's manifest: {e}")))?;
    Ok(serde_json::to_vec(&Manifest {
        format_version: FORMAT_VERSION,
        index,
        files,
    })
    .map_err(|e| IndexError::Internal(format!("serialising a published manifest: {e}")))?
    .into())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IndexError::Internal(format!("a blocking task failed: {e}")))?
}

/// What a publisher's [`Uploaded`] is worth against the store.
enum Known {
    /// Its generation is the newest.
    Valid,
    /// Another generation is newest: this one (when it could be read).
    Stale(Option<(u64, Manifest)>),
}

fn by_name(files: Option<Vec<StoredFile>>) -> HashMap<String, StoredFile> {
    files
        .into_iter()
        .flatten()
        .map(|f| (f.name.clone(), f))
        .collect()
}
