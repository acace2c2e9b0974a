//! Approximate search with `hnsw_rs` (`Hnsw<f32, DistDot>` on normalised vectors).
//!
//! Pitfalls handled here (see FIELD_NOTES.md):
//! - `DistDot` asserts `dot <= 1.000002`; rounding can push the self-similarity of a unit
//!   vector past that. Every vector handed to `hnsw_rs` (inserted or queried) is therefore scaled
//!   by [`SCALE`], a hair under 1, which keeps all dot products safely below 1 without changing
//!   the ranking. Reported scores are corrected back to cosines.
//! - `hnsw_rs` calls `std::process::exit` for `M > 256`: [`HnswParams::validate`] refuses it.
//! - A filtered search can leak its entry point into the results even when the filter rejects
//!   it: results are filtered again here, and one extra neighbour is requested.
//! - Loading a dump asserts on malformed files: the caller verifies checksums first, and the
//!   load also runs under `catch_unwind`.
//! - Bit-identical vectors (boilerplate chunks) share one graph node; the other ids are
//!   aliases expanded into results (`dedup.rs` explains why).
//! - `HnswIo::load_hnsw` returns a graph that borrows the `HnswIo`. Each load leaks one small
//!   `HnswIo` (`Box::leak`, a path and a few counters, no vector data since mmap is off) so the
//!   graph can be `'static`. Loads happen once per collection open, so the leak is bounded by
//!   the number of opens.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use hnsw_rs::api::AnnT;
use hnsw_rs::prelude::{DataId, DistDot, FilterT, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use super::dedup::Duplicates;
use super::flat::check_matrix;
use super::{VectorIndex, normalized, prepare_query};
use crate::error::{IndexError, Result};
use crate::ids::sha256_file;

/// Factor applied to every vector given to `hnsw_rs`, so that no dot product reaches the
/// `1.000002` its distance asserts on.
const SCALE: f32 = 1.0 - 1e-5;

/// Below this many points a batch is inserted on the calling thread.
const PARALLEL_INSERT_MIN: usize = 64;

/// Number of layers `hnsw_rs` may use (its maximum).
const MAX_LAYERS: usize = 16;

/// HNSW graph parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (`M`), 2–256.
    pub m: usize,
    /// Candidate list size while building, 1–10 000.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to `k` when smaller), 1–10 000.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

impl HnswParams {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(IndexError::InvalidInput(format!(
                    "{name} must be between {lo} and {hi}, got {v}"
                )))
            }
        };
        check("hnsw_m", self.m, 2, 256)?;
        check("ef_construction", self.ef_construction, 1, 10_000)?;
        check("ef_search", self.ef_search, 1, 10_000)
    }
}

/// Where a dump lives and how to recognise it intact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HnswDump {
    /// Basename: the files are `{basename}.hnsw.graph` and `{basename}.hnsw.data`.
    pub basename: String,
    /// Ids covered: graph nodes plus aliases.
    pub points: usize,
    /// Lowercase hex SHA-256 of the graph file.
    pub graph_sha256: String,
    /// Lowercase hex SHA-256 of the data file.
    pub data_sha256: String,
    /// Lowercase hex SHA-256 of `{basename}.hnsw.alias`, present when some ids are aliases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases_sha256: Option<String>,
}

impl HnswDump {
    /// The graph and data file names of a dump.
    pub(crate) fn file_names(basename: &str) -> [String; 2] {
        [
            format!("{basename}.hnsw.graph"),
            format!("{basename}.hnsw.data"),
        ]
    }

    /// The alias table's file name.
    pub(crate) fn alias_file_name(basename: &str) -> String {
        format!("{basename}.hnsw.alias")
    }

    /// Every file this dump consists of.
    pub(crate) fn files(&self) -> Vec<String> {
        let mut files = Self::file_names(&self.basename).to_vec();
        if self.aliases_sha256.is_some() {
            files.push(Self::alias_file_name(&self.basename));
        }
        files
    }
}

/// An HNSW graph over normalised vectors with `u32` ids.
///
/// Insertion takes `&mut self`; searches take `&self` and may run concurrently.
pub struct HnswIndex {
    hnsw: Hnsw<'static, f32, DistDot>,
    dim: usize,
    ef_search: usize,
    dups: Duplicates,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("dim", &self.dim)
            .field("nodes", &self.hnsw.get_nb_point())
            .field("aliases", &self.dups.len())
            .field("m", &self.hnsw.get_max_nb_connection())
            .field("ef_construction", &self.hnsw.get_ef_construction())
            .field("ef_search", &self.ef_search)
            .finish()
    }
}

impl HnswIndex {
    /// An empty graph for vectors of width `dim`; `capacity` is a sizing hint.
    pub fn new(dim: usize, params: HnswParams, capacity: usize) -> Result<Self> {
        params.validate()?;
        if dim == 0 {
            return Err(IndexError::InvalidInput("dim must be positive".into()));
        }
        let hnsw = Hnsw::new(
            params.m,
            capacity.max(1),
            MAX_LAYERS,
            params.ef_construction,
            DistDot,
        );
        Ok(Self {
            hnsw,
            dim,
            ef_search: params.ef_search,
            dups: Duplicates::default(),
        })
    }

    /// Builds a graph from a row-major matrix; row `i` gets id `i`. Rows are normalised (a zero
    /// or non-finite row is [`IndexError::InvalidInput`]) and inserted in parallel (rayon).
    pub fn build(vectors: &[f32], dim: usize, params: HnswParams) -> Result<Self> {
        check_matrix(vectors, dim)?;
        let mut index = Self::new(dim, params, vectors.len() / dim)?;
        let rows = vectors
            .chunks_exact(dim)
            .map(normalized)
            .collect::<Result<Vec<_>>>()?;
        let items: Vec<(u32, &[f32])> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v.as_slice()))
            .collect();
        index.insert_normalized(&items);
        Ok(index)
    }

    /// Inserts already normalised vectors under the given ids (in parallel for large batches).
    /// A vector identical to one already present becomes an alias of its node.
    pub(crate) fn insert_normalized(&mut self, items: &[(u32, &[f32])]) {
        let mut scaled = Vec::with_capacity(items.len() * self.dim);
        let mut ids = Vec::with_capacity(items.len());
        let mut row = Vec::with_capacity(self.dim);
        for (id, v) in items {
            debug_assert_eq!(v.len(), self.dim);
            row.clear();
            row.extend(v.iter().map(|x| x * SCALE));
            if self.dups.admit(*id, &row) {
                scaled.extend_from_slice(&row);
                ids.push(*id as usize);
            }
        }
        if ids.is_empty() {
            return;
        }
        let batch: Vec<(&[f32], usize)> = scaled.chunks_exact(self.dim).zip(ids).collect();
        if batch.len() < PARALLEL_INSERT_MIN {
            for item in batch {
                self.hnsw.insert_slice(item);
            }
        } else {
            self.hnsw.parallel_insert_slice(&batch);
        }
    }

    /// The (at most) `k` nearest vectors to `query` (any norm) as `(id, cosine)`, best first,
    /// searching with candidate list size `ef` (raised to `k` when smaller).
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<(u32, f32)>> {
        let q = prepare_query(query, self.dim)?;
        Ok(self.search_normalized(&q, k, ef, None))
    }

    /// Like [`Self::search`] for a normalised query, among ids `keep` accepts. The filter runs
    /// inside the graph search. Scores are cosines up to the graph's float rounding; callers
    /// that need exact scores rescore from their own vectors.
    pub(crate) fn search_normalized(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Vec<(u32, f32)> {
        if k == 0 || self.hnsw.get_nb_point() == 0 {
            return Vec::new();
        }
        let q: Vec<f32> = query.iter().map(|x| x * SCALE).collect();
        let to_cosine = |d: f32| (1.0 - d) / (SCALE * SCALE);
        // `hnsw_rs` needs ef >= 2 for a filtered search to keep a non-empty result heap.
        let ef = ef.max(k + 1).max(2);
        let found = match keep {
            None => self.hnsw.search_filter(&q, k, ef, None),
            Some(keep) => {
                // A node passes when it or one of its aliases is kept.
                let filter = |id: &DataId| {
                    u32::try_from(*id).is_ok_and(|node| self.dups.accepts(node, keep))
                };
                self.hnsw
                    .search_filter(&q, k + 1, ef, Some(&filter as &dyn FilterT))
            }
        };
        let kept = |id: &u32| keep.is_none_or(|keep| keep(*id));
        let mut out = Vec::with_capacity(k);
        for n in found {
            let Ok(node) = u32::try_from(n.d_id) else {
                continue;
            };
            let score = to_cosine(n.distance);
            let ids = std::iter::once(node).chain(self.dups.of(node).iter().copied());
            out.extend(ids.filter(kept).map(|id| (id, score)));
            if out.len() >= k {
                break;
            }
        }
        out.truncate(k);
        out
    }

    /// Sets the default candidate list size used by [`VectorIndex::nearest`].
    pub fn set_ef(&mut self, ef: usize) {
        self.ef_search = ef.max(1);
    }

    /// The default candidate list size.
    pub fn ef(&self) -> usize {
        self.ef_search
    }

    /// Writes the graph and its vectors as `{dir}/{basename}.hnsw.{graph,data}`, fsyncs both
    /// and returns their description (checksums included).
    pub(crate) fn dump(&self, dir: &Path, basename: &str) -> Result<HnswDump> {
        let io_err = |detail: String| IndexError::Io {
            path: dir.join(basename),
            source: std::io::Error::other(detail),
        };
        let written = catch_unwind(AssertUnwindSafe(|| self.hnsw.file_dump(dir, basename)))
            .map_err(|_| io_err("hnsw_rs panicked while dumping".into()))?
            .map_err(|e| io_err(format!("hnsw_rs dump failed: {e}")))?;
        if written != basename {
            return Err(io_err(format!(
                "hnsw_rs wrote the dump under {written:?} instead of {basename:?}"
            )));
        }
        let [graph, data] = HnswDump::file_names(basename);
        let mut sums = Vec::with_capacity(2);
        for name in [&graph, &data] {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|source| IndexError::Io {
                path: path.clone(),
                source,
            })?;
            file.sync_all().map_err(|source| IndexError::Io {
                path: path.clone(),
                source,
            })?;
            sums.push(sha256_file(&path)?);
        }
        let data_sha256 = sums.pop().unwrap_or_default();
        let graph_sha256 = sums.pop().unwrap_or_default();
        let aliases_sha256 = if self.dups.is_empty() {
            None
        } else {
            let path = dir.join(HnswDump::alias_file_name(basename));
            self.dups.write(&path)?;
            Some(sha256_file(&path)?)
        };
        Ok(HnswDump {
            basename: basename.to_owned(),
            points: self.len(),
            graph_sha256,
            data_sha256,
            aliases_sha256,
        })
    }

    /// Loads a dump written by [`Self::dump`] after checking both checksums and the point
    /// count. Any mismatch or loader failure is [`IndexError::Corrupt`]; the caller rebuilds.
    pub(crate) fn load(
        dir: &Path,
        dump: &HnswDump,
        dim: usize,
        params: HnswParams,
    ) -> Result<Self> {
        params.validate()?;
        let corrupt = |detail: String| IndexError::Corrupt {
            key: dir.join(&dump.basename).display().to_string(),
            detail,
        };
        let [graph, data] = HnswDump::file_names(&dump.basename);
        let alias = HnswDump::alias_file_name(&dump.basename);
        let checks = [
            (&graph, Some(&dump.graph_sha256)),
            (&data, Some(&dump.data_sha256)),
        ];
        let alias_check = dump.aliases_sha256.as_ref().map(|sum| (&alias, Some(sum)));
        for (name, want) in checks.into_iter().chain(alias_check) {
            let got = sha256_file(&dir.join(name))?;
            if Some(&got) != want {
                return Err(corrupt(format!("checksum mismatch in {name}")));
            }
        }
        let hnsw: Hnsw<'static, f32, DistDot> = catch_unwind(AssertUnwindSafe(|| {
            // One small HnswIo leaked per load, so the graph can be 'static (module doc).
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, &dump.basename)));
            io.load_hnsw::<f32, DistDot>()
        }))
        .map_err(|_| corrupt("hnsw_rs panicked while loading".into()))?
        .map_err(|e| corrupt(format!("hnsw_rs could not load: {e}")))?;
        let nodes = hnsw.get_nb_point();
        let points = hnsw.get_point_indexation();
        // The iterator panics on an empty graph (no entry point), hence the guard.
        let graph: Vec<_> = if nodes > 0 {
            points.into_iter().collect()
        } else {
            Vec::new()
        };
        let alias_path = dump.aliases_sha256.as_ref().map(|_| dir.join(&alias));
        let dups = Duplicates::read(
            alias_path.as_deref(),
            graph
                .iter()
                .filter_map(|p| Some((u32::try_from(p.get_origin_id()).ok()?, p.get_v()))),
        )?;
        drop(graph);
        if nodes + dups.len() != dump.points {
            return Err(corrupt(format!(
                "dump holds {} points, expected {}",
                nodes + dups.len(),
                dump.points
            )));
        }
        if hnsw.get_nb_point() > 0 && hnsw.get_point_indexation().get_data_dimension() != dim {
            return Err(corrupt("dump has another vector width".into()));
        }
        if usize::from(hnsw.get_max_nb_connection()) != params.m
            || hnsw.get_ef_construction() != params.ef_construction
        {
            return Err(corrupt("dump was built with other parameters".into()));
        }
        Ok(Self {
            hnsw,
            dim,
            ef_search: params.ef_search,
            dups,
        })
    }
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.hnsw.get_nb_point() + self.dups.len()
    }

    fn nearest(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Result<Vec<(u32, f32)>> {
        let q = prepare_query(query, self.dim)?;
        Ok(self.search_normalized(&q, k, self.ef_search, keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<f32> {
        // 200 pseudo-random 8-d vectors; rows 49, 99, 149, 199 duplicate their predecessor.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut m: Vec<f32> = Vec::new();
        for i in 0..200usize {
            if i % 50 == 49 {
                let prev = m[(i - 1) * 8..i * 8].to_vec();
                m.extend(prev);
                continue;
            }
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                m.push((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
            }
        }
        m
    }

    #[test]
    fn finds_itself_and_survives_duplicates_and_dump_reload() {
        let m = grid();
        let params = HnswParams::default();
        let idx = HnswIndex::build(&m, 8, params).unwrap();
        assert_eq!(idx.len(), 200);
        let hits = idx.search(&m[80..88], 5, 64).unwrap();
        assert_eq!(hits[0].0, 10);
        assert!((hits[0].1 - 1.0).abs() < 1e-4, "{hits:?}");
        let even = idx
            .nearest(&m[80..88], 5, Some(&|id: u32| id % 2 == 1))
            .unwrap();
        assert_eq!(even.len(), 5);
        assert!(even.iter().all(|h| h.0 % 2 == 1));

        let dir = tempfile::tempdir().unwrap();
        let dump = idx.dump(dir.path(), "g1").unwrap();
        let back = HnswIndex::load(dir.path(), &dump, 8, params).unwrap();
        assert_eq!(back.len(), 200);
        assert_eq!(back.search(&m[80..88], 5, 64).unwrap()[0].0, 10);

        // A flipped byte is caught by the checksum instead of reaching hnsw_rs's asserts.
        let path = dir.path().join("g1.hnsw.graph");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            HnswIndex::load(dir.path(), &dump, 8, params),
            Err(IndexError::Corrupt { .. })
        ));
    }

    #[test]
    fn params_out_of_range_are_refused() {
        let bad = HnswParams {
            m: 300,
            ..HnswParams::default()
        };
        assert!(HnswIndex::new(4, bad, 10).is_err());
        assert!(HnswIndex::new(0, HnswParams::default(), 10).is_err());
    }
}
