//! `hearth ingest`: walk paths, submit every file, process up to `workers` documents at once
//! (extract, chunk, embed, index), resume documents an earlier run left unfinished, commit the
//! index, and print a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use hearth_api::{
    Access, Collection, CollectionName, DocId, DocState, MetaValue, Metadata, REDACTION_KINDS,
    Redaction, RedactionPattern, Service, Submission, Submitted,
};
use serde::Serialize;

use crate::config::AppConfig;

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Files and directories to ingest (directories are walked; hidden files are skipped).
    /// With none, only unfinished documents are resumed.
    paths: Vec<PathBuf>,
    /// Target collection (created on first use).
    #[arg(long, short)]
    pub(crate) collection: String,
    /// Metadata for every document, as key=value (numbers stay numbers). Repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Redact PII when creating the collection: a comma-separated list of email, phone, iban,
    /// card, ip (or `all`). Fixed at creation; an existing collection must have the same rules.
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    redact: Vec<String>,
    /// Also redact matches of a named regular expression, as NAME=REGEX (repeatable); they
    /// become `[REDACTED:NAME]`.
    #[arg(long = "redact-pattern", value_name = "NAME=REGEX")]
    redact_patterns: Vec<String>,
    /// Languages OCR reads scans and images in, as Tesseract names (eng, deu, fra, ...; each
    /// a Debian package tesseract-ocr-LANG). Fixed at creation; default: `ingest.ocr_languages`.
    #[arg(long = "ocr-languages", value_name = "LANGS", value_delimiter = ',')]
    ocr_languages: Vec<String>,
    /// The embedding model of a new collection, by name: `engine.embedders` lists the models
    /// beside the default (`engine.embedding_model`), e.g. `multilingual-e5-small` for documents
    /// in other languages than English. Fixed at creation; default: the node's default model.
    #[arg(long, value_name = "NAME")]
    embedder: Option<String>,
    /// Who may read the documents of this run: group names, user:NAME, comma-separated
    /// (default: the collection's default access, everyone unless changed).
    #[arg(long, value_name = "LIST")]
    access: Option<String>,
    /// Who may read documents uploaded without an access list, when this run creates the
    /// collection (an existing collection must have the same).
    #[arg(long, value_name = "LIST")]
    default_access: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The redaction rules the flags ask for.
fn redaction(args: &IngestArgs) -> anyhow::Result<Redaction> {
    let mut kinds = Vec::new();
    for k in &args.redact {
        if k == "all" {
            kinds.extend(REDACTION_KINDS.iter().map(|k| (*k).to_owned()));
        } else {
            kinds.push(k.clone());
        }
    }
    kinds.dedup();
    let patterns = args
        .redact_patterns
        .iter()
        .map(|p| {
            let (name, regex) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--redact-pattern {p:?}: expected NAME=REGEX"))?;
            Ok(RedactionPattern {
                name: name.to_owned(),
                regex: regex.to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Redaction { kinds, patterns })
}

enum Job {
    Resume(DocId),
    File(PathBuf),
}

#[derive(Serialize)]
struct Outcome {
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    doc_id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Documents found inside it (attachments, a mailbox's messages), ingested on their own.
    #[serde(skip_serializing_if = "is_zero")]
    attachments: usize,
    #[serde(skip)]
    bytes: u64,
    #[serde(skip)]
    system_error: bool,
    #[serde(skip)]
    embedded: u32,
}

#[derive(Serialize)]
struct Summary {
    pub(crate) collection: String,
    seconds: f64,
    ok: usize,
    duplicate: usize,
    failed: usize,
    chunks: u64,
    /// Chunks embedded by this run, and their rate over the whole run.
    embedded: u64,
    chunks_per_s: f64,
    documents: Vec<Outcome>,
}

pub async fn run(cfg: AppConfig, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(&args.collection)?;
    let metadata = parse_meta(&args.meta)?;
    hearth_api::validate_metadata(&metadata)?;
    let files = walk(&args.paths)?;
    let access = args.access.as_deref().map(Access::parse_list).transpose()?;
    let default_access = match args.default_access.as_deref() {
        Some(l) => Access::parse_list(l)?,
        None => Access::everyone(),
    };
    let service = super::service(&cfg).await?;
    let col = service
        .create(
            &collection,
            &redaction(&args)?,
            &args.ocr_languages,
            &default_access,
            args.embedder.as_deref(),
        )
        .await?;
    let pending = service.pending(&col).await?;

    let jobs: Vec<Job> = pending
        .into_iter()
        .map(Job::Resume)
        .chain(files.into_iter().map(Job::File))
        .collect();
    let bar = super::progress_bar(jobs.len() as u64, "docs");
    let started = Instant::now();
    let mut outcomes = futures::stream::iter(jobs)
        .map(|job| run_job(&service, &col, &metadata, access.as_ref(), job))
        .buffer_unordered(service.ingest_workers());
    let mut documents = Vec::new();
    let mut failed = 0;
    let mut embedded = 0u64;
    while let Some(o) = outcomes.next().await {
        failed += usize::from(o.status == "failed");
        embedded += u64::from(o.embedded);
        bar.inc(1);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{embedded} chunks embedded ({:.0} chunks/s), {failed} failed",
            embedded as f64 / secs
        ));
        documents.push(o);
    }
    bar.set_message("committing the index");
    let committed = service.commit(&col).await;
    bar.finish_and_clear();
    committed?;
    documents.sort_by(|a, b| a.source.cmp(&b.source));
    let secs = started.elapsed().as_secs_f64();
    let summary = Summary {
        collection: collection.to_string(),
        seconds: secs,
        ok: documents.iter().filter(|o| o.status == "ok").count(),
        duplicate: documents.iter().filter(|o| o.status == "duplicate").count(),
        failed,
        chunks: documents
            .iter()
            .filter_map(|o| o.chunks)
            .map(u64::from)
            .sum(),
        embedded,
        chunks_per_s: embedded as f64 / secs.max(1e-9),
        documents,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    let system_errors = summary.documents.iter().any(|o| o.system_error);
    Ok(if system_errors {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_job(
    s: &Service,
    col: &Arc<Collection>,
    meta: &Metadata,
    access: Option<&Access>,
    job: Job,
) -> Outcome {
    let (source, id, bytes) = match job {
        Job::Resume(id) => (format!("(resumed) {}", id.to_hex()), id, 0),
        Job::File(path) => {
            let source = path.display().to_string();
            match submit_file(s, col, meta, access, &path).await {
                Ok((Submitted::Accepted(id), n)) => (source, id, n),
                Ok((Submitted::Duplicate(rec), _)) => {
                    return Outcome {
                        doc_id: Some(rec.doc_id.to_hex()),
                        status: "duplicate",
                        ..outcome(source)
                    };
                }
                Err(e) => {
                    let system_error = !e.is_users_fault();
                    return Outcome {
                        status: "failed",
                        reason: Some(format!("{e:#}")),
                        system_error,
                        ..outcome(source)
                    };
                }
            }
        }
    };
    match s.process(col, id).await {
        Ok(done) => {
            let rec = done.record;
            let source = if bytes == 0 {
                format!("{} (resumed)", rec.source)
            } else {
                source
            };
            let failed = rec.state == DocState::Failed;
            Outcome {
                doc_id: Some(rec.doc_id.to_hex()),
                status: if failed { "failed" } else { "ok" },
                chunks: rec.chunks,
                reason: rec.reason,
                bytes: if bytes == 0 { rec.size } else { bytes },
                embedded: done.embedded,
                attachments: rec.children.len(),
                ..outcome(source)
            }
        }
        Err(e) => Outcome {
            status: "failed",
            reason: Some(format!("{e:#}")),
            system_error: true,
            ..outcome(source)
        },
    }
}

fn outcome(source: String) -> Outcome {
    Outcome {
        source,
        doc_id: None,
        status: "ok",
        chunks: None,
        reason: None,
        bytes: 0,
        system_error: false,
        embedded: 0,
        attachments: 0,
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

async fn submit_file(
    s: &Service,
    col: &Collection,
    meta: &Metadata,
    access: Option<&Access>,
    path: &Path,
) -> Result<(Submitted, u64), hearth_api::ServiceError> {
    let io = |e: std::io::Error| {
        hearth_api::ServiceError::InvalidInput(format!("cannot read {}: {e}", path.display()))
    };
    let size = tokio::fs::metadata(path).await.map_err(io)?.len();
    let sub = Submission {
        source: path.display().to_string(),
        bytes: Bytes::new(),
        metadata: meta.clone(),
        access: access.cloned(),
    };
    if let Err(too_large) = s.check_size(size) {
        // A mailbox over the limit is read as a stream, a message at a time.
        if size > 0 && is_mailbox(path).await.map_err(io)? {
            let done = s.submit_mailbox(col, path, sub).await?;
            for w in &done.skipped {
                tracing::warn!(file = %path.display(), "{w}");
            }
            return Ok((done.submitted, size));
        }
        return Err(too_large);
    }
    let bytes = tokio::fs::read(path).await.map_err(io)?;
    let sub = Submission {
        bytes: Bytes::from(bytes),
        ..sub
    };
    Ok((s.submit(col, sub).await?, size))
}

/// Whether the file starts as an mbox mailbox does.
async fn is_mailbox(path: &Path) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(64 * 1024);
    tokio::fs::File::open(path)
        .await?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .await?;
    Ok(hearth_api::sniff(&head, &path.display().to_string())
        .is_ok_and(|k| k == hearth_api::DocKind::Mbox))
}

pub(crate) fn walk(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for root in paths {
        if !root.exists() {
            bail!("{} does not exist", root.display());
        }
        let entries = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name();
        let entries = entries
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in entries {
            let entry = entry.with_context(|| format!("walking {}", root.display()))?;
            if entry.file_type().is_file() {
                out.push(entry.into_path());
            }
        }
    }
    Ok(out)
}

fn parse_meta(pairs: &[String]) -> anyhow::Result<Metadata> {
    let mut meta = Metadata::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--meta {pair:?} is not KEY=VALUE")
        };
        let value = match v.parse::<f64>() {
            Ok(n) if n.is_finite() => MetaValue::Number(n),
            _ => MetaValue::Text(v.to_owned()),
        };
        meta.insert(k.to_owned(), value);
    }
    Ok(meta)
}

fn print_summary(s: &Summary) {
    let bytes: u64 = s.documents.iter().map(|o| o.bytes).sum();
    let n = s.documents.len() as f64;
    println!(
        "ingested {} documents into {:?} in {:.1} s ({:.1} docs/s, {:.2} MB/s): {} ok ({} chunks; {} embedded, {:.0} chunks/s), {} duplicate, {} failed",
        s.documents.len(),
        s.collection,
        s.seconds,
        n / s.seconds.max(1e-9),
        bytes as f64 / 1e6 / s.seconds.max(1e-9),
        s.ok,
        s.chunks,
        s.embedded,
        s.chunks_per_s,
        s.duplicate,
        s.failed
    );
    let failures: Vec<_> = s
        .documents
        .iter()
        .filter(|o| o.status == "failed")
        .collect();
    if !failures.is_empty() {
        println!("failed:");
        for o in failures {
            println!(
                "  {}: {}",
                o.source,
                o.reason.as_deref().unwrap_or("unknown reason")
            );
        }
    }
}
