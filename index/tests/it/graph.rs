//! Properties of hearth's graph (`GraphIndex`) on generated inputs: whatever the sizes, widths,
//! batches, filters and removals, a search returns distinct, allowed ids with their exact
//! cosines, best first; with a candidate list as large as the graph it finds what an exact
//! scan finds; and at ordinary settings its recall stays near `hnsw_rs`'s on the same vectors.

use proptest::prelude::*;

use hearth_index::{FlatIndex, GraphIndex, HnswIndex, HnswParams, VectorIndex};

/// Unit-norm rows: `n` of width `dim` around `clusters` centres, from `seed`.
fn rows(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let centres: Vec<f32> = (0..clusters * dim).map(|_| next()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[(i % clusters) * dim..(i % clusters + 1) * dim];
        let row: Vec<f32> = c.iter().map(|x| x + 0.7 * next()).collect();
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        out.extend(row.iter().map(|x| x / norm));
    }
    out
}

/// Runs `f` (a build) on one thread: the graph, and so every figure, is then the same on
/// every run.
fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

fn params(m: usize) -> HnswParams {
    HnswParams {
        m,
        ef_construction: 64,
        ef_search: 32,
    }
}

/// Checks one answer against the exact scan of the allowed rows; returns how many of the
/// exact top-`k` it matches, by score (equal vectors tie, and either id is right).
fn check(
    got: &[(u32, f32)],
    flat: &FlatIndex,
    q: &[f32],
    k: usize,
    keep: &(dyn Fn(u32) -> bool + Sync),
) -> Result<usize, TestCaseError> {
    let exact = flat.nearest(q, k, Some(keep)).unwrap();
    prop_assert!(got.len() <= k);
    let mut seen = std::collections::HashSet::new();
    for (i, &(id, score)) in got.iter().enumerate() {
        prop_assert!((id as usize) < flat.len(), "id {id} out of range");
        prop_assert!(keep(id), "id {id} is not allowed");
        prop_assert!(seen.insert(id), "id {id} twice");
        let want = flat.nearest(q, flat.len(), Some(&|j| j == id)).unwrap()[0].1;
        prop_assert!(
            (score - want).abs() < 1e-4,
            "score {score} for {id}, exact {want}"
        );
        if i > 0 {
            prop_assert!(got[i - 1].1 >= score, "not best first: {got:?}");
        }
    }
    Ok(exact
        .iter()
        .zip(got)
        .filter(|(e, g)| g.1 >= e.1 - 1e-5)
        .count())
}

proptest! {
    // A fixed seed and builds on one thread, so that the suite gives the same verdict on
    // every run; PROPTEST_RNG_SEED explores other inputs.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            ProptestConfig::default().rng_seed
        } else {
            proptest::test_runner::RngSeed::Fixed(0x6865_6172_7468)
        },
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_answer_is_allowed_exactly_scored_and_exhaustive_at_full_ef(
        n in 1usize..300,
        dim in 1usize..40,
        clusters in 1usize..6,
        m in 2usize..12,
        seed in any::<u64>(),
        batches in proptest::collection::vec(1usize..120, 1..4),
        coded in any::<bool>(),
        every in 1u32..5,
        k in 1usize..12,
        removed_every in 0u32..6,
    ) {
        let base = rows(n, dim, clusters, seed);
        let mut graph = GraphIndex::empty(dim, params(m), coded).unwrap();
        // grown in the generated batches, then the rest
        let mut at = 0;
        for b in batches.into_iter().chain(std::iter::once(n)) {
            let end = (at + b).min(n);
            if end > at {
                let got = one_thread(|| graph.insert(&base[at * dim..end * dim])).unwrap();
                prop_assert_eq!(got, at as u32..end as u32);
                at = end;
            }
        }
        prop_assert_eq!(graph.len(), n);
        // and, sometimes, compacted: every `removed_every`-th id removed and the graph repaired
        let (graph, base) = if removed_every >= 2 {
            let gone = |i: u32| i % removed_every == 1;
            let kept: Vec<f32> = base
                .chunks_exact(dim)
                .enumerate()
                .filter(|(i, _)| !gone(*i as u32))
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            (graph.without(&gone), kept)
        } else {
            (graph, base)
        };
        let n = base.len() / dim;
        prop_assert_eq!(graph.len(), n);
        let flat = FlatIndex::build(&base, dim).unwrap();
        let keep = move |i: u32| i.is_multiple_of(every);
        let queries = rows(8, dim, clusters, seed ^ 0x5eed);
        let (mut found, mut wanted) = (0, 0);
        for q in queries.chunks_exact(dim) {
            let all = |_: u32| true;
            let got = graph.search(q, k, n.max(1)).unwrap();
            found += check(&got, &flat, q, k, &all)?;
            wanted += k.min(n);
            let got = graph.search_where(q, k, n.max(1), &keep).unwrap();
            found += check(&got, &flat, q, k, &keep)?;
            wanted += k.min(n.div_ceil(every as usize));
        }
        // ef as large as the graph walks all of it that is reachable: the exact answer,
        // up to a node the pruning left unreachable (a few in a thousand at most).
        prop_assert!(found * 100 >= wanted * 97, "{found} of {wanted} exact hits");
    }

    #[test]
    fn recall_stays_near_hnsw_rs_on_the_same_vectors(
        seed in any::<u64>(),
        dim in 8usize..64,
        clusters in 2usize..20,
    ) {
        let n = 2000;
        let base = rows(n, dim, clusters, seed);
        let queries = rows(100, dim, clusters, seed.rotate_left(17));
        let flat = FlatIndex::build(&base, dim).unwrap();
        let ours = one_thread(|| GraphIndex::build_quantized(&base, dim, params(12))).unwrap();
        let theirs = one_thread(|| HnswIndex::build(&base, dim, params(12))).unwrap();
        let recall = |search: &dyn Fn(&[f32]) -> Vec<u32>| {
            let mut hit = 0;
            for q in queries.chunks_exact(dim) {
                let want: Vec<u32> = flat.search(q, 10).unwrap().iter().map(|p| p.0).collect();
                let got = search(q);
                hit += want.iter().filter(|w| got.contains(w)).count();
            }
            hit as f64 / (10 * queries.len() / dim) as f64
        };
        let ids = |v: Vec<(u32, f32)>| v.into_iter().map(|p| p.0).collect::<Vec<u32>>();
        // At ef 128, where both are meant to be used. Over the 48 fixed cases, built on one
        // thread: ours minus hnsw_rs from -0.013 to +0.168 (some generated sets are hard: two
        // clusters of near-uniform noise, where hnsw_rs fell to 0.775); parallel builds of one
        // set were seen 0.2 apart, hence the single thread.
        let a = recall(&|q| ids(ours.search(q, 10, 128).unwrap()));
        let b = recall(&|q| ids(theirs.search(q, 10, 128).unwrap()));
        prop_assert!(a >= b - 0.03, "ours {a}, hnsw_rs {b} at ef 128");
    }
}
