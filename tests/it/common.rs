//! Running the real `hearth` binary against a fresh data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hearth_index::fixtures::SeaweedFs;
use hearth_index::{BlobStore, S3Config, StorageConfig};
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
        let mut args = vec![
            "ingest".to_owned(),
            "--json".into(),
            "-c".into(),
            collection.into(),
        ];
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
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    pub fn store(&self) -> BlobStore {
        let cfg = match &self.backend {
            Backend::Local => StorageConfig {
                data_dir: self.dir.path().join("data"),
                ..StorageConfig::default()
            },
            Backend::S3(s3) => StorageConfig {
                backend: hearth_index::StorageBackend::S3,
                s3: s3.clone(),
                ..StorageConfig::default()
            },
        };
        BlobStore::open(&cfg).unwrap()
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
