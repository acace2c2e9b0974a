//! On-disk layout of a collection index, and how it is opened and recovered.
//!
//! ```text
//! {dir}/LOCK                         advisory lock (flock): one CollectionIndex per directory
//! {dir}/manifest.json                the commit point, replaced atomically (see below)
//! {dir}/seg-{gen:010}.arrow          chunks added by commit `gen`: Arrow IPC with the chunk
//!                                    schema (`encode_chunks`), normalised embeddings; immutable
//! {dir}/graph-{gen:010}.hgraph       the graph written by commit `gen` (`index.ann = "graph"`,
//!                                    format in `vector/graph/file.rs`); mapped, not read,
//!                                    in a plaintext cache
//! {dir}/hnsw-{gen:010}.hnsw.graph    or the hnsw_rs dump (`index.ann = "hnsw_rs"`, `file_dump`)
//! {dir}/hnsw-{gen:010}.hnsw.data
//! {dir}/hnsw-{gen:010}.hnsw.alias    ids whose vector duplicates a graph node (when any)
//! {dir}/vectors-{gen:010}.hvec        the normalised vectors by pid, appended in place (mapped;
//!                                    format in `vector/flat.rs`), created at commit `gen`
//! {dir}/tantivy/                     the tantivy index; its commit payload is the generation
//! ```
//!
//! `manifest.json` holds: `format_version`; the format-affecting `params` (dim, hnsw_m,
//! ef_construction, analyzer); `generation`; `next_pid`; the `segments` (file, first pid,
//! count; together they cover pids `0..next_pid` in order); the live `documents` (id, source,
//! title, metadata, access list, pid range); the `tombstones` (pid ranges of deleted chunks); and
//! either `graph` (file, SHA-256, `covers_pids`: the graph holds every pid below it, tombstoned
//! ones too) or `hnsw`, the hnsw_rs dump (basename, point count, SHA-256 of its files, and
//! `covers_pids`: the dump holds every live pid below it).
//!
//! **Commit** (`commit.rs`): write the new segment (fsync), sync the vectors file (the rows
//! appended since the last commit: `msync`, `fdatasync`, and the running CRC-32 extended over
//! them), write the graph if enough points
//! were added since the last dump (fsync, checksums), commit tantivy with the new generation
//! as payload, then write the manifest last (temp file, fsync, rename, directory fsync).
//! Files no manifest references any more (older dumps, segments replaced by a compaction,
//! leftovers of an interrupted commit) are removed after the manifest is in place. A kill at
//! any point leaves the previous manifest, which still describes a complete state.
//!
//! **Sealed caches** (`index.encrypt_cache`, on an encrypted store): the manifest and the
//! segments are sealed with the store's data keys (`CacheSealer`; the file's collection and
//! name are bound to it), and so is the graph file (its codes are a coarse copy of the
//! vectors); BM25 lives in memory and is rebuilt from the segments at every open; an hnsw_rs
//! graph is never dumped (hnsw_rs writes its files itself, in plaintext) and is rebuilt from
//! the vectors at open. Nothing of a document reaches the disk unsealed. A
//! plaintext cache found by a sealing open is deleted, not moved aside, and so is an older
//! `{dir}.broken`.
//!
//! **Open**: read the manifest; map the segments (their chunks are read in place, `store.rs`)
//! and the vectors file (checked against the manifest's row count and CRC-32). Then:
//! - vectors file missing, short or failing its checksum → rebuild it from the segments' vectors
//!   (bit for bit: they hold them as normalised) and record it (a repair commit);
//! - tantivy unreadable, or its payload differs from the manifest generation (a crash between
//!   the two commits) → rebuild it from the segments;
//! - graph file (or hnsw_rs dump) missing, of the other `index.ann` kind, failing its
//!   checksum or unreadable → rebuild the graph from the vectors and write it (a repair
//!   commit); pids at or above `covers_pids` are inserted into a loaded graph;
//! - manifest unreadable or inconsistent, or a segment missing or corrupt → log a warning, move
//!   the directory aside to `{dir}.broken` (replacing an older one) and start empty: the layer
//!   above refills the index from the object store. Never a panic.
//! - stored params differ from the requested ones → [`IndexError::Conflict`], nothing touched.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::CollectionIndex;
use crate::access::Access;
use crate::chunks::{Chunk, encode_chunks};
use crate::crypto::CacheSealer;
use crate::error::{IndexError, Result};
use crate::ids::DocId;
use crate::lexical::Analyzer;
use crate::meta::Metadata;
use crate::vector::HnswDump;

/// Version of this directory layout.
pub(super) const LAYOUT_VERSION: u32 = 1;
pub(super) const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    pub format_version: u32,
    pub params: StoredParams,
    pub generation: u64,
    pub next_pid: u32,
    pub segments: Vec<SegmentRef>,
    pub documents: Vec<DocRecord>,
    pub tombstones: Vec<Range<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw: Option<HnswRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<GraphRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<VectorsRef>,
}

/// The vectors file a manifest points to (a plaintext cache's; `vector/flat.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VectorsRef {
    pub file: String,
    /// Rows it holds for this commit (every pid below `next_pid`); bytes past them are ignored.
    pub rows: u32,
    /// CRC-32 of those rows' bytes.
    pub crc32: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredParams {
    pub dim: usize,
    pub hnsw_m: usize,
    pub ef_construction: usize,
    pub analyzer: Analyzer,
}

/// A committed chunk file and the pids it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentRef {
    pub file: String,
    pub first_pid: u32,
    pub count: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocRecord {
    pub doc_id: DocId,
    pub source: String,
    pub title: Option<String>,
    pub metadata: Metadata,
    /// Absent in manifests written before access lists (everyone's).
    #[serde(default, skip_serializing_if = "Access::is_everyone")]
    pub access: Access,
    pub pids: Range<u32>,
}

/// The HNSW dump a manifest points to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HnswRef {
    pub dump: HnswDump,
    pub covers_pids: u32,
}

/// The graph file a manifest points to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphRef {
    pub file: String,
    /// Lowercase hex SHA-256 of the file's plaintext.
    pub sha256: String,
    /// The graph holds every pid below this, tombstoned ones too.
    pub covers_pids: u32,
}

/// What the manifest's approximate index is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AnnRef {
    HnswRs(HnswRef),
    Graph(GraphRef),
}

impl AnnRef {
    /// Points the saved index holds.
    pub(crate) fn points(&self) -> usize {
        match self {
            Self::HnswRs(r) => r.dump.points,
            Self::Graph(r) => r.covers_pids as usize,
        }
    }

    fn files(&self) -> Vec<String> {
        match self {
            Self::HnswRs(r) => r.dump.files(),
            Self::Graph(r) => vec![r.file.clone()],
        }
    }
}

/// Maps an I/O error to [`IndexError::Io`] with the path.
pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn segment_name(generation: u64) -> String {
    format!("seg-{generation:010}.arrow")
}

pub(super) fn dump_name(generation: u64) -> String {
    format!("hnsw-{generation:010}")
}

pub(super) fn vectors_name(generation: u64) -> String {
    format!("vectors-{generation:010}.hvec")
}

pub(super) fn graph_name(generation: u64) -> String {
    format!("graph-{generation:010}.hgraph")
}

impl CollectionIndex {
    /// The manifest describing the in-memory state as commit `generation`.
    pub(super) fn manifest(&self, generation: u64) -> Manifest {
        let mut documents: Vec<DocRecord> = self
            .docs
            .iter()
            .map(|(id, d)| DocRecord {
                doc_id: *id,
                source: d.source.clone(),
                title: d.title.clone(),
                metadata: d.metadata.clone(),
                access: d.access.clone(),
                pids: d.pids.clone(),
            })
            .collect();
        documents.sort_by_key(|d| (d.pids.start, d.doc_id));
        Manifest {
            format_version: LAYOUT_VERSION,
            params: StoredParams {
                dim: self.params.dim,
                hnsw_m: self.params.hnsw_m,
                ef_construction: self.params.ef_construction,
                analyzer: self.params.analyzer,
            },
            generation,
            next_pid: self.next_pid(),
            segments: self.segments.clone(),
            documents,
            tombstones: self.tombstones.ranges(),
            hnsw: match &self.ann_dump {
                Some(AnnRef::HnswRs(r)) => Some(r.clone()),
                _ => None,
            },
            graph: match &self.ann_dump {
                Some(AnnRef::Graph(r)) => Some(r.clone()),
                _ => None,
            },
            vectors: self.vectors_ref.clone(),
        }
    }

    /// Removes our files that the current state does not reference. Failures are logged.
    pub(super) fn gc(&self) {
        let mut keep: HashSet<String> = self.segments.iter().map(|s| s.file.clone()).collect();
        if let Some(r) = &self.ann_dump {
            keep.extend(r.files());
        }
        keep.extend(self.vectors_file.clone());
        keep.extend(self.vectors_ref.as_ref().map(|r| r.file.clone()));
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("seg-") && name.ends_with(".arrow"))
                || (name.starts_with("hnsw-")
                    && [".hnsw.graph", ".hnsw.data", ".hnsw.alias"]
                        .iter()
                        .any(|ext| name.ends_with(ext)))
                || (name.starts_with("graph-") && name.ends_with(".hgraph"))
                || (name.starts_with("vectors-") && name.ends_with(".hvec"))
                || name.ends_with(".tmp");
            if ours
                && !keep.contains(&name)
                && let Err(e) = fs::remove_file(entry.path())
            {
                warn!(file = %entry.path().display(), error = %e, "could not remove an obsolete index file");
            }
        }
    }
}

pub(super) fn read_manifest(dir: &Path, sealer: Option<&CacheSealer>) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let Some(bytes) = read_file(dir, sealer, MANIFEST)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| IndexError::Corrupt {
            key: path.display().to_string(),
            detail: e.to_string(),
        })
}

pub(super) fn write_manifest(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    manifest: &Manifest,
) -> Result<()> {
    let bytes = serde_json::to_vec(manifest)
        .map_err(|e| IndexError::Internal(format!("serialising the manifest: {e}")))?;
    write_durable(dir, sealer, MANIFEST, &bytes)
}

/// Writes chunks (with their embeddings) as an immutable segment file; returns its plaintext.
pub(super) fn write_segment(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    name: &str,
    chunks: &[Chunk],
    dim: usize,
) -> Result<bytes::Bytes> {
    let bytes = encode_chunks(chunks, dim)?;
    write_durable(dir, sealer, name, &bytes)?;
    Ok(bytes)
}

/// A cache file's name as its seal binds it: the collection's directory and the file.
fn sealed_name(dir: &Path, name: &str) -> String {
    format!(
        "{}/{name}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Reads `{dir}/{name}` (`None` when missing), opening it when the cache is sealed.
pub(super) fn read_file(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    match sealer {
        None => Ok(Some(bytes)),
        Some(s) => s
            .open(&sealed_name(dir, name), bytes)
            .map(|b| Some(b.to_vec())),
    }
}

/// Writes `{dir}/{name}` atomically and durably (temp file, fsync, rename, directory fsync),
/// sealed when the cache is.
pub(super) fn write_durable(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let sealed;
    let bytes = match sealer {
        None => bytes,
        Some(s) => {
            sealed = s.seal(&sealed_name(dir, name), bytes)?;
            &sealed[..]
        }
    };
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Moves a broken directory to `{dir}.broken`, replacing an older one; if it cannot be moved,
/// empties it instead. Returns where it went.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf> {
    let aside = broken_path(dir);
    remove_dir_if_any(&aside)?;
    if fs::rename(dir, &aside).is_ok() {
        return Ok(aside);
    }
    fs::remove_dir_all(dir).map_err(io_err(dir))?;
    Ok(dir.to_path_buf())
}

/// Removes `path` and everything under it; a missing directory is fine.
pub(super) fn remove_dir_if_any(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Where a broken directory is moved: `{dir}.broken`.
pub(super) fn broken_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".broken");
    dir.with_file_name(name)
}

/// Bytes taken by the files under `dir` (best effort).
pub(super) fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => allocated(&m),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes a file occupies on disk: its allocated blocks where the platform says (a vectors
/// file grows a quarter at a time, so its length runs ahead of its data), else its length.
fn allocated(m: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        m.len()
    }
}
