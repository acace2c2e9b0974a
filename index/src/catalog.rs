//! A collection's catalog file: the collection's document records as of one listing, each with
//! the key and version tag (ETag) of the record object it was read from, in one Arrow IPC
//! file. A reader lists the record objects (one request per thousand on S3), keeps every row
//! whose tag still matches and reads only the records that changed, so listing, counting and
//! opening a collection read O(changes) objects instead of one per document. The file is a
//! cache: a row that is stale is caught by its tag, a damaged file (a CRC-32 of the Arrow
//! bytes follows them) or a foreign one is refused and read again from the records.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;

use crate::error::{IndexError, Result};

/// The schema version, in the schema's metadata under [`VERSION_KEY`].
const VERSION: &str = "1";
const VERSION_KEY: &str = "hearth.catalog";
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

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("tag", DataType::Utf8, false),
        Field::new("record", DataType::Binary, false),
    ])
    .with_metadata(std::collections::HashMap::from([(
        VERSION_KEY.to_owned(),
        VERSION.to_owned(),
    )]))
}

/// Writes rows as a catalog file.
pub fn encode_catalog(rows: &[CatalogRow]) -> Result<Bytes> {
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
    let schema = Arc::new(schema());
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
pub fn decode_catalog(key: &str, bytes: Bytes) -> Result<Vec<CatalogRow>> {
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
    if schema.metadata().get(VERSION_KEY).map(String::as_str) != Some(VERSION)
        || schema.fields() != self::schema().fields()
    {
        return Err(corrupt(format!(
            "catalog schema {:?} is not version {VERSION}",
            schema.metadata().get(VERSION_KEY)
        )));
    }
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
    Ok(rows)
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
        let file = encode_catalog(&rows).unwrap();
        assert_eq!(decode_catalog("k", file.clone()).unwrap(), rows);
        assert!(
            decode_catalog("k", encode_catalog(&[]).unwrap())
                .unwrap()
                .is_empty()
        );
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
