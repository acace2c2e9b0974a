//! The embedder against sentence-transformers' reference vectors, and its batcher under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hearth_engine::{
    EmbedPrecision, Embedder, EngineConfig, EngineError, Priority, Role, Tokenizer,
};

use crate::{config, workspace};
use serde::Deserialize;

fn load(cfg: &EngineConfig) -> Embedder {
    Embedder::load(cfg).unwrap_or_else(|e| panic!("loading the embedder: {e}"))
}

#[derive(Deserialize)]
struct Reference {
    dim: usize,
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
    input_ids: Option<Vec<u32>>,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = workspace().join("testdata/embeddings/all-MiniLM-L6-v2.json");
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&raw).unwrap()
    })
}

fn texts() -> Vec<String> {
    reference().items.iter().map(|i| i.text.clone()).collect()
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Asserts every row matches the reference (cosine ≥ `floor`) and is unit length; returns the
/// minimum cosine.
fn check_against_reference(label: &str, rows: &[Vec<f32>], floor: f32) -> f32 {
    let r = reference();
    assert_eq!(rows.len(), r.items.len());
    let mut min = f32::INFINITY;
    for (row, item) in rows.iter().zip(&r.items) {
        assert_eq!(row.len(), r.dim);
        let c = cosine(row, &item.embedding);
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{label}: norm {norm} for {:?}",
            item.text
        );
        assert!(c >= floor, "{label}: cosine {c} for {:?}", item.text);
        min = min.min(c);
    }
    println!("{label}: minimum cosine to sentence-transformers {min:.7}");
    min
}

/// The reference texts one at a time and all in one batch: each within `floor` of
/// sentence-transformers, and batching changes no vector. Returns the rows embedded alone.
fn check_precision(precision: EmbedPrecision, floor: f32) -> Vec<Vec<f32>> {
    let r = reference();
    let base = EngineConfig {
        embed_precision: precision,
        ..config()
    };
    let e = load(&base);
    assert_eq!((e.dim(), e.max_tokens()), (r.dim, r.max_seq_length));

    let alone: Vec<Vec<f32>> = texts()
        .into_iter()
        .map(|t| {
            let out = e
                .embed_blocking(vec![t], Role::Query, Priority::Query)
                .unwrap();
            assert_eq!((out.len(), out.dim()), (1, r.dim));
            out.into_vec()
        })
        .collect();
    check_against_reference(&format!("{precision:?}, one at a time"), &alone, floor);

    // Everything in one request: lengths 3..256 in one batch of 24, packed back to back.
    let cfg = EngineConfig {
        embed_batch_size: 64,
        ..base
    };
    let e = load(&cfg);
    let all = e
        .embed_blocking(texts(), Role::Passage, Priority::Bulk)
        .unwrap();
    assert_eq!(all.len(), r.items.len());
    let batched: Vec<Vec<f32>> = all.iter().map(<[f32]>::to_vec).collect();
    check_against_reference(&format!("{precision:?}, one batch"), &batched, floor);
    for (a, b) in alone.iter().zip(&batched) {
        assert!(cosine(a, b) >= 0.99999, "batching changed a vector");
    }
    alone
}

/// f32 matches sentence-transformers to 1e-4; the int8 path (`engine.embed_precision`, the
/// default where the CPU has AVX-512 VNNI; the portable kernel computes the same bits
/// elsewhere) stays within 1e-3; "auto" is one of the two.
#[test]
fn both_precisions_match_sentence_transformers_alone_and_in_a_batch() {
    let int8 = check_precision(EmbedPrecision::Int8, 0.999);
    let f32s = check_precision(EmbedPrecision::F32, 0.9999);
    let auto = load(&config());
    let chosen = auto.precision();
    assert_ne!(chosen, EmbedPrecision::Auto);
    let auto = auto
        .embed_blocking(texts(), Role::Query, Priority::Query)
        .unwrap();
    let want = if chosen == EmbedPrecision::Int8 {
        &int8
    } else {
        &f32s
    };
    for (a, b) in auto.iter().zip(want) {
        assert!(cosine(a, b) >= 0.99999, "auto ({chosen:?}) differs from it");
    }
}

#[test]
fn tokenizer_matches_reference_ids_and_truncates_long_text() {
    let r = reference();
    let dir = config().embedding_model_dir();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let mut checked = 0;
    for item in &r.items {
        let ids = tok.encode_ids(&item.text, r.max_seq_length).unwrap();
        assert_eq!(
            ids.len(),
            item.tokens.min(r.max_seq_length),
            "{:?}",
            item.text
        );
        assert_eq!((ids[0], ids[ids.len() - 1]), (101, 102), "[CLS] … [SEP]");
        if let Some(want) = &item.input_ids {
            assert_eq!(&ids, want, "{:?}", item.text);
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the reference carries input_ids for a few items"
    );
    let long = r.items.iter().find(|i| i.tokens > r.max_seq_length);
    let long = long.expect("the reference has a text longer than max_seq_length");
    assert_eq!(tok.encode_ids(&long.text, 256).unwrap().len(), 256);
    assert!(matches!(
        tok.encode_ids("hello", 1),
        Err(EngineError::InvalidInput(_))
    ));
}

#[test]
fn text_past_the_token_limit_is_ignored() {
    let r = reference();
    let long = r
        .items
        .iter()
        .find(|i| i.tokens > r.max_seq_length)
        .unwrap();
    let e = load(&config());
    let longer = format!(
        "{} And then a great deal more that the model never sees.",
        long.text
    );
    let out = e
        .embed_blocking(
            vec![long.text.clone(), longer],
            Role::Passage,
            Priority::Bulk,
        )
        .unwrap();
    assert!(cosine(out.row(0), out.row(1)) > 0.999999);
    assert!(cosine(out.row(0), &long.embedding) >= 0.999);
}

#[test]
fn empty_input_gives_empty_embeddings() {
    let e = load(&config());
    let out = e
        .embed_blocking(Vec::new(), Role::Query, Priority::Query)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!((out.len(), out.dim()), (0, 384));
    let out = block_on(e.embed(Vec::new(), Role::Passage, Priority::Bulk)).unwrap();
    assert!(out.is_empty());
}

#[test]
fn async_embed_matches_blocking() {
    let e = load(&config());
    let texts = texts()[..5].to_vec();
    let a = block_on(e.embed(texts.clone(), Role::Query, Priority::Query)).unwrap();
    let b = e
        .embed_blocking(texts, Role::Passage, Priority::Bulk)
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(cosine(x, y) >= 0.99999);
    }
}

#[test]
fn concurrent_callers_with_mixed_priorities_get_their_own_rows() {
    // Small batches, so requests are split across batches and share them with others.
    let cfg = EngineConfig {
        embed_batch_size: 8,
        embed_batch_wait_ms: 5,
        ..config()
    };
    let e = load(&cfg);
    let r = reference();
    let n = r.items.len();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for call in 0..4 {
                    // A different window of the reference texts per thread and call.
                    let k = 1 + (t * 5 + call * 3) % 9;
                    let idx: Vec<usize> = (0..k).map(|j| (t * 7 + call * 11 + j * 5) % n).collect();
                    let texts: Vec<String> = idx.iter().map(|&i| r.items[i].text.clone()).collect();
                    let p = if (t + call) % 3 == 0 {
                        Priority::Query
                    } else {
                        Priority::Bulk
                    };
                    let out = e.embed_blocking(texts, Role::Passage, p).unwrap();
                    assert_eq!(out.len(), k);
                    for (row, &i) in out.iter().zip(&idx) {
                        let c = cosine(row, &r.items[i].embedding);
                        assert!(
                            c >= 0.999,
                            "thread {t} call {call}: cosine {c} for item {i}"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_query_completes_before_a_bulk_backlog() {
    let cfg = EngineConfig {
        embed_batch_size: 8,
        ..config()
    };
    let e = load(&cfg);
    let r = reference();
    // ~85-token passages: 96 of them are 12 batches of 8.
    let passage = r
        .items
        .iter()
        .find(|i| (64..=128).contains(&i.tokens))
        .unwrap();
    let backlog: Vec<String> = (0..96).map(|i| format!("{i} {}", passage.text)).collect();
    let bulk_done = Arc::new(AtomicBool::new(false));
    let bulk = {
        let (e, done) = (e.clone(), Arc::clone(&bulk_done));
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = e
                .embed_blocking(backlog, Role::Passage, Priority::Bulk)
                .unwrap();
            done.store(true, Ordering::SeqCst);
            (out.len(), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let q = e
        .embed_blocking(
            vec!["How do I reset my password?".into()],
            Role::Query,
            Priority::Query,
        )
        .unwrap();
    let query_latency = started.elapsed();
    assert!(
        !bulk_done.load(Ordering::SeqCst),
        "the query waited for the whole bulk backlog"
    );
    assert!(cosine(q.row(0), &r.items[0].embedding) >= 0.999);
    let (n, bulk_time) = bulk.join().unwrap();
    assert_eq!(n, 96);
    println!("query latency under a bulk backlog {query_latency:?}; backlog took {bulk_time:?}");
    assert!(query_latency < bulk_time / 4);
}

#[test]
fn full_queue_is_overloaded_and_handles_share_one_worker() {
    let cfg = EngineConfig {
        embed_queue: 4,
        embed_batch_size: 1024,
        embed_batch_wait_ms: 1000,
        ..config()
    };
    let e = load(&cfg);
    let waiting = {
        let e = e.clone();
        std::thread::spawn(move || {
            e.embed_blocking(
                vec!["a".into(), "b".into(), "c".into()],
                Role::Passage,
                Priority::Bulk,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // The worker is still waiting to fill its batch: three of four bulk slots are taken.
    let err = e
        .embed_blocking(vec!["d".into(), "e".into()], Role::Passage, Priority::Bulk)
        .unwrap_err();
    assert!(matches!(err, EngineError::Overloaded(_)), "{err}");
    let err = e
        .embed_blocking(vec!["x".into(); 5], Role::Query, Priority::Query)
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    assert_eq!(waiting.join().unwrap().unwrap().len(), 3);
    // Dropping a clone leaves the worker running; dropping the last handle joins it.
    let other = e.clone();
    drop(e);
    assert_eq!(
        other
            .embed_blocking(vec!["f".into()], Role::Query, Priority::Query)
            .unwrap()
            .len(),
        1
    );
    drop(other);
}

#[test]
fn missing_model_and_bad_device_are_clear_errors() {
    let cfg = EngineConfig {
        models_dir: std::env::temp_dir().join("hearth-no-such-models"),
        ..config()
    };
    let err = Embedder::load(&cfg).unwrap_err();
    assert!(matches!(err, EngineError::ModelMissing { .. }), "{err}");
    assert!(err.to_string().contains("fetch-models.sh"), "{err}");
    let cfg = EngineConfig {
        device: "tpu".into(),
        ..config()
    };
    let err = Embedder::load(&cfg).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("engine.device"), "{err}");
}

/// Drives a future to completion on this thread (the engine has no async runtime dependency).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
