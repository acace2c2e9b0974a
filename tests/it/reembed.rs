//! Re-embedding a collection into another model while it serves (issue 18): a collection of
//! translated manual pages made with all-MiniLM-L6-v2 moves to multilingual-e5-small while
//! searches run, a document arrives and another is deleted; the run is interrupted once and
//! resumed; then the CLI moves it back.
//!
//! "One model" is checked on the vectors themselves: every search result's dense similarities
//! must be the cosines of the question and the hits under one model (both models' vectors are
//! read from the chunk files each wrote), never a mix, and never a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hearth_api::{Collection, Service, Submission};
use hearth_engine::EngineConfig;
use hearth_index::{CollectionName, DocId, IndexConfig, SearchMode, decode_chunks};
use serde_json::Value;

use crate::common::{Backend, Node, assert_ok, objects, root};

const E5: &str = "multilingual-e5-small/e5-small-q4.bin";
const MINILM: &str = "all-MiniLM-L6-v2";
const E5_NAME: &str = "multilingual-e5-small";

const QUESTIONS: [&str; 6] = [
    "Wie richtet man einen wiederkehrenden Auftrag in der crontab ein?",
    "comment afficher une arborescence de répertoires",
    "how do I change the permissions of a file",
    "¿Cómo cambio la fecha de modificación de un archivo?",
    "come misurare il tempo di esecuzione di un comando",
    "hoe test ik of een computer bereikbaar is",
];

/// Chunk vectors by chunk id, from the chunk files under `prefix` (direct children only).
async fn vectors(node: &Node, prefix: &str) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for (key, bytes) in objects(&node.store(), prefix).await {
        if key[prefix.len()..].contains('/') {
            continue;
        }
        for c in decode_chunks(&key, &bytes).unwrap() {
            out.insert(c.id().to_string(), c.embedding.unwrap());
        }
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One search's dense hits: (doc id, chunk id, similarity).
type Seen = Vec<(String, String, f32)>;

async fn dense(service: &Service, col: &Arc<Collection>, q: &str) -> Result<Seen, String> {
    let r = service
        .search(
            col,
            hearth_api::SearchQuery {
                text: q.to_owned(),
                mode: SearchMode::Dense,
                top_k: 5,
                filter: None,
                fusion: None,
                reader: hearth_api::Reader::Everything,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.hits
        .iter()
        .map(|h| {
            (
                h.doc_id.clone(),
                h.chunk_id.clone(),
                h.dense.map_or(f32::NAN, |d| d.similarity),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collection_moves_to_another_model_while_it_serves() {
    // 16 pages, two per language; two more kept back: one arrives during the re-embedding.
    let docs = root().join("testdata/multilingual/docs");
    let mut pages: Vec<std::path::PathBuf> = Vec::new();
    for lang in ["de", "es", "fr", "it", "nl", "pl", "pt-br", "ru"] {
        let mut files: Vec<_> = std::fs::read_dir(docs.join(lang))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        pages.extend(files.into_iter().take(2));
    }
    let late = docs.join("pt-br/df.1.pt-br.txt");
    assert!(!pages.contains(&late));
    let t = std::time::Instant::now();
    let node = Node::new(Backend::Local).env(
        "HEARTH__ENGINE__EMBEDDERS",
        &format!("{{ {E5_NAME} = \"{E5}\" }}"),
    );
    let dir = tempfile::tempdir().unwrap();
    for p in &pages {
        std::fs::copy(p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    node.ingest("re", &[dir.path()]);
    println!("ingested in {:.1} s", t.elapsed().as_secs_f64());
    let store = node.store();
    let old_vectors = vectors(&node, "chunks/re/").await;
    assert!(old_vectors.len() > 100, "{} chunks", old_vectors.len());

    let parts = node.service_parts(
        "data-reembed",
        EngineConfig {
            embedders: BTreeMap::from([(E5_NAME.to_owned(), E5.into())]),
            ..EngineConfig::default()
        },
        IndexConfig::default(),
    );
    let service = Arc::new(Service::new(parts).unwrap());
    let name = CollectionName::new("re").unwrap();
    let col = service.open(&name).await.unwrap();
    assert_eq!(service.embedder_name(&col), MINILM);

    // Refusals: an unknown model, the model in use.
    let err = service
        .reembed(&col, "no-such-model", &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no embedding model named \"no-such-model\""),
        "{err}"
    );
    let err = service
        .reembed(&col, MINILM, &|_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already uses"), "{err}");

    // Interrupted after a few documents: nothing changes for searches, and the new files stay.
    let before = dense(&service, &col, QUESTIONS[0]).await.unwrap();
    {
        let (service, col2) = (service.clone(), col.clone());
        let run = tokio::spawn(async move { service.reembed(&col2, E5_NAME, &|_, _| {}).await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while col.reembedding().is_none_or(|s| s.done < 4) {
            assert!(std::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
    }
    assert!(col.reembedding().is_none());
    assert_eq!(service.embedder_name(&col), MINILM);
    assert_eq!(dense(&service, &col, QUESTIONS[0]).await.unwrap(), before);
    let written = objects(&store, "chunks/re/v1/").await.len();
    assert!(written >= 4, "{written} new chunk files");
    assert_eq!(
        service.pending_reembed(&col).await.unwrap().as_deref(),
        Some(E5_NAME)
    );

    // Resumed, with searches running, a document arriving and another deleted meanwhile.
    let minilm_q: Vec<Vec<f32>> = service
        .embed(
            QUESTIONS.iter().map(|q| q.to_string()).collect(),
            Some(MINILM),
        )
        .await
        .unwrap()
        .vectors;
    let e5_q: Vec<Vec<f32>> = service
        .embed(
            QUESTIONS.iter().map(|q| q.to_string()).collect(),
            Some(E5_NAME),
        )
        .await
        .unwrap()
        .vectors;
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = {
        let (service, col, stop) = (service.clone(), col.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: Vec<(usize, Result<Seen, String>)> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && seen.len() < 20_000 {
                let q = i % QUESTIONS.len();
                seen.push((q, dense(&service, &col, QUESTIONS[q]).await));
                i += 1;
                // A steady stream, leaving the two cores mostly to the re-embedding.
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            seen
        })
    };
    let deleted: DocId = service
        .documents(&col)
        .await
        .unwrap()
        .iter()
        .find(|r| r.source.ends_with("gzip.1.de.txt"))
        .unwrap()
        .doc_id;
    let side = {
        let (service, col) = (service.clone(), col.clone());
        let bytes = std::fs::read(&late).unwrap();
        tokio::spawn(async move {
            // Wait until the re-embedding is under way.
            while col.reembedding().is_none_or(|s| s.done < 6) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // A second re-embedding of the collection is refused while this one runs.
            let err = service
                .reembed(&col, E5_NAME, &|_, _| {})
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("is being re-embedded with"), "{err}");
            assert!(service.delete_document(&col, &deleted).await.unwrap());
            let sub = Submission {
                source: "df.1.pt-br.txt".into(),
                bytes: bytes.into(),
                metadata: Default::default(),
                access: None,
            };
            let id = match service.submit(&col, sub).await.unwrap() {
                hearth_api::Submitted::Accepted(id) => id,
                other => panic!("{other:?}"),
            };
            service.process(&col, id).await.unwrap();
            service.commit(&col).await.unwrap();
            id
        })
    };
    let report = service.reembed(&col, E5_NAME, &|_, _| {}).await.unwrap();
    let added = side.await.unwrap();
    println!("{report:?} at {:.1} s", t.elapsed().as_secs_f64());
    // A few more searches after the switch.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = searcher.await.unwrap();
    assert_eq!(service.embedder_name(&col), E5_NAME);
    assert_eq!(report.previous, MINILM);
    // At least four documents were written before the interruption; one of them may be the
    // document deleted meanwhile, which is then not resumed.
    assert!(report.resumed_documents >= 3, "{report:?}");
    assert_eq!(report.documents, pages.len(), "{report:?}");

    // Every search succeeded and scored its hits with one model's vectors.
    let new_vectors = vectors(&node, "chunks/re/v1/").await;
    let (mut by_minilm, mut by_e5) = (0, 0);
    let mut switched = false;
    for (q, r) in &seen {
        let hits = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a search failed: {e}"));
        assert_eq!(hits.len(), 5);
        // Hits of the two documents that changed meanwhile have vectors in only one model's
        // files; the others decide.
        let kept: Vec<_> = hits
            .iter()
            .filter(|(d, _, _)| *d != deleted.to_hex() && *d != added.to_hex())
            .collect();
        if kept.is_empty() {
            continue;
        }
        let matches = |qv: &[f32], vs: &HashMap<String, Vec<f32>>| {
            kept.iter()
                .all(|(_, c, s)| vs.get(c).is_some_and(|v| (dot(qv, v) - s).abs() < 2e-3))
        };
        match (
            matches(&minilm_q[*q], &old_vectors),
            matches(&e5_q[*q], &new_vectors),
        ) {
            (true, false) => {
                assert!(!switched, "a search went back to the old model");
                by_minilm += 1;
            }
            (false, true) => {
                switched = true;
                by_e5 += 1;
            }
            other => panic!("question {q}: hits {hits:?} fit {other:?} (MiniLM, e5)"),
        }
    }
    assert!(by_minilm > 0 && by_e5 > 0, "{by_minilm} / {by_e5}");
    println!("searches during the re-embedding: {by_minilm} with MiniLM, then {by_e5} with e5");

    // The deleted document is gone from both models' files and results; the late one is in.
    let files = objects(&store, "chunks/re/").await;
    assert!(
        files.keys().all(|k| k.starts_with("chunks/re/v1/")),
        "old files left"
    );
    assert!(!files.keys().any(|k| k.contains(&deleted.to_hex())));
    assert!(files.keys().any(|k| k.contains(&added.to_hex())));
    let docs: HashSet<String> = col_doc_ids(&service, &col).await;
    assert!(!docs.contains(&deleted.to_hex()) && docs.contains(&added.to_hex()));
    let late_hit = dense(&service, &col, "mostrar o espaço livre em disco com df")
        .await
        .unwrap();
    assert_eq!(late_hit[0].0, added.to_hex(), "{late_hit:?}");
    drop(col);
    drop(service);

    // The CLI moves it back (a fresh process, its own index cache), and searches work.
    let out = node.run(&["reembed", "-c", "re", "--embedder", MINILM, "--json"]);
    assert_ok(&out);
    println!("back to MiniLM at {:.1} s", t.elapsed().as_secs_f64());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["embedder"], MINILM, "{report}");
    assert_eq!(report["previous"], E5_NAME, "{report}");
    assert_eq!(report["documents"], pages.len(), "{report}");
    let files = objects(&store, "chunks/re/").await;
    assert!(
        files.keys().all(|k| k.starts_with("chunks/re/v2/")),
        "{:?}",
        files.keys()
    );
    let back = node.search("re", QUESTIONS[2], &["--mode", "dense"]);
    assert!(
        back["hits"][0]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("chmod.1.pt-br.txt")),
        "{back}"
    );
    // MiniLM again: the same vectors as before the first re-embedding.
    let again = vectors(&node, "chunks/re/v2/").await;
    for (id, v) in &again {
        if let Some(old) = old_vectors.get(id) {
            assert!(dot(v, old) > 0.9999, "chunk {id}");
        }
    }
    let out = node.run(&["reembed", "-c", "re", "--embedder", MINILM]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already uses"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn col_doc_ids(service: &Service, col: &Arc<Collection>) -> HashSet<String> {
    service
        .documents(col)
        .await
        .unwrap()
        .iter()
        .map(|r| r.doc_id.to_hex())
        .collect()
}

/// Over HTTP: only an admin of the collection may start a re-embedding (a reader, a writer, an
/// admin of another collection, a tenant's admin get 403 before anything about models is said); an unknown
/// model or the one in use is a 400, a second start while one runs a 409; the collection's
/// JSON shows progress to admins only, then the new model.
#[tokio::test(flavor = "multi_thread")]
async fn over_http_an_admin_starts_it_and_watches_it_finish() {
    let node = Node::new(Backend::Local).env(
        "HEARTH__ENGINE__EMBEDDERS",
        &format!("{{ {E5_NAME} = \"{E5}\" }}"),
    );
    let docs = root().join("testdata/multilingual/docs");
    node.ingest(
        "ops",
        &[
            &docs.join("es/touch.1.es.txt"),
            &docs.join("ru/iconv.1.ru.txt"),
            &docs.join("es/hosts.5.es.txt"),
        ],
    );
    let admin = crate::common::create_key(&node, "admin", "admin", &[], &[]);
    let reader = crate::common::create_key(&node, "reader", "reader", &[], &[]);
    let writer = crate::common::create_key(&node, "writer", "writer", &["ops"], &[]);
    let other_admin = crate::common::create_key(&node, "other", "admin", &["other"], &[]);
    // A tenant's admin administers the tenant's collections only.
    assert_ok(&node.run(&["tenants", "set", "acme", "-c", "acme-*"]));
    let tenant_admin =
        crate::common::create_key(&node, "acme-ops", "admin", &[], &["--tenant", "acme"]);
    let s = node.serve(&[]).await;
    let start = |key: Option<String>, c: &'static str, model: &'static str| {
        let s = &s;
        async move {
            s.call(
                key.as_deref(),
                "POST",
                &format!("/v1/collections/{c}/reembed"),
                Some(serde_json::json!({"embedder": model})),
            )
            .await
        }
    };
    let r = start(None, "ops", E5_NAME).await;
    assert_eq!(r.status, 401);
    for key in [&reader, &writer, &other_admin, &tenant_admin] {
        let r = start(Some(key.clone()), "ops", "labse").await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 403, "{body}");
        assert!(!body.contains(E5_NAME) && !body.contains("labse"), "{body}");
    }
    let r = start(Some(admin.clone()), "ops", "labse").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains(E5_NAME));
    let r = start(Some(admin.clone()), "ops", MINILM).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("already uses"));
    let r = start(Some(admin.clone()), "nothing-here", E5_NAME).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let r = s
        .call(
            Some(&admin),
            "POST",
            "/v1/collections/ops/reembed",
            Some(serde_json::json!({"embedder": E5_NAME, "extra": 1})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    let r = start(Some(admin.clone()), "ops", E5_NAME).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let out = r.json();
    assert_eq!(out["embedder"], MINILM, "{out}");
    assert_eq!(out["reembed"]["embedder"], E5_NAME, "{out}");
    assert_eq!(out["reembed"]["state"], "running", "{out}");
    let again = start(Some(admin.clone()), "ops", E5_NAME).await;
    // Unless the first has finished already (three short pages), a second start is refused.
    if again.status != 202 {
        assert_eq!(
            again.status,
            409,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let r = s
            .call(Some(&admin), "GET", "/v1/collections/ops", None)
            .await;
        let v = r.json();
        if v["embedder"] == E5_NAME {
            assert!(v.get("reembed").is_none(), "{v}");
            assert_eq!(v["documents"], 3, "{v}");
            break;
        }
        assert_ne!(v["reembed"]["state"], "failed", "{v}");
        let seen = s
            .call(Some(&reader), "GET", "/v1/collections/ops", None)
            .await;
        assert!(seen.json().get("reembed").is_none(), "{}", seen.json());
        assert!(std::time::Instant::now() < deadline, "not finished: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = s
        .call(
            Some(&reader),
            "POST",
            "/v1/collections/ops/search",
            Some(serde_json::json!({"query": "cambiar la fecha de un archivo", "top_k": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["hits"][0]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("touch.1.es.txt")),
        "{}",
        r.json()
    );
    // What hearth says itself is in the question's language; the words quoted from the
    // documents stay theirs. (A similarity floor no passage reaches forces the decline.)
    for (question, says) in [
        (
            "Wie backe ich einen Apfelkuchen?",
            "Ich habe in den Dokumenten",
        ),
        (
            "Comment faire une tarte aux pommes ?",
            "Je n'ai rien trouvé",
        ),
        ("Jak upiec szarlotkę z cynamonem?", "Nie znalazłem nic"),
        ("How do I bake an apple pie?", hearth_api::NOTHING_RELEVANT),
    ] {
        let r = s
            .call(
                Some(&reader),
                "POST",
                "/v1/collections/ops/ask",
                Some(serde_json::json!({"question": question, "min_similarity": 0.999})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let a = r.json();
        assert!(
            a["answer"].as_str().unwrap().starts_with(says),
            "{question}: {a}"
        );
        assert_eq!(a["grounded"], false, "{a}");
    }
    let r = s
        .call(
            Some(&reader),
            "POST",
            "/v1/collections/ops/ask",
            Some(serde_json::json!({"question": "¿Cómo cambio la fecha de un archivo con touch?"})),
        )
        .await;
    let a = r.json();
    assert_eq!(a["grounded"], true, "{a}");
    let quote = a["answer"].as_str().unwrap();
    // The quote is the Spanish passage's own words (line breaks folded), cited exactly.
    let cited = a["citations"][0]["text"].as_str().unwrap();
    let fold = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = quote.lines().next().unwrap();
    let inner = first.trim_start_matches('“').split('”').next().unwrap();
    assert!(inner.contains("cambia la fecha"), "{first}");
    assert!(fold(cited).contains(&fold(inner)), "{first} not in {cited}");

    // Each start is in the audit log as an admin action on the collection, with its outcome.
    let store = node.store();
    let mut outcomes = Vec::new();
    for k in store.list("audit/").await.unwrap() {
        if k.ends_with("HEAD.json") {
            continue;
        }
        let e: Value = serde_json::from_slice(&store.get(&k).await.unwrap()).unwrap();
        if e["target"] == "POST /v1/collections/{c}/reembed" && e["collection"] == "ops" {
            assert_eq!(e["action"], "admin", "{e}");
            outcomes.push(e["outcome"].as_u64().unwrap());
        }
    }
    outcomes.sort_unstable();
    assert!(outcomes.starts_with(&[202, 400, 400, 400]), "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| **o == 403).count(),
        4,
        "{outcomes:?}"
    );
}

/// A collection deleted while it is re-embedded stays deleted: the re-embedding stops, and
/// nothing it wrote (chunk files of the new model, settings, the new local index) is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_collection_stops_a_reembedding_and_leaves_nothing() {
    let docs = root().join("testdata/multilingual/docs");
    let node = Node::new(Backend::Local).env(
        "HEARTH__ENGINE__EMBEDDERS",
        &format!("{{ {E5_NAME} = \"{E5}\" }}"),
    );
    node.ingest(
        "gone",
        &[
            &docs.join("es/touch.1.es.txt"),
            &docs.join("ru/iconv.1.ru.txt"),
            &docs.join("es/hosts.5.es.txt"),
            &docs.join("pt-br/df.1.pt-br.txt"),
            &docs.join("ru/tmpfs.5.ru.txt"),
            &docs.join("pt-br/cp.1.pt-br.txt"),
        ],
    );
    let parts = node.service_parts(
        "data-gone",
        EngineConfig {
            embedders: BTreeMap::from([(E5_NAME.to_owned(), E5.into())]),
            ..EngineConfig::default()
        },
        IndexConfig::default(),
    );
    let data = parts.data_dir.clone();
    let service = Arc::new(Service::new(parts).unwrap());
    let name = CollectionName::new("gone").unwrap();
    let col = service.open(&name).await.unwrap();
    let run = {
        let (service, col) = (service.clone(), col.clone());
        tokio::spawn(async move { service.reembed(&col, E5_NAME, &|_, _| {}).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while col.reembedding().is_none_or(|s| s.done < 1) {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(service.delete_collection(&name).await.unwrap());
    let err = run.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("deleted"), "{err}");
    let store = node.store();
    for prefix in [
        "chunks/gone/",
        "docs/gone/",
        "raw/gone/",
        "collections/gone",
    ] {
        let left = objects(&store, prefix).await;
        assert!(left.is_empty(), "{prefix}: {:?}", left.keys());
    }
    let dirs: Vec<String> = std::fs::read_dir(data.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gone"))
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    assert!(!service.exists(&name).await.unwrap());
}

type Srv = crate::common::Server;

/// The documents (by file name) that `key` finds: one search per document, filtered to it,
/// so that what decides is the index's allowed set alone.
async fn readable(s: &Srv, key: &str, ids: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, id) in ids {
        let r = s
            .call(
                Some(key),
                "POST",
                "/v1/collections/acl/search",
                Some(serde_json::json!({"query": "option", "top_k": 3,
                                        "filter": {"doc_id": [id]}})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if !r.json()["hits"].as_array().unwrap().is_empty() {
            out.push(name.clone());
        }
    }
    out
}

/// Each reader's readable documents are `expected`, in order.
async fn check_readers(
    s: &Srv,
    readers: &[String; 3],
    ids: &BTreeMap<String, String>,
    expected: &[Vec<String>; 3],
    when: &str,
) {
    for (key, want) in readers.iter().zip(expected) {
        assert_eq!(&readable(s, key, ids).await, want, "{when}");
    }
}

async fn set_access(s: &Srv, admin: &str, id: &str, access: Value) {
    let path = format!("/v1/collections/acl/documents/{id}");
    let r = s
        .call(
            Some(admin),
            "PATCH",
            &path,
            Some(serde_json::json!({"access": access})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn start_reembed(s: &Srv, admin: &str) {
    let r = s
        .call(
            Some(admin),
            "POST",
            "/v1/collections/acl/reembed",
            Some(serde_json::json!({"embedder": E5_NAME})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

async fn acl_state(s: &Srv, admin: &str) -> Value {
    s.call(Some(admin), "GET", "/v1/collections/acl", None)
        .await
        .json()
}

/// Polls the collection as an admin until `done` holds of it (within `secs`), asserting
/// meanwhile that a re-embedding is running.
async fn acl_state_when(s: &Srv, admin: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let v = acl_state(s, admin).await;
        if done(&v) {
            return v;
        }
        assert_eq!(v["reembed"]["state"], "running", "{v}");
        assert!(std::time::Instant::now() < deadline, "timed out: {v}");
        // Within the admin key's 600 requests a minute.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
}

/// `everyone` and `extra`, sorted: what a reader finds.
fn sorted_with(everyone: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = everyone.to_vec();
    v.extend(extra.iter().map(|n| (*n).to_owned()));
    v.sort();
    v
}

/// A re-embedding cut short by `kill -9` shows as interrupted after the restart, one that
/// fails shows as failed with its reason, and the next start resumes it to the end. Who may
/// read what is the same throughout: access lists set before the kill, changed between the
/// runs and changed while the last run works all hold under the new model.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_reembedding_resumes_over_http_and_access_lists_survive() {
    let node = Node::new(Backend::Local).env(
        "HEARTH__ENGINE__EMBEDDERS",
        &format!("{{ {E5_NAME} = \"{E5}\" }}"),
    );
    let docs = root().join("testdata/multilingual/docs");
    let pages: Vec<std::path::PathBuf> = [
        "de/crontab.5.de.txt",
        "de/ssh-keygen.1.de.txt",
        "es/logrotate.8.es.txt",
        "es/netstat.8.es.txt",
        "fr/nano.1.fr.txt",
        "fr/xargs.1.fr.txt",
        "it/fstab.5.it.txt",
        "nl/grep.1.nl.txt",
        "pl/modprobe.8.pl.txt",
        "ru/ls.1.ru.txt",
    ]
    .iter()
    .map(|p| docs.join(p))
    .collect();
    let refs: Vec<&std::path::Path> = pages.iter().map(|p| p.as_path()).collect();
    node.ingest("acl", &refs);
    let ids: BTreeMap<String, String> = node
        .docs("acl")
        .iter()
        .map(|d| {
            (
                crate::common::file_name(d),
                d["doc_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ids.len(), pages.len(), "{ids:?}");
    let admin = crate::common::create_key(&node, "admin", "admin", &[], &[]);
    let lena = crate::common::create_key(&node, "lena", "reader", &["acl"], &["--groups", "legal"]);
    let finn = crate::common::create_key(
        &node,
        "finn",
        "reader",
        &["acl"],
        &["--user", "finn@example.com"],
    );
    let eve = crate::common::create_key(&node, "eve", "reader", &["acl"], &[]);
    let readers = [lena, finn, eve];
    let mut s = node.serve(&[]).await;
    set_access(
        &s,
        &admin,
        &ids["crontab.5.de.txt"],
        serde_json::json!(["legal"]),
    )
    .await;
    set_access(
        &s,
        &admin,
        &ids["logrotate.8.es.txt"],
        serde_json::json!(["user:finn@example.com"]),
    )
    .await;
    set_access(
        &s,
        &admin,
        &ids["nano.1.fr.txt"],
        serde_json::json!(["legal", "user:finn@example.com"]),
    )
    .await;
    let everyone: Vec<String> = ids
        .keys()
        .filter(|n| {
            !["crontab.5.de.txt", "logrotate.8.es.txt", "nano.1.fr.txt"].contains(&n.as_str())
        })
        .cloned()
        .collect();
    let before = [
        sorted_with(&everyone, &["crontab.5.de.txt", "nano.1.fr.txt"]),
        sorted_with(&everyone, &["logrotate.8.es.txt", "nano.1.fr.txt"]),
        sorted_with(&everyone, &[]),
    ];
    check_readers(&s, &readers, &ids, &before, "before").await;

    // Started, then the process is killed mid-way.
    start_reembed(&s, &admin).await;
    acl_state_when(&s, &admin, 120, |v| {
        v["reembed"]["done"].as_u64().is_some_and(|d| d >= 2)
    })
    .await;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    drop(s);
    let written = objects(&node.store(), "chunks/acl/v1/").await.len();
    assert!(written >= 2, "{written} chunk files of the new model");

    let s = node.serve(&[]).await;
    let v = acl_state(&s, &admin).await;
    assert_eq!(v["embedder"], MINILM, "{v}");
    assert_eq!(v["reembed"]["state"], "interrupted", "{v}");
    assert_eq!(v["reembed"]["embedder"], E5_NAME, "{v}");
    check_readers(&s, &readers, &ids, &before, "after the kill").await;

    // A run that cannot open its new index (a file stands where its directory goes) fails
    // and says why; the collection serves on, unchanged.
    let new_dir = node.dir.path().join("data/index/acl.v1");
    assert!(new_dir.is_dir(), "the interrupted run's index is kept");
    std::fs::remove_dir_all(&new_dir).unwrap();
    std::fs::write(&new_dir, b"in the way").unwrap();
    start_reembed(&s, &admin).await;
    let failed = acl_state_when(&s, &admin, 60, |v| v["reembed"]["state"] == "failed").await;
    assert_eq!(failed["embedder"], MINILM, "{failed}");
    assert!(
        failed["reembed"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    check_readers(&s, &readers, &ids, &before, "after the failure").await;
    std::fs::remove_file(&new_dir).unwrap();

    // Access changes between the runs, then once more while the last run works.
    set_access(
        &s,
        &admin,
        &ids["ls.1.ru.txt"],
        serde_json::json!(["legal"]),
    )
    .await;
    start_reembed(&s, &admin).await;
    set_access(
        &s,
        &admin,
        &ids["nano.1.fr.txt"],
        serde_json::json!(["user:finn@example.com"]),
    )
    .await;
    let v = acl_state_when(&s, &admin, 180, |v| v["embedder"] == E5_NAME).await;
    assert!(v.get("reembed").is_none(), "{v}");
    let mut everyone = everyone.clone();
    everyone.retain(|n| n != "ls.1.ru.txt");
    let after = [
        sorted_with(&everyone, &["crontab.5.de.txt", "ls.1.ru.txt"]),
        sorted_with(&everyone, &["logrotate.8.es.txt", "nano.1.fr.txt"]),
        sorted_with(&everyone, &[]),
    ];
    check_readers(&s, &readers, &ids, &after, "after the switch").await;
    // And after a restart, from the new model's files and index.
    drop(s);
    let s = node.serve(&[]).await;
    assert_eq!(acl_state(&s, &admin).await["embedder"], E5_NAME);
    check_readers(&s, &readers, &ids, &after, "after a restart").await;
    assert!(
        objects(&node.store(), "chunks/acl/")
            .await
            .keys()
            .all(|k| k.starts_with("chunks/acl/v1/")),
        "the old model's chunk files are gone"
    );
}
