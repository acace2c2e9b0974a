//! hearth-engine's integration tests: one binary, one module per area.
//!
//! They run against the real models: `$HEARTH_MODELS` (default `<workspace>/models`, filled by
//! `scripts/fetch-models.sh`).

mod embed;
