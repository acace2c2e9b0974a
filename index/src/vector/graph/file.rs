//! A graph as one file, so that a collection opens without relinking its vectors.
//!
//! Little-endian throughout; each section starts on a 64-byte boundary (zero padded), so the
//! file is mapped and its lists and codes read in place ([`Graph::from_mapped`]):
//!
//! ```text
//! header   "HGRAPH02", then u32: dim, m, ef_construction, nodes, entry, top, coded (0/1),
//!          has_codes (0/1); u64: upper words, fitted (vectors the code ranges were fitted on),
//!          aliases
//! levels   one byte per node
//! starts   u32 per node: its layer-1 list's index among the upper lists
//! layer0   u32 per node * (2M + 1): a count, then the neighbours
//! upper    u32 * upper words: lists of M + 1 for layers 1 and up
//! codes    when has_codes: lo and step (f32 * dim each), then 64-byte lines, dim/64 rounded
//!          up per node
//! aliases  u32 pairs (node, alias), sorted: ids whose vector copies the node's
//! ```
//!
//! Version 1 ("HGRAPH01", still read) had no alias count or section: its aliases are found again
//! by hashing the vectors, which reads them all; version 2 stores them so that an open need not
//! (the hashes that recognise a new copy are computed at the first insertion instead).
//!
//! The file carries no checksum of its own: the manifest that names it holds its SHA-256,
//! checked before parsing. Parsing still checks every count, id and level against the
//! header, so a file that passes the checksum but was written wrong is refused, never
//! trusted into an out-of-bounds read or an endless walk.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use rayon::prelude::*;

use super::{Graph, GraphIndex, MAX_LEVEL, pick_dot};
use crate::error::IndexError;
use crate::vector::dedup::Duplicates;
use crate::vector::flat::check_matrix;
use crate::vector::hnsw::HnswParams;
use crate::vector::mapped::{Grow, Mapping};
use crate::vector::sq8::{Line, Sq8};

const MAGIC: &[u8; 8] = b"HGRAPH02";
/// The first version: no alias section (the table is rebuilt from the vectors at read).
const MAGIC_V1: &[u8; 8] = b"HGRAPH01";

/// Bytes of the header before its padding (version 1 lacks the last u64).
const HEADER: usize = 8 + 8 * 4 + 3 * 8;

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(64), 0);
}

fn put_u32s(out: &mut Vec<u8>, words: impl Iterator<Item = u32>) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    pad(out);
}

impl Graph {
    /// The graph as a file's bytes (see the module documentation).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let n = self.levels.len();
        let m = self.params.m;
        let lines = self.dim.div_ceil(64);
        let codes = self
            .sq
            .as_ref()
            .map_or(0, |_| 8 * self.dim + n * lines * 64);
        let mut out =
            Vec::with_capacity(64 * 6 + n * (1 + 4 * (2 * m + 2)) + self.upper.len() * 4 + codes);
        out.extend_from_slice(MAGIC);
        for w in [
            self.dim,
            m,
            self.params.ef_construction,
            n,
            self.entry as usize,
            self.top,
            usize::from(self.coded),
            usize::from(self.sq.is_some()),
        ] {
            out.extend_from_slice(&(w as u32).to_le_bytes());
        }
        let fitted = self.sq.as_ref().map_or(0, |sq| sq.parts().2);
        let aliases = self.dups.pairs();
        for w in [self.upper.len() as u64, fitted as u64, aliases.len() as u64] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        pad(&mut out);
        out.extend_from_slice(&self.levels);
        pad(&mut out);
        put_u32s(&mut out, self.upper_start.iter().copied());
        put_u32s(&mut out, self.layer0.iter().map(|a| a.load(Relaxed)));
        put_u32s(&mut out, self.upper.iter().map(|a| a.load(Relaxed)));
        if let Some(sq) = &self.sq {
            let (lo, step, _, codes) = sq.parts();
            put_u32s(&mut out, lo.iter().chain(step).map(|x| x.to_bits()));
            for line in codes {
                out.extend_from_slice(&line.0);
            }
        }
        put_u32s(&mut out, aliases.into_iter().flat_map(|(n, a)| [n, a]));
        out
    }

    /// Reads a graph written by [`Graph::to_bytes`] for vectors of width `dim` built with
    /// `params` (its `ef_search` is taken from `params`) onto the heap; `rows` are its vectors,
    /// from which the aliases are rebuilt. Fails with what is wrong: another width or
    /// parameters, a truncated file, a count, id or level out of range, or fewer rows than
    /// nodes.
    pub(crate) fn from_bytes(
        bytes: &[u8],
        dim: usize,
        params: HnswParams,
        rows: &[f32],
    ) -> Result<Self, String> {
        let layout = Layout::read(bytes, dim, params, rows)?;
        let atomics = |range: &Range<usize>| -> Grow<AtomicU32> {
            words(&bytes[range.clone()])
                .map(AtomicU32::new)
                .collect::<Vec<_>>()
                .into()
        };
        let codes = layout.codes.as_ref().map(|c| {
            bytes[c.clone()]
                .chunks_exact(64)
                .map(|c| Line(c.try_into().expect("64 bytes")))
                .collect::<Vec<_>>()
                .into()
        });
        layout.assemble(
            bytes,
            params,
            rows,
            (atomics(&layout.layer0), atomics(&layout.upper)),
            (codes, true),
        )
    }

    /// Reads a graph file in place: the neighbour lists and codes stay in the mapping (the OS
    /// page cache holds them; a list an insertion relinks is copied on write), only the levels
    /// and list starts (5 bytes a node) are copied. Checks as [`Graph::from_bytes`] does.
    pub(crate) fn from_mapped(
        map: &Arc<Mapping>,
        dim: usize,
        params: HnswParams,
        rows: &[f32],
    ) -> Result<Self, String> {
        if cfg!(target_endian = "big") {
            // The file is little-endian; read it with `from_bytes` on such a machine.
            return Err("a big-endian machine cannot read a graph file in place".into());
        }
        let bytes = map.bytes();
        let layout = Layout::read(bytes, dim, params, rows)?;
        let view = |range: &Range<usize>| -> Result<Grow<AtomicU32>, String> {
            Grow::mapped(map, range.start, range.len() / 4).ok_or_else(|| "misaligned".into())
        };
        let codes = match &layout.codes {
            Some(c) => Some(Grow::mapped(map, c.start, c.len() / 64).ok_or("misaligned codes")?),
            None => None,
        };
        // The codes are not scanned here (a quarter of the vectors' bytes): a code above 127
        // could only make an estimate saturate, a coarser ranking that the exact rescoring
        // corrects, never an access out of bounds; the manifest's checksum covers them.
        layout.assemble(
            bytes,
            params,
            rows,
            (view(&layout.layer0)?, view(&layout.upper)?),
            (codes, false),
        )
    }
}

impl Graph {
    /// Swaps the lists and codes held on the heap for views of `map`, the file
    /// [`Graph::to_bytes`] just wrote of this very graph (so it is not checked again: only its
    /// header and extent). Fails, changing nothing, when the file is not that graph's.
    pub(crate) fn adopt_mapped(&mut self, map: &Arc<Mapping>) -> Result<(), String> {
        if cfg!(target_endian = "big") {
            return Err("a big-endian machine cannot read a graph file in place".into());
        }
        let layout = Layout::sections(map.bytes(), self.dim, self.params)?;
        let same = layout.n == self.len()
            && layout.upper.len() / 4 == self.upper.len()
            && layout.codes.is_some() == self.sq.is_some()
            && layout.entry == self.entry as usize;
        if !same {
            return Err("the file is not this graph".into());
        }
        let view = |range: &Range<usize>| Grow::mapped(map, range.start, range.len() / 4);
        let layer0 = view(&layout.layer0).ok_or("misaligned")?;
        let upper = view(&layout.upper).ok_or("misaligned")?;
        if let (Some(sq), Some(c)) = (&mut self.sq, &layout.codes) {
            sq.adopt_codes(Grow::mapped(map, c.start, c.len() / 64).ok_or("misaligned")?)?;
        }
        self.layer0 = layer0;
        self.upper = upper;
        Ok(())
    }
}

/// Magic of [`GraphIndex::save`]'s vectors file: then u32 dim, u64 rows, padding to 64 bytes,
/// then the rows as little-endian f32.
const VECTORS_MAGIC: &[u8; 8] = b"HVECS001";
const GRAPH_FILE: &str = "graph.hgraph";
const VECTORS_FILE: &str = "vectors.hvec";

impl GraphIndex {
    /// Writes the graph and its vectors to `dir` (`graph.hgraph`, `vectors.hvec`, each synced),
    /// for [`GraphIndex::open`].
    pub fn save(&self, dir: &Path) -> crate::Result<()> {
        let rows = self.vectors.whole();
        let write = |name: &str, parts: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>| {
            let path = dir.join(name);
            let io = |source| IndexError::Io {
                path: path.clone(),
                source,
            };
            let mut out =
                std::io::BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
            parts(&mut out).map_err(io)?;
            out.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)
        };
        write(GRAPH_FILE, &mut |out| out.write_all(&self.graph.to_bytes()))?;
        // Streamed: the rows of a large index are more than memory holds twice.
        write(VECTORS_FILE, &mut |out| {
            let dim = self.graph.dim;
            out.write_all(&Self::vectors_header(dim, (rows.len() / dim) as u64))?;
            for x in rows {
                out.write_all(&x.to_le_bytes())?;
            }
            let written = 64 + rows.len() * 4;
            out.write_all(&[0u8; 64][..written.next_multiple_of(64) - written])
        })
    }

    /// Opens what [`GraphIndex::save`] wrote to `dir` in place: the vectors, lists and codes
    /// are read from the mapped files as searches touch them (the OS page cache holds them,
    /// not the heap); only levels and list starts are copied. Every count and id is checked
    /// (a damaged file is [`IndexError::Corrupt`]); there is no checksum, which the collection
    /// index keeps in its manifest instead.
    pub fn open(dir: &Path, params: HnswParams) -> crate::Result<Self> {
        let (dim, vectors) = map_vectors(&dir.join(VECTORS_FILE))?;
        let floats = vectors.len();
        let corrupt = |detail: String| IndexError::Corrupt {
            key: dir.join(GRAPH_FILE).display().to_string(),
            detail,
        };
        let path = dir.join(GRAPH_FILE);
        let map = Mapping::open(&path).map_err(|source| IndexError::Io { path, source })?;
        let graph = Graph::from_mapped(&map, dim, params, vectors.whole()).map_err(corrupt)?;
        if graph.len() != floats / dim {
            return Err(corrupt(format!(
                "{} nodes for {} vectors",
                graph.len(),
                floats / dim
            )));
        }
        Ok(Self { graph, vectors })
    }

    /// The 64 bytes that open a vectors file of `rows` rows `dim` wide (the rows follow, as
    /// little-endian f32), for writers that stream one to disk for
    /// [`GraphIndex::build_on_file`].
    pub fn vectors_header(dim: usize, rows: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(VECTORS_MAGIC);
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&rows.to_le_bytes());
        pad(&mut out);
        out
    }

    /// Links the rows of a vectors file (as [`GraphIndex::save`] writes them, or a writer
    /// starting with [`GraphIndex::vectors_header`]) read in place: the f32 rows stay in the
    /// page cache and never enter the heap, which holds only the lists and, with `coded`, the
    /// 7-bit codes the insertions traverse (as [`GraphIndex::build_quantized`]). This is how a
    /// graph over more f32 vectors than memory holds is built (10M × 384 is 15 GB of rows; the
    /// heap then needs ~5 GB). The rows must already be unit length (within 1e-3): a row that
    /// is not is an error naming it, and nothing is linked.
    pub fn build_on_file(path: &Path, params: HnswParams, coded: bool) -> crate::Result<Self> {
        let (dim, vectors) = map_vectors(path)?;
        let rows = vectors.whole();
        check_matrix(rows, dim)?;
        let bad = rows.par_chunks_exact(dim).position_first(|row| {
            let norm2 = row
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>();
            !norm2.is_finite() || (norm2 - 1.0).abs() > 2e-3
        });
        if let Some(i) = bad {
            return Err(IndexError::InvalidInput(format!(
                "row {i} of {} is not a unit vector: normalise the rows before writing them",
                path.display()
            )));
        }
        let mut graph = Graph::new(dim, params, coded)?;
        graph.check_room(rows.len() / dim)?;
        graph.insert(rows);
        Ok(Self { graph, vectors })
    }
}

/// Maps a vectors file: its width and its rows in place, every length checked.
fn map_vectors(path: &Path) -> crate::Result<(usize, Grow<f32>)> {
    let corrupt = |detail: &str| IndexError::Corrupt {
        key: path.display().to_string(),
        detail: detail.into(),
    };
    let vecs = Mapping::open(path).map_err(|source| IndexError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bytes = vecs.bytes();
    if bytes.len() < 64 || &bytes[..8] != VECTORS_MAGIC || cfg!(target_endian = "big") {
        return Err(corrupt("not a vectors file"));
    }
    let dim = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let rows = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let floats = usize::try_from(rows)
        .ok()
        .and_then(|r| r.checked_mul(dim))
        .filter(|&f| dim > 0 && 64 + (f * 4).next_multiple_of(64) == bytes.len())
        .ok_or_else(|| corrupt("truncated or of the wrong length"))?;
    let vectors = Grow::<f32>::mapped(&vecs, 64, floats).ok_or_else(|| corrupt("misaligned"))?;
    Ok((dim, vectors))
}

/// Where a graph file's sections lie, once its header and every section were checked.
struct Layout {
    dim: usize,
    n: usize,
    entry: usize,
    top: usize,
    coded: bool,
    fitted: usize,
    levels: Range<usize>,
    starts: Range<usize>,
    layer0: Range<usize>,
    upper: Range<usize>,
    ranges: Range<usize>,
    codes: Option<Range<usize>>,
    /// `(node, alias)` pairs.
    aliases: Range<usize>,
    /// A version-1 file: no alias section.
    v1: bool,
}

impl Layout {
    /// Reads the header and checks the whole file against it (see [`Graph::from_bytes`]).
    fn read(bytes: &[u8], dim: usize, params: HnswParams, rows: &[f32]) -> Result<Self, String> {
        let layout = Self::sections(bytes, dim, params)?;
        layout.check(bytes, params.m, rows)?;
        Ok(layout)
    }

    /// Reads the header and finds the sections, checking only that they fit the file.
    fn sections(bytes: &[u8], dim: usize, params: HnswParams) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        let v1 = match r.take(8)? {
            m if m == MAGIC => false,
            m if m == MAGIC_V1 => true,
            _ => return Err("not a graph file".into()),
        };
        let mut h = [0usize; 8];
        for w in &mut h {
            *w = r.u32()? as usize;
        }
        let [
            file_dim,
            m,
            ef_construction,
            n,
            entry,
            top,
            coded,
            has_codes,
        ] = h;
        let upper_words = usize::try_from(r.u64()?).map_err(|_| "upper lists too long")?;
        let fitted = usize::try_from(r.u64()?).map_err(|_| "fitted count too large")?;
        let alias_count = if v1 {
            0
        } else {
            usize::try_from(r.u64()?).map_err(|_| "too many aliases")?
        };
        debug_assert_eq!(r.at, HEADER - if v1 { 8 } else { 0 });
        if file_dim != dim {
            return Err(format!("graph of width {file_dim}, the index uses {dim}"));
        }
        if m != params.m || ef_construction != params.ef_construction {
            return Err(format!(
                "graph built with M {m} and ef_construction {ef_construction}, the index uses {} and {}",
                params.m, params.ef_construction
            ));
        }
        if coded > 1 || has_codes > 1 || n >= u32::MAX as usize {
            return Err("bad header".into());
        }
        r.align()?;
        let levels = r.section(n, 1)?;
        let starts = r.section(n, 4)?;
        let layer0 = r.section(n.checked_mul(2 * m + 1).ok_or("too many nodes")?, 4)?;
        let upper = r.section(upper_words, 4)?;
        let (ranges, codes) = if has_codes == 1 {
            let ranges = r.section(2 * dim, 4)?;
            let lines = dim.div_ceil(64) * n;
            let codes = r.section(lines.checked_mul(64).ok_or("too many codes")?, 1)?;
            if fitted > n {
                return Err("codes fitted on more vectors than the graph holds".into());
            }
            (ranges, Some(codes))
        } else {
            (0..0, None)
        };
        let aliases = r.section(alias_count.checked_mul(2).ok_or("too many aliases")?, 4)?;
        if r.at != bytes.len() {
            return Err("trailing bytes".into());
        }
        Ok(Self {
            dim,
            n,
            entry,
            top,
            coded: coded == 1,
            fitted,
            levels,
            starts,
            layer0,
            upper,
            ranges,
            codes,
            aliases,
            v1,
        })
    }

    /// Checks every level, list start, count, neighbour and the entry against the header.
    fn check(&self, bytes: &[u8], m: usize, rows: &[f32]) -> Result<(), String> {
        let (n, dim) = (self.n, self.dim);
        let (levels, starts, layer0, upper) =
            (&self.levels, &self.starts, &self.layer0, &self.upper);
        let upper_words = upper.len() / 4;
        // Levels, list starts and the upper lists' extent agree.
        let mut lists = 0usize;
        for (i, (&l, s)) in bytes[levels.clone()]
            .iter()
            .zip(words(&bytes[starts.clone()]))
            .enumerate()
        {
            if usize::from(l) > MAX_LEVEL || s as usize != lists {
                return Err(format!("node {i} has a bad level or list start"));
            }
            lists += usize::from(l);
        }
        if lists * (m + 1) != upper_words {
            return Err("the upper lists do not match the levels".into());
        }
        // Every list's count fits it and every neighbour is a node.
        let ok = |list: &[u8], cap: usize| {
            let mut w = words(list);
            let c = w.next().expect("a count") as usize;
            c <= cap && w.take(c).all(|id| (id as usize) < n)
        };
        if !bytes[layer0.clone()]
            .chunks_exact(4 * (2 * m + 1))
            .all(|l| ok(l, 2 * m))
            || !bytes[upper.clone()]
                .chunks_exact(4 * (m + 1))
                .all(|l| ok(l, m))
        {
            return Err("a neighbour list is out of range".into());
        }
        if n > 0 && (self.entry >= n || usize::from(bytes[levels.start + self.entry]) != self.top) {
            return Err("bad entry node".into());
        }
        if rows.len() < n * dim {
            return Err(format!("{n} nodes, vectors for {}", rows.len() / dim));
        }
        // An alias follows its node, and is an unlinked level-0 node itself.
        let pairs: Vec<u32> = words(&bytes[self.aliases.clone()]).collect();
        let unlinked = |a: usize| {
            bytes[levels.start + a] == 0
                && bytes[layer0.start + a * 4 * (2 * m + 1)..][..4] == [0; 4]
        };
        if !pairs
            .chunks_exact(2)
            .all(|p| p[0] < p[1] && (p[1] as usize) < n && unlinked(p[1] as usize))
        {
            return Err("an alias is out of range".into());
        }
        Ok(())
    }

    /// The graph over the checked file's lists and codes, wherever they are held.
    fn assemble(
        &self,
        bytes: &[u8],
        params: HnswParams,
        rows: &[f32],
        (layer0, upper): (Grow<AtomicU32>, Grow<AtomicU32>),
        (codes, check_codes): (Option<Grow<Line>>, bool),
    ) -> Result<Graph, String> {
        let dim = self.dim;
        let sq = match codes {
            Some(codes) => {
                let ranges: Vec<f32> = words(&bytes[self.ranges.clone()])
                    .map(f32::from_bits)
                    .collect();
                let (lo, step) = ranges.split_at(dim);
                Some(Sq8::from_parts(
                    dim,
                    lo.to_vec(),
                    step.to_vec(),
                    self.fitted,
                    codes,
                    check_codes,
                )?)
            }
            None => None,
        };
        let mut graph = Graph {
            dim,
            params,
            levels: bytes[self.levels.clone()].to_vec(),
            layer0,
            upper,
            upper_start: words(&bytes[self.starts.clone()]).collect(),
            entry: self.entry as u32,
            top: if self.n > 0 { self.top } else { 0 },
            dot: pick_dot(),
            sq,
            coded: self.coded,
            dups: Duplicates::default(),
        };
        debug_assert_eq!(graph.len(), self.n);
        if self.v1 {
            graph.restore_aliases(rows);
        } else {
            let pairs: Vec<u32> = words(&bytes[self.aliases.clone()]).collect();
            graph.dups = Duplicates::from_pairs(pairs.chunks_exact(2).map(|p| (p[0], p[1])));
        }
        Ok(graph)
    }
}

/// Little-endian words.
fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
}

/// A cursor over a file's bytes that fails instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("the graph file is truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A section of `count` elements of `size` bytes, then the padding to the next one.
    fn section(&mut self, count: usize, size: usize) -> Result<Range<usize>, String> {
        let start = self.at;
        self.take(count.checked_mul(size).ok_or("section too long")?)?;
        let end = self.at;
        self.align()?;
        Ok(start..end)
    }

    /// Skips the padding to the next 64-byte boundary, which every section has (the file's
    /// length is a multiple of 64).
    fn align(&mut self) -> Result<(), String> {
        self.take(self.at.next_multiple_of(64) - self.at)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::GraphIndex;

    fn rows(n: usize, dim: usize) -> Vec<f32> {
        let mut s = 7u64;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        for r in v.chunks_exact_mut(dim) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn a_graph_built_on_a_vectors_file_is_the_heap_built_graph_and_bad_files_are_refused() {
        let dim = 70;
        let params = HnswParams::default();
        // One thread: the insertion order, hence the graph, is then fixed.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.hvec");
        let file_of = |unit: &[f32]| {
            let mut bytes = GraphIndex::vectors_header(dim, (unit.len() / dim) as u64);
            bytes.extend(unit.iter().flat_map(|x| x.to_le_bytes()));
            bytes.resize(bytes.len().next_multiple_of(64), 0);
            bytes
        };
        for coded in [false, true] {
            let built = pool
                .install(|| GraphIndex::build_with(&rows(1500, dim), dim, params, coded))
                .unwrap();
            let unit = built.vectors.whole();
            std::fs::write(&path, file_of(unit)).unwrap();
            let on_file = pool
                .install(|| GraphIndex::build_on_file(&path, params, coded))
                .unwrap();
            assert_eq!(on_file.graph.to_bytes(), built.graph.to_bytes(), "{coded}");
            assert_eq!(on_file.mapped_bytes(), unit.len() * 4, "rows in place");
            let q = &rows(1, dim);
            assert_eq!(
                on_file.search(q, 10, 40).unwrap(),
                built.search(q, 10, 40).unwrap()
            );
        }
        let mut unit = rows(300, dim);
        unit[3 * dim..4 * dim].iter_mut().for_each(|x| *x *= 1.01);
        std::fs::write(&path, file_of(&unit)).unwrap();
        let err = GraphIndex::build_on_file(&path, params, true)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, IndexError::InvalidInput(m) if m.contains("row 3 ")),
            "{err}"
        );
        let good = file_of(&rows(300, dim));
        for cut in [0, 20, 64, good.len() - 64] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = GraphIndex::build_on_file(&path, params, false)
                .err()
                .expect("refused");
            assert!(
                matches!(err, IndexError::Corrupt { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_graph_read_back_answers_exactly_as_before_and_damage_is_refused() {
        let dim = 70; // two code lines, the second partly padding
        let params = HnswParams::default();
        let base = rows(2000, dim);
        for coded in [false, true] {
            let built = GraphIndex::build_with(&base, dim, params, coded).unwrap();
            let bytes = built.graph.to_bytes();
            let back = Graph::from_bytes(&bytes, dim, params, built.vectors.whole()).unwrap();
            assert_eq!(back.to_bytes(), bytes, "coded {coded}");
            for q in rows(20, dim).chunks_exact(dim) {
                assert_eq!(
                    back.search(built.vectors.whole(), q, 10, 40, None),
                    built.graph.search(built.vectors.whole(), q, 10, 40, None)
                );
            }
            // Truncated at every section boundary and mid-section; another width or M.
            for cut in [
                0,
                7,
                HEADER,
                64,
                64 + 2000,
                bytes.len() / 2,
                bytes.len() - 1,
            ] {
                assert!(
                    Graph::from_bytes(&bytes[..cut], dim, params, built.vectors.whole()).is_err(),
                    "cut {cut}"
                );
            }
            assert!(Graph::from_bytes(&bytes, dim + 1, params, built.vectors.whole()).is_err());
            let other = HnswParams { m: 12, ..params };
            assert!(Graph::from_bytes(&bytes, dim, other, built.vectors.whole()).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Graph::from_bytes(&longer, dim, params, built.vectors.whole()).is_err());
        }
        // A neighbour id beyond the nodes, a list count beyond its capacity, a level above
        // the maximum: each refused.
        let built = GraphIndex::build(&base, dim, params).unwrap();
        let bytes = built.graph.to_bytes();
        // Header, 2000 levels padded to 2048, 2000 list starts (8000 bytes, whole lines).
        let first_list = 64 + 2048 + 8000;
        let mut bad = bytes.clone();
        bad[first_list + 4..first_list + 8].copy_from_slice(&5000u32.to_le_bytes());
        assert!(
            Graph::from_bytes(&bad, dim, params, built.vectors.whole()).is_err(),
            "id"
        );
        let mut bad = bytes.clone();
        bad[first_list..first_list + 4].copy_from_slice(&33u32.to_le_bytes());
        assert!(
            Graph::from_bytes(&bad, dim, params, built.vectors.whole()).is_err(),
            "count"
        );
        let mut bad = bytes;
        bad[64] = 40;
        assert!(
            Graph::from_bytes(&bad, dim, params, built.vectors.whole()).is_err(),
            "level"
        );
        // An empty graph round-trips.
        let empty = Graph::new(dim, params, true).unwrap();
        let back = Graph::from_bytes(&empty.to_bytes(), dim, params, &[]).unwrap();
        assert_eq!(back.len(), 0);
        assert!(back.search(&[], &base[..dim], 3, 16, None).is_empty());
    }

    #[test]
    fn a_mapped_graph_answers_and_grows_as_the_heap_one_and_leaves_its_file_unchanged() {
        let dim = 70;
        let params = HnswParams::default();
        let all = rows(1540, dim);
        let base = &all[..1500 * dim];
        let dir = tempfile::tempdir().unwrap();
        for coded in [false, true] {
            let built = GraphIndex::build_with(base, dim, params, coded).unwrap();
            let bytes = built.graph.to_bytes();
            let path = dir.path().join(format!("g{coded}"));
            std::fs::write(&path, &bytes).unwrap();
            let map = Mapping::open(&path).unwrap();
            let mut heap = Graph::from_bytes(&bytes, dim, params, base).unwrap();
            let mut mapped = Graph::from_mapped(&map, dim, params, base).unwrap();
            // Only levels and list starts (and the alias table) are copied.
            assert!(mapped.mapped_bytes() >= 1500 * (2 * params.m + 1) * 4);
            assert!(
                mapped.memory_bytes() * 4 < heap.memory_bytes(),
                "coded {coded}: {} heap bytes mapped, {} not",
                mapped.memory_bytes(),
                heap.memory_bytes()
            );
            for q in rows(20, dim).chunks_exact(dim) {
                assert_eq!(
                    mapped.search(base, q, 10, 40, None),
                    heap.search(base, q, 10, 40, None)
                );
            }
            // Two small batches (linked on this thread, so deterministically) relink mapped
            // lists and append new ones: the same graph results, and the file is untouched.
            for end in [1520, 1540] {
                heap.insert(&all[..end * dim]);
                mapped.insert(&all[..end * dim]);
            }
            assert_eq!(mapped.to_bytes(), heap.to_bytes(), "coded {coded}");
            drop(mapped);
            drop(map);
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "coded {coded}");

            // A graph adopts the file just written of it, and refuses another graph's.
            let grown = heap.to_bytes();
            let path2 = dir.path().join(format!("h{coded}"));
            std::fs::write(&path2, &grown).unwrap();
            let before = heap.memory_bytes();
            assert!(heap.adopt_mapped(&Mapping::open(&path).unwrap()).is_err());
            heap.adopt_mapped(&Mapping::open(&path2).unwrap()).unwrap();
            assert!(heap.memory_bytes() * 4 < before);
            assert_eq!(heap.to_bytes(), grown);
            for q in rows(5, dim).chunks_exact(dim) {
                let fresh = Graph::from_bytes(&grown, dim, params, &all).unwrap();
                assert_eq!(
                    heap.search(&all, q, 10, 40, None),
                    fresh.search(&all, q, 10, 40, None)
                );
            }
        }
    }

    #[test]
    fn a_saved_graph_index_opens_in_place_and_refuses_damaged_files() {
        let dim = 40;
        let params = HnswParams::default();
        let base = rows(1000, dim);
        let dir = tempfile::tempdir().unwrap();
        let built = GraphIndex::build_quantized(&base, dim, params).unwrap();
        built.save(dir.path()).unwrap();
        let mut opened = GraphIndex::open(dir.path(), params).unwrap();
        assert!(
            opened.mapped_bytes() >= 1000 * dim * 5,
            "vectors and codes mapped"
        );
        assert!(opened.memory_bytes() * 10 < built.memory_bytes());
        let queries = rows(20, dim);
        for q in queries.chunks_exact(dim) {
            assert_eq!(
                opened.search(q, 10, 40).unwrap(),
                built.search(q, 10, 40).unwrap()
            );
        }
        // It still takes insertions (its vectors move to the heap).
        let more = rows(1003, dim);
        let added = opened.insert(&more[1000 * dim..]).unwrap();
        assert_eq!(added, 1000..1003);
        let own = opened.search(&more[1001 * dim..1002 * dim], 1, 40).unwrap();
        assert_eq!(own[0].0, 1001);

        // Truncated or foreign vectors, a neighbour id out of range, other parameters.
        let vecs = dir.path().join(VECTORS_FILE);
        let graph = dir.path().join(GRAPH_FILE);
        let (v, g) = (
            std::fs::read(&vecs).unwrap(),
            std::fs::read(&graph).unwrap(),
        );
        let refused = |why: &str| {
            let err = GraphIndex::open(dir.path(), params).err().expect(why);
            assert!(matches!(err, IndexError::Corrupt { .. }), "{why}: {err}");
        };
        std::fs::write(&vecs, &v[..v.len() - 64]).unwrap();
        refused("truncated vectors");
        std::fs::write(&vecs, &g).unwrap();
        refused("not a vectors file");
        std::fs::write(&vecs, &v).unwrap();
        let first_list = 64 + 1024 + 4032;
        let mut bad = g.clone();
        bad[first_list + 4..first_list + 8].copy_from_slice(&5000u32.to_le_bytes());
        std::fs::write(&graph, &bad).unwrap();
        refused("neighbour out of range");
        std::fs::write(&graph, &g[..g.len() / 2]).unwrap();
        refused("truncated graph");
        std::fs::write(&graph, &g).unwrap();
        let other = HnswParams { m: 12, ..params };
        assert!(GraphIndex::open(dir.path(), other).is_err());
        GraphIndex::open(dir.path(), params).unwrap();
    }

    #[test]
    fn aliases_are_kept_in_the_file_and_a_version_1_file_still_reads() {
        let dim = 24;
        let params = HnswParams::default();
        let mut all = rows(500, dim);
        for copy in [3, 3, 10, 10] {
            all.extend_from_within(copy * dim..(copy + 1) * dim);
        }
        let base = &all[..503 * dim];
        let dir = tempfile::tempdir().unwrap();
        let built = GraphIndex::build_with(base, dim, params, true).unwrap();
        let want = vec![(3, 500), (3, 501), (10, 502)];
        assert_eq!(built.graph.dups.pairs(), want);
        let bytes = built.graph.to_bytes();
        let path = dir.path().join("g");
        std::fs::write(&path, &bytes).unwrap();
        let map = Mapping::open(&path).unwrap();
        let mut mapped = Graph::from_mapped(&map, dim, params, base).unwrap();
        let heap = Graph::from_bytes(&bytes, dim, params, base).unwrap();
        for g in [&mapped, &heap] {
            assert_eq!(g.dups.pairs(), want);
            let hits = g.search(base, &base[3 * dim..4 * dim], 3, 40, None);
            let mut ids: Vec<u32> = hits.iter().map(|h| h.0).collect();
            ids.sort_unstable();
            assert_eq!(ids, [3, 500, 501]);
        }
        // The hashes come back at the first insertion: one more copy of 10 is an alias too.
        mapped.insert(&all);
        assert_eq!(mapped.dups.pairs(), [&want[..], &[(10, 503)]].concat());

        // Version 1: no alias count (zero padding there) and no alias section.
        let mut v1 = bytes.clone();
        v1[..8].copy_from_slice(MAGIC_V1);
        v1[56..64].fill(0);
        v1.truncate(v1.len() - 64);
        let old = Graph::from_bytes(&v1, dim, params, base).unwrap();
        assert_eq!(old.dups.pairs(), want);
        assert_eq!(
            old.to_bytes(),
            bytes,
            "read as version 1, written as version 2"
        );

        // An alias before its node, or of a linked node, is refused.
        let at = bytes.len() - 64;
        for (node, alias) in [(500u32, 3u32), (3, 4)] {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&node.to_le_bytes());
            bad[at + 4..at + 8].copy_from_slice(&alias.to_le_bytes());
            assert!(
                Graph::from_bytes(&bad, dim, params, base).is_err(),
                "{node} {alias}"
            );
        }
    }
}
