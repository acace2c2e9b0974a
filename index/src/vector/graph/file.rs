//! A graph as one file, so that a collection opens without relinking its vectors.
//!
//! Little-endian throughout; each section starts on a 64-byte boundary (zero padded), so the
//! file can later be mapped and its sections read in place:
//!
//! ```text
//! header   "HGRAPH01", then u32: dim, m, ef_construction, nodes, entry, top, coded (0/1),
//!          has_codes (0/1); u64: upper words, fitted (vectors the code ranges were fitted on)
//! levels   one byte per node
//! starts   u32 per node: its layer-1 list's index among the upper lists
//! layer0   u32 per node * (2M + 1): a count, then the neighbours
//! upper    u32 * upper words: lists of M + 1 for layers 1 and up
//! codes    when has_codes: lo and step (f32 * dim each), then 64-byte lines, dim/64 rounded
//!          up per node
//! ```
//!
//! The file carries no checksum of its own: the manifest that names it holds its SHA-256,
//! checked before parsing. Parsing still checks every count, id and level against the
//! header, so a file that passes the checksum but was written wrong is refused, never
//! trusted into an out-of-bounds read or an endless walk.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use super::{Graph, MAX_LEVEL, pick_dot};
use crate::vector::dedup::Duplicates;
use crate::vector::hnsw::HnswParams;
use crate::vector::sq8::{Line, Sq8};

const MAGIC: &[u8; 8] = b"HGRAPH01";

/// Bytes of the header before its padding.
const HEADER: usize = 8 + 8 * 4 + 2 * 8;

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
        for w in [self.upper.len() as u64, fitted as u64] {
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
        out
    }

    /// Reads a graph written by [`Graph::to_bytes`] for vectors of width `dim` built with
    /// `params` (its `ef_search` is taken from `params`); `rows` are its vectors, from which
    /// the aliases are rebuilt. Fails with what is wrong: another width or parameters, a
    /// truncated file, a count, id or level out of range, or fewer rows than nodes.
    pub(crate) fn from_bytes(
        bytes: &[u8],
        dim: usize,
        params: HnswParams,
        rows: &[f32],
    ) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("not a graph file".into());
        }
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
        debug_assert_eq!(r.at, HEADER);
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
        let levels = r.take(n)?.to_vec();
        r.align()?;
        let upper_start = r.u32s(n)?;
        let layer0 = r.u32s(n.checked_mul(2 * m + 1).ok_or("too many nodes")?)?;
        let upper = r.u32s(upper_words)?;
        let sq = if has_codes == 1 {
            let ranges: Vec<f32> = r.u32s(2 * dim)?.into_iter().map(f32::from_bits).collect();
            let (lo, step) = ranges.split_at(dim);
            let lines = dim.div_ceil(64) * n;
            let raw = r.take(lines.checked_mul(64).ok_or("too many codes")?)?;
            let codes = raw
                .chunks_exact(64)
                .map(|c| Line(c.try_into().expect("64 bytes")))
                .collect();
            if fitted > n {
                return Err("codes fitted on more vectors than the graph holds".into());
            }
            Some(Sq8::from_parts(
                dim,
                lo.to_vec(),
                step.to_vec(),
                fitted,
                codes,
            )?)
        } else {
            None
        };
        if r.at != bytes.len() {
            return Err("trailing bytes".into());
        }

        // Levels, list starts and the upper lists' extent agree.
        let mut lists = 0usize;
        for (i, (&l, &s)) in levels.iter().zip(&upper_start).enumerate() {
            if usize::from(l) > MAX_LEVEL || s as usize != lists {
                return Err(format!("node {i} has a bad level or list start"));
            }
            lists += usize::from(l);
        }
        if lists * (m + 1) != upper_words {
            return Err("the upper lists do not match the levels".into());
        }
        // Every list's count fits it and every neighbour is a node.
        let ok = |list: &[u32], cap: usize| {
            let c = list[0] as usize;
            c <= cap && list[1..=c].iter().all(|&id| (id as usize) < n)
        };
        if !layer0.chunks_exact(2 * m + 1).all(|l| ok(l, 2 * m))
            || !upper.chunks_exact(m + 1).all(|l| ok(l, m))
        {
            return Err("a neighbour list is out of range".into());
        }
        if n > 0 && (entry >= n || usize::from(levels[entry]) != top) {
            return Err("bad entry node".into());
        }
        if rows.len() < n * dim {
            return Err(format!("{n} nodes, vectors for {}", rows.len() / dim));
        }
        let atomics = |v: Vec<u32>| v.into_iter().map(AtomicU32::new).collect();
        let mut graph = Self {
            dim,
            params,
            levels,
            layer0: atomics(layer0),
            upper: atomics(upper),
            upper_start,
            entry: entry as u32,
            top: if n > 0 { top } else { 0 },
            dot: pick_dot(),
            sq,
            coded: coded == 1,
            dups: Duplicates::default(),
        };
        graph.restore_aliases(rows);
        Ok(graph)
    }
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

    /// `count` words, then the padding to the next section.
    fn u32s(&mut self, count: usize) -> Result<Vec<u32>, String> {
        let raw = self.take(count.checked_mul(4).ok_or("section too long")?)?;
        let words = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .collect();
        self.align()?;
        Ok(words)
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
    fn a_graph_read_back_answers_exactly_as_before_and_damage_is_refused() {
        let dim = 70; // two code lines, the second partly padding
        let params = HnswParams::default();
        let base = rows(2000, dim);
        for coded in [false, true] {
            let built = GraphIndex::build_with(&base, dim, params, coded).unwrap();
            let bytes = built.graph.to_bytes();
            let back = Graph::from_bytes(&bytes, dim, params, &built.vectors).unwrap();
            assert_eq!(back.to_bytes(), bytes, "coded {coded}");
            for q in rows(20, dim).chunks_exact(dim) {
                assert_eq!(
                    back.search(&built.vectors, q, 10, 40, None),
                    built.graph.search(&built.vectors, q, 10, 40, None)
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
                    Graph::from_bytes(&bytes[..cut], dim, params, &built.vectors).is_err(),
                    "cut {cut}"
                );
            }
            assert!(Graph::from_bytes(&bytes, dim + 1, params, &built.vectors).is_err());
            let other = HnswParams { m: 12, ..params };
            assert!(Graph::from_bytes(&bytes, dim, other, &built.vectors).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Graph::from_bytes(&longer, dim, params, &built.vectors).is_err());
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
            Graph::from_bytes(&bad, dim, params, &built.vectors).is_err(),
            "id"
        );
        let mut bad = bytes.clone();
        bad[first_list..first_list + 4].copy_from_slice(&33u32.to_le_bytes());
        assert!(
            Graph::from_bytes(&bad, dim, params, &built.vectors).is_err(),
            "count"
        );
        let mut bad = bytes;
        bad[64] = 40;
        assert!(
            Graph::from_bytes(&bad, dim, params, &built.vectors).is_err(),
            "level"
        );
        // An empty graph round-trips.
        let empty = Graph::new(dim, params, true).unwrap();
        let back = Graph::from_bytes(&empty.to_bytes(), dim, params, &[]).unwrap();
        assert_eq!(back.len(), 0);
        assert!(back.search(&[], &base[..dim], 3, 16, None).is_empty());
    }
}
