//! BM25 over chunk text with tantivy.
//!
//! Schema: `pid` (u64, indexed and fast: our point id) and `text` (indexed with the
//! collection's analyzer, term frequencies and field norms, not stored: the text lives in the
//! collection index's memory). Text is NFKC-normalised before indexing and before querying, so
//! a PDF's "ﬁrst" matches "first".
//!
//! With [`Analyzer::Auto`] each chunk's language is detected (whatlang, trigram profiles) and
//! its text stemmed by that language's Snowball stemmer before indexing (tantivy's
//! pre-tokenized text); text in a language without a stemmer, or too short to tell, is indexed
//! unstemmed. The terms share the one `text` field, so BM25's statistics are the whole
//! collection's (one field per language gave a small language's chunks the low IDFs of a
//! small field: BM25 recall@10 on the labelled set fell from 0.945 to 0.896, the German and
//! French questions among the misses). The chunk's language is kept in `lang` (its slot); a
//! query is analysed with the stemmer of every language the collection holds, and the union
//! of its terms searched.
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
    AsciiFoldingFilter, Language, LowerCaser, PreTokenizedString, RemoveLongFilter, Stemmer,
    TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use unicode_normalization::UnicodeNormalization;
use whatlang::Lang;

use crate::cjk::CjkTokenizer;
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
/// Every analyzer splits on non-alphanumeric characters (and cuts Chinese, Japanese and Korean
/// runs into character bigrams), drops tokens over 64 bytes, lowercases
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
    /// Each chunk's language detected and stemmed by its own stemmer (Arabic, Danish, Dutch,
    /// English, Finnish, French, German, Greek, Hungarian, Italian, Norwegian, Portuguese,
    /// Romanian, Russian, Spanish, Swedish, Tamil, Turkish); others as `simple`. For
    /// collections in another language than English, or in several.
    Auto,
}

/// The languages [`Analyzer::Auto`] stems (every Snowball stemmer tantivy has), as whatlang
/// names them. A language's slot is its position here plus one; slot 0 is unstemmed text.
const STEMMED: [(Lang, Language); 18] = [
    (Lang::Ara, Language::Arabic),
    (Lang::Dan, Language::Danish),
    (Lang::Nld, Language::Dutch),
    (Lang::Eng, Language::English),
    (Lang::Fin, Language::Finnish),
    (Lang::Fra, Language::French),
    (Lang::Deu, Language::German),
    (Lang::Ell, Language::Greek),
    (Lang::Hun, Language::Hungarian),
    (Lang::Ita, Language::Italian),
    (Lang::Nob, Language::Norwegian),
    (Lang::Por, Language::Portuguese),
    (Lang::Ron, Language::Romanian),
    (Lang::Rus, Language::Russian),
    (Lang::Spa, Language::Spanish),
    (Lang::Swe, Language::Swedish),
    (Lang::Tam, Language::Tamil),
    (Lang::Tur, Language::Turkish),
];

/// Below this confidence a chunk's language is not trusted and its text is not stemmed.
const MIN_LANGUAGE_CONFIDENCE: f64 = 0.5;

/// The slot of `text` under [`Analyzer::Auto`]: its detected language's, or 0.
fn language_slot(text: &str) -> usize {
    whatlang::detect(text)
        .filter(|info| info.confidence() >= MIN_LANGUAGE_CONFIDENCE)
        .and_then(|info| STEMMED.iter().position(|(lang, _)| *lang == info.lang()))
        .map_or(0, |i| i + 1)
}

/// Analysed query terms.
#[derive(Debug, Default)]
pub(crate) struct Terms(Vec<String>);

impl Terms {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
            Analyzer::Auto => "auto",
        }
    }

    /// The name the schema records. `_2`: CJK text is cut into bigrams (2026-12-05); an index
    /// made before records the old name, so its schema differs and it is rebuilt from the
    /// segments at the next open.
    fn tokenizer_name(self) -> String {
        format!("hearth_{}_2", self.as_str())
    }

    /// The stemmer of a fixed analyzer (`None` for `Simple`, and for `Auto`, whose text is
    /// analysed per chunk before indexing).
    fn language(self) -> Option<Language> {
        match self {
            Analyzer::EnglishStem => Some(Language::English),
            Analyzer::GermanStem => Some(Language::German),
            Analyzer::FrenchStem => Some(Language::French),
            Analyzer::SpanishStem => Some(Language::Spanish),
            Analyzer::Simple | Analyzer::Auto => None,
        }
    }

    /// The analyzer of one language: split (CJK runs into bigrams, `cjk.rs`), drop long
    /// tokens, lowercase, fold accents, stem in `language` if any.
    fn build(language: Option<Language>) -> TextAnalyzer {
        let base = TextAnalyzer::builder(CjkTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter);
        match language {
            Some(language) => base.filter(Stemmer::new(language)).build(),
            None => base.build(),
        }
    }

    /// The distinct terms of `text` (NFKC-normalised first), in order of first occurrence,
    /// for a fixed analyzer (`Auto`: unstemmed).
    #[cfg(test)]
    pub(crate) fn terms(self, text: &str) -> Vec<String> {
        let text: String = text.nfkc().collect();
        distinct_terms(&mut Self::build(self.language()), &text, MAX_QUERY_TERMS)
    }
}

/// The slot's stemmer under [`Analyzer::Auto`].
fn slot_language(slot: usize) -> Option<Language> {
    slot.checked_sub(1).map(|i| STEMMED[i].1)
}

/// The distinct terms `analyzer` makes of `text`, in order of first occurrence, at most
/// [`MAX_QUERY_TERMS`].
fn distinct_terms(analyzer: &mut TextAnalyzer, text: &str, max: usize) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(token) = stream.next() {
        if out.len() >= max {
            break;
        }
        if seen.insert(token.text.clone()) {
            out.push(token.text.clone());
        }
    }
    out
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
            Analyzer::Auto,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| {
            IndexError::InvalidInput(format!(
                "unknown analyzer {s:?}: use english_stem, german_stem, french_stem, spanish_stem, simple or auto"
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
    /// `Auto`: the slot of each chunk's language.
    lang: Option<Field>,
    /// `Auto`: the slots of the languages the last commit holds (how queries are analysed).
    present: Vec<usize>,
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
        index.tokenizers().register(
            &analyzer.tokenizer_name(),
            Analyzer::build(analyzer.language()),
        );
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| tantivy_err(dir, e))?;
        let (_, pid, text, lang) = schema(analyzer);
        let mut index = Self {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: None,
            pid,
            text,
            lang,
            present: Vec::new(),
            analyzer,
        };
        index.find_languages()?;
        Ok(index)
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
        let text: String = text.nfkc().collect();
        let mut doc = TantivyDocument::default();
        doc.add_u64(self.pid, u64::from(pid));
        match self.lang {
            Some(lang) => {
                let slot = language_slot(&text);
                let mut analyzer = Analyzer::build(slot_language(slot));
                let mut tokens = Vec::new();
                {
                    let mut stream = analyzer.token_stream(&text);
                    while let Some(t) = stream.next() {
                        tokens.push(t.clone());
                    }
                }
                doc.add_u64(lang, slot as u64);
                doc.add_pre_tokenized_text(self.text, PreTokenizedString { text, tokens });
            }
            None => doc.add_text(self.text, text),
        }
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
        self.reader.reload().map_err(|e| tantivy_err(&dir, e))?;
        self.find_languages()
    }

    /// `Auto`: which languages the last commit holds (a term lookup per language).
    fn find_languages(&mut self) -> Result<()> {
        let Some(lang) = self.lang else {
            return Ok(());
        };
        let searcher = self.reader.searcher();
        self.present.clear();
        for slot in 0..=STEMMED.len() {
            let term = Term::from_field_u64(lang, slot as u64);
            if searcher
                .doc_freq(&term)
                .map_err(|e| tantivy_err(&self.dir, e))?
                > 0
            {
                self.present.push(slot);
            }
        }
        Ok(())
    }

    /// The distinct terms of a query (NFKC-normalised first), in order of first occurrence:
    /// for `Auto`, the union of its analyses in every language the collection holds (and
    /// unstemmed).
    pub(crate) fn terms(&self, text: &str) -> Terms {
        let text: String = text.nfkc().collect();
        if self.lang.is_none() {
            let mut analyzer = Analyzer::build(self.analyzer.language());
            return Terms(distinct_terms(&mut analyzer, &text, MAX_QUERY_TERMS));
        }
        let mut out: Vec<String> = Vec::new();
        for &slot in &self.present {
            let left = MAX_QUERY_TERMS - out.len();
            for t in distinct_terms(&mut Analyzer::build(slot_language(slot)), &text, left) {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        Terms(out)
    }

    /// The (at most) `k` best chunks for these analysed terms by BM25, as `(pid, score)`, best
    /// first (ties by smaller pid). With `allowed`, only those pids are collected.
    pub(crate) fn search(
        &self,
        terms: &Terms,
        k: usize,
        allowed: Option<Arc<PidSet>>,
    ) -> Result<Vec<(u32, f32)>> {
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new_multiterms_query(
            terms
                .0
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

fn schema(analyzer: Analyzer) -> (Schema, Field, Field, Option<Field>) {
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
    let lang = (analyzer == Analyzer::Auto).then(|| builder.add_u64_field("lang", INDEXED));
    (builder.build(), pid, text, lang)
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
        let terms = idx.terms(query);
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
            let terms = idx.terms(q);
            assert!(idx.search(&terms, 5, None).is_ok(), "{q}");
        }
        assert!(Analyzer::EnglishStem.terms("?! ...").is_empty());
    }

    #[test]
    fn filter_and_deletes_apply_while_collecting() {
        let texts: Vec<String> = (0..50).map(|i| format!("apple number {i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (_d, mut idx) = index_with(Analyzer::Simple, &refs);
        let terms = idx.terms("apple");
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

    /// One collection, four languages: each chunk is stemmed by its own language's rules, so
    /// an inflected query finds it, where one English stemmer misses the German and French
    /// forms; Polish (no stemmer) still matches word for word.
    #[test]
    fn auto_stems_each_chunk_in_its_own_language() {
        let texts = [
            "Die Kinder spielen jeden Nachmittag im Garten hinter den alten Häusern der Stadt.",
            "Les chevaux du village galopent librement dans les grandes prairies au printemps.",
            "The administrators were running the backups every night before the servers rebooted.",
            "Zapasowe kopie danych są wykonywane każdej nocy przez administratorów systemu.",
        ];
        let langs: Vec<usize> = texts.iter().map(|t| language_slot(t)).collect();
        let slot = |lang: Lang| 1 + STEMMED.iter().position(|(l, _)| *l == lang).unwrap();
        assert_eq!(
            langs,
            vec![slot(Lang::Deu), slot(Lang::Fra), slot(Lang::Eng), 0],
            "German, French, English, and Polish unstemmed"
        );
        let (_d, auto) = index_with(Analyzer::Auto, &texts);
        let (_e, english) = index_with(Analyzer::EnglishStem, &texts);
        // German: "Haus" against "Häusern", "Kind" against "Kinder".
        assert_eq!(pids(&auto, "Haus"), vec![0]);
        assert_eq!(pids(&auto, "Kind spielt"), vec![0]);
        assert!(pids(&english, "Haus").is_empty());
        // French: "cheval" against "chevaux", "galoper" against "galopent".
        assert_eq!(pids(&auto, "cheval galoper"), vec![1]);
        assert!(pids(&english, "cheval").is_empty());
        // English keeps its stemming.
        assert_eq!(pids(&auto, "run backup"), vec![2]);
        // Polish: the same word matches, across case and accents.
        assert_eq!(pids(&auto, "NOCY"), vec![3]);
        // Too short to tell: indexed unstemmed, still found by its words.
        let (_f, short) = index_with(Analyzer::Auto, &["qemu-img", "ok"]);
        assert_eq!(language_slot("qemu-img"), 0);
        assert_eq!(pids(&short, "qemu img"), vec![0]);
        assert_eq!("auto".parse::<Analyzer>().unwrap(), Analyzer::Auto);
        // Reopened, it still knows which languages it holds.
        drop(auto);
        let (reopened, _) = TantivyIndex::open(&_d.path().join("t"), Analyzer::Auto).unwrap();
        assert_eq!(reopened.present.len(), 4, "{:?}", reopened.present);
        assert_eq!(pids(&reopened, "Haus"), vec![0]);
        assert!(TantivyIndex::open(&_d.path().join("t"), Analyzer::EnglishStem).is_err());
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
