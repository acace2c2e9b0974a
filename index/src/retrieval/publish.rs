//! A committed index as a set of files, taken out of a cache directory and put into another
//! one: what `crate::published` copies to and from the object store.
//!
//! A snapshot is the manifest of the last commit, read back from the directory (so it
//! describes exactly what is on disk, never uncommitted additions), and the files it needs:
//! the segments, the graph file or `hnsw_rs` dump, and, in a plaintext cache, the tantivy
//! index of that commit (`meta.json`, the managed-file list and the files of the segments
//! `meta.json` names). The vectors file is left out: it is appended in place, and a fetching
//! node rebuilds it from the segments bit for bit (`open.rs`). A sealed cache's BM25 lives in
//! memory and is rebuilt at every open, so nothing of tantivy is taken from it.
//!
//! Files are read as plaintext (a sealed cache's are opened) and written sealed when the
//! receiving cache is: the object store seals them itself when it is encrypted.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::CollectionIndex;
use super::open::{LOCK, TANTIVY, acquire_lock};
use super::persist::{self, Manifest, io_err, read_file, remove_dir_if_any, write_durable};
use crate::access::Access;
use crate::crypto::CacheSealer;
use crate::error::{IndexError, Result};
use crate::ids::DocId;

/// Tantivy's own files besides its segments' (the lock files are never taken).
const TANTIVY_META: &str = "meta.json";
const TANTIVY_MANAGED: &str = ".managed.json";

/// The last commit of an index as files. Cheap to clone; reading its files takes no lock on
/// the index (they are immutable, but a later commit may remove them: [`Snapshot::open`] then
/// says so, and the caller takes a new snapshot).
#[derive(Clone, Debug)]
pub struct Snapshot {
    dir: PathBuf,
    sealer: Option<CacheSealer>,
    generation: u64,
    manifest: Vec<u8>,
    files: Vec<String>,
}

impl CollectionIndex {
    /// The state of the last successful commit as files (see the module documentation), or
    /// `None` when the directory holds no manifest. Take it while no commit runs (the callers'
    /// read lock on the index): a commit between the manifest and the tantivy listing would
    /// mix two states.
    pub fn snapshot(&self) -> Result<Option<Snapshot>> {
        let Some(mut manifest) = persist::read_manifest(&self.dir, self.sealer.as_ref())? else {
            return Ok(None);
        };
        manifest.vectors = None;
        let mut files: Vec<String> = manifest.segments.iter().map(|s| s.file.clone()).collect();
        if let Some(g) = &manifest.graph {
            files.push(g.file.clone());
        }
        if let Some(h) = &manifest.hnsw {
            files.extend(h.dump.files());
        }
        if self.sealer.is_none() {
            files.extend(tantivy_files(&self.dir.join(TANTIVY))?);
        }
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| IndexError::Internal(format!("serialising the manifest: {e}")))?;
        Ok(Some(Snapshot {
            dir: self.dir.clone(),
            sealer: self.sealer.clone(),
            generation: manifest.generation,
            manifest: bytes,
            files,
        }))
    }
}

/// The tantivy files of the last commit, as `tantivy/{name}`: `meta.json`, the managed list,
/// and every file of a segment `meta.json` names (segment ids are written with hyphens there,
/// without them in file names).
fn tantivy_files(dir: &Path) -> Result<Vec<String>> {
    let meta_path = dir.join(TANTIVY_META);
    let meta = match fs::read(&meta_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&meta_path)(e)),
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|e| IndexError::Corrupt {
            key: meta_path.display().to_string(),
            detail: e.to_string(),
        })?;
    let ids: Vec<String> = meta["segments"]
        .as_array()
        .map(|segs| {
            segs.iter()
                .filter_map(|s| s["segment_id"].as_str())
                .map(|id| id.replace('-', ""))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or_default();
        if name == TANTIVY_META || name == TANTIVY_MANAGED || ids.iter().any(|id| id == stem) {
            out.push(format!("{TANTIVY}/{name}"));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The documents of an index manifest, with their access lists (the rest is skipped over).
#[derive(serde::Deserialize)]
struct Documents {
    documents: Vec<DocumentAccess>,
}

#[derive(serde::Deserialize)]
struct DocumentAccess {
    doc_id: DocId,
    #[serde(default)]
    access: Access,
}

impl Documents {
    fn list(self) -> Vec<(DocId, Access)> {
        self.documents
            .into_iter()
            .map(|d| (d.doc_id, d.access))
            .collect()
    }
}

/// The documents an index manifest (as JSON) names, with their access lists.
pub(crate) fn manifest_documents(
    manifest: serde_json::Value,
) -> serde_json::Result<Vec<(DocId, Access)>> {
    serde_json::from_value::<Documents>(manifest).map(Documents::list)
}

impl Snapshot {
    /// The documents of the commit it describes, with their access lists.
    pub fn documents(&self) -> Result<Vec<(DocId, Access)>> {
        serde_json::from_slice::<Documents>(&self.manifest)
            .map(Documents::list)
            .map_err(|e| IndexError::Internal(format!("reading a snapshot's documents: {e}")))
    }

    /// The local generation of the commit it describes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The manifest (JSON, without the vectors file).
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The files it needs, by name relative to the index directory (`tantivy/...` for BM25).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// A reader of the plaintext of one of [`Snapshot::files`], with its length, or `None`
    /// when a later commit removed it. A plaintext cache's file is read from disk as it is
    /// consumed; a sealed one is opened whole (the seal covers the whole file).
    pub fn open(&self, name: &str) -> Result<Option<(Box<dyn Read + Send>, u64)>> {
        check_name(name)?;
        if self.sealer.is_some() && !name.starts_with(&format!("{TANTIVY}/")) {
            return Ok(read_file(&self.dir, self.sealer.as_ref(), name)?.map(|b| {
                let len = b.len() as u64;
                (
                    Box::new(std::io::Cursor::new(b)) as Box<dyn Read + Send>,
                    len,
                )
            }));
        }
        let path = self.dir.join(name);
        match fs::File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f))) {
            Ok((len, f)) => Ok(Some((Box::new(f), len))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// Whether a snapshot's file keeps its name while its content changes from commit to commit
/// (tantivy's `meta.json` and managed list): a publish never takes it as already stored. Every
/// other file is written once under a name no later file of the directory takes.
pub(crate) fn rewritten_in_place(name: &str) -> bool {
    name.strip_prefix(&format!("{TANTIVY}/"))
        .is_some_and(|f| f == TANTIVY_META || f == TANTIVY_MANAGED)
}

/// A file name a snapshot may hold: `name` or `tantivy/name`, of letters, digits, `.`, `_`
/// and `-`, not starting with a dot unless it is tantivy's managed list. Names come from the
/// object store, so nothing else may reach a path.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let file = name.strip_prefix(&format!("{TANTIVY}/")).unwrap_or(name);
    let ok = !file.is_empty()
        && file.len() <= 200
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && (!file.starts_with('.') || (file == TANTIVY_MANAGED && file.len() < name.len()))
        && file != LOCK
        && !file.ends_with(".lock")
        && !file.ends_with(".tmp");
    if ok {
        Ok(())
    } else {
        Err(IndexError::InvalidInput(format!(
            "{name:?} is not a file name an index snapshot holds"
        )))
    }
}

/// Writes a snapshot taken elsewhere into an index directory, replacing whatever was there;
/// the manifest goes last, so an interrupted install leaves a directory without one, which
/// the next open treats as empty. Holds the directory's lock throughout.
pub struct Install {
    dir: PathBuf,
    sealer: Option<CacheSealer>,
    _lock: fs::File,
}

impl Install {
    /// Empties `dir` (creating it) and takes its lock: fails with [`IndexError::Conflict`]
    /// when an open index holds it.
    pub fn begin(dir: &Path, sealer: Option<CacheSealer>) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = acquire_lock(dir)?;
        for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            if entry.file_name() == LOCK {
                continue;
            }
            let path = entry.path();
            let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir_if_any(&path)
            } else {
                fs::remove_file(&path).map_err(io_err(&path))
            };
            r?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            sealer,
            _lock: lock,
        })
    }

    /// Starts writing one file of the snapshot, to be appended to in order: a plaintext cache's
    /// file goes to disk as it comes (a temporary name until [`InstallFile::finish`]); a
    /// sealed cache's is held until it is whole, to be sealed.
    pub fn create(&self, name: &str) -> Result<InstallFile> {
        check_name(name)?;
        let (dir, file) = match name.strip_prefix(&format!("{TANTIVY}/")) {
            Some(file) if self.sealer.is_some() => {
                return Ok(InstallFile {
                    dir: self.dir.clone(),
                    name: file.to_owned(),
                    out: Out::Skip,
                });
            }
            Some(file) => (self.dir.join(TANTIVY), file),
            None => (self.dir.clone(), name),
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let out = match &self.sealer {
            Some(s) if dir == self.dir => Out::Sealed(s.clone(), Vec::new()),
            _ => {
                let tmp = dir.join(format!("{file}.tmp"));
                Out::Plain(fs::File::create(&tmp).map_err(io_err(&tmp))?)
            }
        };
        Ok(InstallFile {
            dir,
            name: file.to_owned(),
            out,
        })
    }

    /// Writes the manifest (checked to be one), completing the install. The index opens with
    /// [`CollectionIndex::open_sealed`] as usual, after this `Install` is dropped.
    pub fn finish(self, manifest: &[u8]) -> Result<u64> {
        let m: Manifest = serde_json::from_slice(manifest).map_err(|e| IndexError::Corrupt {
            key: self.dir.join("manifest.json").display().to_string(),
            detail: e.to_string(),
        })?;
        persist::write_manifest(&self.dir, self.sealer.as_ref(), &m)?;
        Ok(m.generation)
    }
}

/// One file of an [`Install`], being written.
pub struct InstallFile {
    dir: PathBuf,
    name: String,
    out: Out,
}

enum Out {
    /// A sealed cache's tantivy file: not kept (BM25 is rebuilt in memory).
    Skip,
    Plain(fs::File),
    Sealed(CacheSealer, Vec<u8>),
}

impl InstallFile {
    /// Appends the next bytes of the file's plaintext.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.out {
            Out::Skip => Ok(()),
            Out::Plain(f) => f
                .write_all(bytes)
                .map_err(io_err(&self.dir.join(format!("{}.tmp", self.name)))),
            Out::Sealed(_, buf) => {
                buf.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Makes the file durable under its name (fsync, rename, directory fsync).
    pub fn finish(self) -> Result<()> {
        match self.out {
            Out::Skip => Ok(()),
            Out::Plain(f) => {
                let tmp = self.dir.join(format!("{}.tmp", self.name));
                f.sync_all().map_err(io_err(&tmp))?;
                drop(f);
                let path = self.dir.join(&self.name);
                fs::rename(&tmp, &path).map_err(io_err(&path))?;
                fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&self.dir))
            }
            Out::Sealed(s, buf) => write_durable(&self.dir, Some(&s), &self.name, &buf),
        }
    }
}

/// Whether the index in `dir` holds no committed document (no manifest, or one with no
/// segment and no document): a directory a snapshot from the store may fill.
///
/// Runs before every open, so the manifest's segments and documents are skipped over, not
/// built (the open reads it whole right after).
pub fn cache_is_empty(dir: &Path, sealer: Option<&CacheSealer>) -> bool {
    #[derive(serde::Deserialize)]
    struct Counts {
        segments: Vec<serde::de::IgnoredAny>,
        documents: Vec<serde::de::IgnoredAny>,
    }
    match read_file(dir, sealer, persist::MANIFEST) {
        Ok(Some(bytes)) => serde_json::from_slice::<Counts>(&bytes)
            // Unreadable: the open moves it aside and starts empty anyway.
            .map_or(true, |c| c.segments.is_empty() && c.documents.is_empty()),
        Ok(None) | Err(_) => true,
    }
}
