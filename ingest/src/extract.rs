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
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::parse::{Extracted, parse};
use crate::sniff::DocKind;

const REPLY_MARK: &str = "\u{1e}HEARTH ";
const ENV_MEMORY: &str = "HEARTH_EXTRACT_MEMORY_MIB";
const ENV_MAX_TEXT: &str = "HEARTH_EXTRACT_MAX_TEXT_BYTES";
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
}

/// Limits applied to each extraction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub timeout: Duration,
    pub memory_mib: u64,
    pub max_text_bytes: u64,
}

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

    /// Extracts one document. The error is a reason fit for a user.
    pub async fn extract(&self, kind: DocKind, bytes: &[u8]) -> Result<Extracted, String> {
        // invariant: the semaphore is never closed.
        let _permit = self.permits.acquire().await.expect("semaphore open");
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match reused {
            Some(w) => w,
            None => self.spawn()?,
        };
        match tokio::time::timeout(self.limits.timeout, worker.run(kind, bytes)).await {
            Ok(Ok(reply)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(worker);
                reply
            }
            Ok(Err(_io)) => Err(worker.death_reason(self.limits).await),
            Err(_elapsed) => {
                let _ = worker.child.kill().await;
                Err(format!(
                    "extraction took longer than the {} s limit and was stopped",
                    self.limits.timeout.as_secs()
                ))
            }
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .env(ENV_MEMORY, self.limits.memory_mib.to_string())
            .env(ENV_MAX_TEXT, self.limits.max_text_bytes.to_string())
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
        })
    }
}

impl Worker {
    async fn run(
        &mut self,
        kind: DocKind,
        bytes: &[u8],
    ) -> std::io::Result<Result<Extracted, String>> {
        let mut header = serde_json::to_vec(&Header {
            kind,
            len: bytes.len(),
        })?;
        header.push(b'\n');
        self.stdin.write_all(&header).await?;
        self.stdin.write_all(bytes).await?;
        self.stdin.flush().await?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(json) = line.strip_prefix(REPLY_MARK) {
                return serde_json::from_str(json.trim_end())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
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
    let limit = memory_mib.saturating_mul(1024 * 1024);
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_AS, limit, limit) {
        eprintln!("cannot limit memory: {e}");
        return 3;
    }
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
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
        let reply = std::panic::catch_unwind(|| parse(h.kind, &bytes))
            .unwrap_or_else(|p| Err(format!("the parser crashed: {}", crate::parse::panic_message(&p))))
            .and_then(|ex| {
                if ex.text_bytes() as u64 > max_text {
                    Err(format!(
                        "the document yields more than {} MiB of text (a decompression bomb or a generated file?)",
                        max_text / (1024 * 1024)
                    ))
                } else {
                    Ok(ex)
                }
            });
        drop(bytes);
        // invariant: Extracted and String always serialise.
        let json = serde_json::to_string(&reply).expect("reply serialises");
        let mut out = stdout.lock();
        if writeln!(out, "{REPLY_MARK}{json}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return 4;
        }
    }
}
