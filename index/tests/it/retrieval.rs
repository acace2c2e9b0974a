//! The retrieval index: HNSW recall against exact search, filters, deletions, persistence,
//! recovery and compaction, on seeded random vectors.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use hearth_index::{
    Access, Analyzer, AnnKind, Chunk, ChunkId, CollectionIndex, Condition, DocId, Filter,
    FlatIndex, Fusion, Hit, HnswIndex, HnswParams, IndexError, IndexParams, IndexedDoc, MetaValue,
    Reader, SearchMode, SearchParams, SearchRequest, VectorIndex,
};

pub(crate) const DIM: usize = 32;

/// The reader of most tests: reads every document.
static EVERYTHING: LazyLock<Reader> = LazyLock::new(|| Reader::Everything);

/// xorshift64*: a tiny seeded generator, enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly normal (sum of four uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.866
    }

    fn unit(&mut self, dim: usize) -> Vec<f32> {
        normalise((0..dim).map(|_| self.normal()).collect())
    }

    /// A unit vector near one of `centers` (clustered, like real embeddings).
    fn clustered(&mut self, centers: &[Vec<f32>]) -> Vec<f32> {
        let c = &centers[(self.next_u64() % centers.len() as u64) as usize];
        let spread = 1.2 / (c.len() as f32).sqrt();
        normalise(c.iter().map(|x| x + spread * self.normal()).collect())
    }
}

fn normalise(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

pub(crate) fn params(dim: usize) -> IndexParams {
    IndexParams {
        dim,
        hnsw_m: 16,
        ef_construction: 100,
        ef_search: 64,
        analyzer: Analyzer::EnglishStem,
        ann: AnnKind::Graph,
    }
}

pub(crate) fn doc_id(i: usize) -> DocId {
    DocId::of_bytes(format!("document {i}").as_bytes())
}

/// Document `i` with `n` chunks; chunk `j` has text `text(i, j)` and a random vector.
pub(crate) fn make_doc(
    i: usize,
    n: usize,
    rng: &mut Rng,
    text: impl Fn(usize, usize) -> String,
) -> (IndexedDoc, Vec<Chunk>) {
    let id = doc_id(i);
    let mut metadata = BTreeMap::new();
    metadata.insert("n".to_owned(), MetaValue::Number(i as f64));
    metadata.insert("group".to_owned(), MetaValue::Text(format!("g{}", i % 100)));
    let doc = IndexedDoc {
        doc_id: id,
        source: format!("doc{i}.txt"),
        title: Some(format!("Document {i}")),
        metadata,
        access: Access::everyone(),
    };
    let chunks = (0..n)
        .map(|j| Chunk {
            doc_id: id,
            ordinal: j as u32,
            text: text(i, j),
            page_start: Some(j as u32 + 1),
            page_end: Some(j as u32 + 1),
            heading: vec![format!("Section {j}")],
            span_start: (j * 100) as u64,
            span_end: (j * 100 + 99) as u64,
            token_count: 8,
            embedding: Some(rng.unit(DIM)),
        })
        .collect();
    (doc, chunks)
}

/// Equal-length texts (8 tokens): `apple` appears (i + j) % 3 + 1 times in documents with
/// i % 5 == 0, so a one-term BM25 ranking depends only on term frequency.
pub(crate) fn text(i: usize, j: usize) -> String {
    let apples = if i.is_multiple_of(5) {
        (i + j) % 3 + 1
    } else {
        0
    };
    let mut words: Vec<String> = vec!["apple".to_owned(); apples];
    words.push(format!("topic{i}"));
    while words.len() < 8 {
        words.push(format!("filler{}x{}", i, words.len()));
    }
    words.join(" ")
}

/// A committed index of `docs` documents with 3 chunks each; returns the chunk vectors too.
pub(crate) fn build(
    dir: &Path,
    docs: usize,
    seed: u64,
) -> (CollectionIndex, Vec<(IndexedDoc, Vec<Chunk>)>) {
    let mut rng = Rng::new(seed);
    let mut index = CollectionIndex::open(dir, params(DIM)).unwrap();
    let mut all = Vec::new();
    for i in 0..docs {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        index.add(doc.clone(), &chunks).unwrap();
        all.push((doc, chunks));
    }
    index.commit().unwrap();
    (index, all)
}

fn request<'a>(
    mode: SearchMode,
    text: &'a str,
    vector: Option<&'a [f32]>,
    top_k: usize,
    filter: Option<&'a Filter>,
) -> SearchRequest<'a> {
    SearchRequest {
        text,
        vector,
        mode,
        top_k,
        filter,
        reader: &EVERYTHING,
        // Classic RRF, spelled out: these tests were written against it (it was once
        // `Fusion::default()`, which is now weighted fusion).
        fusion: Fusion::Rrf {
            k: Fusion::DEFAULT_RRF_K,
            dense_weight: 0.5,
        },
    }
}

fn ids(hits: &[Hit]) -> Vec<ChunkId> {
    hits.iter().map(|h| h.chunk.id()).collect()
}

fn docs_of(hits: &[Hit]) -> Vec<DocId> {
    hits.iter().map(|h| h.chunk.doc_id).collect()
}

/// A fixed set of searches covering every mode, with and without a filter.
pub(crate) fn probe(index: &CollectionIndex, seed: u64) -> Vec<(SearchMode, Vec<Hit>)> {
    let mut rng = Rng::new(seed);
    let filter = Filter::new(vec![Condition::Range {
        key: "n".into(),
        gt: None,
        gte: Some(10.0),
        lt: None,
        lte: None,
    }]);
    let mut out = Vec::new();
    for q in 0..4 {
        let v = rng.unit(DIM);
        let f = (q % 2 == 1).then_some(&filter);
        for mode in [SearchMode::Dense, SearchMode::Bm25, SearchMode::Hybrid] {
            let hits = index
                .search(&request(mode, "apple", Some(&v), 50, f))
                .unwrap();
            out.push((mode, hits));
        }
        let hits = index
            .search(&request(SearchMode::Bm25, "topic7 topic12", None, 5, f))
            .unwrap();
        out.push((SearchMode::Bm25, hits));
    }
    out
}

/// Same hits in the same order with the same scores.
pub(crate) fn assert_same(a: &[(SearchMode, Vec<Hit>)], b: &[(SearchMode, Vec<Hit>)]) {
    assert_same_ranking(a, b, true);
}

/// Same hits in the same order, same dense scores and ranks, same BM25 ranks; BM25 scores
/// too when `bm25_scores`.
fn assert_same_ranking(
    a: &[(SearchMode, Vec<Hit>)],
    b: &[(SearchMode, Vec<Hit>)],
    bm25_scores: bool,
) {
    assert_eq!(a.len(), b.len());
    for ((mode, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(ids(x), ids(y), "{mode}");
        for (h, g) in x.iter().zip(y) {
            let close = |p: f32, q: f32| (p - q).abs() <= 1e-5 * p.abs().max(1.0);
            if bm25_scores || *mode != SearchMode::Bm25 {
                assert!(close(h.score, g.score), "{mode}: {h:?} vs {g:?}");
            }
            assert_eq!(h.dense.map(|d| d.0), g.dense.map(|d| d.0));
            assert!(h.dense.zip(g.dense).is_none_or(|(p, q)| close(p.1, q.1)));
            assert_eq!(h.bm25.map(|d| d.0), g.bm25.map(|d| d.0));
            if bm25_scores {
                assert!(h.bm25.zip(g.bm25).is_none_or(|(p, q)| close(p.1, q.1)));
            }
            assert_eq!(h.chunk, g.chunk);
            assert_eq!(
                (&h.source, &h.title, &h.metadata),
                (&g.source, &g.title, &g.metadata)
            );
        }
    }
}

fn recall(found: &[(u32, f32)], truth: &[(u32, f32)]) -> f64 {
    let hits = truth
        .iter()
        .filter(|t| found.iter().any(|f| f.0 == t.0))
        .count();
    hits as f64 / truth.len().max(1) as f64
}

#[test]
fn hnsw_recall_at_10_matches_exact_search() {
    let (n, dim) = (5_000, 64);
    let mut rng = Rng::new(7);
    let centers: Vec<Vec<f32>> = (0..40).map(|_| rng.unit(dim)).collect();
    let data: Vec<f32> = (0..n).flat_map(|_| rng.clustered(&centers)).collect();
    let hnsw = HnswIndex::build(
        &data,
        dim,
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
        },
    )
    .unwrap();
    let flat = FlatIndex::build(&data, dim).unwrap();
    assert_eq!((hnsw.len(), flat.len()), (n, n));
    let mut total = 0.0;
    let queries = 200;
    for _ in 0..queries {
        let q = rng.clustered(&centers);
        let truth = flat.search(&q, 10).unwrap();
        let found = hnsw.search(&q, 10, 64).unwrap();
        total += recall(&found, &truth);
    }
    let r = total / queries as f64;
    eprintln!("hnsw recall@10 on {n} clustered {dim}-d vectors: {r:.4}");
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn duplicate_vectors_share_a_node_and_all_come_back() {
    // 100 exact copies of one vector (boilerplate chunks) among 200 random ones. As separate
    // graph nodes such copies form a clique that traps searches for the other vectors.
    for seed in 0..4 {
        let mut rng = Rng::new(seed);
        let base = rng.unit(384);
        let mut data = Vec::new();
        for i in 0..300 {
            data.extend(if i % 3 == 0 {
                base.clone()
            } else {
                rng.unit(384)
            });
        }
        let hnsw = HnswIndex::build(&data, 384, HnswParams::default()).unwrap();
        assert_eq!(hnsw.len(), 300);
        for i in 0..300 {
            let hits = hnsw.search(&data[i * 384..(i + 1) * 384], 10, 64).unwrap();
            assert!(
                (hits[0].1 - 1.0).abs() < 1e-3,
                "seed {seed}, row {i}: {:?}",
                hits[0]
            );
            if i % 3 != 0 {
                assert_eq!(hits[0].0, i as u32, "seed {seed}");
            }
        }
        let copies = hnsw.search(&base, 100, 64).unwrap();
        let mut ids: Vec<u32> = copies.iter().map(|h| h.0).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..300).step_by(3).collect::<Vec<u32>>(),
            "seed {seed}"
        );
    }

    // Through the collection index: 20 documents of 2 identical chunks among 40 others.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    let v = rng.unit(DIM);
    for i in 0..60 {
        let (doc, mut chunks) = make_doc(i, 2, &mut rng, |_, _| "same licence header".into());
        if i < 20 {
            for c in &mut chunks {
                c.embedding = Some(v.clone());
            }
        }
        index.add(doc, &chunks).unwrap();
    }
    index.commit().unwrap();
    force_hnsw(&mut index);
    let copies = |index: &CollectionIndex, filter: Option<&Filter>| {
        let hits = index
            .search(&request(SearchMode::Dense, "", Some(&v), 60, filter))
            .unwrap();
        let mut docs: Vec<DocId> = hits
            .iter()
            .filter(|h| (h.score - 1.0).abs() < 1e-5)
            .map(|h| h.chunk.doc_id)
            .collect();
        docs.sort_unstable();
        docs.dedup();
        docs
    };
    let mut want: Vec<DocId> = (0..20).map(doc_id).collect();
    want.sort_unstable();
    assert_eq!(copies(&index, None), want);
    // A filter that keeps only aliases (not the document holding the graph node) finds them.
    let only_5 = Filter::new(vec![Condition::DocIds(vec![doc_id(5)])]);
    assert_eq!(copies(&index, Some(&only_5)), vec![doc_id(5)]);

    // Deleting the document whose chunk is the graph node keeps its copies findable, also
    // after a commit and a reopen (the alias table is part of the HNSW dump).
    assert!(index.delete(&doc_id(0)).unwrap());
    want.retain(|d| *d != doc_id(0));
    assert_eq!(copies(&index, None), want);
    index.commit().unwrap();
    drop(index);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    force_hnsw(&mut index);
    assert_eq!(copies(&index, None), want);
    let hits = index
        .search(&request(SearchMode::Hybrid, "licence", Some(&v), 10, None))
        .unwrap();
    assert_eq!(hits.len(), 10);
    assert!((hits[0].dense.unwrap().1 - 1.0).abs() < 1e-5);
}

/// Makes every dense search go through the HNSW graph (no exact-scan shortcut).
fn force_hnsw(index: &mut CollectionIndex) {
    let p = index.search_params();
    index
        .set_search_params(SearchParams {
            exact_max_points: 0,
            exact_max_fraction: 0.0,
            ..p
        })
        .unwrap();
}

#[test]
fn selective_filters_still_fill_top_k_with_the_exact_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, all) = build(dir.path(), 1000, 11);
    // group g7 keeps 10 of 1000 documents: 1 %.
    let filter = Filter::new(vec![Condition::Eq {
        key: "group".into(),
        value: MetaValue::Text("g7".into()),
    }]);
    let kept: Vec<&Chunk> = all
        .iter()
        .filter(|(d, _)| d.metadata["group"] == MetaValue::Text("g7".into()))
        .flat_map(|(_, c)| c)
        .collect();
    assert_eq!(kept.len(), 30);
    let matrix: Vec<f32> = kept
        .iter()
        .flat_map(|c| c.embedding.clone().unwrap())
        .collect();
    let oracle = FlatIndex::build(&matrix, DIM).unwrap();

    let mut rng = Rng::new(99);
    for forced in [false, true] {
        if forced {
            force_hnsw(&mut index);
        }
        for _ in 0..5 {
            let q = rng.unit(DIM);
            let hits = index
                .search(&request(SearchMode::Dense, "", Some(&q), 10, Some(&filter)))
                .unwrap();
            let expected: Vec<ChunkId> = oracle
                .search(&q, 10)
                .unwrap()
                .iter()
                .map(|(i, _)| kept[*i as usize].id())
                .collect();
            assert_eq!(ids(&hits), expected, "forced hnsw: {forced}");
            assert!(
                hits.iter()
                    .all(|h| h.metadata["group"] == MetaValue::Text("g7".into()))
            );
        }
        let bm25 = index
            .search(&request(
                SearchMode::Bm25,
                "topic7 topic107 topic207 topic307 topic407 topic8",
                None,
                10,
                Some(&filter),
            ))
            .unwrap();
        assert_eq!(bm25.len(), 10);
        assert!(
            bm25.iter()
                .all(|h| h.metadata["group"] == MetaValue::Text("g7".into()))
        );
    }
}

#[test]
fn access_lists_decide_what_each_reader_finds_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, all) = build(dir.path(), 1000, 13);
    let legal = Access::parse(&["legal"]).unwrap();
    let alice = Access::parse(&["user:alice"]).unwrap();
    for i in 0..1000 {
        match i % 10 {
            3 => assert!(index.set_access(&doc_id(i), legal.clone())),
            4 => assert!(index.set_access(&doc_id(i), alice.clone())),
            _ => {}
        }
    }
    let lawyer = Reader::member(Some("bob"), &["legal".to_owned()]);
    let outsider = Reader::member(Some("eve"), &[]);
    // What each reader may read, by document number.
    let may = |r: &Reader, i: usize| match i % 10 {
        3 => r.may_read(&legal),
        4 => r.may_read(&alice),
        _ => true,
    };
    let check = |index: &CollectionIndex, r: &Reader, forced: bool| {
        let kept: Vec<&Chunk> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| may(r, *i))
            .flat_map(|(_, (_, c))| c)
            .collect();
        let matrix: Vec<f32> = kept
            .iter()
            .flat_map(|c| c.embedding.clone().unwrap())
            .collect();
        let oracle = FlatIndex::build(&matrix, DIM).unwrap();
        let mut rng = Rng::new(7);
        for _ in 0..5 {
            let q = rng.unit(DIM);
            let hits = index
                .search(&SearchRequest {
                    reader: r,
                    ..request(SearchMode::Dense, "", Some(&q), 10, None)
                })
                .unwrap();
            let expected: Vec<ChunkId> = oracle
                .search(&q, 200)
                .unwrap()
                .iter()
                .map(|(i, _)| kept[*i as usize].id())
                .collect();
            let got = ids(&hits);
            assert_eq!(got.len(), 10, "forced hnsw: {forced}");
            // HNSW may miss a neighbour; it never returns one the reader may not read.
            if forced {
                assert!(got.iter().all(|id| expected.contains(id)));
            } else {
                assert_eq!(got, expected[..10], "exact scan");
            }
        }
        let text = "topic3 topic4 topic13 topic14 topic23 topic24 topic5";
        for mode in [SearchMode::Bm25, SearchMode::Hybrid] {
            let q = Rng::new(5).unit(DIM);
            let hits = index
                .search(&SearchRequest {
                    reader: r,
                    ..request(mode, text, Some(&q), 50, None)
                })
                .unwrap();
            assert!(!hits.is_empty());
            for h in &hits {
                let i: usize = h.source[3..h.source.len() - 4].parse().unwrap();
                assert!(may(r, i), "{mode:?}: {} reached {:?}", h.source, r);
            }
        }
    };
    for forced in [false, true] {
        if forced {
            force_hnsw(&mut index);
        }
        for r in [&lawyer, &outsider, &Reader::Everything] {
            check(&index, r, forced);
        }
    }
    // Access lists are committed with the index and read back.
    index.commit().unwrap();
    drop(index);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert_eq!(index.access(&doc_id(13)), Some(&legal));
    assert_eq!(index.access(&doc_id(15)), Some(&Access::everyone()));
    check(&index, &lawyer, false);
    check(&index, &outsider, false);
    // A change is seen by the next search.
    let bm25 = |index: &CollectionIndex, r: &Reader| {
        index
            .search(&SearchRequest {
                reader: r,
                ..request(SearchMode::Bm25, "topic14", None, 5, None)
            })
            .unwrap()
            .len()
    };
    assert_eq!(bm25(&index, &lawyer), 0);
    assert!(index.set_access(&doc_id(14), legal.clone()));
    assert_eq!(bm25(&index, &lawyer), 3);
    assert_eq!(bm25(&index, &outsider), 0);
    assert!(!index.set_access(&doc_id(5000), legal));
}

#[test]
fn forced_hnsw_with_a_broad_filter_keeps_high_recall() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 800, 5);
    let filter = Filter::new(vec![Condition::Range {
        key: "n".into(),
        gt: None,
        gte: None,
        lt: Some(400.0),
        lte: None,
    }]);
    let mut rng = Rng::new(8);
    let queries: Vec<Vec<f32>> = (0..30).map(|_| rng.unit(DIM)).collect();
    let exact: Vec<Vec<Hit>> = queries
        .iter()
        .map(|q| {
            index
                .search(&request(SearchMode::Dense, "", Some(q), 10, Some(&filter)))
                .unwrap()
        })
        .collect();
    force_hnsw(&mut index);
    let mut total = 0.0;
    for (q, truth) in queries.iter().zip(&exact) {
        let hits = index
            .search(&request(SearchMode::Dense, "", Some(q), 10, Some(&filter)))
            .unwrap();
        assert_eq!(hits.len(), 10);
        assert!(
            hits.iter()
                .all(|h| matches!(h.metadata["n"], MetaValue::Number(n) if n < 400.0))
        );
        let t = ids(truth);
        total += ids(&hits).iter().filter(|id| t.contains(id)).count() as f64 / 10.0;
    }
    let r = total / queries.len() as f64;
    assert!(r >= 0.9, "filtered recall@10 = {r}");
}

#[test]
fn delete_hides_a_document_everywhere_at_once_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, all) = build(dir.path(), 60, 21);
    let victim = doc_id(10);
    let v = all[10].1[1].embedding.clone().unwrap();
    let search_all = |index: &CollectionIndex| {
        [SearchMode::Dense, SearchMode::Bm25, SearchMode::Hybrid].map(|mode| {
            index
                .search(&request(mode, "apple topic10", Some(&v), 30, None))
                .unwrap()
        })
    };
    for hits in search_all(&index) {
        assert!(docs_of(&hits).contains(&victim));
    }
    assert!(index.delete(&victim).unwrap());
    assert!(!index.delete(&victim).unwrap());
    assert!(!index.contains(&victim));
    for hits in search_all(&index) {
        assert!(!hits.is_empty());
        assert!(!docs_of(&hits).contains(&victim));
    }
    let filter = Filter::new(vec![Condition::DocIds(vec![victim])]);
    assert!(
        index
            .search(&request(
                SearchMode::Hybrid,
                "topic10",
                Some(&v),
                5,
                Some(&filter)
            ))
            .unwrap()
            .is_empty()
    );
    index.commit().unwrap();
    drop(index);
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert!(!index.contains(&victim));
    for hits in search_all(&index) {
        assert!(!docs_of(&hits).contains(&victim));
    }
    let stats = index.stats();
    assert_eq!(
        (stats.docs, stats.live_chunks, stats.tombstoned_chunks),
        (59, 177, 3)
    );
}

#[test]
fn re_adding_a_document_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 20, 31);
    let mut rng = Rng::new(1);
    let (doc, chunks) = make_doc(4, 2, &mut rng, |_, j| format!("zebra crossing {j}"));
    index.add(doc, &chunks).unwrap();
    // The old version is gone at once; the new one is searchable after the commit.
    let old = index
        .search(&request(SearchMode::Bm25, "topic4", None, 10, None))
        .unwrap();
    assert!(old.is_empty(), "{old:?}");
    index.commit().unwrap();
    let new = index
        .search(&request(SearchMode::Bm25, "zebra", None, 10, None))
        .unwrap();
    assert_eq!(ids(&new).len(), 2);
    assert!(new.iter().all(|h| h.chunk.doc_id == doc_id(4)));
    let v = chunks[0].embedding.clone().unwrap();
    let dense = index
        .search(&request(SearchMode::Dense, "", Some(&v), 1, None))
        .unwrap();
    assert_eq!(dense[0].chunk.id(), chunks[0].id());
    assert_eq!(dense[0].chunk.text, "zebra crossing 0");
    let stats = index.stats();
    assert_eq!(
        (stats.docs, stats.live_chunks, stats.tombstoned_chunks),
        (20, 59, 3)
    );
    assert_eq!(index.doc_ids().len(), 20);
}

#[test]
fn additions_become_visible_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 5, 41);
    let mut rng = Rng::new(2);
    let (doc, chunks) = make_doc(100, 1, &mut rng, |_, _| "quokka".into());
    index.add(doc, &chunks).unwrap();
    assert!(index.contains(&doc_id(100)));
    assert_eq!(index.stats().pending_chunks, 1);
    let v = chunks[0].embedding.clone().unwrap();
    let q = request(SearchMode::Hybrid, "quokka", Some(&v), 5, None);
    assert!(!docs_of(&index.search(&q).unwrap()).contains(&doc_id(100)));
    index.commit().unwrap();
    assert_eq!(index.search(&q).unwrap()[0].chunk.doc_id, doc_id(100));
    assert_eq!(index.stats().pending_chunks, 0);
}

#[test]
fn commit_and_reopen_return_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 200, 51);
    index.delete(&doc_id(3)).unwrap();
    index.commit().unwrap();
    let before = probe(&index, 5);
    force_hnsw(&mut index);
    let before_hnsw = probe(&index, 6);
    let generation = index.stats().generation;
    drop(index);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert_eq!(index.stats().generation, generation);
    assert_same(&before, &probe(&index, 5));
    force_hnsw(&mut index);
    assert_same(&before_hnsw, &probe(&index, 6));
    // A commit with nothing to do changes nothing.
    index.commit().unwrap();
    assert_eq!(index.stats().generation, generation);
}

/// The files of the saved graph: `graph-*.hgraph`, or `hnsw-*` for hnsw_rs.
/// The files in `dir` whose name starts with one of `prefixes`, sorted.
fn files_named(dir: &Path, prefixes: &[&str]) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            prefixes.iter().any(|x| name.starts_with(x))
        })
        .collect();
    files.sort();
    files
}

fn graph_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_named(dir, &["graph-", "hnsw-"])
}

fn vectors_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_named(dir, &["vectors-"])
}

/// The vectors live in one mapped file that an open reuses as it is; rows appended but never
/// committed are ignored; a damaged or lost file is detected by its checksum and rebuilt from
/// the segments, bit for bit, so every answer and score stays the same.
#[test]
fn the_vectors_file_is_reused_checked_and_rebuilt_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 120, 65);
    force_hnsw(&mut index);
    let want = probe(&index, 23);
    assert_eq!(index.vector_bytes(), (0, 360 * DIM * 4));
    // Uncommitted additions reach the file but not the manifest: a new open ignores them.
    let mut rng = Rng::new(66);
    for i in 120..130 {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        index.add(doc, &chunks).unwrap();
    }
    drop(index);
    let files = vectors_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let stamp = |f: &Path| std::fs::metadata(f).unwrap().modified().unwrap();
    let before = stamp(&files[0]);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert!(!index.verify().unwrap(), "intact");
    force_hnsw(&mut index);
    assert_eq!(index.stats().live_chunks, 360);
    assert_same(&want, &probe(&index, 23));
    drop(index);
    assert_eq!(vectors_files(dir.path()), files, "reused, not rebuilt");
    assert_eq!(stamp(&files[0]), before, "not rewritten");

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("bit flip", |f| {
            let mut b = std::fs::read(f).unwrap();
            b[64 + 4 * 1000] ^= 0x01;
            std::fs::write(f, b).unwrap();
        }),
        ("truncation", |f| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..64 + 4 * 5000]).unwrap();
        }),
        ("deletion", |f| std::fs::remove_file(f).unwrap()),
    ];
    for (what, damage) in damages {
        let files = vectors_files(dir.path());
        assert_eq!(files.len(), 1, "{what}: {files:?}");
        damage(&files[0]);
        let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
        // A short or missing file is refused by the open; a flipped bit is found by the
        // background check, whose verdict `verify` takes.
        assert_eq!(index.verify().unwrap(), what == "bit flip", "{what}");
        force_hnsw(&mut index);
        assert_same(&want, &probe(&index, 23));
        assert_eq!(index.vector_bytes(), (0, 360 * DIM * 4), "{what}");
        drop(index);
        // The rebuilt file is recorded: the next open reuses it.
        let rebuilt = vectors_files(dir.path());
        assert_eq!(rebuilt.len(), 1, "{what}: {rebuilt:?}");
        let at = stamp(&rebuilt[0]);
        let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
        force_hnsw(&mut index);
        assert_same(&want, &probe(&index, 23));
        drop(index);
        assert_eq!(vectors_files(dir.path()), rebuilt, "{what}");
        assert_eq!(stamp(&rebuilt[0]), at, "{what}: reused");
    }
}

/// An open does not read the vectors or the graph to check them (a background check does):
/// a commit made before anyone took the verdict still writes nothing from a damaged file. The
/// vectors and the graph are both rebuilt first, the new document's vectors kept, and the
/// next open finds every file intact.
#[test]
fn a_commit_after_an_open_repairs_what_the_background_check_found_first() {
    let dir = tempfile::tempdir().unwrap();
    // Small enough for exact dense search: the answers depend on the vectors alone.
    let (index, _) = build(dir.path(), 120, 67);
    let mut rng = Rng::new(68);
    let (doc, chunks) = make_doc(120, 3, &mut rng, text);
    drop(index);
    // The answers a whole index gives with the new document, from a copy of the directory.
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
    }
    let mut intact = CollectionIndex::open(copy.path(), params(DIM)).unwrap();
    intact.add(doc.clone(), &chunks).unwrap();
    intact.commit().unwrap();
    let want = probe(&intact, 29);
    drop(intact);

    for f in vectors_files(dir.path())
        .iter()
        .chain(&graph_files(dir.path()))
    {
        let mut b = std::fs::read(f).unwrap();
        // An exponent bit of a vector's component (its scores move), and a bit of a code
        // (the last bytes of the graph file before its alias section are codes).
        if f.extension().is_some_and(|e| e == "hvec") {
            b[64 + 4 * 777 + 3] ^= 0x40;
        } else {
            let at = b.len() - 100;
            b[at] ^= 0x04;
        }
        std::fs::write(f, b).unwrap();
    }
    let (vectors_before, graph_before) = (vectors_files(dir.path()), graph_files(dir.path()));
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    index.add(doc, &chunks).unwrap();
    index.commit().unwrap();
    assert_same(&want, &probe(&index, 29));
    assert!(!index.verify().unwrap(), "the commit took the verdict");
    drop(index);
    let (vectors_after, graph_after) = (vectors_files(dir.path()), graph_files(dir.path()));
    assert!(
        vectors_after.iter().all(|f| !vectors_before.contains(f)),
        "{vectors_after:?}"
    );
    assert!(
        graph_after.iter().all(|f| !graph_before.contains(f)),
        "{graph_after:?}"
    );
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert!(!index.verify().unwrap(), "intact after the repair");
    assert_same(&want, &probe(&index, 29));
}

#[test]
fn a_lost_or_damaged_graph_file_is_detected_and_rebuilt_for_either_kind() {
    for ann in [AnnKind::Graph, AnnKind::HnswRs] {
        let p = IndexParams { ann, ..params(DIM) };
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(61);
        let mut index = CollectionIndex::open(dir.path(), p).unwrap();
        for i in 0..150 {
            let (doc, chunks) = make_doc(i, 3, &mut rng, text);
            index.add(doc, &chunks).unwrap();
        }
        index.commit().unwrap();
        assert_eq!(index.ann_kind(), ann);
        let before = probe(&index, 9);
        force_hnsw(&mut index);
        let forced = probe(&index, 19);
        drop(index);

        let files = graph_files(dir.path());
        let want = if ann == AnnKind::Graph { 1 } else { 2 };
        assert_eq!(files.len(), want, "{ann}: {files:?}");
        // Read back intact: the same answers through the graph, nothing rewritten; hearth's
        // graph is read in place (its lists and codes mapped, not copied to the heap).
        let mut index = CollectionIndex::open(dir.path(), p).unwrap();
        assert!(!index.verify().unwrap(), "{ann}: intact");
        if let Some((heap, mapped)) = index.graph_bytes() {
            assert!(
                mapped >= 450 * 33 * 4 && heap * 4 < mapped,
                "{heap} on the heap, {mapped} mapped"
            );
        }
        assert_eq!(index.graph_bytes().is_some(), ann == AnnKind::Graph);
        force_hnsw(&mut index);
        assert_same(&forced, &probe(&index, 19));
        drop(index);
        assert_eq!(graph_files(dir.path()), files, "{ann}");

        // A flipped bit, a truncation, a deletion: each is caught, the graph is rebuilt from
        // the segments (so answers keep their recall) and saved again under a new name.
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 3] = [
            ("bit flip", |f| {
                let mut b = std::fs::read(f).unwrap();
                let at = b.len() * 2 / 3;
                b[at] ^= 0x10;
                std::fs::write(f, b).unwrap();
            }),
            ("truncation", |f| {
                let b = std::fs::read(f).unwrap();
                std::fs::write(f, &b[..b.len() / 2]).unwrap();
            }),
            ("deletion", |f| std::fs::remove_file(f).unwrap()),
        ];
        for (what, damage) in damages {
            let files = graph_files(dir.path());
            damage(&files[0]);
            let mut index = CollectionIndex::open(dir.path(), p).unwrap();
            index.verify().unwrap();
            assert_same(&before, &probe(&index, 9));
            assert_eq!(index.graph_points(), 450, "{ann}, {what}");
            force_hnsw(&mut index);
            let hits = probe(&index, 19);
            let (kept, total) = hits
                .iter()
                .zip(&forced)
                .filter(|((m, _), _)| *m == SearchMode::Dense)
                .map(|((_, a), (_, b))| {
                    let b = ids(b);
                    (ids(a).iter().filter(|i| b.contains(i)).count(), b.len())
                })
                .fold((0, 0), |(k, t), (a, b)| (k + a, t + b));
            eprintln!("{ann}, {what}: {kept} of {total} dense hits as before");
            assert!(
                kept * 10 >= total * 9,
                "{ann}, {what}: {kept} of {total} dense hits as before"
            );
            drop(index);
            let again = graph_files(dir.path());
            assert_eq!(again.len(), want, "{ann}, {what}: {again:?}");
            assert!(
                !again.contains(&files[0]),
                "{ann}, {what}: saved under a new name"
            );
        }
    }
}

#[test]
fn the_graph_leaves_the_heap_at_each_save_and_grows_in_place_after_an_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 150, 63);
    force_hnsw(&mut index);
    let mapped_only = |index: &CollectionIndex, what: &str| {
        let (heap, mapped) = index.graph_bytes().unwrap();
        assert!(
            mapped >= 450 * 33 * 4 && heap * 4 < mapped,
            "{what}: {heap} on the heap, {mapped} mapped"
        );
    };
    mapped_only(&index, "after the first commit");
    drop(index);
    // Reopened (mapped), grown by a batch that relinks mapped lists, committed: the graph is
    // saved and mapped again, and a fresh open of it answers the same.
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    force_hnsw(&mut index);
    let mut rng = Rng::new(64);
    for i in 150..180 {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        index.add(doc, &chunks).unwrap();
    }
    let (heap, _) = index.graph_bytes().unwrap();
    assert!(heap >= 90 * 33 * 4, "new lists on the heap: {heap}");
    index.commit().unwrap();
    mapped_only(&index, "after a commit that grew it");
    assert_eq!(index.graph_points(), 540);
    let grown = probe(&index, 21);
    drop(index);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    force_hnsw(&mut index);
    assert_same(&grown, &probe(&index, 21));
}

#[test]
fn changing_the_ann_kind_rebuilds_the_graph_and_keeps_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 300, 62);
    index.delete(&doc_id(7)).unwrap();
    index.commit().unwrap();
    let before = probe(&index, 4);
    drop(index);
    for ann in [AnnKind::HnswRs, AnnKind::Graph] {
        let p = IndexParams { ann, ..params(DIM) };
        let index = CollectionIndex::open(dir.path(), p).unwrap();
        assert_eq!(index.ann_kind(), ann);
        assert_same(&before, &probe(&index, 4));
        drop(index);
        let files = graph_files(dir.path());
        let prefix = if ann == AnnKind::Graph {
            "graph-"
        } else {
            "hnsw-"
        };
        assert!(
            !files.is_empty()
                && files.iter().all(|f| f
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(prefix)),
            "{ann}: {files:?}"
        );
    }
}

#[test]
fn lost_tantivy_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = build(dir.path(), 150, 61);
    let before = probe(&index, 9);
    drop(index);

    std::fs::remove_dir_all(dir.path().join("tantivy")).unwrap();
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert_same(&before, &probe(&index, 9));
    drop(index);

    // Garbage instead of a tantivy index.
    std::fs::remove_dir_all(dir.path().join("tantivy")).unwrap();
    std::fs::create_dir(dir.path().join("tantivy")).unwrap();
    std::fs::write(dir.path().join("tantivy/meta.json"), b"{not json").unwrap();
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert_same(&before, &probe(&index, 9));
}

#[test]
fn tantivy_ahead_of_the_manifest_is_rebuilt_to_the_manifest_state() {
    // A crash between tantivy's commit and the manifest rename leaves tantivy one commit ahead.
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 30, 71);
    let before = probe(&index, 4);
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    let mut rng = Rng::new(5);
    let (doc, chunks) = make_doc(500, 2, &mut rng, |_, _| "apple apple apple apple".into());
    index.add(doc, &chunks).unwrap();
    index.delete(&doc_id(0)).unwrap();
    index.commit().unwrap();
    drop(index);
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert!(!index.contains(&doc_id(500)) && index.contains(&doc_id(0)));
    assert_same(&before, &probe(&index, 4));
}

#[test]
fn unreadable_manifest_starts_empty_and_moves_the_old_directory_aside() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("coll");
    let (index, _) = build(&dir, 10, 81);
    drop(index);
    std::fs::write(dir.join("manifest.json"), b"{\"format_version\": 1, trunc").unwrap();
    let mut index = CollectionIndex::open(&dir, params(DIM)).unwrap();
    assert_eq!(index.stats().docs, 0);
    assert!(root.path().join("coll.broken/manifest.json").exists());
    let hits = index
        .search(&request(SearchMode::Bm25, "apple", None, 5, None))
        .unwrap();
    assert!(hits.is_empty());
    // It works normally afterwards.
    let mut rng = Rng::new(1);
    let (doc, chunks) = make_doc(1, 2, &mut rng, text);
    index.add(doc, &chunks).unwrap();
    index.commit().unwrap();
    drop(index);
    let index = CollectionIndex::open(&dir, params(DIM)).unwrap();
    assert_eq!(index.stats().docs, 1);
    drop(index);

    // A missing segment is as bad as a broken manifest.
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("seg-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let index = CollectionIndex::open(&dir, params(DIM)).unwrap();
    assert_eq!(index.stats().docs, 0);
}

#[test]
fn compaction_after_ten_percent_churn_repairs_the_graph_and_keeps_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 400, 92);
    // 10 % of the documents deleted, as many new ones added: churn without a rebuild.
    let mut rng = Rng::new(8);
    for i in (0..400).filter(|i| i % 10 == 4) {
        index.delete(&doc_id(i)).unwrap();
        let (doc, chunks) = make_doc(1000 + i, 3, &mut rng, text);
        index.add(doc, &chunks).unwrap();
    }
    index.commit().unwrap();
    let exact = probe(&index, 21);
    force_hnsw(&mut index);
    let before = probe(&index, 21);
    let compacted = index.compact().unwrap();
    assert_eq!(
        (compacted.removed_chunks, compacted.live_chunks),
        (120, 1200)
    );
    assert_eq!(index.graph_points(), 1200);
    let after = probe(&index, 21);
    // Through the repaired graph, dense hits agree with the exact answer as well as they did
    // before compaction (within 2 %), and every hit is live.
    let agree = |got: &[(SearchMode, Vec<Hit>)]| {
        got.iter()
            .zip(&exact)
            .filter(|((m, _), _)| *m == SearchMode::Dense)
            .map(|((_, a), (_, b))| {
                let b = ids(b);
                ids(a).iter().filter(|i| b.contains(i)).count()
            })
            .sum::<usize>()
    };
    let total: usize = exact
        .iter()
        .filter(|(m, _)| *m == SearchMode::Dense)
        .map(|(_, h)| h.len())
        .sum();
    let (was, now) = (agree(&before), agree(&after));
    eprintln!("dense hits agreeing with exact search: {was} before, {now} after of {total}");
    assert!(
        now * 50 >= was * 49,
        "{now} after against {was} before, of {total}"
    );
    assert!(
        after
            .iter()
            .flat_map(|(_, h)| h)
            .all(|h| index.contains(&h.chunk.doc_id))
    );
    // The repaired graph was saved: a reopen answers identically.
    drop(index);
    let mut index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    force_hnsw(&mut index);
    assert_same(&after, &probe(&index, 21));
}

#[test]
fn compaction_drops_tombstones_and_keeps_results() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 120, 91);
    for i in (0..120).filter(|i| i % 3 == 1) {
        index.delete(&doc_id(i)).unwrap();
    }
    // Replace one too.
    let mut rng = Rng::new(3);
    let (doc, chunks) = make_doc(2, 3, &mut rng, text);
    index.add(doc, &chunks).unwrap();
    index.commit().unwrap();
    // And an uncommitted deletion (hidden at once): compaction commits it first.
    index.delete(&doc_id(5)).unwrap();
    let before = probe(&index, 13);
    let stats = index.stats();
    assert_eq!(stats.tombstoned_chunks, 41 * 3 + 3);
    let compacted = index.compact().unwrap();
    assert_eq!(compacted.removed_chunks, 126);
    assert_eq!(compacted.live_chunks, 237);
    let stats = index.stats();
    assert_eq!(
        (stats.tombstoned_chunks, stats.live_chunks, stats.docs),
        (0, 237, 79)
    );
    assert_eq!(index.graph_points(), 237);
    // BM25 scores move a little: tantivy's document frequencies and average length counted
    // the deleted chunks until now. The rankings (and so the RRF scores) do not.
    let after = probe(&index, 13);
    assert_same_ranking(&before, &after, false);
    drop(index);
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    assert_eq!(index.stats().tombstoned_chunks, 0);
    assert_same(&after, &probe(&index, 13));
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert_eq!(segments, 1);
}

#[test]
fn format_affecting_parameters_are_checked_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = build(dir.path(), 3, 1);
    drop(index);
    let err = CollectionIndex::open(dir.path(), params(DIM + 1)).unwrap_err();
    assert!(
        matches!(&err, IndexError::Conflict(m) if m.contains("dim")),
        "{err}"
    );
    let err = CollectionIndex::open(
        dir.path(),
        IndexParams {
            analyzer: Analyzer::Simple,
            hnsw_m: 32,
            ..params(DIM)
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, IndexError::Conflict(m) if m.contains("analyzer") && m.contains("hnsw_m")),
        "{err}"
    );
    // ef_search is not format-affecting; the refused opens left the index intact.
    let index = CollectionIndex::open(
        dir.path(),
        IndexParams {
            ef_search: 200,
            ..params(DIM)
        },
    )
    .unwrap();
    assert_eq!(index.stats().docs, 3);
    // One CollectionIndex per directory.
    let err = CollectionIndex::open(dir.path(), params(DIM)).unwrap_err();
    assert!(matches!(err, IndexError::Conflict(_)), "{err}");
}

#[test]
fn bad_requests_and_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut index, _) = build(dir.path(), 5, 2);
    let v = vec![0.5; DIM];
    for top_k in [0, 1001] {
        let err = index
            .search(&request(SearchMode::Dense, "", Some(&v), top_k, None))
            .unwrap_err();
        assert!(matches!(err, IndexError::InvalidInput(_)));
    }
    for mode in [SearchMode::Dense, SearchMode::Hybrid] {
        let err = index
            .search(&request(mode, "apple", None, 5, None))
            .unwrap_err();
        assert!(matches!(err, IndexError::InvalidInput(_)));
    }
    let short = vec![1.0; DIM - 1];
    assert!(
        index
            .search(&request(SearchMode::Dense, "", Some(&short), 5, None))
            .is_err()
    );
    assert!(
        index
            .search(&request(SearchMode::Bm25, "what?!", None, 5, None))
            .unwrap()
            .is_empty()
    );
    assert!(
        index
            .search(&request(SearchMode::Bm25, "", None, 5, None))
            .unwrap()
            .is_empty()
    );
    let hybrid = index
        .search(&request(SearchMode::Hybrid, "?!", Some(&v), 5, None))
        .unwrap();
    assert_eq!(hybrid.len(), 5);
    assert!(hybrid.iter().all(|h| h.bm25.is_none() && h.dense.is_some()));

    let mut rng = Rng::new(4);
    let (doc, mut chunks) = make_doc(50, 2, &mut rng, text);
    chunks[1].embedding = Some(vec![1.0; DIM + 3]);
    assert!(matches!(
        index.add(doc.clone(), &chunks),
        Err(IndexError::InvalidInput(_))
    ));
    chunks[1].embedding = None;
    assert!(matches!(
        index.add(doc.clone(), &chunks),
        Err(IndexError::InvalidInput(_))
    ));
    chunks[1].embedding = Some(vec![0.0; DIM]);
    assert!(matches!(
        index.add(doc.clone(), &chunks),
        Err(IndexError::InvalidInput(_))
    ));
    chunks[1].doc_id = doc_id(51);
    assert!(matches!(
        index.add(doc, &chunks),
        Err(IndexError::InvalidInput(_))
    ));
    assert!(!index.contains(&doc_id(50)));
    assert_eq!(index.stats().pending_chunks, 0);
}

#[test]
fn hits_carry_chunk_and_document_data() {
    let dir = tempfile::tempdir().unwrap();
    let (index, all) = build(dir.path(), 10, 17);
    let (doc, chunks) = &all[5];
    let v = chunks[2].embedding.clone().unwrap();
    let hits = index
        .search(&request(SearchMode::Hybrid, "topic5", Some(&v), 3, None))
        .unwrap();
    let top = &hits[0];
    assert_eq!(top.chunk.id(), chunks[2].id());
    assert_eq!(top.chunk.embedding, None);
    assert_eq!(top.chunk.text, chunks[2].text);
    assert_eq!(top.chunk.heading, chunks[2].heading);
    assert_eq!((top.chunk.page_start, top.chunk.span_end), (Some(3), 299));
    assert_eq!(
        (&top.source, &top.title, &top.metadata),
        (&doc.source, &doc.title, &doc.metadata)
    );
    assert_eq!(top.dense.unwrap().0, 1);
    assert!(top.bm25.is_some());
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let weighted = index
        .search(&SearchRequest {
            fusion: Fusion::Weighted { dense_weight: 1.0 },
            ..request(SearchMode::Hybrid, "topic5", Some(&v), 3, None)
        })
        .unwrap();
    assert_eq!(weighted[0].chunk.id(), chunks[2].id());
    assert!((weighted[0].score - 1.0).abs() < 1e-6);
}

/// Run in a child process by `kill_after_commit_keeps_exactly_the_committed_state`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os("HEARTH_INDEX_CRASH_DIR") else {
        return;
    };
    let (mut index, _) = build(Path::new(&dir), 40, 101);
    index.delete(&doc_id(7)).unwrap();
    index.commit().unwrap();
    // Uncommitted work, then an abrupt end: no destructors, no flush.
    let mut rng = Rng::new(9);
    let (doc, chunks) = make_doc(900, 3, &mut rng, |_, _| "uncommitted apple".into());
    index.add(doc, &chunks).unwrap();
    index.delete(&doc_id(8)).unwrap();
    std::process::abort();
}

#[test]
fn kill_after_commit_keeps_exactly_the_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "retrieval::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEARTH_INDEX_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die abruptly");
    let index = CollectionIndex::open(dir.path(), params(DIM)).unwrap();
    let (expected, _) = {
        let other = tempfile::tempdir().unwrap();
        let (mut twin, _) = build(other.path(), 40, 101);
        twin.delete(&doc_id(7)).unwrap();
        twin.commit().unwrap();
        (probe(&twin, 3), other)
    };
    assert!(!index.contains(&doc_id(7)));
    assert!(index.contains(&doc_id(8)));
    assert!(!index.contains(&doc_id(900)));
    assert_eq!(index.stats().docs, 39);
    assert_same(&expected, &probe(&index, 3));
}

/// An encrypted store's cache sealer, from a fresh keyring under `kek_hex`.
async fn sealer(dir: &Path, kek_hex: &str) -> hearth_index::CacheSealer {
    let kek = dir.join("kek");
    std::fs::write(&kek, kek_hex).unwrap();
    let config = hearth_index::StorageConfig {
        data_dir: dir.join("store"),
        encryption: hearth_index::EncryptionConfig {
            kek_file: Some(kek),
            kek_env: None,
        },
        ..Default::default()
    };
    let store = hearth_index::BlobStore::open(&config).await.unwrap();
    store.cache_sealer().unwrap()
}

/// Every file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A sealed cache: the same answers as a plain one, before and after reopening, with no chunk
/// text, source name or vector in any file; a cache sealed under other keys, or a plaintext
/// one, is deleted and starts empty (the layer above refills it), never moved aside.
#[tokio::test]
async fn a_sealed_cache_answers_alike_and_holds_no_plaintext() {
    let keys = tempfile::tempdir().unwrap();
    let seal = sealer(keys.path(), &"22".repeat(32)).await;
    let root = tempfile::tempdir().unwrap();
    let (plain_dir, sealed_dir) = (root.path().join("plain"), root.path().join("sealed"));
    let (plain, _) = build(&plain_dir, 120, 81);
    let mut rng = Rng::new(81);
    let mut index =
        CollectionIndex::open_sealed(&sealed_dir, params(DIM), Some(seal.clone())).unwrap();
    let mut vectors = Vec::new();
    for i in 0..120 {
        let (doc, chunks) = make_doc(i, 3, &mut rng, text);
        vectors.extend(chunks.iter().map(|c| c.embedding.clone().unwrap()));
        index.add(doc, &chunks).unwrap();
    }
    index.commit().unwrap();
    let want = probe(&plain, 7);
    assert_same(&want, &probe(&index, 7));
    drop(index);

    let needles: Vec<Vec<u8>> = [text(5, 1), "doc17.txt".into(), "Document 42".into()]
        .into_iter()
        .map(String::into_bytes)
        .chain(vectors.iter().take(50).map(|v| {
            v[..4]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
        }))
        .collect();
    let leaks = |dir: &Path| -> Vec<String> {
        all_files(dir)
            .into_iter()
            .filter(|(_, b)| {
                needles
                    .iter()
                    .any(|n| b.windows(n.len()).any(|w| w == n.as_slice()))
            })
            .map(|(name, _)| name)
            .collect()
    };
    // The scan's own check: the plain cache shows them.
    assert!(!leaks(&plain_dir).is_empty());
    assert_eq!(leaks(&sealed_dir), Vec::<String>::new());

    let index = CollectionIndex::open_sealed(&sealed_dir, params(DIM), Some(seal.clone())).unwrap();
    assert_same(&want, &probe(&index, 7));
    assert_eq!(leaks(&sealed_dir), Vec::<String>::new());
    // The plaintext cache keeps its vectors in an unnamed mapped file; the sealed one on the
    // heap, since that file would hold them unsealed.
    let bytes = 360 * DIM * 4;
    assert_eq!(plain.vector_bytes().1, bytes);
    assert_eq!(plain.vector_bytes().0, 0);
    assert_eq!(index.vector_bytes().1, 0);
    assert!(index.vector_bytes().0 >= bytes);
    drop(index);

    // Other keys: unreadable, deleted, empty; nothing moved aside.
    let other = tempfile::tempdir().unwrap();
    let foreign = sealer(other.path(), &"33".repeat(32)).await;
    let index = CollectionIndex::open_sealed(&sealed_dir, params(DIM), Some(foreign)).unwrap();
    assert_eq!(index.stats().docs, 0);
    drop(index);
    // A plaintext cache found by a sealing open: deleted, not kept as `.broken`.
    drop(plain);
    let index = CollectionIndex::open_sealed(&plain_dir, params(DIM), Some(seal)).unwrap();
    assert_eq!(index.stats().docs, 0);
    assert_eq!(leaks(&plain_dir), Vec::<String>::new());
    assert!(!root.path().join("plain.broken").exists());
}
