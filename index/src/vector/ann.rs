//! The approximate index a collection searches: hearth's graph (the default) or `hnsw_rs`,
//! chosen by `index.ann`, behind one interface over the collection's own vectors.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::VectorIndex;
use super::flat::FlatIndex;
pub(crate) use super::graph::GONE;
use super::graph::Graph;
use super::hnsw::{HnswIndex, HnswParams};
use crate::error::Result;
use crate::pidset::PidSet;

/// Which approximate nearest-neighbour index collections use (`index.ann`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnKind {
    /// hearth's graph over the collection's vectors, traversed on 7-bit codes and rescored
    /// exactly (`graph.rs`, `sq8.rs`): at 100k and 1M vectors it answers 1.7-1.9x hnswlib's
    /// queries per second at the same recall (BENCHMARKS.md, "Vector index").
    #[default]
    Graph,
    /// The `hnsw_rs` crate, which keeps its own copy of the vectors (0.35x hnswlib's query
    /// rate at 100k); kept as the reference and for comparison.
    HnswRs,
}

impl fmt::Display for AnnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Graph => "graph",
            Self::HnswRs => "hnsw_rs",
        })
    }
}

/// A collection's approximate index. Ids are pids; the graph holds every pid below
/// [`Ann::len`] (tombstoned ones too, which searches filter out, until compaction), `hnsw_rs`
/// the pids that were live when inserted.
pub(crate) enum Ann {
    Graph(Graph),
    HnswRs(HnswIndex),
}

impl Ann {
    /// An empty index; `capacity` sizes `hnsw_rs`'s tables.
    pub(crate) fn new(
        kind: AnnKind,
        dim: usize,
        params: HnswParams,
        capacity: usize,
    ) -> Result<Self> {
        Ok(match kind {
            AnnKind::Graph => Self::Graph(Graph::new(dim, params, true)?),
            AnnKind::HnswRs => Self::HnswRs(HnswIndex::new(dim, params, capacity)?),
        })
    }

    pub(crate) fn kind(&self) -> AnnKind {
        match self {
            Self::Graph(_) => AnnKind::Graph,
            Self::HnswRs(_) => AnnKind::HnswRs,
        }
    }

    /// The graph's heap and mapped bytes (`None` for hnsw_rs).
    pub(crate) fn graph_bytes(&self) -> Option<(usize, usize)> {
        match self {
            Self::Graph(g) => Some((g.memory_bytes(), g.mapped_bytes())),
            Self::HnswRs(_) => None,
        }
    }

    /// Points held (for the graph: one past the highest pid).
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Graph(g) => g.len(),
            Self::HnswRs(h) => h.len(),
        }
    }

    /// Adds the pids of `pids` not in `tombstones` from `vectors`. The graph takes every pid
    /// from its length up to `pids.end` (tombstoned ones included, so that ids stay dense);
    /// `pids.start` must not be above its length.
    pub(crate) fn insert(&mut self, vectors: &FlatIndex, pids: Range<u32>, tombstones: &PidSet) {
        match self {
            Self::Graph(g) => {
                debug_assert!(pids.start as usize <= g.len());
                if pids.end as usize > g.len() {
                    g.insert(&vectors.rows()[..pids.end as usize * vectors.dim()]);
                }
            }
            Self::HnswRs(h) => {
                let items: Vec<(u32, &[f32])> = pids
                    .filter(|&p| !tombstones.contains(p))
                    .map(|p| (p, vectors.vector(p)))
                    .collect();
                h.insert_normalized(&items);
            }
        }
    }

    /// The (at most) `k` pids nearest to the unit query, among those `keep` allows, best
    /// first, with candidate list size `ef`.
    pub(crate) fn search(
        &self,
        vectors: &FlatIndex,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Vec<(u32, f32)> {
        match self {
            Self::Graph(g) => g.search(vectors.rows(), query, k, ef, keep),
            Self::HnswRs(h) => h.search_normalized(query, k, ef, keep),
        }
    }

    /// The index after a compaction: `remap[pid]` is the pid's new number or [`GONE`] (kept
    /// pids numbered `0..` in order), `vectors` the compacted vectors. The graph is repaired
    /// around the removed nodes (`graph/repair.rs`), or rebuilt when more than a quarter of
    /// them go; `hnsw_rs` is rebuilt.
    pub(crate) fn compacted(
        &self,
        remap: &[u32],
        vectors: &FlatIndex,
        params: HnswParams,
    ) -> Result<Self> {
        let n = vectors.len() as u32;
        match self {
            Self::Graph(g) => {
                let covered = remap.len().min(g.len());
                let mut out = g.compacted(&remap[..covered], vectors.rows());
                let start = out.len() as u32;
                // Pids the graph did not hold yet (none after a commit) are linked anew.
                if start < n {
                    out.insert(&vectors.rows()[..n as usize * vectors.dim()]);
                }
                Ok(Self::Graph(out))
            }
            Self::HnswRs(h) => {
                let mut out = Self::new(AnnKind::HnswRs, h.dim(), params, n as usize)?;
                out.insert(vectors, 0..n, &PidSet::new(n));
                Ok(out)
            }
        }
    }

    /// Sets the default candidate list size.
    pub(crate) fn set_ef(&mut self, ef: usize) {
        match self {
            Self::Graph(g) => g.set_ef(ef),
            Self::HnswRs(h) => h.set_ef(ef),
        }
    }
}
