//! # hearth-index: everything persisted, plus retrieval
//!
//! This crate owns hearth's durable state and the retrieval built on it. The object store
//! (local directory or an S3-compatible store inside the jurisdiction) is the source of truth;
//! everything on local disk is a cache that can be rebuilt from it.
//!
//! What lives here:
//! - [`BlobStore`]: our narrow view of the `object_store` crate (local and S3 backends), with
//!   the key layout in [`keys`]. No `object_store` type appears in a public signature.
//! - The shared identifiers [`DocId`], [`ChunkId`] and [`CollectionName`].
//! - The Arrow chunk schema ([`Chunk`], [`encode_chunks`], [`decode_chunks`]): one IPC file per
//!   document, with an embedding column that the embedding stage fills in.
//! - [`CollectionSettings`]: the format-affecting settings of a collection, written once at
//!   creation and checked on every open.
//! - Retrieval: a [`CollectionIndex`] per collection holds the chunks and their normalised
//!   vectors in memory, an HNSW graph ([`HnswIndex`], wrapping `hnsw_rs`) and a tantivy BM25
//!   index, and answers dense, BM25 and hybrid searches ([`SearchRequest`], [`SearchMode`],
//!   fused by [`Fusion`]: reciprocal rank fusion by default). Metadata [`Filter`]s and deletions
//!   are applied *inside* both retrievers, so a selective filter still fills `top_k`; small
//!   allowed sets are scanned exactly ([`FlatIndex`], also the recall oracle in tests). Each
//!   document's [`Access`] list is checked against the search's [`Reader`] in the same place.
//!   Its directory is a cache with a crash-safe commit protocol (manifest written last, tantivy
//!   commit payload = manifest generation); a damaged part is rebuilt, an unreadable manifest
//!   makes the index start empty so the layer above can refill it from the object store.
//! - [`IndexConfig`]: the `[index]` settings; HNSW `M`, `ef_construction` and the text
//!   [`Analyzer`] are format-affecting and checked against each collection's manifest.
//!
//! Invariants: point ids (`u32`) are dense and only reassigned by compaction; hits carry the
//! chunk as stored (NFC text) while BM25 sees NFKC-normalised text; scores are sorted
//! descending with ties broken by chunk id. No `hnsw_rs` or tantivy type appears in a public
//! signature.
//!
//! What must not live here: model code (that is `hearth-engine`), document parsing (that is
//! `hearth-ingest`) and anything HTTP. This crate depends on no other workspace crate.
#![warn(missing_docs)]

mod access;
mod blob;
mod catalog;
mod chunks;
mod cjk;
mod collection;
mod config;
mod coord;
mod crypto;
mod egress;
mod error;
mod filter;
mod format;
mod hybrid;
mod ids;
pub mod keys;
mod lexical;
mod meta;
mod pidset;
mod published;
mod retrieval;
mod vector;

#[cfg(feature = "testing")]
pub mod fixtures;

pub use access::{Access, MAX_ACCESS_ENTRIES, Reader, check_name};
pub use blob::{BlobStore, Outcome as WriteOutcome, WriteCheck, WriteChecks};
pub use catalog::{Catalog, CatalogRow, decode_catalog, encode_catalog};
pub use chunks::{Chunk, decode_chunks, encode_chunks};
pub use collection::{CollectionSettings, Redaction, RedactionPattern, ReembedTarget};
pub use config::{
    FusionKind, IndexConfig, ModelIndexConfig, S3Config, StorageBackend, StorageConfig,
};
pub use coord::{Generations, Lease, LeaseStatus};
pub use crypto::{CIPHER, CacheSealer, EncryptionConfig, Kek};
pub use egress::EgressClient;
pub use error::{IndexError, Result};
pub use filter::{Condition, Filter};
pub use format::{FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT};
pub use hybrid::{Fusion, SearchMode};
pub use ids::{ChunkId, CollectionName, DocId, sha256_file};
pub use lexical::Analyzer;
pub use meta::{MetaValue, Metadata};
pub use published::{
    Collected, DEFAULT_GRACE as DEFAULT_PUBLISH_GRACE, Fetched, Published, PublishedIndex,
    StoredFile, Uploaded,
};
pub use retrieval::{
    CollectionIndex, CompactStats, Hit, IndexParams, IndexStats, IndexedDoc, Install, InstallFile,
    MAX_TOP_K, SearchParams, SearchRequest, Snapshot, Verification, cache_is_empty,
};
pub use vector::{AnnKind, FlatIndex, GraphIndex, HnswIndex, HnswParams, VectorIndex};
