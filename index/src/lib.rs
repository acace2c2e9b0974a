//! # hearth-index: everything persisted, plus retrieval
//!
//! This crate owns hearth's durable state. The object store (local directory or an
//! S3-compatible store inside the jurisdiction) is the source of truth; everything on local
//! disk is a cache that can be rebuilt from it.
//!
//! What lives here:
//! - [`BlobStore`]: our narrow view of the `object_store` crate (local and S3 backends), with
//!   the key layout in [`keys`]. No `object_store` type appears in a public signature.
//! - The shared identifiers [`DocId`], [`ChunkId`] and [`CollectionName`].
//! - The Arrow chunk schema ([`Chunk`], [`encode_chunks`], [`decode_chunks`]): one IPC file per
//!   document, with an embedding column that the embedding stage fills in.
//! - [`CollectionSettings`]: the format-affecting settings of a collection, written once at
//!   creation and checked on every open.
//!
//! What must not live here: model code (that is `hearth-engine`), document parsing (that is
//! `hearth-ingest`) and anything HTTP. This crate depends on no other workspace crate.
#![warn(missing_docs)]

mod blob;
mod chunks;
mod collection;
mod config;
mod error;
mod format;
mod ids;
pub mod keys;

#[cfg(feature = "testing")]
pub mod fixtures;

pub use blob::BlobStore;
pub use chunks::{Chunk, decode_chunks, encode_chunks};
pub use collection::CollectionSettings;
pub use config::{S3Config, StorageBackend, StorageConfig};
pub use error::{IndexError, Result};
pub use format::{FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT};
pub use ids::{ChunkId, CollectionName, DocId};
