//! Multilingual retrieval on `testdata/multilingual` (issue 18): 40 translated manual pages in
//! ten languages (eight European, Chinese and Japanese), each page in one language only, and
//! 146 labelled questions: ten per language in that language, 36 in English and 10 in German
//! or French whose answer is only in another language. Evidence is a passage among the first
//! five that comes from the relevant document and states one of the question's facts.
//!
//! Measured (evidence in the top 5), EmbeddingGemma-300M, chunks of 384 tokens, hybrid with
//! the dense side weighed 0.8: same-language 95/100 (0.9-1.0 in every language), cross-language
//! 44/46. With the node's general settings (chunks of 256, dense 0.6) it was 89/100 (German and
//! Polish 0.7) and 37/46; multilingual-e5-small, 256, 0.6: 92/100 and 32/46; MiniLM on the first
//! 120 questions 61/80 and 24/40 (BENCHMARKS.md, "EmbeddingGemma-300M"). The floors are the
//! issue's targets: 0.9 in every language and 0.8 across languages.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_api::Service;
use hearth_engine::EngineConfig;
use hearth_index::{Analyzer, CollectionName, IndexConfig, ModelIndexConfig, SearchMode};
use serde::Deserialize;

use crate::common::{Backend, Node, root, search_all};

/// Where the collection's model is installed.
const E5: &str = "multilingual-e5-small/e5-small-q4.bin";
/// EmbeddingGemma-300M's directory, by the same name.
const GEMMA: &str = "embeddinggemma-300m";

#[derive(Deserialize)]
struct Question {
    id: String,
    lang: String,
    question: String,
    relevant: Vec<String>,
    cross: bool,
    facts: Vec<String>,
}

/// Lower case, whitespace runs as one space: manual pages wrap lines anywhere.
fn folded(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn file_name(s: &str) -> String {
    Path::new(s)
        .file_name()
        .map_or(s.to_owned(), |n| n.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_and_cross_language_questions_find_their_evidence() {
    let set = root().join("testdata/multilingual");
    let questions: Vec<Question> = std::fs::read_to_string(set.join("questions.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(questions.len() >= 120);
    // The node's default stays MiniLM; the collection is made with EmbeddingGemma, loaded
    // beside it, with the settings its collections get by default: chunks of 384 tokens
    // (overlap 48), BM25 in each chunk's language and hybrid search weighing the dense side
    // 0.8 (set here all the same, for the other set-ups). HEARTH_TEST_EMBEDDER
    // (all-MiniLM-L6-v2, multilingual-e5-small), HEARTH_TEST_CHUNK_TOKENS and
    // HEARTH_TEST_DENSE_WEIGHT measure other set-ups (the floors below are EmbeddingGemma's).
    let embedder = std::env::var("HEARTH_TEST_EMBEDDER").unwrap_or_else(|_| GEMMA.into());
    let chunk_tokens: u32 = std::env::var("HEARTH_TEST_CHUNK_TOKENS")
        .map_or(384, |t| t.parse().expect("HEARTH_TEST_CHUNK_TOKENS"));
    let dense_weight: f32 = std::env::var("HEARTH_TEST_DENSE_WEIGHT")
        .map_or(0.8, |t| t.parse().expect("HEARTH_TEST_DENSE_WEIGHT"));
    let loaded = BTreeMap::from([
        ("multilingual-e5-small".to_owned(), E5.to_owned()),
        (GEMMA.to_owned(), GEMMA.to_owned()),
    ]);
    let extra = format!(
        "{{ {} }}",
        loaded
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let node = Node::new(Backend::Local)
        .env("HEARTH__ENGINE__EMBEDDERS", &extra)
        .env("HEARTH__INDEX__ANALYZER", "auto")
        .env("HEARTH__INGEST__CHUNK_TOKENS", &chunk_tokens.to_string())
        .env(
            "HEARTH__INGEST__CHUNK_OVERLAP",
            &(chunk_tokens / 8).to_string(),
        );
    node.ingest_with("ml", &[&set.join("docs")], &["--embedder", &embedder]);
    let parts = |embedders: BTreeMap<String, std::path::PathBuf>| {
        let mut p = node.service_parts(
            "data-multilingual",
            EngineConfig {
                embedders,
                ..EngineConfig::default()
            },
            IndexConfig {
                analyzer: Analyzer::Auto,
                // The model's own entry: EmbeddingGemma's built-in weight is 0.8.
                models: BTreeMap::from([(
                    embedder.clone(),
                    ModelIndexConfig {
                        dense_weight: Some(dense_weight),
                        analyzer: None,
                    },
                )]),
                ..IndexConfig::default()
            },
        );
        p.ingest.chunk_tokens = chunk_tokens;
        p.ingest.chunk_overlap = chunk_tokens / 8;
        p
    };
    let name = CollectionName::new("ml").unwrap();
    if embedder != "all-MiniLM-L6-v2" {
        // A node that does not load the collection's model refuses it, naming the model.
        let bare = Service::new(parts(BTreeMap::new())).unwrap();
        let err = bare.open(&name).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("made with the model \"{embedder}\""))
                && err.contains("engine.embedders"),
            "{err}"
        );
    }
    let service = Service::new(parts(
        loaded.into_iter().map(|(k, v)| (k, v.into())).collect(),
    ))
    .unwrap();
    let col = service.open(&name).await.unwrap();
    assert_eq!(service.embedder_name(&col), embedder);

    // (mode, group) -> (found, asked); a group is a language, or "cross".
    let mut tally: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut misses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mode in [SearchMode::Dense, SearchMode::Bm25, SearchMode::Hybrid] {
        for q in &questions {
            let res = search_all(&service, &col, &q.question, mode, 5).await;
            // Evidence: a passage of the relevant document that states one of the facts (the
            // document alone is too easy a target: each page is on its own topic, so even an
            // English-only model finds most of them by command names).
            let relevant: Vec<String> = q.relevant.iter().map(|r| file_name(r)).collect();
            let facts: Vec<String> = q.facts.iter().map(|f| folded(f)).collect();
            let found = res.hits.iter().any(|h| {
                let text = folded(&h.text);
                relevant.contains(&file_name(&h.source)) && facts.iter().any(|f| text.contains(f))
            });
            let group = if q.cross { "cross" } else { q.lang.as_str() };
            let t = tally
                .entry((format!("{mode:?}"), group.to_owned()))
                .or_default();
            t.0 += usize::from(found);
            t.1 += 1;
            if !found {
                misses
                    .entry(format!("{mode:?}"))
                    .or_default()
                    .push(q.id.clone());
            }
        }
    }
    println!("evidence in the top 5 passages ({embedder}, BM25 analyzer auto):");
    for ((mode, group), (found, asked)) in &tally {
        println!(
            "  {mode:>6} {group:>6}: {:.3} ({found}/{asked})",
            *found as f64 / *asked as f64
        );
    }
    for (mode, ids) in &misses {
        println!("  {mode} misses: {ids:?}");
    }
    let hybrid: Vec<(&String, usize, usize)> = tally
        .iter()
        .filter(|((mode, _), _)| mode == "Hybrid")
        .map(|((_, group), &(found, asked))| (group, found, asked))
        .collect();
    let (same_found, same_asked) = hybrid
        .iter()
        .filter(|(g, _, _)| *g != "cross")
        .fold((0, 0), |(f, a), (_, found, asked)| (f + found, a + asked));
    let same = same_found as f64 / same_asked as f64;
    println!("  hybrid, same-language overall: {same:.3} ({same_found}/{same_asked})");
    assert!(
        same >= 0.9,
        "same-language evidence in the top 5: {same:.3} < 0.9"
    );
    for (group, found, asked) in hybrid {
        let rate = found as f64 / asked as f64;
        // The targets: 0.9 in every language, 0.8 across languages (measured 0.9-1.0
        // per language, 0.957 across).
        let floor = if *group == "cross" { 0.8 } else { 0.9 };
        assert!(
            rate >= floor,
            "hybrid, {group}: evidence in the top 5 for {found} of {asked} ({rate:.3} < {floor})"
        );
    }
}

/// Over HTTP: a collection is created with a model by name and says which it has; an unknown
/// model is a 400, another model for an existing collection a 409; `/v1/models` lists both
/// models and `/v1/embeddings` takes either, and only e5 puts a German sentence next to its
/// English translation.
#[tokio::test(flavor = "multi_thread")]
async fn a_collection_chooses_its_model_and_the_embeddings_endpoint_takes_either() {
    let extra = format!("{{ multilingual-e5-small = \"{E5}\" }}");
    let node = Node::new(Backend::Local).env("HEARTH__ENGINE__EMBEDDERS", &extra);
    let admin = crate::common::create_key(&node, "admin", "admin", &[], &[]);
    let reader = crate::common::create_key(&node, "reader", "reader", &[], &[]);
    let scoped = crate::common::create_key(&node, "en-writer", "writer", &["en"], &[]);
    let s = node.serve(&[]).await;
    let create =
        |body: serde_json::Value| s.call(Some(&admin), "POST", "/v1/collections", Some(body));
    let r = create(serde_json::json!({"name": "de", "embedder": "multilingual-e5-small"})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["embedder"], "multilingual-e5-small");
    // Chunks as long as the configuration allows (384) where the model reads them whole (e5
    // reads 512 tokens); MiniLM reads 256, and its collections get that, the overlap in
    // proportion.
    let chunking = |r: &crate::common::Reply| {
        let v = r.json();
        (v["chunk_tokens"].as_u64(), v["chunk_overlap"].as_u64())
    };
    assert_eq!(chunking(&r), (Some(384), Some(48)));
    let r = create(serde_json::json!({"name": "en"})).await;
    assert_eq!(
        (r.status, r.json()["embedder"].as_str()),
        (201, Some("all-MiniLM-L6-v2"))
    );
    assert_eq!(chunking(&r), (Some(256), Some(32)));
    let r = create(serde_json::json!({"name": "x", "embedder": "labse"})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("multilingual-e5-small"));
    let r = create(serde_json::json!({"name": "de", "embedder": "all-MiniLM-L6-v2"})).await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    // Refusals come before anything about models or collections is said: a reader learns
    // neither the node's models (400) nor that "de" exists with another model (409); a writer
    // scoped to "en" cannot create or look at "de".
    for (key, name, embedder) in [
        (&reader, "x", "labse"),
        (&reader, "de", "all-MiniLM-L6-v2"),
        (&scoped, "de", "all-MiniLM-L6-v2"),
        (&scoped, "x", "labse"),
    ] {
        let r = s
            .call(
                Some(key),
                "POST",
                "/v1/collections",
                Some(serde_json::json!({"name": name, "embedder": embedder})),
            )
            .await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 403, "{name} {embedder}: {body}");
        assert!(!body.contains("multilingual-e5-small"), "{body}");
    }
    let r = s
        .call(Some(&scoped), "GET", "/v1/collections/de", None)
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("multilingual"));
    // Nor its chunking: the key scoped to "en" sees its own collection's, not "de"'s.
    assert!(!String::from_utf8_lossy(&r.body).contains("chunk_"));
    let own = s
        .call(Some(&scoped), "GET", "/v1/collections/en", None)
        .await;
    assert_eq!(chunking(&own), (Some(256), Some(32)));
    let r = s.call(None, "GET", "/v1/models", None).await;
    assert_eq!(r.status, 401);
    // Asked again without a model, the collection keeps its own.
    let r = create(serde_json::json!({"name": "de"})).await;
    assert_eq!(
        (r.status, r.json()["embedder"].as_str()),
        (200, Some("multilingual-e5-small"))
    );

    let r = s.call(Some(&admin), "GET", "/v1/models", None).await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"all-MiniLM-L6-v2".to_owned()), "{ids:?}");
    assert!(ids.contains(&"multilingual-e5-small".to_owned()), "{ids:?}");
    let input = [
        "Die Datei wird vor dem Komprimieren gesichert.",
        "The file is backed up before it is compressed.",
        "Der Zug nach Berlin hat zwanzig Minuten Verspätung.",
    ];
    let mut margins = Vec::new();
    for model in ["all-MiniLM-L6-v2", "multilingual-e5-small"] {
        let r = s
            .call(
                Some(&admin),
                "POST",
                "/v1/embeddings",
                Some(serde_json::json!({"model": model, "input": input})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["model"], model);
        let v: Vec<Vec<f32>> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
            .collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // How much nearer the translation is to the English sentence than an unrelated German one.
        margins.push(dot(&v[1], &v[0]) - dot(&v[1], &v[2]));
    }
    println!(
        "translation margin: MiniLM {:.3}, e5 {:.3}",
        margins[0], margins[1]
    );
    // Measured: MiniLM 0.015, e5 0.097 (e5's cosines are compressed: unrelated text at 0.7-0.8).
    assert!(margins[1] > margins[0] + 0.05, "{margins:?}");
    let r = s
        .call(
            Some(&admin),
            "POST",
            "/v1/embeddings",
            Some(serde_json::json!({"model": "labse", "input": "x"})),
        )
        .await;
    assert_eq!(r.status, 404);
    // Without a key: refused before the model is looked up, naming no model.
    for model in ["multilingual-e5-small", "labse"] {
        let r = s
            .call(
                None,
                "POST",
                "/v1/embeddings",
                Some(serde_json::json!({"model": model, "input": "x"})),
            )
            .await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 401, "{body}");
        assert!(!body.contains("e5") && !body.contains("MiniLM"), "{body}");
    }
}
