//! Retrieval quality on the labelled questions of `testdata/retrieval/questions.json`:
//! recall@10 and nDCG@10 at document level for dense, BM25 and hybrid search. Hybrid must not
//! fall below the better of the two.

use std::path::Path;

use hearth_api::Service;
use hearth_engine::EngineConfig;
use hearth_index::{CollectionName, IndexConfig, SearchMode};
use serde::Deserialize;

use crate::common::{Backend, Node, root, search_all};

#[derive(Deserialize)]
struct Questions {
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct Question {
    id: String,
    question: String,
    relevant: Vec<String>,
}

/// Document-level ranking: the file names of the hits, first occurrence only.
fn ranked_docs(sources: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sources {
        let name = Path::new(&s)
            .file_name()
            .map_or(s.clone(), |n| n.to_string_lossy().into_owned());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn recall_at(k: usize, ranked: &[String], relevant: &[String]) -> f64 {
    let found = relevant
        .iter()
        .filter(|r| ranked.iter().take(k).any(|d| d == *r))
        .count();
    found as f64 / relevant.len() as f64
}

fn ndcg_at(k: usize, ranked: &[String], relevant: &[String]) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, d)| relevant.contains(d))
        .map(|(i, _)| 1.0 / (i as f64 + 2.0).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(k))
        .map(|i| 1.0 / (i as f64 + 2.0).log2())
        .sum();
    dcg / ideal
}

#[test]
fn metrics_are_computed_as_defined() {
    let ranked: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    assert_eq!(recall_at(10, &ranked, &["c".into(), "z".into()]), 0.5);
    assert!((ndcg_at(10, &ranked, &["a".into()]) - 1.0).abs() < 1e-12);
    assert!((ndcg_at(10, &ranked, &["b".into()]) - 1.0 / 3f64.log2()).abs() < 1e-12);
    assert_eq!(ndcg_at(1, &ranked, &["b".into()]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hybrid_is_at_least_as_good_as_the_better_of_dense_and_bm25() {
    // HEARTH_TEST_EMBEDDER: another embedding model (as `engine.embedding_model` names it) for
    // both the ingestion and the searches, to measure it on this set.
    let embedder = std::env::var("HEARTH_TEST_EMBEDDER").ok();
    let mut node = Node::new(Backend::Local);
    if let Some(e) = &embedder {
        node = node.env("HEARTH__ENGINE__EMBEDDING_MODEL", e);
    }
    node.ingest("q", &[&root().join("testdata/corpus")]);
    let raw = std::fs::read(root().join("testdata/retrieval/questions.json")).unwrap();
    let set: Questions = serde_json::from_slice(&raw).unwrap();
    assert!(set.questions.len() >= 50);

    let service = Service::new(
        node.service_parts(
            "data-quality",
            EngineConfig {
                embedding_model: embedder
                    .map_or(EngineConfig::default().embedding_model, Into::into),
                ..EngineConfig::default()
            },
            IndexConfig {
                analyzer: std::env::var("HEARTH_TEST_ANALYZER")
                    .ok()
                    .map_or(Default::default(), |a| a.parse().unwrap()),
                ..IndexConfig::default()
            },
        ),
    )
    .unwrap();
    let col = service
        .open(&CollectionName::new("q").unwrap())
        .await
        .unwrap();

    let mut scores = Vec::new();
    for mode in [SearchMode::Dense, SearchMode::Bm25, SearchMode::Hybrid] {
        let (mut recall, mut ndcg) = (0.0, 0.0);
        let mut misses = Vec::new();
        for q in &set.questions {
            let res = search_all(&service, &col, &q.question, mode, 50).await;
            let ranked = ranked_docs(res.hits.into_iter().map(|h| h.source));
            let r = recall_at(10, &ranked, &q.relevant);
            recall += r;
            ndcg += ndcg_at(10, &ranked, &q.relevant);
            if r < 1.0 {
                misses.push(q.id.as_str());
            }
        }
        let n = set.questions.len() as f64;
        let (recall, ndcg) = (recall / n, ndcg / n);
        println!("{mode:?}: recall@10 {recall:.4}  nDCG@10 {ndcg:.4}  (misses: {misses:?})");
        scores.push((recall, ndcg));
    }
    let [dense, bm25, hybrid] = [scores[0], scores[1], scores[2]];
    assert!(
        hybrid.0 >= dense.0.max(bm25.0),
        "hybrid recall@10 {:.4} < max(dense {:.4}, bm25 {:.4})",
        hybrid.0,
        dense.0,
        bm25.0
    );
    assert!(
        hybrid.1 >= dense.1.max(bm25.1),
        "hybrid nDCG@10 {:.4} < max(dense {:.4}, bm25 {:.4})",
        hybrid.1,
        dense.1,
        bm25.1
    );
}
