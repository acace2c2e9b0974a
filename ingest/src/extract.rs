//! Isolated extraction: a pool of long-lived child processes that run the parsers.
//!
//! Real-world PDFs make parsers panic, loop for minutes or allocate without bound. Each child
//! caps its own address space (`RLIMIT_AS`) before reading any input, and the parent enforces a
//! wall-clock limit per document, killing and replacing a child that overruns. Whatever happens,
//! the parent gets a reason string and the pool goes on with a fresh child.
//!
//! Protocol (one request at a time per child): the parent writes a JSON header line
//! `{"kind":"pdf","len":N}` followed by N raw bytes; the child answers with one line that starts
//! with [`REPLY_MARK`] and holds a JSON `Result<Extracted, String>`. Lines without the mark
//! (stray prints from a library) are ignored.

use std::io::{BufRead, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::parse::{Extracted, Options, parse_with};
use crate::sniff::DocKind;

const REPLY_MARK: &str = "\u{1e}HEARTH ";
/// Marks a progress line: `DONE TOTAL` pages of long work (OCR). Each one restarts the
/// document's time limit, so a 5,000-page scan is bounded per page, not as a whole.
const PROGRESS_MARK: &str = "\u{1e}HEARTH-PROGRESS ";
/// Sent before a reply after which the process exits: a parser left a thread running that
/// only the end of the process stops (a PDF page pdf-extract never finished).
const RETIRE_MARK: &str = "\u{1e}HEARTH-RETIRE";
/// Marks a stage line: the step the process has begun, named in the reason should the time
/// limit stop it (poppler reading a PDF whose first engine overran).
const STAGE_MARK: &str = "\u{1e}HEARTH-STAGE ";
const ENV_MEMORY: &str = "HEARTH_EXTRACT_MEMORY_MIB";
const ENV_MAX_TEXT: &str = "HEARTH_EXTRACT_MAX_TEXT_BYTES";
const ENV_TIMEOUT_MS: &str = "HEARTH_EXTRACT_TIMEOUT_MS";
const STDERR_TAIL: usize = 4096;

/// How to start an extraction process: a program and its arguments. The program must call
/// [`extract_worker_main`] (the `hearth` binary does so for its hidden `extract-worker`
/// subcommand; this crate's `hearth-extract` binary does nothing else).
#[derive(Clone, Debug)]
pub struct ExtractorCommand {
    /// Executable to start.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    kind: DocKind,
    len: usize,
    /// Tesseract languages for OCR (empty: English).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ocr_languages: Vec<String>,
    /// PDF only: why pdf-extract must not run (it crashed the previous process); the second
    /// engine reads the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    without_pdf_extract: Option<String>,
}

/// Progress of one extraction: pages done and pages to do, when it reports any.
pub(crate) type Progress = tokio::sync::watch::Sender<Option<(u32, u32)>>;

/// Limits applied to each extraction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub timeout: Duration,
    pub memory_mib: u64,
    pub max_text_bytes: u64,
}

/// Why an extraction process ended without a reply (a reason fit for a user).
struct Died(String);

pub(crate) struct ExtractorPool {
    command: ExtractorCommand,
    limits: Limits,
    idle: Mutex<Vec<Worker>>,
    permits: Semaphore,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<String>>,
    stderr_task: JoinHandle<()>,
    /// The process said it exits after its current reply.
    retiring: bool,
    /// The step the current request reached, when the process named one.
    stage: Option<String>,
}

impl ExtractorPool {
    pub fn new(command: ExtractorCommand, limits: Limits, slots: usize) -> Self {
        Self {
            command,
            limits,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(slots.max(1)),
        }
    }

    /// Extracts one document, OCR in `ocr_languages` where it needs any. The error is a reason
    /// fit for a user. The time limit applies to the whole extraction, or, for work that
    /// reports progress, to each step of it. A PDF that kills its process (memory, an abort)
    /// before any progress is read again by the second engine alone, in a fresh process.
    pub async fn extract(
        &self,
        kind: DocKind,
        bytes: &[u8],
        ocr_languages: &[String],
        progress: &Progress,
    ) -> Result<Extracted, String> {
        let mut header = Header {
            kind,
            len: bytes.len(),
            ocr_languages: ocr_languages.to_vec(),
            without_pdf_extract: None,
        };
        match self.attempt(&header, bytes, progress).await {
            Err(Died(reason)) if kind == DocKind::Pdf && progress.borrow().is_none() => {
                tracing::warn!(%reason, "pdf-extract ended its process; trying the second engine");
                header.without_pdf_extract =
                    Some(format!("ended the extraction process: {reason}"));
                match self.attempt(&header, bytes, progress).await {
                    Ok(reply) => reply,
                    Err(Died(again)) => Err(format!("{reason}; the second engine then: {again}")),
                }
            }
            Ok(reply) => reply,
            Err(Died(reason)) => Err(reason),
        }
    }

    /// One try in one process: its reply, or why the process had to end.
    async fn attempt(
        &self,
        header: &Header,
        bytes: &[u8],
        progress: &Progress,
    ) -> Result<Result<Extracted, String>, Died> {
        // invariant: the semaphore is never closed.
        let _permit = self.permits.acquire().await.expect("semaphore open");
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match reused {
            Some(w) => w,
            None => match self.spawn() {
                Ok(w) => w,
                Err(e) => return Ok(Err(e)),
            },
        };
        match worker
            .run(header, bytes, self.limits.timeout, progress)
            .await
        {
            Ok(Ok(reply)) => {
                if !worker.retiring {
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(worker);
                }
                Ok(reply)
            }
            Ok(Err(_io)) => Err(Died(worker.death_reason(self.limits).await)),
            Err(_elapsed) => {
                let _ = worker.child.kill().await;
                let at = match *progress.borrow() {
                    Some((done, total)) => {
                        format!(" on page {} of the {total} it was recognising", done + 1)
                    }
                    None => String::new(),
                };
                let during = match &worker.stage {
                    Some(stage) => format!(" ({stage})"),
                    None => String::new(),
                };
                Ok(Err(format!(
                    "extraction took longer than the {} s limit and was stopped{at}{during}",
                    self.limits.timeout.as_secs()
                )))
            }
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .env(ENV_MEMORY, self.limits.memory_mib.to_string())
            .env(ENV_MAX_TEXT, self.limits.max_text_bytes.to_string())
            .env(ENV_TIMEOUT_MS, self.limits.timeout.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the extraction process {}: {e}",
                    self.command.program.display()
                )
            })?;
        let missing = || "extraction process started without pipes".to_owned();
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(missing)?);
        let mut stderr = child.stderr.take().ok_or_else(missing)?;
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let tail = stderr_tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    let cut = (cut..t.len())
                        .find(|&i| t.is_char_boundary(i))
                        .unwrap_or(t.len());
                    t.drain(..cut);
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            stdout,
            stderr_tail,
            stderr_task,
            retiring: false,
            stage: None,
        })
    }
}

impl Worker {
    /// Sends one request and reads its reply; `Err(Elapsed)` when `limit` passes without a
    /// reply or a progress line.
    async fn run(
        &mut self,
        header: &Header,
        bytes: &[u8],
        limit: Duration,
        progress: &Progress,
    ) -> Result<std::io::Result<Result<Extracted, String>>, tokio::time::error::Elapsed> {
        let mut deadline = tokio::time::Instant::now() + limit;
        self.stage = None;
        let send = async {
            // invariant: a header of an enum, a number and strings serialises.
            let mut line = serde_json::to_vec(header).expect("header serialises");
            line.push(b'\n');
            self.stdin.write_all(&line).await?;
            self.stdin.write_all(bytes).await?;
            self.stdin.flush().await
        };
        if let Err(e) = tokio::time::timeout_at(deadline, send).await? {
            return Ok(Err(e));
        }
        let mut line = String::new();
        loop {
            line.clear();
            match tokio::time::timeout_at(deadline, self.stdout.read_line(&mut line)).await? {
                Ok(0) => return Ok(Err(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
            if line.trim_end() == RETIRE_MARK {
                self.retiring = true;
                continue;
            }
            if let Some(json) = line.strip_prefix(REPLY_MARK) {
                return Ok(serde_json::from_str(json.trim_end())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
            if let Some(stage) = line.strip_prefix(STAGE_MARK) {
                self.stage = Some(stage.trim_end().chars().take(300).collect());
                continue;
            }
            if let Some(p) = line.strip_prefix(PROGRESS_MARK) {
                let mut nums = p.split_whitespace().map(str::parse::<u32>);
                if let (Some(Ok(done)), Some(Ok(total))) = (nums.next(), nums.next()) {
                    deadline = tokio::time::Instant::now() + limit;
                    progress.send_replace(Some((done, total)));
                }
            }
        }
    }

    async fn death_reason(mut self, limits: Limits) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_task).await;
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if tail.contains("memory allocation of") || tail.contains("out of memory") {
            return format!(
                "extraction needed more than the {} MiB memory limit (a decompression bomb or an extremely large document)",
                limits.memory_mib
            );
        }
        match status {
            Some(s) => format!("the extraction process died ({})", describe(s)),
            None => "the extraction process stopped answering".to_owned(),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {}", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => "unknown status".to_owned(),
    }
}

/// One line to the parent while a parse runs (progress, a stage); a closed pipe means the
/// parent is gone, and the process ends with its next reply.
fn notice(mark: &str, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{mark}{text}").and_then(|()| out.flush());
}

/// The body of an extraction process: limits itself, then serves requests on stdin/stdout until
/// stdin closes. Returns the process exit code.
pub fn extract_worker_main() -> i32 {
    let env_u64 = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let memory_mib = env_u64(ENV_MEMORY, 2048);
    let max_text = env_u64(ENV_MAX_TEXT, 64 * 1024 * 1024);
    let time_limit = match env_u64(ENV_TIMEOUT_MS, 0) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let limit = memory_mib.saturating_mul(1024 * 1024);
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_AS, limit, limit) {
        eprintln!("cannot limit memory: {e}");
        return 3;
    }
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // The parent enforces the time limit: if it dies (kill -9 of the server), nothing would stop
    // a parse that never ends, so the process ends itself within a second of being orphaned.
    // (Not PR_SET_PDEATHSIG: it fires when the parent's spawning thread exits, not the parent.)
    let parent = std::os::unix::process::parent_id();
    let _ = std::thread::Builder::new()
        .name("orphan-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(9);
                }
            }
        });
    // Panics are caught and reported as reasons; keep them off stderr.
    std::panic::set_hook(Box::new(|_| {}));

    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut header = String::new();
    loop {
        header.clear();
        match input.read_line(&mut header) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(_) => return 4,
        }
        let Ok(h) = serde_json::from_str::<Header>(header.trim_end()) else {
            return 5;
        };
        let mut bytes = vec![0u8; h.len];
        if input.read_exact(&mut bytes).is_err() {
            return 4;
        }
        let opts = Options {
            ocr_languages: h.ocr_languages,
            progress: Some(Box::new(|done, total| {
                notice(PROGRESS_MARK, &format!("{done} {total}"));
            })),
            stage: Some(Box::new(|stage| {
                notice(STAGE_MARK, &stage.replace('\n', " "))
            })),
            max_text_bytes: max_text,
            time_limit,
            without_pdf_extract: h.without_pdf_extract,
        };
        let reply =
            std::panic::catch_unwind(AssertUnwindSafe(|| parse_with(h.kind, &bytes, &opts)))
                .unwrap_or_else(|p| {
                    Err(format!(
                        "the parser crashed: {}",
                        crate::parse::panic_message(&p)
                    ))
                })
                .and_then(|ex| {
                    if ex.text_bytes() as u64 > max_text {
                        Err(crate::parse::too_much_text(max_text))
                    } else {
                        Ok(ex)
                    }
                });
        drop(bytes);
        // invariant: Extracted and String always serialise.
        let json = serde_json::to_string(&reply).expect("reply serialises");
        let retire = crate::parse::left_work_running();
        let mut out = stdout.lock();
        if retire && writeln!(out, "{RETIRE_MARK}").is_err() {
            return 4;
        }
        if writeln!(out, "{REPLY_MARK}{json}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return 4;
        }
        if retire {
            return 0;
        }
    }
}
