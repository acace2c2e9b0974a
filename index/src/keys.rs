//! The object-store key layout. Every key hearth writes is built here, so the layout is
//! documented (and changed) in one place; DESIGN.md mirrors it.
//!
//! ```text
//! collections/{collection}.json          collection settings (format-affecting, written once)
//! raw/{collection}/{doc_id}              original bytes, exactly as uploaded
//! docs/{collection}/{doc_id}.json        document record: source, metadata, state machine
//! chunks/{collection}/{doc_id}.arrow     Arrow IPC file of the document's chunks
//! chunks/{collection}/v{n}/{doc_id}.arrow  the same, with the vectors of the collection's n-th
//!                                        embedding model (after `n` re-embeddings)
//! catalog/{collection}/records.arrow     the document records as of one listing (`catalog`)
//! index/{collection}/v{n}/manifests/{generation:020}
//!                                        a published retrieval index: its manifest and the
//!                                        store files of its segments, graph and BM25
//!                                        (`published`), committed with a conditional create
//! index/{collection}/v{n}/files/{id}/{part:06}  one file of a published index, in parts of
//!                                        64 MiB (immutable; random id)
//! ```

use crate::ids::{CollectionName, DocId};

/// Settings of a collection.
pub fn collection(c: &CollectionName) -> String {
    format!("collections/{c}.json")
}

/// Prefix under which all collection settings live.
pub const COLLECTIONS_PREFIX: &str = "collections/";

/// Original bytes of a document.
pub fn raw(c: &CollectionName, d: &DocId) -> String {
    format!("raw/{c}/{d}")
}

/// The registry record of a document.
pub fn doc_record(c: &CollectionName, d: &DocId) -> String {
    format!("docs/{c}/{d}.json")
}

/// Prefix of all document records of a collection.
pub fn doc_records_prefix(c: &CollectionName) -> String {
    format!("docs/{c}/")
}

/// The catalog file of a collection: its document records as of one listing (see `catalog`).
pub fn catalog(c: &CollectionName) -> String {
    format!("catalog/{c}/records.arrow")
}

/// Prefix of a collection's catalog files.
pub fn catalog_prefix(c: &CollectionName) -> String {
    format!("catalog/{c}/")
}

/// Prefix of a collection's change journal: one empty object per change of a document record,
/// named by [`journal_entry`] (under the catalog prefix, so it goes with the catalog file).
pub fn journal_prefix(c: &CollectionName) -> String {
    format!("catalog/{c}/log/")
}

/// The journal entry name (below [`journal_prefix`]) of a writer's `seq`-th change, to the
/// record of document `d`.
pub fn journal_entry(d: &DocId, writer: &str, seq: u64) -> String {
    format!("{d}.{writer}.{seq:x}")
}

/// The document a journal entry name (below [`journal_prefix`]) speaks of.
pub fn journal_entry_doc(name: &str) -> Option<DocId> {
    name.split_once('.')?.0.parse().ok()
}

/// The chunk file of one document, with the vectors of the collection's first model.
pub fn chunks(c: &CollectionName, d: &DocId) -> String {
    chunks_of(c, 0, d)
}

/// The chunk file of one document, with the vectors of the collection's embedding model
/// number `vectors` (0: the model it was created with; each re-embedding adds one).
pub fn chunks_of(c: &CollectionName, vectors: u32, d: &DocId) -> String {
    match vectors {
        0 => format!("chunks/{c}/{d}.arrow"),
        n => format!("chunks/{c}/v{n}/{d}.arrow"),
    }
}

/// Prefix of the chunk files with the vectors of model number `vectors`.
pub fn chunks_prefix(c: &CollectionName, vectors: u32) -> String {
    match vectors {
        0 => format!("chunks/{c}/"),
        n => format!("chunks/{c}/v{n}/"),
    }
}

/// The document a chunk file of model number `vectors` belongs to, from its key; `None` for
/// a key of another model's files.
pub fn chunks_doc(c: &CollectionName, vectors: u32, key: &str) -> Option<DocId> {
    key.strip_prefix(&chunks_prefix(c, vectors))?
        .strip_suffix(".arrow")?
        .parse()
        .ok()
}

/// Prefix of everything published of a collection's retrieval indexes (every model).
pub fn index_prefix(c: &CollectionName) -> String {
    format!("index/{c}/")
}

/// Prefix of the published retrieval index built with model number `vectors`.
pub fn index_of(c: &CollectionName, vectors: u32) -> String {
    format!("index/{c}/v{vectors}/")
}

/// The lease naming the replica that indexes collection `c` (`hearth serve` with
/// `cluster.enabled`); under the index prefix, so it goes with the collection.
pub fn index_lease(c: &CollectionName) -> String {
    format!("index/{c}/lease")
}

/// A document of collection `c` that changed through a replica and that the collection's
/// indexer has yet to bring into the published index (an upload, a delete, an access
/// change): an empty object, deleted once a published generation reflects the change.
pub fn change_marker(c: &CollectionName, d: &DocId) -> String {
    format!("changes/{c}/{d}")
}

/// Prefix of the change markers of collection `c`.
pub fn change_markers_prefix(c: &CollectionName) -> String {
    format!("changes/{c}/")
}
