//! The ingestion pipeline: submit (sniff, dedupe, store) and process (extract, normalise, chunk,
//! write). Every step is idempotent, so a document interrupted anywhere is simply processed
//! again: its chunk file is rewritten whole, under the same key, with the same content.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hearth_index::{
    Access, BlobStore, CollectionName, CollectionSettings, DocId, FORMAT_VERSION, IndexError,
    Redaction, ReembedTarget, encode_chunks, keys,
};

use crate::chunk::{ChunkParams, TokenCounter, chunk};
use crate::config::IngestConfig;
use crate::error::{IngestError, Rejection, Result};
use crate::extract::{ExtractorCommand, ExtractorPool, Limits};
use crate::normalize::normalize;
use crate::parse::{Attachment, OcrSummary};
use crate::redact::Redactor;
use crate::registry::{DocRecord, DocState, MetaValue, Metadata, Registry, validate_metadata};
use crate::sniff::sniff;

/// Extraction is retried on restart at most this many times before the document fails.
const MAX_ATTEMPTS: u32 = 3;
/// How often a long extraction writes its progress into the record.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything the pipeline needs.
pub struct PipelineParts {
    /// The object store.
    pub store: BlobStore,
    /// The embedding models a collection may be made with; the first is the default.
    pub embedders: Vec<EmbedderSpec>,
    /// How to start extraction processes.
    pub extractor: ExtractorCommand,
    /// Settings.
    pub config: IngestConfig,
}

/// What the pipeline needs to know of an embedding model: chunks are counted in its tokens and
/// hold vectors of its width, and a collection records which model it was made with.
#[derive(Clone)]
pub struct EmbedderSpec {
    /// The model's name (`engine.embedders`).
    pub name: String,
    /// Its tokenizer.
    pub tokenizer: Arc<dyn TokenCounter>,
    /// SHA-256 of the tokenizer (recorded in collection settings).
    pub tokenizer_sha256: String,
    /// SHA-256 of the model's weights, computed when first asked for (recorded in the settings
    /// of collections made with it, and checked when they are opened).
    pub model_sha256: Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>,
    /// Width of its vectors.
    pub dim: usize,
    /// Most tokens of a text the model reads, special tokens included: a new collection's
    /// chunks are no longer ([`IngestConfig::chunk_tokens`] at most).
    pub max_tokens: usize,
}

impl std::fmt::Debug for EmbedderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedderSpec")
            .field("name", &self.name)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

/// A document offered for ingestion.
#[derive(Debug, Clone)]
pub struct Submission {
    /// External name: a file path or upload name (also the hint between Markdown and text).
    pub source: String,
    /// The original bytes.
    pub bytes: Bytes,
    /// User metadata.
    pub metadata: Metadata,
    /// Who may read the document; `None`: the collection's default access.
    pub access: Option<Access>,
}

fn read_error(e: std::io::Error) -> IngestError {
    IngestError::InvalidInput(format!("reading the mailbox: {e}"))
}

/// Most messages one streamed mailbox may hold.
const MAX_MAILBOX_MESSAGES: usize = 1_000_000;

/// The outcome of a streamed mailbox's submission.
#[derive(Debug, Clone)]
pub struct MailboxSubmitted {
    /// The mailbox's listing document: accepted, or a duplicate of the same mailbox.
    pub submitted: Submitted,
    /// Messages in the mailbox.
    pub messages: usize,
    /// A warning for each message that was not ingested (too large).
    pub skipped: Vec<String>,
}

/// A document found inside `parent` (an attachment, a mailbox's message) as a submission of
/// its own: source `PARENT/NAME`, metadata `parent` and `parent_source`, read by those who may
/// read its parent.
fn child_submission(
    parent: DocId,
    parent_source: &str,
    access: &Access,
    name: &str,
    data: Vec<u8>,
) -> Submission {
    let mut metadata = Metadata::new();
    metadata.insert("parent".into(), MetaValue::Text(parent.to_hex()));
    let source: String = parent_source
        .chars()
        .take(MAX_DECLARED_META_CHARS)
        .collect();
    metadata.insert("parent_source".into(), MetaValue::Text(source));
    Submission {
        source: format!("{parent_source}/{name}"),
        bytes: Bytes::from(data),
        metadata,
        access: Some(access.clone()),
    }
}

/// The outcome of a submission.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Stored and queued.
    Accepted(DocId),
    /// The same bytes are already in the collection; nothing was written.
    Duplicate(Box<DocRecord>),
}

/// The ingestion pipeline. Share it behind an `Arc`; all methods take `&self`.
pub struct Pipeline {
    store: BlobStore,
    registry: Registry,
    embedders: Vec<EmbedderSpec>,
    /// The settings of a new collection, the embedder's fields aside.
    settings: CollectionSettings,
    extractor: ExtractorPool,
    config: IngestConfig,
    /// Compiled redaction rules, by rules (a collection's rules are read from its settings for
    /// every document, so a collection deleted and created again elsewhere is never stale).
    redactors: Mutex<HashMap<Redaction, Arc<Redactor>>>,
}

impl Pipeline {
    /// Builds a pipeline; validates the configuration.
    pub fn new(parts: PipelineParts) -> Result<Self> {
        parts.config.validate()?;
        let c = &parts.config;
        let limits = Limits {
            timeout: Duration::from_secs(c.extract_timeout_secs),
            memory_mib: c.extract_memory_mib,
            max_text_bytes: c.max_text_bytes,
        };
        if parts.embedders.is_empty() {
            return Err(IngestError::InvalidInput("no embedding model".into()));
        }
        for e in &parts.embedders {
            u32::try_from(e.dim)
                .map_err(|_| IngestError::InvalidInput("embedding dim too large".into()))?;
        }
        let settings = CollectionSettings {
            format_version: FORMAT_VERSION,
            chunk_tokens: c.chunk_tokens,
            chunk_overlap: c.chunk_overlap,
            tokenizer_sha256: String::new(),
            embedding_dim: 0,
            embedder: String::new(),
            embedder_sha256: String::new(),
            redaction: Redaction::default(),
            ocr_languages: Vec::new(),
            default_access: Access::everyone(),
            vectors: 0,
            reembed: None,
        };
        Ok(Self {
            registry: Registry::new(parts.store.clone()),
            store: parts.store,
            embedders: parts.embedders,
            settings,
            extractor: ExtractorPool::new(parts.extractor, limits, c.effective_workers()),
            config: parts.config,
            redactors: Mutex::new(HashMap::new()),
        })
    }

    /// The registry of document records.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// How many documents to process at once.
    pub fn workers(&self) -> usize {
        self.config.effective_workers()
    }

    /// Creates the collection (with the default embedder), or checks that its stored settings
    /// are ones this pipeline can work with. Returns its embedding model.
    pub async fn open_collection(&self, c: &CollectionName) -> Result<CollectionModel> {
        self.create_collection(c, &Redaction::default(), &[], &Access::everyone(), None)
            .await
    }

    /// Creates the collection with these redaction rules, OCR languages and embedder, or
    /// checks that it exists with the same settings (rules or languages left empty accept
    /// whatever the collection has; no embedder: the one it has, else the default). The
    /// languages must be installed on this node. Returns the collection's embedding model.
    pub async fn create_collection(
        &self,
        c: &CollectionName,
        redaction: &Redaction,
        ocr_languages: &[String],
        default_access: &Access,
        embedder: Option<&str>,
    ) -> Result<CollectionModel> {
        Redactor::new(redaction)?;
        if !ocr_languages.is_empty() {
            crate::config::check_ocr_languages(ocr_languages, "ocr_languages")?;
        }
        let stored = CollectionSettings::read(&self.store, c).await?;
        let i = match (embedder, &stored) {
            (Some(name), _) => self.embedder_index(name)?,
            (None, Some(s)) => self.embedder_of(c, s)?,
            (None, None) => 0,
        };
        let spec = &self.embedders[i];
        // A collection made before models had names records none: it is checked by its
        // tokenizer and width, and keeps no name.
        let legacy = stored.as_ref().is_some_and(|s| s.embedder.is_empty()) && embedder.is_none();
        let (name, model_sha256) = if legacy {
            (String::new(), String::new())
        } else {
            let hash = spec.model_sha256.clone();
            let sha = tokio::task::spawn_blocking(move || hash())
                .await
                .map_err(|e| IngestError::Internal(format!("hashing the model: {e}")))?
                .map_err(IngestError::Internal)?;
            (spec.name.clone(), sha)
        };
        let (chunk_tokens, chunk_overlap) = self.chunking(spec);
        let wanted = CollectionSettings {
            chunk_tokens,
            chunk_overlap,
            redaction: redaction.clone(),
            ocr_languages: ocr_languages.to_vec(),
            default_access: default_access.clone(),
            tokenizer_sha256: spec.tokenizer_sha256.clone(),
            embedding_dim: spec.dim as u32,
            embedder: name,
            embedder_sha256: model_sha256,
            ..self.settings.clone()
        };
        let s = wanted.open_or_create_from(&self.store, c, stored).await?;
        Ok(CollectionModel {
            embedder: i,
            vectors: s.vectors,
            reembed: s.reembed.map(|t| t.vectors),
        })
    }

    /// The chunk length and overlap of a new collection of the model `spec`: the configured
    /// ones, shortened to what the model reads (MiniLM reads 256 tokens, multilingual-e5-small
    /// and EmbeddingGemma 512), the overlap in proportion. A collection keeps the chunking it
    /// was made with.
    fn chunking(&self, spec: &EmbedderSpec) -> (u32, u32) {
        let (tokens, overlap) = (self.settings.chunk_tokens, self.settings.chunk_overlap);
        let read = u32::try_from(spec.max_tokens).unwrap_or(u32::MAX).max(16);
        if tokens <= read {
            return (tokens, overlap);
        }
        // Exact in u64; at most `read / 2` as the configured overlap is at most half.
        let scaled = u64::from(overlap) * u64::from(read) / u64::from(tokens);
        (read, scaled as u32)
    }

    /// Records that collection `c` is being re-embedded with the model `name` (a re-embedding
    /// to the same model already recorded resumes where it stopped; one to another model
    /// replaces it). Returns what to build.
    pub async fn begin_reembed(&self, c: &CollectionName, name: &str) -> Result<ReembedPlan> {
        let Some(mut s) = CollectionSettings::read(&self.store, c).await? else {
            return Err(IngestError::NotFound(format!("collection {c}")));
        };
        let target = self.embedder_index(name)?;
        let current = self.embedder_of(c, &s)?;
        let spec = &self.embedders[target];
        let hash = spec.model_sha256.clone();
        let sha = tokio::task::spawn_blocking(move || hash())
            .await
            .map_err(|e| IngestError::Internal(format!("hashing the model: {e}")))?
            .map_err(IngestError::Internal)?;
        if current == target && (s.embedder.is_empty() || s.embedder_sha256 == sha) {
            return Err(IngestError::InvalidInput(format!(
                "collection {c} already uses the embedding model {name:?}"
            )));
        }
        let wanted = ReembedTarget {
            embedder: spec.name.clone(),
            embedder_sha256: sha,
            tokenizer_sha256: spec.tokenizer_sha256.clone(),
            embedding_dim: spec.dim as u32,
            vectors: 0,
        };
        let (vectors, resumed, stale) = match &s.reembed {
            Some(t)
                if t.embedder == wanted.embedder && t.embedder_sha256 == wanted.embedder_sha256 =>
            {
                (t.vectors, true, None)
            }
            Some(t) => (s.vectors.max(t.vectors) + 1, false, Some(t.vectors)),
            None => (s.vectors + 1, false, None),
        };
        s.reembed = Some(ReembedTarget { vectors, ..wanted });
        s.write(&self.store, c).await?;
        Ok(ReembedPlan {
            from: CollectionModel {
                embedder: current,
                vectors: s.vectors,
                reembed: Some(vectors),
            },
            to: CollectionModel {
                embedder: target,
                vectors,
                reembed: None,
            },
            resumed,
            stale,
        })
    }

    /// Switches collection `c` to the model its re-embedding built vectors for: one write of
    /// its settings, after which its chunk files are those of the new model.
    pub async fn finish_reembed(&self, c: &CollectionName) -> Result<()> {
        let Some(mut s) = CollectionSettings::read(&self.store, c).await? else {
            return Err(IngestError::NotFound(format!("collection {c}")));
        };
        let Some(t) = s.reembed.take() else {
            return Err(IngestError::InvalidInput(format!(
                "collection {c} has no re-embedding under way"
            )));
        };
        s.embedder = t.embedder;
        s.embedder_sha256 = t.embedder_sha256;
        s.tokenizer_sha256 = t.tokenizer_sha256;
        s.embedding_dim = t.embedding_dim;
        s.vectors = t.vectors;
        s.write(&self.store, c).await?;
        Ok(())
    }

    /// The position of the embedding model `name` among the pipeline's, or invalid input
    /// naming the models there are.
    pub fn embedder_index(&self, name: &str) -> Result<usize> {
        self.embedders
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| {
                IngestError::InvalidInput(format!(
                    "no embedding model named {name:?} on this node (it has: {})",
                    self.embedder_names()
                ))
            })
    }

    fn embedder_names(&self) -> String {
        self.embedders
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The embedder a collection was made with: by its recorded name, or (made before models
    /// had names) by its tokenizer and width.
    fn embedder_of(&self, c: &CollectionName, s: &CollectionSettings) -> Result<usize> {
        let found = if s.embedder.is_empty() {
            self.embedders.iter().position(|e| {
                e.tokenizer_sha256 == s.tokenizer_sha256 && e.dim == s.embedding_dim as usize
            })
        } else {
            self.embedders.iter().position(|e| e.name == s.embedder)
        };
        found.ok_or_else(|| {
            let made = if s.embedder.is_empty() {
                format!(
                    "a model with tokenizer sha256 {}",
                    &s.tokenizer_sha256[..s.tokenizer_sha256.len().min(12)]
                )
            } else {
                format!("the model {:?}", s.embedder)
            };
            IngestError::Index(IndexError::Conflict(format!(
                "collection {c} was made with {made}, which this node does not load (it has: {}; engine.embedders)",
                self.embedder_names()
            )))
        })
    }

    /// The languages OCR reads a collection's scans in: its own, or the node's default.
    pub fn effective_ocr_languages(&self, settings: Option<&CollectionSettings>) -> Vec<String> {
        match settings {
            Some(s) if !s.ocr_languages.is_empty() => s.ocr_languages.clone(),
            _ => self.config.ocr_languages.clone(),
        }
    }

    /// Extracts a document; long work (OCR of many pages) shows its progress in the record,
    /// written at most every [`PROGRESS_EVERY`].
    async fn extract_reporting(
        &self,
        rec: &DocRecord,
        raw: &[u8],
        languages: &[String],
    ) -> std::result::Result<crate::parse::Extracted, String> {
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let work = self.extractor.extract(rec.kind, raw, languages, &tx);
        tokio::pin!(work);
        let mut written = tokio::time::Instant::now();
        loop {
            tokio::select! {
                done = &mut work => return done,
                Ok(()) = rx.changed() => {
                    if written.elapsed() < PROGRESS_EVERY {
                        continue;
                    }
                    let Some((done, total)) = *rx.borrow_and_update() else { continue };
                    let mut shown = rec.clone();
                    shown.progress = Some(format!("OCR: {done} of {total} pages recognised"));
                    // Progress is a courtesy: a store hiccup here must not fail the document.
                    if let Err(e) = self.registry.put(&mut shown).await {
                        tracing::warn!(doc = %rec.doc_id, "cannot record progress: {e}");
                    }
                    written = tokio::time::Instant::now();
                }
            }
        }
    }

    /// A collection's redaction rules, compiled once per process. The rules are read from the
    /// collection's settings for every document, so a collection deleted and created again
    /// elsewhere is never stale.
    fn redactor(&self, spec: Option<&Redaction>) -> Result<Option<Arc<Redactor>>> {
        let Some(spec) = spec.filter(|s| !s.is_off()).cloned() else {
            return Ok(None);
        };
        if let Some(r) = self
            .redactors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&spec)
        {
            return Ok(Some(r.clone()));
        }
        let Some(r) = Redactor::new(&spec)? else {
            return Ok(None);
        };
        let r = Arc::new(r);
        self.redactors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec, r.clone());
        Ok(Some(r))
    }

    /// Refuses a document of `size` bytes before it is read, if it is over the limit or empty.
    pub fn check_size(&self, size: u64) -> Result<(), Rejection> {
        if size == 0 {
            Err(Rejection::Empty)
        } else if size > self.config.max_document_bytes {
            Err(Rejection::TooLarge {
                size,
                limit: self.config.max_document_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Accepts a document: checks it, stores the original bytes, then records it as `queued`.
    /// When this returns `Accepted`, the document survives a crash. The collection must have been
    /// opened with [`Pipeline::open_collection`].
    pub async fn submit(&self, c: &CollectionName, sub: Submission) -> Result<Submitted> {
        self.submit_with_children(c, sub, Vec::new()).await
    }

    /// [`Pipeline::submit`] for a document whose children are already stored (a streamed
    /// mailbox's messages).
    async fn submit_with_children(
        &self,
        c: &CollectionName,
        mut sub: Submission,
        children: Vec<DocId>,
    ) -> Result<Submitted> {
        validate_metadata(&sub.metadata)?;
        self.check_size(sub.bytes.len() as u64)
            .map_err(IngestError::Rejected)?;
        let kind = sniff(&sub.bytes, &sub.source).map_err(IngestError::Rejected)?;
        let doc_id = DocId::of_bytes(&sub.bytes);
        if let Some(existing) = self.registry.get(c, &doc_id).await? {
            return Ok(Submitted::Duplicate(Box::new(existing)));
        }
        // In a redacting collection the name and the user's metadata are redacted like the
        // text, before anything is stored.
        let settings = CollectionSettings::read(&self.store, c).await?;
        if let Some(r) = self.redactor(settings.as_ref().map(|s| &s.redaction))? {
            redact_submission(&r, &mut sub, &doc_id);
            validate_metadata(&sub.metadata)?;
        }
        let size = sub.bytes.len() as u64;
        // Raw bytes first: a record never points at bytes that are not there.
        self.store.put(&keys::raw(c, &doc_id), sub.bytes).await?;
        let access = match sub.access {
            Some(a) => a,
            None => settings.map(|s| s.default_access).unwrap_or_default(),
        };
        let mut rec =
            DocRecord::new_queued(doc_id, c.clone(), sub.source, kind, size, sub.metadata);
        rec.access = access;
        rec.children = children;
        self.registry.put(&mut rec).await?;
        Ok(Submitted::Accepted(doc_id))
    }

    /// Submits a mailbox (mbox) read from `path` as a stream, for mailboxes larger than one
    /// document may be: each message is stored as a document of its own (a message over the
    /// document size limit is skipped with a warning), then the mailbox as a listing of its
    /// messages, one line each, whose children they are. Memory: one message. The same
    /// mailbox again is a duplicate, found before any message is stored again.
    pub async fn submit_mailbox(
        &self,
        c: &CollectionName,
        path: &std::path::Path,
        mut sub: Submission,
    ) -> Result<MailboxSubmitted> {
        use crate::mailbox::{Message, listing_line, split};
        validate_metadata(&sub.metadata)?;
        let max = usize::try_from(self.config.max_document_bytes).unwrap_or(usize::MAX);
        let open = |path: &std::path::Path| {
            std::fs::File::open(path)
                .map(|f| std::io::BufReader::with_capacity(256 * 1024, f))
                .map_err(|e| {
                    IngestError::InvalidInput(format!("cannot read {}: {e}", path.display()))
                })
        };
        // First pass: the listing, which names the mailbox (its id is the listing's digest).
        let file = open(path)?;
        let (listing, skipped) = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            let mut skipped = Vec::new();
            split(file, max, read_error, |n, m| {
                match m {
                    Message::Bytes(b) => lines.push(listing_line(n, &b)),
                    Message::TooLarge(size) => {
                        lines.push(format!("{n}. (not ingested: {size} bytes, over the document size limit)"));
                        skipped.push(format!(
                            "message {n} not ingested: {size} bytes, over the document size limit of {max} bytes"
                        ));
                    }
                }
                if lines.len() > MAX_MAILBOX_MESSAGES {
                    return Err(IngestError::Rejected(Rejection::Unsupported(format!(
                        "the mailbox holds more than {MAX_MAILBOX_MESSAGES} messages; split it"
                    ))));
                }
                Ok(())
            })
            .map(|_| (lines, skipped))
        })
        .await
        .map_err(|e| IngestError::InvalidInput(format!("reading the mailbox: {e}")))??;
        if listing.is_empty() {
            return Err(IngestError::Rejected(Rejection::Unsupported(
                "the mailbox holds no messages (no line starts with \"From \")".into(),
            )));
        }
        let messages = listing.len();
        let text = format!(
            "Mailbox {}: {messages} messages\n\n{}\n",
            sub.source,
            listing.join("\n")
        );
        let parent = DocId::of_bytes(text.as_bytes());
        if let Some(existing) = self.registry.get(c, &parent).await? {
            return Ok(MailboxSubmitted {
                submitted: Submitted::Duplicate(Box::new(existing)),
                messages,
                skipped,
            });
        }
        let access = match sub.access.take() {
            Some(a) => a,
            None => CollectionSettings::read(&self.store, c)
                .await?
                .map(|s| s.default_access)
                .unwrap_or_default(),
        };
        // Second pass: each message stored as it is read, one at a time.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(1);
        let file = open(path)?;
        let reader = tokio::task::spawn_blocking(move || {
            split(file, max, read_error, |n, m| {
                if let Message::Bytes(b) = m {
                    // The receiver gone means the submission failed; stop reading.
                    tx.blocking_send((n, b))
                        .map_err(|_| IngestError::InvalidInput("stopped".into()))?;
                }
                Ok(())
            })
        });
        let mut children = Vec::new();
        let mut warnings = skipped.clone();
        while let Some((n, bytes)) = rx.recv().await {
            let name = format!("message-{n:05}.eml");
            let child = child_submission(parent, &sub.source, &access, &name, bytes);
            match self.submit(c, child).await {
                Ok(Submitted::Accepted(id)) => children.push(id),
                Ok(Submitted::Duplicate(existing)) => children.push(existing.doc_id),
                Err(IngestError::Rejected(why)) => warnings.push(format!("{name}: {why}")),
                Err(e) => return Err(e),
            }
        }
        reader
            .await
            .map_err(|e| IngestError::InvalidInput(format!("reading the mailbox: {e}")))??;
        sub.metadata
            .insert("messages".into(), MetaValue::Text(messages.to_string()));
        sub.metadata
            .insert("mailbox".into(), MetaValue::Text("mbox".into()));
        sub.bytes = Bytes::from(text);
        sub.access = Some(access);
        let submitted = self.submit_with_children(c, sub, children).await?;
        if !warnings.is_empty()
            && let Submitted::Accepted(id) = &submitted
            && let Some(mut rec) = self.registry.get(c, id).await?
        {
            rec.warnings = warnings;
            self.registry.put(&mut rec).await?;
        }
        Ok(MailboxSubmitted {
            submitted,
            messages,
            skipped,
        })
    }

    /// The documents of a collection that still need processing (after a crash, say).
    pub async fn pending(&self, c: &CollectionName) -> Result<Vec<DocId>> {
        Ok(self
            .registry
            .list(c)
            .await?
            .into_iter()
            .filter(|r| r.state.is_pending())
            .map(|r| r.doc_id)
            .collect())
    }

    /// Runs extraction and chunking for one document and returns its final record. A document
    /// already past these stages is returned as it is. A document that cannot be read ends in
    /// state `failed` with a reason; that is not an error of this function.
    pub async fn process(&self, c: &CollectionName, doc_id: DocId) -> Result<DocRecord> {
        let mut rec =
            self.registry.get(c, &doc_id).await?.ok_or_else(|| {
                IngestError::NotFound(format!("document {doc_id} in collection {c}"))
            })?;
        if !rec.state.is_pending() {
            return Ok(rec);
        }
        if rec.attempts >= MAX_ATTEMPTS {
            rec.fail(format!(
                "extraction was interrupted {} times (the service stopped while extracting); giving up",
                rec.attempts
            ));
            self.registry.put(&mut rec).await?;
            return Ok(rec);
        }
        rec.state = DocState::Extracting;
        rec.attempts += 1;
        self.registry.put(&mut rec).await?;

        match self.extract_and_chunk(c, &rec).await {
            Ok(mut done) => {
                // Metadata the document declares fills keys the user left empty, within the
                // limits user metadata has (a key too many is dropped, the user's stay).
                for (k, v) in std::mem::take(&mut done.metadata) {
                    let v: String = v.chars().take(MAX_DECLARED_META_CHARS).collect();
                    if !rec.metadata.contains_key(&k) {
                        rec.metadata.insert(k.clone(), MetaValue::Text(v));
                        if validate_metadata(&rec.metadata).is_err() {
                            rec.metadata.remove(&k);
                        }
                    }
                }
                let (mut children, mut warnings) =
                    self.submit_children(c, &rec, done.attachments).await?;
                // Children stored with the document (a streamed mailbox's messages) stay.
                for id in std::mem::take(&mut rec.children) {
                    if !children.contains(&id) {
                        children.push(id);
                    }
                }
                rec.children = children;
                // Warnings given at submission (messages skipped) stay too.
                let mut kept = std::mem::take(&mut rec.warnings);
                kept.append(&mut warnings);
                let mut warnings = kept;
                rec.title = done.title;
                rec.pages = done.pages;
                rec.engine = done.engine;
                rec.ocr = done.ocr;
                done.warnings.append(&mut warnings);
                rec.warnings = done.warnings;
                rec.chunks = Some(done.chunks);
                rec.redactions = done.redactions;
                rec.original_discarded = done.redacting;
                rec.state = DocState::Chunked;
                rec.reason = None;
            }
            Err(Stopped::Failed(why)) => rec.fail(why.to_string()),
            Err(Stopped::Error(e)) => return Err(e),
        }
        self.registry.put(&mut rec).await?;
        if rec.original_discarded {
            // Only now, with the record saying `chunked`: a crash before this point
            // re-extracts from the original; after it, nothing needs the original again.
            self.store.delete(&keys::raw(c, &rec.doc_id)).await?;
        }
        Ok(rec)
    }

    /// Stores the documents found inside `parent` as queued documents of their own, with
    /// metadata `parent` (its id) and `parent_source`; their source is `PARENT/NAME`. Returns
    /// their ids, and a warning for each that was refused (an image attachment, say). Nesting
    /// stops at [`MAX_NESTING`] levels (a message attached to a message attached to ...).
    async fn submit_children(
        &self,
        c: &CollectionName,
        parent: &DocRecord,
        attachments: Vec<Attachment>,
    ) -> Result<(Vec<DocId>, Vec<String>)> {
        let mut ids = Vec::new();
        let mut warnings = Vec::new();
        if attachments.is_empty() {
            return Ok((ids, warnings));
        }
        if self.nesting(c, parent).await? >= MAX_NESTING {
            warnings.push(format!(
                "{} attachment(s) not ingested: documents nest at most {MAX_NESTING} levels deep",
                attachments.len()
            ));
            return Ok((ids, warnings));
        }
        for a in attachments {
            let sub = child_submission(
                parent.doc_id,
                &parent.source,
                &parent.access,
                &a.name,
                a.data,
            );
            match self.submit(c, sub).await {
                Ok(Submitted::Accepted(id)) => ids.push(id),
                Ok(Submitted::Duplicate(existing)) => ids.push(existing.doc_id),
                Err(IngestError::Rejected(why)) => {
                    warnings.push(format!("attachment {}: {why}", a.name));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((ids, warnings))
    }

    /// How many ancestors a document has, by its `parent` metadata (counted up to
    /// [`MAX_NESTING`]).
    async fn nesting(&self, c: &CollectionName, rec: &DocRecord) -> Result<usize> {
        let mut depth = 0;
        let mut parent = rec.metadata.get("parent").cloned();
        while let Some(MetaValue::Text(hex)) = parent {
            depth += 1;
            if depth >= MAX_NESTING {
                break;
            }
            let Ok(id) = hex.parse::<DocId>() else {
                break;
            };
            parent = match self.registry.get(c, &id).await? {
                Some(r) => r.metadata.get("parent").cloned(),
                None => None,
            };
        }
        Ok(depth)
    }

    /// Extracts, chunks and stores the chunks of a queued document.
    async fn extract_and_chunk(
        &self,
        c: &CollectionName,
        rec: &DocRecord,
    ) -> Result<Chunked, Stopped> {
        let Some(raw) = self.store.get_opt(&keys::raw(c, &rec.doc_id)).await? else {
            return Err(Failure::Missing.into());
        };
        let settings = CollectionSettings::read(&self.store, c).await?;
        let redactor = self.redactor(settings.as_ref().map(|s| &s.redaction))?;
        let languages = self.effective_ocr_languages(settings.as_ref());
        let mut extracted = self
            .extract_reporting(rec, &raw, &languages)
            .await
            .map_err(Failure::Extraction)?;
        drop(raw);
        // Redaction comes before anything is normalised, chunked, embedded or stored.
        let redactions = redactor.as_ref().map_or(0, |r| r.apply(&mut extracted));
        let mut done = Chunked {
            chunks: 0,
            title: extracted.title.clone(),
            pages: extracted.pages,
            engine: extracted.engine.clone(),
            ocr: extracted.ocr.clone(),
            warnings: extracted.warnings.clone(),
            redactions,
            redacting: redactor.is_some(),
            metadata: std::mem::take(&mut extracted.metadata),
            attachments: std::mem::take(&mut extracted.attachments),
        };
        let spec = match &settings {
            Some(s) => &self.embedders[self.embedder_of(c, s)?],
            None => &self.embedders[0],
        };
        let tokenizer = spec.tokenizer.clone();
        let dim = spec.dim;
        // The collection's own chunking, whatever the configuration says now.
        let (max_tokens, overlap) = match &settings {
            Some(s) => (s.chunk_tokens, s.chunk_overlap),
            None => self.chunking(spec),
        };
        let params = ChunkParams {
            max_tokens: max_tokens as usize,
            overlap: overlap as usize,
        };
        let doc_id = rec.doc_id;
        let (n, bytes) = tokio::task::spawn_blocking(move || -> Result<_, Stopped> {
            let doc = normalize(&extracted);
            if doc.text.is_empty() {
                return Err(match extracted.pages {
                    Some(pages) => Failure::NoTextInPdf { pages },
                    None => Failure::NoText,
                }
                .into());
            }
            let chunks =
                chunk(doc_id, &doc, tokenizer.as_ref(), params).map_err(Failure::Chunking)?;
            let n = u32::try_from(chunks.len())
                .map_err(|_| IngestError::Internal("chunk count".into()))?;
            Ok((n, encode_chunks(&chunks, dim)?))
        })
        .await
        .map_err(|e| IngestError::Internal(format!("chunking task: {e}")))??;
        let vectors = settings.as_ref().map_or(0, |s| s.vectors);
        self.store
            .put(&keys::chunks_of(c, vectors, &rec.doc_id), bytes)
            .await?;
        done.chunks = n;
        Ok(done)
    }
}

/// The embedding model a collection uses, as this pipeline knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionModel {
    /// Its index in the pipeline's list of embedders.
    pub embedder: usize,
    /// Which model's chunk files hold its vectors (`hearth_index::keys::chunks_of`).
    pub vectors: u32,
    /// Where a re-embedding under way writes its chunk files.
    pub reembed: Option<u32>,
}

/// What [`Pipeline::begin_reembed`] recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReembedPlan {
    /// The model in use.
    pub from: CollectionModel,
    /// The model moved to, and where its chunk files go.
    pub to: CollectionModel,
    /// A re-embedding to the same model was under way: its chunk files are kept.
    pub resumed: bool,
    /// A re-embedding to another model was under way: its chunk files (under this number)
    /// are to be removed.
    pub stale: Option<u32>,
}

/// Why processing stopped before a document was chunked.
#[derive(Debug)]
enum Stopped {
    /// The document cannot be read: it ends in state `failed` with this reason.
    Failed(Failure),
    /// The system failed (storage, a bug): the document stays pending, to be tried again.
    Error(IngestError),
}

impl From<Failure> for Stopped {
    fn from(f: Failure) -> Self {
        Stopped::Failed(f)
    }
}

impl From<IngestError> for Stopped {
    fn from(e: IngestError) -> Self {
        Stopped::Error(e)
    }
}

impl From<IndexError> for Stopped {
    fn from(e: IndexError) -> Self {
        Stopped::Error(e.into())
    }
}

/// Why a stored document cannot be read. Its text is the `failed` record's reason.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The original bytes are gone from the store.
    #[error("the original bytes are missing from the object store")]
    Missing,
    /// The extraction process failed: the parser's message, or the limit it ran into.
    #[error("{0}")]
    Extraction(String),
    /// A PDF without text: no text layer, and OCR found none.
    #[error(
        "no text in the PDF's {pages} page(s): it has no text layer, and OCR found none (blank pages or pictures)"
    )]
    NoTextInPdf {
        /// The PDF's page count.
        pages: u32,
    },
    /// A document of another format without text.
    #[error("the document holds no text")]
    NoText,
    /// The chunker refused the text.
    #[error("chunking failed: {0}")]
    Chunking(String),
}

/// Facts about a successfully chunked document.
struct Chunked {
    chunks: u32,
    title: Option<String>,
    pages: Option<u32>,
    engine: Option<String>,
    ocr: Option<OcrSummary>,
    warnings: Vec<String>,
    redactions: u32,
    redacting: bool,
    /// Metadata the document declared (already redacted where the collection redacts).
    metadata: std::collections::BTreeMap<String, String>,
    /// Documents inside it, to be stored as documents of their own.
    attachments: Vec<Attachment>,
}

/// Redacts a submission's name and text metadata. A name that held PII also gets the start of
/// the document's id, so that two names that differ only in what was redacted stay two
/// documents (replacement by name never applies to them: a new version is a new document).
fn redact_submission(r: &Redactor, sub: &mut Submission, id: &DocId) {
    let (name, n) = r.redact(&sub.source);
    if n > 0 {
        // The original's extension (a format's hint, never PII) stays at the end even when a
        // match took it in (`jane@corp.example.md` reads as an address).
        let ext = sub.source.rsplit_once('.').map(|(_, e)| e).filter(|e| {
            !e.is_empty() && e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric())
        });
        let tag = &id.to_hex()[..12];
        sub.source = match ext {
            Some(e) => {
                let stem = name.strip_suffix(&format!(".{e}")).unwrap_or(&name);
                format!("{stem} ({tag}).{e}")
            }
            None => format!("{name} ({tag})"),
        };
    }
    for v in sub.metadata.values_mut() {
        if let MetaValue::Text(t) = v {
            let (red, n) = r.redact(t);
            if n > 0 {
                *t = red;
            }
        }
    }
}

/// Longest value of a metadata key a document declares for itself.
const MAX_DECLARED_META_CHARS: usize = 1024;
/// Most levels of documents inside documents that are ingested.
const MAX_NESTING: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_the_recorded_reasons() {
        assert_eq!(
            Failure::Missing.to_string(),
            "the original bytes are missing from the object store"
        );
        assert_eq!(
            Failure::Extraction("extraction timed out after 60 s".into()).to_string(),
            "extraction timed out after 60 s"
        );
        assert_eq!(
            Failure::NoTextInPdf { pages: 3 }.to_string(),
            "no text in the PDF's 3 page(s): it has no text layer, and OCR found none (blank pages or pictures)"
        );
        assert_eq!(Failure::NoText.to_string(), "the document holds no text");
        assert_eq!(
            Failure::Chunking("too long".into()).to_string(),
            "chunking failed: too long"
        );
    }
}
