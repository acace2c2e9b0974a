//! Fusing the dense and BM25 rankings.
//!
//! - [`Fusion::Weighted`] (the default, with `w = 0.6`): each list's scores are min-max
//!   normalised to `[0, 1]` (a list whose scores are all equal normalises to 1), then
//!   `score = w · dense + (1 − w) · bm25`; a list a chunk is missing from contributes 0.
//! - [`Fusion::Rrf`] (reciprocal rank fusion):
//!   `score = 2 · (w / (k + rank_dense) + (1 − w) / (k + rank_bm25))` over the lists a chunk
//!   appears in, ranks from 1; `w = 0.5` is classic RRF (`Σ 1 / (k + rank)`). Needs no score
//!   calibration, which dense cosines and BM25 scores do not share; `w` lets the stronger
//!   ranker lead.
//!
//! In hybrid mode each side contributes `max(4 · top_k, 50)` candidates
//! ([`hybrid_candidates`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// Which retrieval runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Vector similarity only (needs a query vector).
    Dense,
    /// BM25 over the chunk text only.
    Bm25,
    /// Both, fused. The default.
    #[default]
    Hybrid,
}

impl SearchMode {
    /// The lowercase name: `dense`, `bm25` or `hybrid`.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Dense => "dense",
            SearchMode::Bm25 => "bm25",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for SearchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SearchMode {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(SearchMode::Dense),
            "bm25" => Ok(SearchMode::Bm25),
            "hybrid" => Ok(SearchMode::Hybrid),
            other => Err(IndexError::InvalidInput(format!(
                "unknown search mode {other:?}: use dense, bm25 or hybrid"
            ))),
        }
    }
}

/// How hybrid search combines the two rankings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k` (by default [`Fusion::DEFAULT_RRF_K`]), the
    /// lists weighted `w` (dense) and `1 − w` (BM25).
    Rrf {
        /// The rank offset; larger values flatten the head of each list. Finite, ≥ 0.
        k: f32,
        /// Weight of the dense list, in `[0, 1]`; 0.5 weighs both lists alike.
        dense_weight: f32,
    },
    /// Weighted sum of min-max normalised scores.
    Weighted {
        /// Weight of the dense score, in `[0, 1]`; BM25 gets `1 − dense_weight`.
        dense_weight: f32,
    },
}

/// The fusion hearth runs when nothing else is asked for: weighted, 0.6 dense / 0.4 BM25. On
/// hearth's labelled retrieval set it beats both sides alone, where RRF trails dense
/// (BENCHMARKS.md). `IndexConfig`'s defaults are this value, so there is one default.
impl Default for Fusion {
    fn default() -> Self {
        Fusion::Weighted { dense_weight: 0.6 }
    }
}

impl Fusion {
    /// RRF's rank constant when none is configured: the usual 60.
    pub const DEFAULT_RRF_K: f32 = 60.0;

    /// Checks the parameter ranges.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Fusion::Rrf { k, .. } if !(k.is_finite() && k >= 0.0) => Err(IndexError::InvalidInput(
                format!("rrf k must be finite and >= 0, got {k}"),
            )),
            Fusion::Rrf { dense_weight, .. } | Fusion::Weighted { dense_weight }
                if !(0.0..=1.0).contains(&dense_weight) =>
            {
                Err(IndexError::InvalidInput(format!(
                    "dense_weight must be between 0 and 1, got {dense_weight}"
                )))
            }
            Fusion::Rrf { .. } | Fusion::Weighted { .. } => Ok(()),
        }
    }
}

/// Candidates each side contributes to a hybrid search for `top_k` results.
pub(crate) fn hybrid_candidates(top_k: usize) -> usize {
    (4 * top_k).max(50)
}

/// A fused candidate: its id, fused score and, per list, its `(rank, score)` (ranks from 1).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fused {
    pub id: u32,
    pub score: f32,
    pub dense: Option<(u32, f32)>,
    pub bm25: Option<(u32, f32)>,
}

/// Fuses two rankings (each best first, ids unique within a list). The output is in no
/// particular order; the caller sorts with its own tie-break.
pub(crate) fn fuse(dense: &[(u32, f32)], bm25: &[(u32, f32)], fusion: Fusion) -> Vec<Fused> {
    let mut by_id: HashMap<u32, Fused> = HashMap::with_capacity(dense.len() + bm25.len());
    for (i, &(id, score)) in dense.iter().enumerate() {
        let entry = by_id.entry(id).or_insert_with(|| empty(id));
        entry.dense = Some((i as u32 + 1, score));
    }
    for (i, &(id, score)) in bm25.iter().enumerate() {
        let entry = by_id.entry(id).or_insert_with(|| empty(id));
        entry.bm25 = Some((i as u32 + 1, score));
    }
    let dense_range = min_max(dense);
    let bm25_range = min_max(bm25);
    let mut out: Vec<Fused> = by_id.into_values().collect();
    for f in &mut out {
        f.score = match fusion {
            Fusion::Rrf { k, dense_weight } => {
                let rrf = |entry: Option<(u32, f32)>| {
                    entry.map_or(0.0, |(rank, _)| 1.0 / (k + rank as f32))
                };
                2.0 * (dense_weight * rrf(f.dense) + (1.0 - dense_weight) * rrf(f.bm25))
            }
            Fusion::Weighted { dense_weight } => {
                let norm = |entry: Option<(u32, f32)>, (lo, hi): (f32, f32)| {
                    entry.map_or(
                        0.0,
                        |(_, s)| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 },
                    )
                };
                dense_weight * norm(f.dense, dense_range)
                    + (1.0 - dense_weight) * norm(f.bm25, bm25_range)
            }
        };
    }
    out
}

fn empty(id: u32) -> Fused {
    Fused {
        id,
        score: 0.0,
        dense: None,
        bm25: None,
    }
}

fn min_max(list: &[(u32, f32)]) -> (f32, f32) {
    list.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(_, s)| {
            (lo.min(s), hi.max(s))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_id(fused: &[Fused], id: u32) -> &Fused {
        fused.iter().find(|f| f.id == id).expect("id present")
    }

    #[test]
    fn rrf_sums_reciprocal_ranks() {
        let dense = [(1, 0.9), (2, 0.8), (3, 0.7)];
        let bm25 = [(3, 12.0), (4, 3.0)];
        let classic = Fusion::Rrf {
            k: 60.0,
            dense_weight: 0.5,
        };
        let fused = fuse(&dense, &bm25, classic);
        assert_eq!(fused.len(), 4);
        let f3 = by_id(&fused, 3);
        assert!((f3.score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert_eq!(f3.dense, Some((3, 0.7)));
        assert_eq!(f3.bm25, Some((1, 12.0)));
        assert!((by_id(&fused, 1).score - 1.0 / 61.0).abs() < 1e-7);
        assert!((by_id(&fused, 4).score - 1.0 / 62.0).abs() < 1e-7);
        assert_eq!(by_id(&fused, 4).dense, None);
        // Being in both lists beats topping one.
        assert!(f3.score > by_id(&fused, 1).score);
        let k0 = fuse(
            &dense,
            &[],
            Fusion::Rrf {
                k: 0.0,
                dense_weight: 0.5,
            },
        );
        assert!((by_id(&k0, 2).score - 0.5).abs() < 1e-7);
        // Weighting the dense list: equal ranks no longer tie.
        let leaning = fuse(
            &dense,
            &bm25,
            Fusion::Rrf {
                k: 60.0,
                dense_weight: 0.9,
            },
        );
        assert!((by_id(&leaning, 1).score - 1.8 / 61.0).abs() < 1e-7);
        assert!((by_id(&fused, 2).score - by_id(&fused, 4).score).abs() < 1e-9);
        assert!((by_id(&leaning, 4).score - 0.2 / 62.0).abs() < 1e-7);
        assert!(by_id(&leaning, 2).score > by_id(&leaning, 4).score);
    }

    #[test]
    fn weighted_normalises_each_list_to_unit_range() {
        let dense = [(1, 0.9), (2, 0.5), (3, 0.1)];
        let bm25 = [(3, 20.0), (1, 10.0), (5, 0.0)];
        let fused = fuse(&dense, &bm25, Fusion::Weighted { dense_weight: 0.25 });
        // id 1: dense 1.0, bm25 0.5 -> 0.25 + 0.375
        assert!((by_id(&fused, 1).score - 0.625).abs() < 1e-6);
        // id 2: dense 0.5, bm25 missing -> 0.125
        assert!((by_id(&fused, 2).score - 0.125).abs() < 1e-6);
        // id 3: dense 0.0, bm25 1.0 -> 0.75
        assert!((by_id(&fused, 3).score - 0.75).abs() < 1e-6);
        // id 5: bm25 0.0 -> 0
        assert!(by_id(&fused, 5).score.abs() < 1e-6);
        // A single-element (or constant) list normalises to 1.
        let one = fuse(&[(9, 0.3)], &[], Fusion::Weighted { dense_weight: 1.0 });
        assert!((one[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn modes_parse_and_fusion_validates() {
        assert_eq!("bm25".parse::<SearchMode>().unwrap(), SearchMode::Bm25);
        assert_eq!(
            serde_json::from_str::<SearchMode>("\"dense\"").unwrap(),
            SearchMode::Dense
        );
        assert!("BM25".parse::<SearchMode>().is_err());
        assert!(
            Fusion::Rrf {
                k: -1.0,
                dense_weight: 0.5
            }
            .validate()
            .is_err()
        );
        assert!(
            Fusion::Rrf {
                k: 60.0,
                dense_weight: -0.1
            }
            .validate()
            .is_err()
        );
        assert!(Fusion::Weighted { dense_weight: 1.5 }.validate().is_err());
        assert!(Fusion::default().validate().is_ok());
        assert_eq!(Fusion::default(), Fusion::Weighted { dense_weight: 0.6 });
        let f: Fusion =
            serde_json::from_str(r#"{"method":"weighted","dense_weight":0.7}"#).unwrap();
        assert_eq!(f, Fusion::Weighted { dense_weight: 0.7 });
        assert_eq!(hybrid_candidates(5), 50);
        assert_eq!(hybrid_candidates(100), 400);
    }
}
