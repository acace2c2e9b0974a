//! Opening a collection index: loading, recovery and creation (rules in `persist.rs`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::ops::Range;
use std::path::Path;

use tracing::{info, warn};

use sha2::{Digest, Sha256};

use super::persist::{
    AnnRef, GraphRef, LAYOUT_VERSION, Manifest, SegmentRef, StoredParams, VectorsRef, broken_path,
    io_err, move_aside, read_file, read_manifest, remove_dir_if_any, vectors_name, write_manifest,
};
use super::scrub::{Job, Scrub};
use super::store::{ChunkStore, read_segment};
use super::{CollectionIndex, DocEntry, IndexParams, SearchParams};
use crate::crypto::CacheSealer;
use crate::error::{IndexError, Result};
use crate::ids::DocId;
use crate::lexical::{Analyzer, TantivyIndex};
use crate::pidset::PidSet;
use crate::vector::{Ann, AnnKind, FlatIndex, Graph, HnswIndex, Mapping, normalized};

pub(super) const LOCK: &str = "LOCK";
pub(super) const TANTIVY: &str = "tantivy";

/// Why loading an existing directory did not produce an index.
enum Failure {
    /// Refuse to open (parameter conflict, I/O we cannot work around); nothing is touched.
    Refuse(IndexError),
    /// The cache is unusable: move it aside and start empty.
    Broken(String),
}

pub(super) fn open(
    dir: &Path,
    params: IndexParams,
    sealer: Option<CacheSealer>,
) -> Result<CollectionIndex> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if sealer.is_some() {
        // A cache moved aside before sealing was turned on may hold plaintext.
        remove_dir_if_any(&broken_path(dir))?;
    }
    let lock = acquire_lock(dir)?;
    let held = lock.try_clone().map_err(io_err(dir))?;
    match load(dir, params, held, sealer.clone()) {
        Ok(Some(index)) => Ok(index),
        Ok(None) => create(dir, params, lock, sealer),
        Err(Failure::Refuse(e)) => Err(e),
        Err(Failure::Broken(reason)) => {
            drop(lock);
            if sealer.is_some() {
                // Unreadable to a sealing open (a plaintext cache from before, or damage):
                // nothing of it is kept.
                fs::remove_dir_all(dir).map_err(io_err(dir))?;
                warn!(dir = %dir.display(), %reason, "retrieval index cache is unreadable; deleted it and starting empty (it is refilled from the object store)");
            } else {
                let aside = move_aside(dir)?;
                warn!(
                    dir = %dir.display(),
                    moved_to = %aside.display(),
                    %reason,
                    "retrieval index cache is unreadable; starting empty (it is refilled from the object store)"
                );
            }
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            create(dir, params, acquire_lock(dir)?, sealer)
        }
    }
}

/// The BM25 index: in `{dir}/tantivy`, or in memory for a sealed cache (any directory left
/// from before sealing is removed).
fn new_lexical(dir: &Path, analyzer: Analyzer, sealed: bool) -> Result<TantivyIndex> {
    let path = dir.join(TANTIVY);
    if !sealed {
        return TantivyIndex::create(&path, analyzer);
    }
    remove_dir_if_any(&path)?;
    TantivyIndex::in_memory(&path, analyzer)
}

pub(super) fn acquire_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(IndexError::Conflict(format!(
            "the retrieval index at {} is already open",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// Creates an empty index in `dir` (removing leftovers of ours) and writes its manifest.
fn create(
    dir: &Path,
    params: IndexParams,
    lock: File,
    sealer: Option<CacheSealer>,
) -> Result<CollectionIndex> {
    let lexical = new_lexical(dir, params.analyzer, sealer.is_some())?;
    let (vectors, vectors_file) = new_vectors(params.dim, dir, sealer.is_some(), 0);
    let index = CollectionIndex::assemble(
        dir,
        params,
        lock,
        sealer,
        Parts {
            chunks: ChunkStore::default(),
            vectors,
            vectors_file,
            vectors_ref: None,
            docs: HashMap::new(),
            tombstones: PidSet::default(),
            ann: Ann::new(params.ann, params.dim, params.hnsw(), 1024)?,
            lexical,
            generation: 0,
            segments: Vec::new(),
            ann_dump: None,
            scrub: None,
        },
    );
    write_manifest(dir, index.sealer.as_ref(), &index.manifest(0))?;
    index.gc();
    Ok(index)
}

/// Everything `load` reads, before it becomes a `CollectionIndex`.
pub(super) struct Parts {
    pub chunks: ChunkStore,
    pub vectors: FlatIndex,
    pub vectors_file: Option<String>,
    pub vectors_ref: Option<VectorsRef>,
    pub docs: HashMap<DocId, DocEntry>,
    pub tombstones: PidSet,
    pub ann: Ann,
    pub lexical: TantivyIndex,
    pub generation: u64,
    pub segments: Vec<SegmentRef>,
    pub ann_dump: Option<AnnRef>,
    /// The background check of the files the open did not read (`scrub.rs`).
    pub scrub: Option<Scrub>,
}

fn load(
    dir: &Path,
    params: IndexParams,
    lock: File,
    sealer: Option<CacheSealer>,
) -> std::result::Result<Option<CollectionIndex>, Failure> {
    let broken = |e: IndexError| Failure::Broken(e.to_string());
    let Some(m) = read_manifest(dir, sealer.as_ref()).map_err(broken)? else {
        return Ok(None);
    };
    if m.format_version != LAYOUT_VERSION {
        return Err(Failure::Broken(format!(
            "unsupported layout version {}",
            m.format_version
        )));
    }
    check_params(dir, &m.params, &params).map_err(Failure::Refuse)?;

    // The vectors file, when the manifest names one and it checks out; else the vectors are
    // read from the segments into a new one (saved by the commit below).
    // Its rows' CRC-32 is checked in the background (`scrub.rs`).
    let mut job = Job {
        dir: dir.to_path_buf(),
        ..Job::default()
    };
    let kept = match (&m.vectors, &sealer) {
        (Some(r), None) if r.rows == m.next_pid => {
            let path = dir.join(&r.file);
            let opened = FlatIndex::open_file(params.dim, &path, r.rows as usize, r.crc32)
                .and_then(|v| Ok((v, File::open(&path).map_err(|e| e.to_string())?)));
            match opened {
                Ok((v, file)) => {
                    job.vectors = Some((file, params.dim, r.rows as usize, r.crc32));
                    Some((v, r.clone()))
                }
                Err(error) => {
                    warn!(dir = %dir.display(), file = %r.file, %error, "vectors file unusable; rebuilding it from the segments");
                    None
                }
            }
        }
        _ => None,
    };
    let (chunks, vectors, vectors_file, vectors_ref) = match kept {
        Some((v, r)) => {
            let chunks = read_segments(dir, sealer.as_ref(), &m, params.dim, None)
                .map_err(Failure::Broken)?;
            (chunks, v, Some(r.file.clone()), Some(r))
        }
        None => {
            let (mut v, file) = new_vectors(params.dim, dir, sealer.is_some(), m.generation);
            let chunks = read_segments(dir, sealer.as_ref(), &m, params.dim, Some(&mut v))
                .map_err(Failure::Broken)?;
            (chunks, v, file, None)
        }
    };
    let rebuilt_vectors = vectors_file.is_some() && vectors_ref.is_none();
    let (docs, tombstones) = read_documents(&m, &chunks).map_err(Failure::Broken)?;

    let sealed = sealer.is_some();
    let lexical = open_lexical(dir, params.analyzer, m.generation, &chunks, &docs, sealed)
        .map_err(Failure::Refuse)?;
    let (ann, ann_dump) = open_ann(
        dir,
        sealer.as_ref(),
        &params,
        &m,
        &vectors,
        &tombstones,
        &mut job,
    )
    .map_err(Failure::Refuse)?;
    let scrub = Scrub::start(job);
    // A sealed cache rebuilds an hnsw_rs graph at every open and never saves it.
    let rebuilt_graph =
        ann_dump.is_none() && ann.len() > 0 && (!sealed || ann.kind() == AnnKind::Graph);
    let rebuilt = rebuilt_graph || rebuilt_vectors;

    let mut index = CollectionIndex::assemble(
        dir,
        params,
        lock,
        sealer,
        Parts {
            chunks,
            vectors,
            vectors_file,
            vectors_ref,
            docs,
            tombstones,
            ann,
            lexical,
            generation: m.generation,
            segments: m.segments,
            ann_dump,
            scrub: Some(scrub),
        },
    );
    if rebuilt {
        // Save the rebuilt graph or vectors so the next open does not rebuild them again.
        if let Err(e) = index.commit_with(true) {
            warn!(dir = %dir.display(), error = %e, "could not save the rebuilt vector graph or vectors file");
        }
    } else {
        index.gc();
    }
    Ok(Some(index))
}

fn check_params(dir: &Path, stored: &StoredParams, wanted: &IndexParams) -> Result<()> {
    let mut diffs = Vec::new();
    let mut diff = |name: &str, s: String, w: String| {
        if s != w {
            diffs.push(format!("{name}: stored {s}, requested {w}"));
        }
    };
    diff("dim", stored.dim.to_string(), wanted.dim.to_string());
    diff(
        "hnsw_m",
        stored.hnsw_m.to_string(),
        wanted.hnsw_m.to_string(),
    );
    diff(
        "ef_construction",
        stored.ef_construction.to_string(),
        wanted.ef_construction.to_string(),
    );
    diff(
        "analyzer",
        stored.analyzer.to_string(),
        wanted.analyzer.to_string(),
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(IndexError::Conflict(format!(
            "the retrieval index at {} was created with other settings ({}); delete the directory to rebuild it",
            dir.display(),
            diffs.join("; ")
        )))
    }
}

/// A new, empty vector store: in a plaintext cache a vectors file named for `generation`,
/// mapped (the page cache holds the vectors, not the heap), returned with its name; the heap
/// in a sealed cache (nothing of a document reaches the disk unsealed), or if the file cannot
/// be made.
pub(super) fn new_vectors(
    dim: usize,
    dir: &Path,
    sealed: bool,
    generation: u64,
) -> (FlatIndex, Option<String>) {
    if sealed {
        return (FlatIndex::new(dim), None);
    }
    let name = vectors_name(generation);
    let vectors = FlatIndex::create_file(dim, &dir.join(&name));
    let name = vectors.in_file().then_some(name);
    (vectors, name)
}

/// The committed chunks, in place; with `vectors`, their embeddings are appended to it (what
/// an open does when it has no usable vectors file).
fn read_segments(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    m: &Manifest,
    dim: usize,
    mut vectors: Option<&mut FlatIndex>,
) -> std::result::Result<ChunkStore, String> {
    let mut chunks = ChunkStore::default();
    for seg in &m.segments {
        let file = read_segment(dir, sealer, &seg.file)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{}: missing", dir.join(&seg.file).display()))?;
        if file.len() != seg.count as usize {
            return Err(format!(
                "segment {} holds {} chunks, expected {}",
                seg.file,
                file.len(),
                seg.count
            ));
        }
        for i in 0..file.len() {
            let Some(vectors) = vectors.as_deref_mut() else {
                break;
            };
            let v = file
                .embedding(i)
                .filter(|v| v.len() == dim)
                .ok_or_else(|| format!("segment {} has a missing embedding", seg.file))?;
            push_stored(vectors, v)
                .map_err(|()| format!("segment {} has an invalid embedding", seg.file))?;
        }
        chunks.add_segment(seg.first_pid, file)?;
    }
    if chunks.len() != m.next_pid as usize {
        return Err(format!(
            "segments hold {} chunks, the manifest says {}",
            chunks.len(),
            m.next_pid
        ));
    }
    Ok(chunks)
}

/// Appends a vector as a segment holds it: segments hold the vectors as normalised at `add`,
/// pushed as they are, so that a rebuilt vectors file is the one that was lost, bit for bit.
pub(super) fn push_stored(vectors: &mut FlatIndex, v: &[f32]) -> std::result::Result<(), ()> {
    let unit = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    if (unit - 1.0).abs() < 1e-4 {
        vectors.push_normalized(v);
    } else {
        vectors.push_normalized(&normalized(v).map_err(|_| ())?);
    }
    Ok(())
}

/// The live documents and the tombstones: every pid not in a live document's range.
fn read_documents(
    m: &Manifest,
    chunks: &ChunkStore,
) -> std::result::Result<(HashMap<DocId, DocEntry>, PidSet), String> {
    let mut live = PidSet::new(m.next_pid);
    let mut docs = HashMap::with_capacity(m.documents.len());
    for d in &m.documents {
        let r = d.pids.clone();
        if r.start > r.end || r.end > m.next_pid {
            return Err(format!("document {} has an invalid pid range", d.doc_id));
        }
        for pid in r.clone() {
            if live.contains(pid) || chunks.doc_id(pid) != d.doc_id {
                return Err(format!("document {} has inconsistent pids", d.doc_id));
            }
        }
        live.insert_range(r.clone());
        let entry = DocEntry {
            source: d.source.clone(),
            title: d.title.clone(),
            metadata: d.metadata.clone(),
            access: d.access.clone(),
            // Numbered by `intern_all` once the index is built.
            readers: None,
            pids: r,
        };
        if docs.insert(d.doc_id, entry).is_some() {
            return Err(format!("document {} is listed twice", d.doc_id));
        }
    }
    let mut tombstones = PidSet::new(m.next_pid);
    for pid in 0..m.next_pid {
        if !live.contains(pid) {
            tombstones.insert(pid);
        }
    }
    Ok((docs, tombstones))
}

fn open_lexical(
    dir: &Path,
    analyzer: Analyzer,
    generation: u64,
    chunks: &ChunkStore,
    docs: &HashMap<DocId, DocEntry>,
    sealed: bool,
) -> Result<TantivyIndex> {
    let path = dir.join(TANTIVY);
    let want = generation.to_string();
    if !sealed {
        match TantivyIndex::open(&path, analyzer) {
            Ok((index, payload)) if payload.as_deref().unwrap_or("0") == want => {
                return Ok(index);
            }
            Ok((_, payload)) => warn!(
                dir = %dir.display(),
                ?payload,
                generation,
                "tantivy index is from another commit; rebuilding it"
            ),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "tantivy index unreadable; rebuilding it")
            }
        }
    }
    let mut index = new_lexical(dir, analyzer, sealed)?;
    let mut ranges: Vec<Range<u32>> = docs.values().map(|d| d.pids.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    for pid in ranges.into_iter().flatten() {
        index.add(pid, &chunks.text(pid))?;
    }
    index.commit(&want)?;
    Ok(index)
}

/// The approximate index of the configured kind: the saved one when the manifest names one
/// of that kind and it checks out, with the pids after it inserted; else built from the
/// vectors (returned without a saved file, so the caller saves it).
fn open_ann(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    params: &IndexParams,
    m: &Manifest,
    vectors: &FlatIndex,
    tombstones: &PidSet,
    job: &mut Job,
) -> Result<(Ann, Option<AnnRef>)> {
    let loaded = match (params.ann, &m.graph, &m.hnsw) {
        (AnnKind::Graph, Some(r), _) => Some(
            load_graph(dir, sealer, params, r, m.next_pid, vectors, job)
                .map(|g| (Ann::Graph(g), AnnRef::Graph(r.clone()))),
        ),
        (AnnKind::HnswRs, _, Some(r)) if sealer.is_none() => Some(if r.covers_pids > m.next_pid {
            Err(IndexError::Corrupt {
                key: r.dump.basename.clone(),
                detail: "dump covers pids beyond the manifest".into(),
            })
        } else {
            HnswIndex::load(dir, &r.dump, params.dim, params.hnsw())
                .map(|h| (Ann::HnswRs(h), AnnRef::HnswRs(r.clone())))
        }),
        _ => None,
    };
    match loaded {
        Some(Ok((mut ann, saved))) => {
            let covers = match &saved {
                AnnRef::Graph(r) => r.covers_pids,
                AnnRef::HnswRs(r) => r.covers_pids,
            };
            ann.insert(vectors, covers..m.next_pid, tombstones);
            return Ok((ann, Some(saved)));
        }
        Some(Err(e)) => {
            warn!(dir = %dir.display(), error = %e, "saved vector graph unusable; rebuilding it")
        }
        None => {}
    }
    let live = m.next_pid as usize - tombstones.len();
    if m.next_pid > 0 {
        info!(dir = %dir.display(), points = live, ann = %params.ann, "building the vector graph");
    }
    let mut ann = Ann::new(params.ann, params.dim, params.hnsw(), live)?;
    ann.insert(vectors, 0..m.next_pid, tombstones);
    Ok((ann, None))
}

/// Reads and checks a saved graph: its SHA-256, then every count and id (`file.rs`). In a
/// plaintext cache the file is mapped, not read: its lists and codes stay in the page cache,
/// and its SHA-256 is left to `job` (checked in the background).
fn load_graph(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    params: &IndexParams,
    r: &GraphRef,
    next_pid: u32,
    vectors: &FlatIndex,
    job: &mut Job,
) -> Result<Graph> {
    let corrupt = |detail: String| IndexError::Corrupt {
        key: dir.join(&r.file).display().to_string(),
        detail,
    };
    let checked = |bytes: &[u8]| {
        if hex::encode(Sha256::digest(bytes)) == r.sha256 {
            Ok(())
        } else {
            Err(corrupt("checksum mismatch".into()))
        }
    };
    let graph = match sealer {
        None => {
            let path = dir.join(&r.file);
            let map = match Mapping::open(&path) {
                Ok(map) => map,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corrupt("missing".into()));
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            job.graph = Some((File::open(&path).map_err(io_err(&path))?, r.sha256.clone()));
            Graph::from_mapped(&map, params.dim, params.hnsw(), vectors.rows())
        }
        Some(_) => {
            let bytes =
                read_file(dir, sealer, &r.file)?.ok_or_else(|| corrupt("missing".into()))?;
            checked(&bytes)?;
            Graph::from_bytes(&bytes, params.dim, params.hnsw(), vectors.rows())
        }
    }
    .map_err(corrupt)?;
    if graph.len() != r.covers_pids as usize || r.covers_pids > next_pid {
        return Err(corrupt(format!(
            "holds {} points, the manifest says {} of {next_pid}",
            graph.len(),
            r.covers_pids
        )));
    }
    Ok(graph)
}

impl CollectionIndex {
    pub(super) fn assemble(
        dir: &Path,
        params: IndexParams,
        lock: File,
        sealer: Option<CacheSealer>,
        p: Parts,
    ) -> Self {
        let committed_pids = p.chunks.len() as u32;
        let mut index = Self {
            dir: dir.to_path_buf(),
            params,
            search: SearchParams {
                ef_search: params.ef_search,
                exact_max_points: 20_000,
                exact_max_fraction: 0.02,
            },
            _lock: lock,
            chunks: p.chunks,
            vectors: p.vectors,
            vectors_file: p.vectors_file,
            vectors_ref: p.vectors_ref,
            docs: p.docs,
            tombstones: p.tombstones,
            ann: p.ann,
            lexical: p.lexical,
            generation: p.generation,
            segments: p.segments,
            committed_pids,
            ann_dump: p.ann_dump,
            dirty: false,
            sealer,
            principals: HashMap::new(),
            scrub: p.scrub,
        };
        index.intern_all();
        index
    }
}
