//! BM25 over chunk text with tantivy.
//!
//! Schema: `pid` (u64, indexed and fast: our point id) and `text` (indexed with the
//! collection's analyzer, term frequencies and field norms, not stored: the text lives in the
//! collection index's memory). Text is NFKC-normalised before indexing and before querying, so
//! a PDF's "ﬁrst" matches "first".
//!
//! Queries never go through tantivy's query parser (user text such as `what?!` is not query
//! syntax): the text is analysed with the same analyzer and the terms become a boolean query of
//! `SHOULD` term queries. Filters and tombstones are applied while collecting, on the `pid`
//! fast field, so a selective filter still fills `top_k`.
//!
//! No tantivy type leaves this module.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::BooleanQuery;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use unicode_normalization::UnicodeNormalization;

use crate::error::{IndexError, Result};
use crate::pidset::PidSet;

/// Memory budget of the tantivy writer, in bytes.
const WRITER_BUDGET_BYTES: usize = 50_000_000;
/// Tokens longer than this many bytes are dropped (base64 blobs, hashes).
const MAX_TOKEN_BYTES: usize = 64;
/// At most this many distinct query terms are used.
const MAX_QUERY_TERMS: usize = 256;

/// How chunk text is split into terms; fixed per collection at creation.
///
/// Every analyzer splits on non-alphanumeric characters, drops tokens over 64 bytes, lowercases
/// and folds accents to ASCII (so `café` matches `cafe`); the `*_stem` ones then apply that
/// language's Snowball stemmer (so `running` matches `runs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Analyzer {
    /// English Snowball stemming. The default.
    #[default]
    EnglishStem,
    /// German Snowball stemming.
    GermanStem,
    /// French Snowball stemming.
    FrenchStem,
    /// Spanish Snowball stemming.
    SpanishStem,
    /// No stemming: lowercase and ASCII folding only.
    Simple,
}

impl Analyzer {
    /// The snake_case name used in configuration and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Analyzer::EnglishStem => "english_stem",
            Analyzer::GermanStem => "german_stem",
            Analyzer::FrenchStem => "french_stem",
            Analyzer::SpanishStem => "spanish_stem",
            Analyzer::Simple => "simple",
        }
    }

    fn tokenizer_name(self) -> String {
        format!("hearth_{}", self.as_str())
    }

    fn build(self) -> TextAnalyzer {
        let base = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter);
        let language = match self {
            Analyzer::EnglishStem => Language::English,
            Analyzer::GermanStem => Language::German,
            Analyzer::FrenchStem => Language::French,
            Analyzer::SpanishStem => Language::Spanish,
            Analyzer::Simple => return base.build(),
        };
        base.filter(Stemmer::new(language)).build()
    }

    /// The distinct terms of `text` (NFKC-normalised first), in order of first occurrence.
    pub(crate) fn terms(self, text: &str) -> Vec<String> {
        let text: String = text.nfkc().collect();
        let mut analyzer = self.build();
        let mut stream = analyzer.token_stream(&text);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(token) = stream.next() {
            if out.len() >= MAX_QUERY_TERMS {
                break;
            }
            if seen.insert(token.text.clone()) {
                out.push(token.text.clone());
            }
        }
        out
    }
}

impl fmt::Display for Analyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Analyzer {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        [
            Analyzer::EnglishStem,
            Analyzer::GermanStem,
            Analyzer::FrenchStem,
            Analyzer::SpanishStem,
            Analyzer::Simple,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "unknown analyzer {s:?}: use english_stem, german_stem, french_stem, spanish_stem or simple"
            ))
        })
    }
}

/// The tantivy index of one collection, in its own directory.
pub(crate) struct TantivyIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    /// Created on first write, so read-only collections hold no writer threads.
    writer: Option<IndexWriter>,
    pid: Field,
    text: Field,
    analyzer: Analyzer,
}

impl TantivyIndex {
    /// Opens an existing index and returns it with its last commit payload. Fails if the index
    /// is missing, unreadable or was built with another schema or analyzer.
    pub(crate) fn open(dir: &Path, analyzer: Analyzer) -> Result<(Self, Option<String>)> {
        let index = Index::open_in_dir(dir).map_err(|e| tantivy_err(dir, e))?;
        let expected = schema(analyzer).0;
        if index.schema() != expected {
            return Err(IndexError::Corrupt {
                key: dir.display().to_string(),
                detail: "tantivy schema differs from the expected one".into(),
            });
        }
        let payload = index.load_metas().map_err(|e| tantivy_err(dir, e))?.payload;
        Ok((Self::wrap(dir, index, analyzer)?, payload))
    }

    /// Creates an empty index in `dir`, removing whatever was there.
    pub(crate) fn create(dir: &Path, analyzer: Analyzer) -> Result<Self> {
        let io = |source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        };
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let index =
            Index::create_in_dir(dir, schema(analyzer).0).map_err(|e| tantivy_err(dir, e))?;
        Self::wrap(dir, index, analyzer)
    }

    /// Creates an empty index held in memory only (a sealed cache: nothing on disk). `dir`
    /// names it in errors.
    pub(crate) fn in_memory(dir: &Path, analyzer: Analyzer) -> Result<Self> {
        let index = Index::create_in_ram(schema(analyzer).0);
        Self::wrap(dir, index, analyzer)
    }

    fn wrap(dir: &Path, index: Index, analyzer: Analyzer) -> Result<Self> {
        index
            .tokenizers()
            .register(&analyzer.tokenizer_name(), analyzer.build());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| tantivy_err(dir, e))?;
        let (_, pid, text) = schema(analyzer);
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: None,
            pid,
            text,
            analyzer,
        })
    }

    fn writer(&mut self) -> Result<&mut IndexWriter> {
        if self.writer.is_none() {
            let writer = self
                .index
                .writer_with_num_threads(1, WRITER_BUDGET_BYTES)
                .map_err(|e| tantivy_err(&self.dir, e))?;
            self.writer = Some(writer);
        }
        // invariant: set just above when it was None.
        Ok(self.writer.as_mut().expect("writer was just created"))
    }

    /// Queues a chunk's text under `pid`; visible after [`Self::commit`].
    pub(crate) fn add(&mut self, pid: u32, text: &str) -> Result<()> {
        let (pid_field, text_field) = (self.pid, self.text);
        let mut doc = TantivyDocument::default();
        doc.add_u64(pid_field, u64::from(pid));
        doc.add_text(text_field, text.nfkc().collect::<String>());
        let dir = self.dir.clone();
        self.writer()?
            .add_document(doc)
            .map_err(|e| tantivy_err(&dir, e))?;
        Ok(())
    }

    /// Queues the removal of the chunks with these pids.
    pub(crate) fn delete(&mut self, pids: impl IntoIterator<Item = u32>) -> Result<()> {
        let pid_field = self.pid;
        let writer = self.writer()?;
        for pid in pids {
            writer.delete_term(Term::from_field_u64(pid_field, u64::from(pid)));
        }
        Ok(())
    }

    /// Queues the removal of every chunk (compaction re-adds the live ones under new pids).
    pub(crate) fn delete_all(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        self.writer()?
            .delete_all_documents()
            .map_err(|e| tantivy_err(&dir, e))?;
        Ok(())
    }

    /// Drops every queued change since the last commit.
    pub(crate) fn rollback(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        if let Some(writer) = self.writer.as_mut() {
            writer.rollback().map_err(|e| tantivy_err(&dir, e))?;
        }
        Ok(())
    }

    /// Durably commits the queued changes with `payload` (the manifest generation) and makes
    /// them visible to searches.
    pub(crate) fn commit(&mut self, payload: &str) -> Result<()> {
        let dir = self.dir.clone();
        let writer = self.writer()?;
        let mut prepared = writer.prepare_commit().map_err(|e| tantivy_err(&dir, e))?;
        prepared.set_payload(payload);
        prepared.commit().map_err(|e| tantivy_err(&dir, e))?;
        self.reader.reload().map_err(|e| tantivy_err(&dir, e))
    }

    /// The analyzer the index was built with.
    pub(crate) fn analyzer(&self) -> Analyzer {
        self.analyzer
    }

    /// The (at most) `k` best chunks for these analysed terms by BM25, as `(pid, score)`, best
    /// first (ties by smaller pid). With `allowed`, only those pids are collected.
    pub(crate) fn search(
        &self,
        terms: &[String],
        k: usize,
        allowed: Option<Arc<PidSet>>,
    ) -> Result<Vec<(u32, f32)>> {
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new_multiterms_query(
            terms
                .iter()
                .map(|t| Term::from_field_text(self.text, t))
                .collect(),
        );
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(k).order_by_score();
        let found = match allowed {
            Some(set) => {
                let keep = move |pid: u64| u32::try_from(pid).is_ok_and(|p| set.contains(p));
                let collector = FilterCollector::new("pid".to_owned(), keep, top);
                searcher.search(&query, &collector)
            }
            None => searcher.search(&query, &top),
        }
        .map_err(|e| tantivy_err(&self.dir, e))?;
        let mut columns = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let column = match columns.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    searcher
                        .segment_reader(addr.segment_ord)
                        .fast_fields()
                        .u64("pid")
                        .map_err(|e| tantivy_err(&self.dir, e))?,
                ),
            };
            let pid = column
                .first(addr.doc_id)
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| IndexError::Corrupt {
                    key: self.dir.display().to_string(),
                    detail: "a tantivy document has no valid pid".into(),
                })?;
            out.push((pid, score));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Number of live (not deleted) documents in the last commit.
    pub(crate) fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

fn schema(analyzer: Analyzer) -> (Schema, Field, Field) {
    let mut builder = Schema::builder();
    let pid = builder.add_u64_field("pid", INDEXED | FAST);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(&analyzer.tokenizer_name())
        .set_index_option(IndexRecordOption::WithFreqs)
        .set_fieldnorms(true);
    let text = builder.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(indexing),
    );
    (builder.build(), pid, text)
}

fn tantivy_err(dir: &Path, e: tantivy::TantivyError) -> IndexError {
    IndexError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("tantivy: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(analyzer: Analyzer, texts: &[&str]) -> (tempfile::TempDir, TantivyIndex) {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TantivyIndex::create(&dir.path().join("t"), analyzer).unwrap();
        for (i, t) in texts.iter().enumerate() {
            idx.add(i as u32, t).unwrap();
        }
        idx.commit("1").unwrap();
        (dir, idx)
    }

    fn pids(idx: &TantivyIndex, query: &str) -> Vec<u32> {
        let terms = idx.analyzer().terms(query);
        idx.search(&terms, 10, None)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect()
    }

    #[test]
    fn stemming_matches_inflections_and_simple_does_not() {
        let texts = ["the dog runs fast", "a cat sleeps", "Running shoes"];
        let (_d, idx) = index_with(Analyzer::EnglishStem, &texts);
        let mut hits = pids(&idx, "running");
        hits.sort_unstable();
        assert_eq!(hits, vec![0, 2]);
        let (_d2, simple) = index_with(Analyzer::Simple, &texts);
        assert_eq!(pids(&simple, "running"), vec![2]);
        assert_eq!(pids(&simple, "RUNS"), vec![0]);
    }

    #[test]
    fn nfkc_and_accent_folding_apply_to_text_and_query() {
        let (_d, idx) = index_with(
            Analyzer::EnglishStem,
            &["the ﬁrst chapter", "second café", "nothing here"],
        );
        assert_eq!(pids(&idx, "first"), vec![0]);
        assert_eq!(pids(&idx, "ﬁrst"), vec![0]);
        assert_eq!(pids(&idx, "cafe"), vec![1]);
    }

    #[test]
    fn punctuation_is_not_query_syntax() {
        let (_d, idx) = index_with(Analyzer::EnglishStem, &["what is this", "other"]);
        assert_eq!(pids(&idx, "what?!"), vec![0]);
        for q in ["", "?!", "\"unbalanced", "a:b OR (", "+-*&|"] {
            let terms = idx.analyzer().terms(q);
            assert!(idx.search(&terms, 5, None).is_ok(), "{q}");
        }
        assert!(Analyzer::EnglishStem.terms("?! ...").is_empty());
    }

    #[test]
    fn filter_and_deletes_apply_while_collecting() {
        let texts: Vec<String> = (0..50).map(|i| format!("apple number {i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (_d, mut idx) = index_with(Analyzer::Simple, &refs);
        let terms = Analyzer::Simple.terms("apple");
        let mut allowed = PidSet::new(50);
        allowed.insert(7);
        allowed.insert(42);
        let hits = idx.search(&terms, 1, Some(Arc::new(allowed))).unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].0 == 7 || hits[0].0 == 42);
        idx.delete([0, 1, 2]).unwrap();
        idx.commit("2").unwrap();
        let hits = idx.search(&terms, 100, None).unwrap();
        assert_eq!(hits.len(), 47);
        assert!(hits.iter().all(|h| h.0 > 2));
        assert_eq!(idx.num_docs(), 47);
    }

    #[test]
    fn payload_survives_reopen_and_analyzer_mismatch_is_refused() {
        let (dir, idx) = index_with(Analyzer::EnglishStem, &["hello"]);
        drop(idx);
        let path = dir.path().join("t");
        let (_idx, payload) = TantivyIndex::open(&path, Analyzer::EnglishStem).unwrap();
        assert_eq!(payload.as_deref(), Some("1"));
        assert!(TantivyIndex::open(&path, Analyzer::Simple).is_err());
        assert_eq!(
            "german_stem".parse::<Analyzer>().unwrap(),
            Analyzer::GermanStem
        );
        assert!("klingon".parse::<Analyzer>().is_err());
    }
}
