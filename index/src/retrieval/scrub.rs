//! The checks a plaintext open leaves to a background thread: the vectors file's CRC-32 and
//! the graph file's SHA-256. Reading every byte of them was most of a cold open (1.5 GB of
//! vectors and 0.5 GB of graph at 1M chunks, BENCHMARKS.md "Cold start at 1M").
//!
//! The open still checks what a search relies on not to fail: the files' headers and lengths,
//! and every level, list count and neighbour id of the graph. So until the verdict, damage the
//! checksums would catch (a flipped bit in a vector or a code) can skew a score, not crash a
//! search or read out of bounds. The verdict is taken (`CollectionIndex::verify`) before the
//! vectors or the graph are written anywhere (each commit and compaction calls it) and by the
//! service as soon as it is in: a damaged file is then rebuilt from the segments as an open
//! used to, and the rebuild is committed.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use tracing::warn;

use super::{CollectionIndex, open};
use crate::error::{IndexError, Result};
use crate::ids::sha256_open;
use crate::vector::{Ann, check_rows};

/// What to check: the files are opened before the thread starts, so a commit's clean-up
/// removing them meanwhile changes nothing.
#[derive(Default)]
pub(super) struct Job {
    /// The vectors file, its width, the rows the manifest vouches for and their CRC-32.
    pub vectors: Option<(File, usize, usize, u32)>,
    /// The graph file and its SHA-256 (lowercase hex).
    pub graph: Option<(File, String)>,
    /// For the log and the verdict's messages.
    pub dir: PathBuf,
}

/// Why each file failed its check; `None` where it passed (or was not checked).
#[derive(Clone, Debug, Default)]
pub(super) struct Verdict {
    pub vectors: Option<String>,
    pub graph: Option<String>,
}

type Shared = Arc<(Mutex<Option<Verdict>>, Condvar)>;

/// A running (or finished) check.
#[derive(Clone)]
pub(super) struct Scrub {
    shared: Shared,
    /// The rows of the vectors file the check covers (the manifest's count at open; 0 when
    /// the open rebuilt the file and there is nothing to check).
    rows: u32,
}

impl Scrub {
    /// Starts checking `job` on a thread of its own (at once if there is nothing to check or
    /// the thread cannot be started: then it runs here).
    pub(super) fn start(job: Job) -> Self {
        let rows = job.vectors.as_ref().map_or(0, |v| v.2 as u32);
        let shared: Shared = Arc::default();
        if job.vectors.is_none() && job.graph.is_none() {
            *shared.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Verdict::default());
            return Self { shared, rows };
        }
        // A thread that cannot be started (none left) leaves the job here, checked inline.
        let job = Arc::new(Mutex::new(Some(job)));
        let (theirs, done) = (Arc::clone(&job), Arc::clone(&shared));
        let spawned = std::thread::Builder::new()
            .name("hearth-scrub".into())
            .spawn(move || finish(&done, take(&theirs), false));
        if spawned.is_err() {
            finish(&shared, take(&job), true);
        }
        Self { shared, rows }
    }

    /// Whether the verdict is in.
    pub(super) fn is_done(&self) -> bool {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Blocks until the verdict is in and returns it.
    pub(super) fn wait(&self) -> Verdict {
        let (lock, cond) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = state.as_ref() {
                return v.clone();
            }
            state = cond.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn take(job: &Mutex<Option<Job>>) -> Option<Job> {
    job.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Checks `job` and posts the verdict. On its own thread the check gives up once the index
/// and every `Verification` are dropped (nobody wants the verdict: only the thread holds it).
fn finish(shared: &Shared, job: Option<Job>, inline: bool) {
    let Some(job) = job else { return };
    let wanted = || inline || Arc::strong_count(shared) > 1;
    let verdict = check(job, &wanted);
    *shared.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
    shared.1.notify_all();
}

fn check(job: Job, wanted: &dyn Fn() -> bool) -> Verdict {
    let started = std::time::Instant::now();
    let vectors = job
        .vectors
        .and_then(|(file, dim, rows, crc)| check_rows(&file, dim, rows, crc, wanted).err());
    let graph = job
        .graph
        .and_then(|(file, want)| match sha256_open(&file, wanted) {
            Ok(got) if got == want => None,
            Ok(_) => Some("checksum mismatch".to_owned()),
            Err(e) => Some(e.to_string()),
        });
    tracing::debug!(
        dir = %job.dir.display(),
        seconds = started.elapsed().as_secs_f64(),
        vectors_ok = vectors.is_none(),
        graph_ok = graph.is_none(),
        "background check of the vectors and graph files done"
    );
    Verdict { vectors, graph }
}

/// A handle on an index's background checks, to wait for their verdict without holding the
/// index (then [`CollectionIndex::verify`] takes it).
#[derive(Clone)]
pub struct Verification(Option<Scrub>);

impl Verification {
    /// Blocks until the checks are done (at once when there were none).
    pub fn wait(&self) {
        if let Some(s) = &self.0 {
            s.wait();
        }
    }

    /// Whether the checks are done.
    pub fn is_done(&self) -> bool {
        self.0.as_ref().is_none_or(Scrub::is_done)
    }
}

impl CollectionIndex {
    /// The background checks of the files the last open did not read (its vectors file's
    /// CRC-32 and its graph file's SHA-256), to wait for without holding the index.
    pub fn verification(&self) -> Verification {
        Verification(self.scrub.clone())
    }

    /// Takes the verdict of the background checks, waiting for it: a damaged vectors file is
    /// rebuilt from the segments (bit for bit), a damaged graph from the vectors, and the
    /// rebuild is committed. Returns whether anything was rebuilt. Every commit and compaction
    /// calls it first, so nothing is written from a damaged file; call it after an open to
    /// repair as soon as the checks are done. A no-op once taken.
    pub fn verify(&mut self) -> Result<bool> {
        let Some(scrub) = self.scrub.take() else {
            return Ok(false);
        };
        let verdict = scrub.wait();
        if let Some(reason) = &verdict.vectors {
            warn!(dir = %self.dir.display(), %reason, "vectors file damaged; rebuilding it from the segments");
            self.rebuild_vectors(scrub.rows)?;
        }
        if let Some(reason) = &verdict.graph {
            warn!(dir = %self.dir.display(), %reason, "saved vector graph damaged; rebuilding it");
            self.rebuild_ann()?;
        }
        let rebuilt = verdict.vectors.is_some() || verdict.graph.is_some();
        if rebuilt {
            self.commit_with(true)?;
        }
        Ok(rebuilt)
    }

    /// A new vectors file: rows below `rows` from the segments, the rest (added since the
    /// open, so written by this process) from the current store.
    fn rebuild_vectors(&mut self, rows: u32) -> Result<()> {
        // A name no file of this index has had: the damaged file is still mapped.
        self.generation += 1;
        let dim = self.params.dim;
        let (mut fresh, file) =
            open::new_vectors(dim, &self.dir, self.sealer.is_some(), self.generation);
        for pid in 0..rows {
            let v = self
                .chunks
                .embedding(pid)
                .filter(|v| v.len() == dim)
                .ok_or_else(|| IndexError::Corrupt {
                    key: self.dir.display().to_string(),
                    detail: format!("chunk {pid} has no stored embedding"),
                })?;
            open::push_stored(&mut fresh, v).map_err(|()| IndexError::Corrupt {
                key: self.dir.display().to_string(),
                detail: format!("chunk {pid} has an invalid stored embedding"),
            })?;
        }
        for pid in rows..self.next_pid() {
            fresh.push_normalized(self.vectors.vector(pid));
        }
        self.vectors = fresh;
        self.vectors_file = file;
        self.vectors_ref = None;
        Ok(())
    }

    /// The approximate index rebuilt from the vectors (saved by the next commit).
    fn rebuild_ann(&mut self) -> Result<()> {
        let next_pid = self.next_pid();
        let live = next_pid as usize - self.tombstones.len();
        let mut ann = Ann::new(self.params.ann, self.params.dim, self.params.hnsw(), live)?;
        ann.insert(&self.vectors, 0..next_pid, &self.tombstones);
        self.ann = ann;
        self.ann_dump = None;
        Ok(())
    }
}
