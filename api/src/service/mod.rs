//! Orchestration, one module per job.

pub mod ingest;
