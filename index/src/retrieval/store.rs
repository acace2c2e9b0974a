//! The chunks of a collection index by pid: the committed ones read in place from their
//! segments (`ChunkFile`: a mapped file in a plaintext cache, so their text stays in the page
//! cache; the decrypted bytes in a sealed one), the ones added since the last commit on the
//! heap.

use std::path::Path;

use bytes::Bytes;

use super::persist::{io_err, read_file};
use crate::chunks::{Chunk, ChunkFile};
use crate::crypto::CacheSealer;
use crate::error::Result;
use crate::ids::{ChunkId, DocId};

#[derive(Debug, Default)]
pub(super) struct ChunkStore {
    /// Committed segments in pid order, each with its first pid.
    segments: Vec<(u32, ChunkFile)>,
    /// Chunks added since the last commit, from pid [`ChunkStore::committed`] on (no
    /// embeddings: the vectors live in the index's vector store).
    pending: Vec<Chunk>,
}

/// Either a committed chunk in place or a pending one.
enum At<'a> {
    Segment(&'a ChunkFile, usize),
    Pending(&'a Chunk),
}

impl ChunkStore {
    /// Number of chunks (one past the highest pid).
    pub(super) fn len(&self) -> usize {
        self.committed() as usize + self.pending.len()
    }

    /// Pids below this are in segments.
    fn committed(&self) -> u32 {
        self.segments
            .last()
            .map_or(0, |(first, f)| first + f.len() as u32)
    }

    fn at(&self, pid: u32) -> Option<At<'_>> {
        let committed = self.committed();
        if pid >= committed {
            return self
                .pending
                .get((pid - committed) as usize)
                .map(At::Pending);
        }
        let s = self.segments.partition_point(|(first, _)| *first <= pid) - 1;
        let (first, file) = &self.segments[s];
        Some(At::Segment(file, (pid - first) as usize))
    }

    /// Chunk `pid`, materialised, without its embedding.
    pub(super) fn get(&self, pid: u32) -> Option<Chunk> {
        Some(match self.at(pid)? {
            At::Segment(f, i) => f.chunk(i, false),
            At::Pending(c) => c.clone(),
        })
    }

    /// Chunk `pid`'s document.
    ///
    /// # Panics
    /// If `pid` is out of range.
    pub(super) fn doc_id(&self, pid: u32) -> DocId {
        match self.at(pid).expect("a pid in range") {
            At::Segment(f, i) => f.doc_id(i),
            At::Pending(c) => c.doc_id,
        }
    }

    /// Chunk `pid`'s id.
    ///
    /// # Panics
    /// If `pid` is out of range.
    pub(super) fn chunk_id(&self, pid: u32) -> ChunkId {
        match self.at(pid).expect("a pid in range") {
            At::Segment(f, i) => f.chunk_id(i),
            At::Pending(c) => c.id(),
        }
    }

    /// Chunk `pid`'s text, in place.
    ///
    /// # Panics
    /// If `pid` is out of range.
    pub(super) fn text(&self, pid: u32) -> std::borrow::Cow<'_, str> {
        match self.at(pid).expect("a pid in range") {
            At::Segment(f, i) => f.text(i),
            At::Pending(c) => std::borrow::Cow::Borrowed(&c.text),
        }
    }

    /// A committed chunk's embedding as its segment holds it (`None` for a pending chunk:
    /// those keep none).
    pub(super) fn embedding(&self, pid: u32) -> Option<&[f32]> {
        match self.at(pid)? {
            At::Segment(f, i) => f.embedding(i),
            At::Pending(_) => None,
        }
    }

    /// Adds a chunk (its embedding dropped) with the next pid.
    pub(super) fn push(&mut self, chunk: &Chunk) {
        self.pending.push(Chunk {
            embedding: None,
            ..chunk.clone()
        });
    }

    /// The pending chunks from pid `from` on.
    pub(super) fn pending_from(&self, from: u32) -> &[Chunk] {
        &self.pending[(from - self.committed()) as usize..]
    }

    /// Frees the text of pending chunks in `pids` (their document was deleted before a
    /// commit); committed ones stay in their segment until compaction.
    pub(super) fn forget(&mut self, pids: std::ops::Range<u32>) {
        let committed = self.committed();
        for pid in pids.filter(|&p| p >= committed) {
            if let Some(c) = self.pending.get_mut((pid - committed) as usize) {
                c.text = String::new();
                c.heading = Vec::new();
            }
        }
    }

    /// Appends a committed segment read at open, or the segment a commit just wrote of every
    /// pending chunk (which it replaces). Fails when it does not start at the next pid to
    /// commit or, for a commit, does not hold exactly the pending chunks.
    pub(super) fn add_segment(
        &mut self,
        first: u32,
        file: ChunkFile,
    ) -> std::result::Result<(), String> {
        if first != self.committed() {
            return Err(format!(
                "a segment starts at pid {first}, {} expected",
                self.committed()
            ));
        }
        if !self.pending.is_empty() {
            if file.len() != self.pending.len() {
                return Err(format!(
                    "a segment of {} chunks for {} pending",
                    file.len(),
                    self.pending.len()
                ));
            }
            self.pending.clear();
        }
        self.segments.push((first, file));
        Ok(())
    }
}

/// Reads segment `name` of `dir` in place: mapped in a plaintext cache, decrypted onto the
/// heap in a sealed one. `Ok(None)` when the file is missing.
pub(super) fn read_segment(
    dir: &Path,
    sealer: Option<&CacheSealer>,
    name: &str,
) -> Result<Option<ChunkFile>> {
    let path = dir.join(name);
    let bytes = match sealer {
        Some(_) => match read_file(dir, sealer, name)? {
            Some(b) => Bytes::from(b),
            None => return Ok(None),
        },
        None => match map_segment(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        },
    };
    ChunkFile::decode(&path.display().to_string(), bytes).map(Some)
}

/// Maps a segment file read-only; the bytes keep the mapping alive.
#[allow(unsafe_code)]
fn map_segment(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a segment file is never modified once written (each commit writes a new name,
    // renamed into place after an fsync), so the mapped bytes do not change under us.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::encode_chunks;

    fn chunk(doc: &DocId, ordinal: u32) -> Chunk {
        Chunk {
            doc_id: *doc,
            ordinal,
            text: format!("text {ordinal}"),
            page_start: Some(ordinal),
            page_end: None,
            heading: vec!["H".into()],
            span_start: 0,
            span_end: 7,
            token_count: 3,
            embedding: Some(vec![1.0, ordinal as f32]),
        }
    }

    fn file(chunks: &[Chunk]) -> ChunkFile {
        ChunkFile::decode("seg", encode_chunks(chunks, 2).unwrap()).unwrap()
    }

    #[test]
    fn committed_chunks_come_from_their_segments_and_pending_ones_from_the_heap() {
        let (a, b) = (DocId::of_bytes(b"a"), DocId::of_bytes(b"b"));
        let first: Vec<Chunk> = (0..3).map(|i| chunk(&a, i)).collect();
        let second: Vec<Chunk> = (0..2).map(|i| chunk(&b, i)).collect();
        let mut store = ChunkStore::default();
        store.add_segment(0, file(&first)).unwrap();
        for c in &second {
            store.push(c);
        }
        assert_eq!(store.len(), 5);
        let bare = |c: &Chunk| Chunk {
            embedding: None,
            ..c.clone()
        };
        assert_eq!(store.get(1), Some(bare(&first[1])));
        assert_eq!(store.get(4), Some(bare(&second[1])));
        assert_eq!(store.get(5), None);
        assert_eq!((store.doc_id(2), &*store.text(3)), (a, "text 0"));
        assert_eq!(store.chunk_id(4), second[1].id());
        // A segment's stored id is the one its document and position make.
        assert_eq!(store.chunk_id(2), ChunkId::new(&a, 2));
        assert_eq!(store.chunk_id(2), first[2].id());
        assert_eq!(store.pending_from(4), &[bare(&second[1])]);

        // A commit's segment must start at the next pid and hold exactly the pending chunks.
        assert!(store.add_segment(4, file(&second)).is_err());
        assert!(store.add_segment(3, file(&second[..1])).is_err());
        store.forget(3..4);
        assert_eq!(store.text(3), "");
        store.add_segment(3, file(&second)).unwrap();
        assert_eq!(store.text(3), "text 0", "now read from the segment");
        assert_eq!(store.pending_from(5), &[] as &[Chunk]);
        assert_eq!(store.get(4), Some(bare(&second[1])));
    }
}
