//! Running the real `hearth` binary against a fresh data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hearth_index::fixtures::SeaweedFs;
use hearth_index::{BlobStore, S3Config};
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The models directory: `$HEARTH_MODELS` or `./models`, which must hold the default models.
pub fn models() -> PathBuf {
    let dir =
        std::env::var_os("HEARTH_MODELS").map_or_else(|| root().join("models"), PathBuf::from);
    assert!(
        dir.join("all-MiniLM-L6-v2/tokenizer.json").is_file(),
        "models missing in {}: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

/// A program of the test virtual environment (`~/.cache/hearth/venv/bin`, or under
/// `$HEARTH_CACHE`), installed by scripts/test-deps.sh.
pub fn venv_bin(name: &str) -> PathBuf {
    let cache = std::env::var_os("HEARTH_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/hearth"),
        PathBuf::from,
    );
    let bin = cache.join("venv/bin").join(name);
    assert!(
        bin.is_file(),
        "{} missing: run scripts/test-deps.sh",
        bin.display()
    );
    bin
}

/// Which object store a test node uses.
pub enum Backend {
    Local,
    S3(S3Config),
}

impl Backend {
    pub fn s3() -> Self {
        Backend::S3(SeaweedFs::shared().fresh_bucket())
    }
}

/// A hearth node: a data directory, a backend and extra environment.
pub struct Node {
    pub dir: tempfile::TempDir,
    backend: Backend,
    env: Vec<(String, String)>,
}

impl Node {
    pub fn new(backend: Backend) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            backend,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        cmd.current_dir(self.dir.path())
            .env_remove("HEARTH_CONFIG")
            .env("HEARTH_DATA_DIR", self.dir.path().join("data"))
            .env("HEARTH_MODELS", models());
        for (k, _) in std::env::vars() {
            if k.starts_with("HEARTH__") {
                cmd.env_remove(k);
            }
        }
        if let Backend::S3(s3) = &self.backend {
            cmd.env("HEARTH__STORAGE__BACKEND", "s3")
                .env("HEARTH__STORAGE__S3__ENDPOINT", &s3.endpoint)
                .env("HEARTH__STORAGE__S3__BUCKET", &s3.bucket);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `hearth ARGS`, asserting nothing about the outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `hearth ingest --json` and returns the summary; panics on a non-zero exit.
    pub fn ingest(&self, collection: &str, paths: &[&Path]) -> Value {
        self.ingest_with(collection, paths, &[])
    }

    /// Runs `hearth ingest --json` with extra flags and returns the summary; panics on a
    /// non-zero exit.
    pub fn ingest_with(&self, collection: &str, paths: &[&Path], flags: &[&str]) -> Value {
        let mut args = vec![
            "ingest".to_owned(),
            "--json".into(),
            "-c".into(),
            collection.into(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let out = self.command().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "hearth ingest failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The document records of a collection, as `hearth docs --json` prints them.
    pub fn docs(&self, collection: &str) -> Vec<Value> {
        let out = self.run(&["docs", "--json", "-c", collection]);
        assert_ok(&out);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    /// Runs `hearth search --json QUERY -c COLLECTION EXTRA...` and returns the output; panics
    /// on a non-zero exit.
    pub fn search(&self, collection: &str, query: &str, extra: &[&str]) -> Value {
        let out = self
            .command()
            .args(["search", "--json", "-c", collection, query])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hearth search failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The node's object store, opened directly.
    /// An in-process service over this node's store for retrieval only (no generator), with
    /// its index cache under `data_dir` in the node's directory.
    pub fn service_parts(
        &self,
        data_dir: &str,
        engine: hearth_engine::EngineConfig,
        index: hearth_index::IndexConfig,
    ) -> hearth_api::ServiceParts {
        hearth_api::ServiceParts {
            store: self.store().into(),
            data_dir: self.dir.path().join(data_dir),
            engine: hearth_engine::EngineConfig {
                models_dir: models(),
                ..engine
            },
            ingest: hearth_ingest::IngestConfig::default(),
            index,
            extractor: hearth_ingest::ExtractorCommand {
                program: env!("CARGO_BIN_EXE_hearth").into(),
                args: vec!["extract-worker".into()],
            },
            generator: false,
            ask: Default::default(),
            backlog_limit: 1,
            cluster: Default::default(),
        }
    }

    pub fn store(&self) -> BlobStore {
        match &self.backend {
            Backend::Local => BlobStore::local(&self.dir.path().join("data/store")).unwrap(),
            Backend::S3(s3) => BlobStore::s3(s3).unwrap(),
        }
    }
}

/// Every object under `prefix` with its bytes.
pub async fn objects(store: &BlobStore, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for key in store.list(prefix).await.unwrap() {
        let bytes = store.get(&key).await.unwrap();
        out.insert(key, bytes.to_vec());
    }
    out
}

/// Every file under `dir` (recursively), by path, with its bytes.
pub fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Documents of an ingest summary by status.
pub fn by_status<'a>(summary: &'a Value, status: &str) -> Vec<&'a Value> {
    summary["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == status)
        .collect()
}

/// The file name of a summary entry's source.
pub fn file_name(doc: &Value) -> String {
    let s = doc["source"].as_str().unwrap();
    Path::new(s.trim_end_matches(" (resumed)"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The file names of a search output's hits, in rank order.
pub fn hit_files(search: &Value) -> Vec<String> {
    search["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            Path::new(h["source"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// A running `hearth serve` on a free loopback port; killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    /// What the server printed on stdout before it was ready.
    pub banner: String,
    pub client: reqwest::Client,
}

impl Node {
    /// Starts `hearth serve --bind 127.0.0.1:0 EXTRA...` and waits (bounded) until `/readyz`
    /// answers 200.
    pub async fn serve(&self, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = self
            .command()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Keep draining stderr so the server never blocks on a full pipe; echo it for failures.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[server] {line}");
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = String::new();
        let url = loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("hearth serve printed no address within 120 s");
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.strip_prefix("hearth is listening on ") {
                break rest.trim().to_owned();
            }
        };
        // The rest of the banner comes right after the address line.
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(300)) {
            banner.push_str(&line);
            banner.push('\n');
        }
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{url}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server was not ready within 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Server {
            child,
            url,
            banner,
            client,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an error response with this status and code; returns its message.
    pub fn error(&self, status: u16, code: &str) -> String {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}

impl Server {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = req.send().await.unwrap();
        Reply {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(format!("{}{path}", self.url)))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// A request as `key` (none: no Authorization header), with an optional JSON body.
    pub async fn call(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let url = format!("{}{path}", self.url);
        let mut req = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            "PATCH" => self.client.patch(url),
            _ => self.client.post(url),
        };
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        self.send(req).await
    }

    /// Uploads `bytes` as the raw body, named by `source`, as `key`.
    pub async fn upload_as(
        &self,
        key: &str,
        c: &str,
        source: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Reply {
        self.send(
            self.client
                .post(format!(
                    "{}/v1/collections/{c}/documents?source={source}",
                    self.url
                ))
                .bearer_auth(key)
                .header("content-type", content_type)
                .body(bytes),
        )
        .await
    }

    /// Uploads `bytes` as a multipart form with a `file` part named `name` and optional
    /// metadata.
    pub async fn upload(&self, c: &str, name: &str, bytes: &[u8], meta: Option<&Value>) -> Reply {
        let boundary = "hearth-test-boundary-7d1f";
        let mut body = Vec::new();
        if let Some(m) = meta {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{m}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.send(
            self.client
                .post(format!("{}/v1/collections/{c}/documents", self.url))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body),
        )
        .await
    }

    /// Polls a document until it reaches `indexed` or `failed` (bounded); returns its JSON.
    pub async fn wait_done(&self, c: &str, id: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let r = self
                .get(&format!("/v1/collections/{c}/documents/{id}"))
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            if v["status"] == "indexed" || v["status"] == "failed" {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "document {id} still {} after 180 s",
                v["status"]
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Reads a Server-Sent Events response to its end: `(event, data)` pairs in order.
    pub async fn sse(&self, path: &str, body: &Value) -> Vec<(String, Value)> {
        self.sse_as(None, path, body).await
    }

    /// [`Server::sse`] as `key`.
    pub async fn sse_as(
        &self,
        key: Option<&str>,
        path: &str,
        body: &Value,
    ) -> Vec<(String, Value)> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let mut r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let mut buf = String::new();
        let mut out = Vec::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let v = serde_json::from_str(&data).unwrap_or(Value::String(data));
                out.push((name, v));
            }
        }
        out
    }
}

/// Creates an API key with `hearth keys create` and returns its token.
pub fn create_key(node: &Node, name: &str, role: &str, cols: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--json", "--name", name, "--role", role];
    for c in cols {
        args.extend(["-c", c]);
    }
    args.extend(extra);
    let out = node.run(&args);
    assert_ok(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Asserts that a command exited 0, showing its standard error if not.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The record whose source ends with `source` (a file name, or `mailbox/message.eml`).
#[track_caller]
pub fn by_source<'a>(docs: &'a [Value], source: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["source"].as_str().is_some_and(|s| s.ends_with(source)))
        .unwrap_or_else(|| panic!("no document {source}: {docs:#?}"))
}

/// A PDF file of these objects (numbered from 1; object 1 must be the catalog), with its
/// cross-reference table.
pub fn pdf_of_objects(objs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// A PDF whose pages draw these content streams, with Helvetica as font `/F1`.
pub fn pdf_of_pages(contents: &[Vec<u8>]) -> Vec<u8> {
    let n = contents.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut objs = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!("<< /Type /Pages /Count {n} /Kids [{}] >>", kids.join(" ")).into_bytes(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ];
    for (i, c) in contents.iter().enumerate() {
        objs.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * i
        ).into_bytes());
        let mut stream = format!("<< /Length {} >>\nstream\n", c.len()).into_bytes();
        stream.extend_from_slice(c);
        stream.extend_from_slice(b"\nendstream");
        objs.push(stream);
    }
    pdf_of_objects(&objs)
}

/// The first `top_k` hits for `text` in `mode`, as a reader who may read everything sees them.
pub async fn search_all(
    service: &hearth_api::Service,
    col: &std::sync::Arc<hearth_api::Collection>,
    text: &str,
    mode: hearth_index::SearchMode,
    top_k: usize,
) -> hearth_api::SearchResults {
    service
        .search(
            col,
            hearth_api::SearchQuery {
                text: text.to_owned(),
                mode,
                top_k,
                filter: None,
                fusion: None,
                reader: hearth_api::Reader::Everything,
            },
        )
        .await
        .unwrap()
}
