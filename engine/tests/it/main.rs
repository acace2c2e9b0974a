//! hearth-engine's integration tests: one binary, one module per area.
//!
//! They run against the real models: `$HEARTH_MODELS` (default `<workspace>/models`, filled by
//! `scripts/fetch-models.sh`).

mod e5;
mod embed;
mod gemma_embed;
mod generate;
mod lora;

use std::path::PathBuf;

use hearth_engine::EngineConfig;

pub(crate) fn workspace() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
}

pub(crate) fn models_dir() -> PathBuf {
    match std::env::var_os("HEARTH_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = workspace().join("models");
            assert!(
                dir.is_dir(),
                "no models at {}: run scripts/fetch-models.sh (or set HEARTH_MODELS)",
                dir.display()
            );
            dir
        }
    }
}

pub(crate) fn config() -> EngineConfig {
    EngineConfig {
        models_dir: models_dir(),
        device: "cpu".into(),
        embed_threads: 2,
        ..EngineConfig::default()
    }
}
