//! The chunk schema and its Arrow IPC encoding.
//!
//! One IPC file per document holds all its chunks in ordinal order. The embedding column is
//! present from the start (null until the embedding stage fills it), so the file format does not
//! change between stages.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeBinaryBuilder, FixedSizeListBuilder, Float32Builder, ListBuilder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;

use crate::error::{IndexError, Result};
use crate::format::FORMAT_VERSION;
use crate::ids::{ChunkId, DocId};

/// One retrievable passage of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// The document the chunk belongs to.
    pub doc_id: DocId,
    /// Position of the chunk within its document, from 0.
    pub ordinal: u32,
    /// The chunk's text (Unicode NFC, whitespace normalised); shown to users and the model.
    pub text: String,
    /// First PDF page (1-based) the chunk draws from; `None` for formats without pages.
    pub page_start: Option<u32>,
    /// Last PDF page (1-based) the chunk draws from.
    pub page_end: Option<u32>,
    /// Headings enclosing the chunk's start, outermost first (HTML and Markdown).
    pub heading: Vec<String>,
    /// Start of the chunk in the normalised document text, in Unicode scalar values (chars).
    pub span_start: u64,
    /// End (exclusive) of the chunk in the normalised document text, in chars.
    pub span_end: u64,
    /// Tokens in the chunk as the embedding model counts them, special tokens included.
    pub token_count: u32,
    /// The embedding, once the embedding stage has run.
    pub embedding: Option<Vec<f32>>,
}

impl Chunk {
    /// The chunk's stable id.
    pub fn id(&self) -> ChunkId {
        ChunkId::new(&self.doc_id, self.ordinal)
    }
}

fn schema(dim: i32) -> Schema {
    let fields = vec![
        Field::new("chunk_id", DataType::UInt64, false),
        Field::new("doc_id", DataType::FixedSizeBinary(32), false),
        Field::new("ordinal", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("page_start", DataType::UInt32, true),
        Field::new("page_end", DataType::UInt32, true),
        Field::new(
            "heading",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("span_start", DataType::UInt64, false),
        Field::new("span_end", DataType::UInt64, false),
        Field::new("token_count", DataType::UInt32, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim),
            true,
        ),
    ];
    let metadata: std::collections::HashMap<String, String> = [(
        "hearth.format_version".to_owned(),
        FORMAT_VERSION.to_string(),
    )]
    .into();
    Schema::new_with_metadata(fields, metadata)
}

/// Encodes a document's chunks as one Arrow IPC file with an embedding column of width `dim`.
///
/// Fails with [`IndexError::InvalidInput`] if an embedding has another width.
pub fn encode_chunks(chunks: &[Chunk], dim: usize) -> Result<Bytes> {
    let dim_i32 = i32::try_from(dim)
        .map_err(|_| IndexError::InvalidInput(format!("embedding dim {dim} is too large")))?;
    let n = chunks.len();
    let mut chunk_id = UInt64Builder::with_capacity(n);
    let mut doc_id = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut ordinal = UInt32Builder::with_capacity(n);
    let text_bytes = chunks.iter().map(|c| c.text.len()).sum();
    let mut text = StringBuilder::with_capacity(n, text_bytes);
    let mut page_start = UInt32Builder::with_capacity(n);
    let mut page_end = UInt32Builder::with_capacity(n);
    let mut heading = ListBuilder::new(StringBuilder::new());
    let mut span_start = UInt64Builder::with_capacity(n);
    let mut span_end = UInt64Builder::with_capacity(n);
    let mut token_count = UInt32Builder::with_capacity(n);
    let mut embedding =
        FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(n * dim), dim_i32, n);

    for c in chunks {
        chunk_id.append_value(c.id().get());
        doc_id
            .append_value(c.doc_id.as_bytes())
            .map_err(|e| IndexError::Internal(e.to_string()))?;
        ordinal.append_value(c.ordinal);
        text.append_value(&c.text);
        page_start.append_option(c.page_start);
        page_end.append_option(c.page_end);
        for h in &c.heading {
            heading.values().append_value(h);
        }
        heading.append(true);
        span_start.append_value(c.span_start);
        span_end.append_value(c.span_end);
        token_count.append_value(c.token_count);
        match &c.embedding {
            Some(v) if v.len() == dim => {
                embedding.values().append_slice(v);
                embedding.append(true);
            }
            Some(v) => {
                return Err(IndexError::InvalidInput(format!(
                    "chunk {} has an embedding of width {}, the collection uses {dim}",
                    c.ordinal,
                    v.len()
                )));
            }
            None => {
                embedding.values().append_nulls(dim);
                embedding.append(false);
            }
        }
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(chunk_id.finish()),
        Arc::new(doc_id.finish()),
        Arc::new(ordinal.finish()),
        Arc::new(text.finish()),
        Arc::new(page_start.finish()),
        Arc::new(page_end.finish()),
        Arc::new(heading.finish()),
        Arc::new(span_start.finish()),
        Arc::new(span_end.finish()),
        Arc::new(token_count.finish()),
        Arc::new(embedding.finish()),
    ];
    let schema = Arc::new(schema(dim_i32));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| IndexError::Internal(format!("building chunk batch: {e}")))?;
    let mut writer =
        FileWriter::try_new(Vec::with_capacity(text_bytes + n * (dim * 4 + 96)), &schema)
            .map_err(|e| IndexError::Internal(e.to_string()))?;
    writer
        .write(&batch)
        .and_then(|()| writer.finish())
        .map_err(|e| IndexError::Internal(format!("writing chunk batch: {e}")))?;
    let buf = writer
        .into_inner()
        .map_err(|e| IndexError::Internal(e.to_string()))?;
    Ok(Bytes::from(buf))
}

/// Decodes a chunk file written by [`encode_chunks`]. `key` names the object in error messages.
pub fn decode_chunks(key: &str, bytes: &[u8]) -> Result<Vec<Chunk>> {
    let corrupt = |detail: String| IndexError::Corrupt {
        key: key.to_owned(),
        detail,
    };
    let reader =
        FileReader::try_new(Cursor::new(bytes), None).map_err(|e| corrupt(e.to_string()))?;
    let version = reader
        .schema()
        .metadata()
        .get("hearth.format_version")
        .and_then(|v| v.parse::<u32>().ok());
    if version.is_none_or(|v| v > FORMAT_VERSION) {
        return Err(corrupt(format!(
            "unsupported chunk format version {version:?}"
        )));
    }
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        decode_batch(&batch, &mut out).map_err(corrupt)?;
    }
    Ok(out)
}

fn decode_batch(batch: &RecordBatch, out: &mut Vec<Chunk>) -> std::result::Result<(), String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("missing column {name}"))
    };
    let doc_id = col("doc_id")?
        .as_fixed_size_binary_opt()
        .ok_or("doc_id has the wrong type")?;
    let ordinal = col("ordinal")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("ordinal has the wrong type")?;
    let text = col("text")?
        .as_string_opt::<i32>()
        .ok_or("text has the wrong type")?;
    let page_start = col("page_start")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("page_start has the wrong type")?;
    let page_end = col("page_end")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("page_end has the wrong type")?;
    let heading = col("heading")?
        .as_list_opt::<i32>()
        .ok_or("heading has the wrong type")?;
    let span_start = col("span_start")?
        .as_primitive_opt::<UInt64Type>()
        .ok_or("span_start has the wrong type")?;
    let span_end = col("span_end")?
        .as_primitive_opt::<UInt64Type>()
        .ok_or("span_end has the wrong type")?;
    let token_count = col("token_count")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("token_count has the wrong type")?;
    let embedding = col("embedding")?
        .as_fixed_size_list_opt()
        .ok_or("embedding has the wrong type")?;

    let opt =
        |a: &arrow_array::PrimitiveArray<UInt32Type>, i: usize| (!a.is_null(i)).then(|| a.value(i));
    for i in 0..batch.num_rows() {
        let raw: [u8; 32] = doc_id
            .value(i)
            .try_into()
            .map_err(|_| "doc_id is not 32 bytes")?;
        let heading_values = heading.value(i);
        let heading_values = heading_values
            .as_string_opt::<i32>()
            .ok_or("heading items have the wrong type")?;
        let embedding = if embedding.is_null(i) {
            None
        } else {
            let v = embedding.value(i);
            let v = v
                .as_primitive_opt::<Float32Type>()
                .ok_or("embedding items have the wrong type")?;
            Some(v.values().to_vec())
        };
        out.push(Chunk {
            doc_id: DocId::from_bytes(raw),
            ordinal: ordinal.value(i),
            text: text.value(i).to_owned(),
            page_start: opt(page_start, i),
            page_end: opt(page_end, i),
            heading: heading_values.iter().flatten().map(str::to_owned).collect(),
            span_start: span_start.value(i),
            span_end: span_end.value(i),
            token_count: token_count.value(i),
            embedding,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(embedding: Option<Vec<f32>>) -> Vec<Chunk> {
        let doc = DocId::of_bytes(b"doc");
        (0..3)
            .map(|i| Chunk {
                doc_id: doc,
                ordinal: i,
                text: format!("chunk {i} — naïve ﬁrst"),
                page_start: (i > 0).then_some(i),
                page_end: (i > 0).then_some(i + 1),
                heading: if i == 1 {
                    vec!["Intro".into(), "Setup".into()]
                } else {
                    vec![]
                },
                span_start: u64::from(i) * 10,
                span_end: u64::from(i) * 10 + 9,
                token_count: 7,
                embedding: embedding.clone(),
            })
            .collect()
    }

    #[test]
    fn chunks_round_trip_with_and_without_embeddings() {
        for emb in [None, Some(vec![0.25f32, -1.0, 3.5])] {
            let chunks = sample(emb);
            let bytes = encode_chunks(&chunks, 3).unwrap();
            assert_eq!(decode_chunks("k", &bytes).unwrap(), chunks);
        }
    }

    #[test]
    fn wrong_embedding_width_is_rejected() {
        let err = encode_chunks(&sample(Some(vec![1.0, 2.0])), 3).unwrap_err();
        assert!(matches!(err, IndexError::InvalidInput(_)), "{err}");
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let err = decode_chunks("chunks/x/y.arrow", b"not arrow at all").unwrap_err();
        assert!(matches!(err, IndexError::Corrupt { ref key, .. } if key == "chunks/x/y.arrow"));
    }
}
