//! A synthetic collection for the retrieval benches: real-word text (the committed corpus's
//! words with their natural frequencies, so BM25 posting lists have realistic lengths),
//! documents of `per_doc` chunks with metadata and access lists, and given vectors.

use hearth_index::{
    Access, Analyzer, AnnKind, Chunk, CollectionIndex, DocId, IndexParams, IndexedDoc, MetaValue,
    Metadata,
};

/// The index parameters of the benches' collections: `dim`-wide vectors, M 16,
/// ef_construction 200, ef_search 64, English BM25, the graph of kind `ann`.
pub fn params(dim: usize, ann: AnnKind) -> IndexParams {
    IndexParams {
        dim,
        hnsw_m: 16,
        ef_construction: 200,
        ef_search: 64,
        analyzer: Analyzer::EnglishStem,
        ann,
    }
}

/// Words of a chunk.
pub const WORDS_PER_CHUNK: usize = 120;

/// Adds `n` chunks (vectors `vectors`, `dim` = their length / n) to `index` in documents of
/// `per_doc`, texts drawn with `rng`. Commits nothing.
pub fn fill(
    index: &mut CollectionIndex,
    vectors: &[f32],
    per_doc: usize,
    rng: &mut super::Rng,
    n: usize,
) {
    let dim = vectors.len() / n;
    let words = vocabulary();
    for d in 0..n.div_ceil(per_doc) {
        let doc_id = DocId::of_bytes(format!("bench document {d}").as_bytes());
        let lo = d * per_doc;
        let hi = (lo + per_doc).min(n);
        let chunks: Vec<Chunk> = (lo..hi)
            .map(|i| {
                let text = sentence(&words, rng, WORDS_PER_CHUNK);
                Chunk {
                    doc_id,
                    ordinal: (i - lo) as u32,
                    span_start: 0,
                    span_end: text.chars().count() as u64,
                    text,
                    page_start: None,
                    page_end: None,
                    heading: Vec::new(),
                    token_count: 160,
                    embedding: Some(vectors[i * dim..(i + 1) * dim].to_vec()),
                }
            })
            .collect();
        index.add(doc(d, doc_id), &chunks).unwrap();
    }
}

/// Document `d`: metadata `team` (10 values), `shard` (100), `year` (25); readable by group
/// `g{d % 1000}` and by department `dept{d % 10}`.
pub fn doc(d: usize, doc_id: DocId) -> IndexedDoc {
    let mut metadata = Metadata::new();
    metadata.insert("team".into(), MetaValue::Text(format!("t{}", d % 10)));
    metadata.insert("shard".into(), MetaValue::Number((d % 100) as f64));
    metadata.insert("year".into(), MetaValue::Number(2000.0 + (d % 25) as f64));
    IndexedDoc {
        doc_id,
        source: format!("bench/doc-{d:05}.txt"),
        title: None,
        metadata,
        access: Access::parse(&[format!("g{}", d % 1000), format!("dept{}", d % 10)]).unwrap(),
    }
}

/// Words of the committed corpus with their natural frequencies (a word occurs in the list as
/// often as in the text), so BM25 posting lists have realistic lengths.
pub fn vocabulary() -> Vec<String> {
    let mut words = Vec::new();
    for e in std::fs::read_dir(super::root().join("testdata/corpus")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "pdf") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
        words.extend(
            text.split(|c: char| !c.is_alphabetic())
                .filter(|w| (2..20).contains(&w.len()))
                .map(str::to_lowercase),
        );
    }
    words
}

pub fn sentence(words: &[String], rng: &mut super::Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&words[rng.below(words.len() as u64) as usize]);
    }
    s
}
