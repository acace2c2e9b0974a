//! The object-store key layout. Every key hearth writes is built here, so the layout is
//! documented (and changed) in one place; DESIGN.md mirrors it.
//!
//! ```text
//! collections/{collection}.json          collection settings (format-affecting, written once)
//! raw/{collection}/{doc_id}              original bytes, exactly as uploaded
//! docs/{collection}/{doc_id}.json        document record: source, metadata, state machine
//! chunks/{collection}/{doc_id}.arrow     Arrow IPC file of the document's chunks
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

/// The chunk segment of one document.
pub fn chunks(c: &CollectionName, d: &DocId) -> String {
    format!("chunks/{c}/{d}.arrow")
}
