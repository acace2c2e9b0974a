//! End-to-end tests of the `hearth` binary: real models, real child processes, real object
//! stores (a local directory and a SeaweedFS S3 server).

mod access;
mod adapters;
mod audit;
mod auth;
mod browser;
mod common;
mod config;
mod conversations;
mod crash;
mod deploy;
mod documents;
mod encryption;
mod erasure;
mod eval;
mod ingest;
mod mail;
mod mailbox;
mod multilingual;
mod oidc;
mod openai;
mod quality;
mod redaction;
mod reembed;
mod replicas;
mod residency;
mod scans;
mod search;
mod serve;
mod soak;
mod store;
mod tenants;
