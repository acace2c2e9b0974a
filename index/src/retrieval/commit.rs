//! Commit and compaction. The file layout and the ordering that makes them crash-safe are
//! described in `persist.rs`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use tracing::warn;

use sha2::{Digest, Sha256};

use super::persist::{self, AnnRef, GraphRef, HnswRef, SegmentRef};
use super::store::{ChunkStore, read_segment};
use super::{CollectionIndex, CompactStats, DocEntry};
use crate::chunks::{Chunk, ChunkFile};
use crate::crypto::CacheSealer;
use crate::error::{IndexError, Result};
use crate::ids::DocId;
use crate::pidset::PidSet;
use crate::vector::{Ann, FlatIndex, GONE, Mapping};

/// Write the graph once this many points were inserted since the last dump...
const DUMP_EVERY_POINTS: usize = 10_000;
/// ...or once they are at least 1/`DUMP_EVERY_FRACTION` of the graph. Points not in the dump
/// are re-inserted from the segments on open.
const DUMP_EVERY_FRACTION: usize = 20;

impl CollectionIndex {
    /// Makes every change so far durable and searchable: after it returns, a new
    /// [`CollectionIndex::open`] sees exactly this state, even after `kill -9`. A no-op when
    /// nothing changed.
    pub fn commit(&mut self) -> Result<()> {
        self.commit_with(false)
    }

    /// Commits; with `force`, even when nothing changed (used to save a rebuilt graph).
    pub(super) fn commit_with(&mut self, force: bool) -> Result<()> {
        if !(force || self.dirty || self.committed_pids < self.next_pid()) {
            return Ok(());
        }
        // Nothing is written from a file the background check finds damaged (`scrub.rs`);
        // a repair commits everything itself.
        if self.verify()? {
            return Ok(());
        }
        let next_pid = self.next_pid();
        let pending = self.committed_pids..next_pid;
        // A failed attempt burns its generation, so file names are never reused.
        self.generation += 1;
        let generation = self.generation;

        let mut segments = self.segments.clone();
        let mut written = None;
        if !pending.is_empty() {
            let file = persist::segment_name(generation);
            let chunks = with_vectors(
                self.chunks.pending_from(pending.start),
                &self.vectors,
                pending.clone(),
            );
            let plain = persist::write_segment(
                &self.dir,
                self.sealer.as_ref(),
                &file,
                &chunks,
                self.params.dim,
            )?;
            written = Some((pending.start, file.clone(), plain));
            segments.push(SegmentRef {
                file,
                first_pid: pending.start,
                count: pending.end - pending.start,
            });
        }
        self.sync_vectors(next_pid)?;
        let ann_dump = if self.dump_due() {
            if let Ann::Graph(g) = &mut self.ann {
                g.link_orphans(self.vectors.rows());
            }
            Some(save_ann(
                &self.dir,
                self.sealer.as_ref(),
                &mut self.ann,
                generation,
                next_pid,
            )?)
        } else {
            self.ann_dump.clone()
        };
        self.lexical.commit(&generation.to_string())?;

        // Tantivy has published the new state: memory now describes this commit, even if the
        // manifest write below fails (`dirty` makes the next commit retry it).
        self.segments = segments;
        self.committed_pids = next_pid;
        self.ann_dump = ann_dump;
        if let Some((first, file, plain)) = written {
            self.adopt_segment(first, &file, plain);
        }
        self.dirty = true;
        persist::write_manifest(&self.dir, self.sealer.as_ref(), &self.manifest(generation))?;
        self.dirty = false;
        self.gc();
        Ok(())
    }

    /// Whether `ann` may be saved: an hnsw_rs dump would hold the vectors in plaintext, so a
    /// sealed cache rebuilds that graph at open instead.
    pub(super) fn may_save(&self, ann: &Ann) -> bool {
        self.sealer.is_none() || matches!(ann, Ann::Graph(_))
    }

    fn dump_due(&self) -> bool {
        if !self.may_save(&self.ann) {
            return false;
        }
        let points = self.ann.len();
        let dumped = self.ann_dump.as_ref().map_or(0, AnnRef::points);
        let undumped = points.saturating_sub(dumped);
        undumped > 0 && (undumped >= DUMP_EVERY_POINTS || undumped * DUMP_EVERY_FRACTION >= points)
    }

    /// Rewrites the index without its tombstoned chunks: live chunks get new dense pids, the
    /// HNSW graph and the tantivy index are rebuilt, one segment replaces the old ones, and
    /// disk and memory are reclaimed. Commits pending changes first; results for live
    /// documents are unchanged. A no-op when nothing is tombstoned.
    pub fn compact(&mut self) -> Result<CompactStats> {
        self.verify()?;
        self.commit()?;
        let before = persist::disk_bytes(&self.dir);
        let removed = self.tombstones.len();
        if removed == 0 {
            return Ok(CompactStats {
                removed_chunks: 0,
                live_chunks: self.chunks.len(),
                disk_bytes_before: before,
                disk_bytes_after: before,
            });
        }

        let mut order: Vec<(DocId, DocEntry)> =
            self.docs.iter().map(|(k, v)| (*k, v.clone())).collect();
        order.sort_by_key(|(_, d)| d.pids.start);
        let live: usize = order.iter().map(|(_, d)| d.pids.len()).sum();
        // Old pid -> new pid, GONE for a tombstoned one; increasing over the kept pids.
        let mut remap = vec![GONE; self.chunks.len()];
        let mut chunks = ChunkStore::default();
        let (mut vectors, vectors_file) = super::open::new_vectors(
            self.params.dim,
            &self.dir,
            self.sealer.is_some(),
            self.generation + 1,
        );
        let mut docs = HashMap::with_capacity(order.len());
        for (id, mut entry) in order {
            let start = chunks.len() as u32;
            for pid in entry.pids.clone() {
                remap[pid as usize] = chunks.len() as u32;
                chunks.push(&self.chunks.get(pid).expect("a live pid"));
                vectors.push_normalized(self.vectors.vector(pid));
            }
            entry.pids = start..chunks.len() as u32;
            docs.insert(id, entry);
        }
        let n = chunks.len() as u32;
        let mut ann = self.ann.compacted(&remap, &vectors, self.params.hnsw())?;
        ann.set_ef(self.search.ef_search);

        self.generation += 1;
        let generation = self.generation;
        let mut segments = Vec::new();
        let mut ann_dump = None;
        let mut written = None;
        if n > 0 {
            let file = persist::segment_name(generation);
            let with = with_vectors(chunks.pending_from(0), &vectors, 0..n);
            let plain = persist::write_segment(
                &self.dir,
                self.sealer.as_ref(),
                &file,
                &with,
                self.params.dim,
            )?;
            written = Some((0, file.clone(), plain));
            segments.push(SegmentRef {
                file,
                first_pid: 0,
                count: n,
            });
            if self.may_save(&ann) {
                ann_dump = Some(save_ann(
                    &self.dir,
                    self.sealer.as_ref(),
                    &mut ann,
                    generation,
                    n,
                )?);
            }
        }
        let rewrite = (|| {
            self.lexical.delete_all()?;
            for pid in 0..n {
                self.lexical.add(pid, &chunks.text(pid))?;
            }
            self.lexical.commit(&generation.to_string())
        })();
        if let Err(e) = rewrite {
            if let Err(r) = self.lexical.rollback() {
                warn!(dir = %self.dir.display(), error = %r, "rolling back tantivy after a failed compaction");
            }
            return Err(e);
        }

        self.chunks = chunks;
        self.vectors = vectors;
        self.vectors_file = vectors_file;
        self.vectors_ref = None;
        self.sync_vectors(n)?;
        self.docs = docs;
        self.tombstones = PidSet::new(n);
        self.ann = ann;
        self.segments = segments;
        self.committed_pids = n;
        self.ann_dump = ann_dump;
        if let Some((first, file, plain)) = written {
            self.adopt_segment(first, &file, plain);
        }
        self.dirty = true;
        persist::write_manifest(&self.dir, self.sealer.as_ref(), &self.manifest(generation))?;
        self.dirty = false;
        self.gc();
        Ok(CompactStats {
            removed_chunks: removed,
            live_chunks: live,
            disk_bytes_before: before,
            disk_bytes_after: persist::disk_bytes(&self.dir),
        })
    }
}

/// Writes `ann` (covering the pids below `covers`) as commit `generation`'s file: the graph
/// through the cache's sealer like every other file, `hnsw_rs` by its own dump. In a plaintext
/// cache the graph is then read in place from the file it was written to: its lists and codes
/// leave the heap for the page cache (if mapping fails, it stays on the heap).
fn save_ann(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    ann: &mut Ann,
    generation: u64,
    covers: u32,
) -> Result<AnnRef> {
    Ok(match ann {
        Ann::Graph(g) => {
            let bytes = g.to_bytes();
            let file = persist::graph_name(generation);
            persist::write_durable(dir, sealer, &file, &bytes)?;
            if sealer.is_none() {
                let path = dir.join(&file);
                let adopted = Mapping::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|map| g.adopt_mapped(&map));
                if let Err(error) = adopted {
                    warn!(path = %path.display(), %error, "could not map the saved graph; it stays on the heap");
                }
            }
            AnnRef::Graph(GraphRef {
                file,
                sha256: hex::encode(Sha256::digest(&bytes)),
                covers_pids: covers,
            })
        }
        Ann::HnswRs(h) => AnnRef::HnswRs(HnswRef {
            dump: h.dump(dir, &persist::dump_name(generation))?,
            covers_pids: covers,
        }),
    })
}

/// Copies of the chunks of pids `range` (`chunks[0]` is the first) carrying their vectors,
/// for writing a segment.
fn with_vectors(chunks: &[Chunk], vectors: &FlatIndex, range: Range<u32>) -> Vec<Chunk> {
    range
        .zip(chunks)
        .map(|(pid, c)| Chunk {
            embedding: Some(vectors.vector(pid).to_vec()),
            ..c.clone()
        })
        .collect()
}

impl CollectionIndex {
    /// Makes the vectors of pids below `rows` durable in their file and records it for the
    /// manifest (nothing for vectors on the heap).
    fn sync_vectors(&mut self, rows: u32) -> Result<()> {
        let synced = self.vectors.sync().map_err(|source| IndexError::Io {
            path: self
                .dir
                .join(self.vectors_file.as_deref().unwrap_or("vectors")),
            source,
        })?;
        if let (Some(crc32), Some(file)) = (synced, &self.vectors_file) {
            self.vectors_ref = Some(persist::VectorsRef {
                file: file.clone(),
                rows,
                crc32,
            });
        }
        Ok(())
    }

    /// Serves the chunks a commit just wrote as segment `file` (from pid `first`) from that
    /// file: mapped in a plaintext cache, the written plaintext in a sealed one. If the file
    /// cannot be read back they stay on the heap, as before the commit.
    fn adopt_segment(&mut self, first: u32, file: &str, plain: bytes::Bytes) {
        let read = match &self.sealer {
            None => read_segment(&self.dir, None, file)
                .and_then(|f| f.ok_or_else(|| IndexError::NotFound(file.to_owned()))),
            Some(_) => ChunkFile::decode(file, plain),
        };
        let adopted = read
            .map_err(|e| e.to_string())
            .and_then(|f| self.chunks.add_segment(first, f));
        if let Err(error) = adopted {
            warn!(dir = %self.dir.display(), file, %error, "serving a committed segment's chunks from the heap");
        }
    }
}
