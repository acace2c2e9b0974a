//! A collection's catalog file: the collection's document records as of one listing, each with
//! the key and version tag (ETag) of the record object it was read from, in one Arrow IPC
//! file, and the names of the change-journal entries whose changes those rows hold. A reader
//! takes the rows and reads only the records that journal entries the file does not cover name
//! (or, without a usable journal, lists the record objects and reads those whose tag changed),
//! so listing, counting and opening a collection read O(changes) objects instead of one per
//! document. The file is a cache: a damaged file (a CRC-32 of the Arrow bytes follows them) or
//! a foreign one is refused and read again from the records.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;

use crate::error::{IndexError, Result};

/// The schema version, in the schema's metadata under [`VERSION_KEY`]. Version 1 files (no
/// journal coverage) are still read.
const VERSION: &str = "2";
const VERSION_KEY: &str = "hearth.catalog";
/// The journal entries a file covers, one name a line, in the schema's metadata (version 2).
const JOURNAL_KEY: &str = "hearth.catalog.journal";
/// Follows the Arrow bytes, with their CRC-32 (little-endian).
const TRAILER: &[u8; 4] = b"HCRC";

/// One row: a record object's key, its version tag when read, and its bytes (JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogRow {
    /// The record object's key.
    pub key: String,
    /// Its version tag when it was read.
    pub tag: String,
    /// Its bytes.
    pub record: Bytes,
}

/// A decoded catalog file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    /// Its rows, in the order written.
    pub rows: Vec<CatalogRow>,
    /// The names of the journal entries whose changes the rows hold; `None` in a file written
    /// before the journal (version 1), which covers none and cannot stand in for a listing.
    pub journal: Option<Vec<String>>,
}

fn schema(journal: &[String]) -> Schema {
    Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("tag", DataType::Utf8, false),
        Field::new("record", DataType::Binary, false),
    ])
    .with_metadata(std::collections::HashMap::from([
        (VERSION_KEY.to_owned(), VERSION.to_owned()),
        (JOURNAL_KEY.to_owned(), journal.join("\n")),
    ]))
}

/// Writes rows as a catalog file that covers the journal entries named `journal` (names
/// without a line break).
pub fn encode_catalog(rows: &[CatalogRow], journal: &[String]) -> Result<Bytes> {
    if let Some(bad) = journal.iter().find(|j| j.contains('\n')) {
        return Err(IndexError::InvalidInput(format!(
            "journal entry name {bad:?} holds a line break"
        )));
    }
    let n = rows.len();
    let mut key = StringBuilder::with_capacity(n, rows.iter().map(|r| r.key.len()).sum());
    let mut tag = StringBuilder::with_capacity(n, rows.iter().map(|r| r.tag.len()).sum());
    let record_bytes: usize = rows.iter().map(|r| r.record.len()).sum();
    let mut record = BinaryBuilder::with_capacity(n, record_bytes);
    for r in rows {
        key.append_value(&r.key);
        tag.append_value(&r.tag);
        record.append_value(&r.record);
    }
    let schema = Arc::new(schema(journal));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(tag.finish()),
        Arc::new(record.finish()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| IndexError::Internal(format!("building the catalog batch: {e}")))?;
    let mut writer = FileWriter::try_new(Vec::with_capacity(record_bytes + n * 96), &schema)
        .map_err(|e| IndexError::Internal(e.to_string()))?;
    writer
        .write(&batch)
        .and_then(|()| writer.finish())
        .map_err(|e| IndexError::Internal(format!("writing the catalog: {e}")))?;
    let mut buf = writer
        .into_inner()
        .map_err(|e| IndexError::Internal(e.to_string()))?;
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(TRAILER);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(Bytes::from(buf))
}

/// Reads a catalog file written by [`encode_catalog`]; [`IndexError::Corrupt`] for anything
/// else (damage, another version). `key` names the object in error messages.
pub fn decode_catalog(key: &str, bytes: Bytes) -> Result<Catalog> {
    let corrupt = |detail: String| IndexError::Corrupt {
        key: key.to_owned(),
        detail,
    };
    let body_len = bytes
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupt("too short".into()))?;
    let (body, trailer) = bytes.split_at(body_len);
    if &trailer[..4] != TRAILER || trailer[4..] != crc32fast::hash(body).to_le_bytes() {
        return Err(corrupt(
            "the CRC-32 does not match: the file is damaged".into(),
        ));
    }
    let reader = FileReader::try_new(std::io::Cursor::new(bytes.slice(..body_len)), None)
        .map_err(|e| corrupt(format!("not a catalog file: {e}")))?;
    let schema = reader.schema();
    let version = schema.metadata().get(VERSION_KEY).map(String::as_str);
    if !matches!(version, Some("1" | VERSION)) || schema.fields() != self::schema(&[]).fields() {
        return Err(corrupt(format!(
            "catalog schema {version:?} is not version 1 or {VERSION}"
        )));
    }
    let journal = match version {
        Some("1") => None,
        _ => Some(
            schema
                .metadata()
                .get(JOURNAL_KEY)
                .ok_or_else(|| corrupt("version 2 without its journal coverage".into()))?
                .split('\n')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
    };
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        let (keys, tags, records) = (
            batch.column(0).as_string::<i32>(),
            batch.column(1).as_string::<i32>(),
            batch.column(2).as_binary::<i32>(),
        );
        rows.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            rows.push(CatalogRow {
                key: keys.value(i).to_owned(),
                tag: tags.value(i).to_owned(),
                record: Bytes::copy_from_slice(records.value(i)),
            });
        }
    }
    Ok(Catalog { rows, journal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_the_file_and_damage_is_refused() {
        let rows: Vec<CatalogRow> = (0..100)
            .map(|i| CatalogRow {
                key: format!("docs/c/{i:064x}.json"),
                tag: format!("\"etag-{i}\""),
                record: Bytes::from(format!("{{\"n\":{i}}}")),
            })
            .collect();
        let journal = vec!["ab.1.2".to_owned(), "cd.1.3".to_owned()];
        let file = encode_catalog(&rows, &journal).unwrap();
        let back = decode_catalog("k", file.clone()).unwrap();
        assert_eq!((back.rows, back.journal), (rows, Some(journal)));
        let empty = decode_catalog("k", encode_catalog(&[], &[]).unwrap()).unwrap();
        assert!(empty.rows.is_empty() && empty.journal == Some(vec![]));
        assert!(encode_catalog(&[], &["a\nb".to_owned()]).is_err());
        for cut in [0, 8, file.len() / 2, file.len() - 1] {
            assert!(matches!(
                decode_catalog("k", file.slice(..cut)),
                Err(IndexError::Corrupt { .. })
            ));
        }
        for at in [0, file.len() / 3, file.len() / 2, file.len() - 5] {
            let mut flipped = file.to_vec();
            flipped[at] ^= 0x01;
            assert!(matches!(
                decode_catalog("k", Bytes::from(flipped)),
                Err(IndexError::Corrupt { .. })
            ));
        }
    }
}
