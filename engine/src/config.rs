//! Engine configuration and model file resolution.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{EngineError, Result};

const FETCH_HINT: &str = "run scripts/fetch-models.sh, or point [engine] at your own files";

/// Which models the engine loads and where they are.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Directory holding the models; relative model paths resolve against it.
    /// Default: `./models` (the CLI also reads `$HEARTH_MODELS`).
    pub models_dir: PathBuf,
    /// Directory of the sentence-embedding model: `config.json`, `tokenizer.json` and
    /// `model.safetensors`. Default: `all-MiniLM-L6-v2`.
    pub embedding_model: PathBuf,
    /// The GGUF file of the generator. Default: `SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub generator_model: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("./models"),
            embedding_model: PathBuf::from("all-MiniLM-L6-v2"),
            generator_model: PathBuf::from("SmolLM2-135M-Instruct.Q4_1.gguf"),
        }
    }
}

/// What the rest of hearth needs to know about the embedding model without loading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingModelInfo {
    /// Width of the embeddings (the model's hidden size).
    pub dim: usize,
    /// Path of its `tokenizer.json`.
    pub tokenizer: PathBuf,
}

#[derive(Deserialize)]
struct BertConfigHead {
    hidden_size: usize,
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
        Ok(())
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

    /// The generator's GGUF file, resolved against `models_dir`.
    pub fn generator_model_path(&self) -> PathBuf {
        self.resolve(&self.generator_model)
    }

    /// Reads the embedding model's `config.json` and locates its tokenizer.
    pub fn embedding_model_info(&self) -> Result<EmbeddingModelInfo> {
        let dir = self.embedding_model_dir();
        let config_path = dir.join("config.json");
        let tokenizer = dir.join("tokenizer.json");
        for p in [&config_path, &tokenizer] {
            if !p.is_file() {
                return Err(EngineError::ModelMissing {
                    path: p.clone(),
                    hint: FETCH_HINT,
                });
            }
        }
        let raw = std::fs::read(&config_path).map_err(|source| EngineError::Io {
            path: config_path.clone(),
            source,
        })?;
        let head: BertConfigHead =
            serde_json::from_slice(&raw).map_err(|e| EngineError::Corrupt {
                path: config_path.clone(),
                detail: e.to_string(),
            })?;
        Ok(EmbeddingModelInfo {
            dim: head.hidden_size,
            tokenizer,
        })
    }
}
