//! The chunk schema and its Arrow IPC encoding.
//!
//! One IPC file per document holds all its chunks in ordinal order. The embedding column is
//! present from the start (null until the embedding stage fills it), so the file format does not
//! change between stages.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeBinaryBuilder, FixedSizeListBuilder, Float32Builder, ListBuilder, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeBinaryArray, FixedSizeListArray, ListArray, RecordBatch,
    UInt32Array, UInt64Array,
};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_ipc::root_as_footer;
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
    let file = ChunkFile::decode(key, Bytes::copy_from_slice(bytes))?;
    (0..file.len())
        .map(|i| {
            // Materialised whole, so checked whole: text that is not UTF-8 is damage.
            let (c, row) = file.at(i);
            std::str::from_utf8(c.text.value(row)).map_err(|e| IndexError::Corrupt {
                key: key.to_owned(),
                detail: format!("chunk {i}'s text: {e}"),
            })?;
            Ok(file.chunk(i, true))
        })
        .collect()
}

/// A chunk file's columns read in place: the arrays are views of the file's bytes (a mapped
/// segment, or a decrypted one), checked once at [`ChunkFile::decode`]; a chunk is
/// materialised only when asked for. The retrieval index keeps its committed chunks this way,
/// so their text stays in the page cache rather than the heap.
#[derive(Debug)]
pub(crate) struct ChunkFile {
    batches: Vec<Columns>,
    /// First row of each batch, and the total after the last.
    starts: Vec<usize>,
}

/// One record batch's columns, of the types the schema names.
#[derive(Debug)]
struct Columns {
    chunk_id: UInt64Array,
    doc_id: FixedSizeBinaryArray,
    ordinal: UInt32Array,
    /// Decoded as bytes (the same layout as UTF-8 strings) so that opening a segment does
    /// not validate all its text: each chunk's is checked when read (`ChunkFile::text`).
    /// Validating 800 MB of text was 1.0 s of a cold open at 1M chunks.
    text: BinaryArray,
    page_start: UInt32Array,
    page_end: UInt32Array,
    heading: ListArray,
    span_start: UInt64Array,
    span_end: UInt64Array,
    token_count: UInt32Array,
    embedding: FixedSizeListArray,
}

impl ChunkFile {
    /// Decodes the IPC file `bytes` without copying its columns. Fails with
    /// [`IndexError::Corrupt`] (naming `key`) on anything but a chunk file of a known version.
    pub(crate) fn decode(key: &str, bytes: Bytes) -> Result<Self> {
        let corrupt = |detail: String| IndexError::Corrupt {
            key: key.to_owned(),
            detail,
        };
        let buffer = Buffer::from(bytes);
        let len = buffer.len();
        let trailer = len
            .checked_sub(10)
            .ok_or_else(|| corrupt("too short for an Arrow file".into()))?;
        let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
            .map_err(|e| corrupt(e.to_string()))?;
        let footer_start = trailer
            .checked_sub(footer_len)
            .ok_or_else(|| corrupt("footer longer than the file".into()))?;
        let footer = root_as_footer(&buffer[footer_start..trailer])
            .map_err(|e| corrupt(format!("unreadable footer: {e}")))?;
        let schema = footer
            .schema()
            .ok_or_else(|| corrupt("no schema".into()))
            .and_then(|s| try_fb_to_schema(s).map_err(|e| corrupt(e.to_string())))?;
        let version = schema
            .metadata()
            .get("hearth.format_version")
            .and_then(|v| v.parse::<u32>().ok());
        if version.is_none_or(|v| v > FORMAT_VERSION) {
            return Err(corrupt(format!(
                "unsupported chunk format version {version:?}"
            )));
        }
        let schema = text_as_bytes(schema);
        let block_of = |b: &arrow_ipc::Block| {
            let start = usize::try_from(b.offset()).ok()?;
            let size = usize::try_from(b.metaDataLength())
                .ok()?
                .checked_add(usize::try_from(b.bodyLength()).ok()?)?;
            (start.checked_add(size)? <= footer_start)
                .then(|| buffer.slice_with_length(start, size))
        };
        let mut decoder = FileDecoder::new(Arc::new(schema), footer.version());
        for block in footer.dictionaries().iter().flatten() {
            let data =
                block_of(block).ok_or_else(|| corrupt("a block lies outside the file".into()))?;
            decoder
                .read_dictionary(block, &data)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        let mut batches = Vec::new();
        let mut starts = vec![0];
        for block in footer.recordBatches().iter().flatten() {
            let data =
                block_of(block).ok_or_else(|| corrupt("a block lies outside the file".into()))?;
            let Some(batch) = decoder
                .read_record_batch(block, &data)
                .map_err(|e| corrupt(e.to_string()))?
            else {
                continue;
            };
            let columns = Columns::of(&batch).map_err(corrupt)?;
            starts.push(starts.last().expect("a start") + batch.num_rows());
            batches.push(columns);
        }
        Ok(Self { batches, starts })
    }

    /// Number of chunks.
    pub(crate) fn len(&self) -> usize {
        *self.starts.last().expect("a start")
    }

    /// The batch holding row `i` and the row within it.
    ///
    /// # Panics
    /// If `i` is out of range.
    fn at(&self, i: usize) -> (&Columns, usize) {
        assert!(i < self.len(), "row {i} of {}", self.len());
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        (&self.batches[b], i - self.starts[b])
    }

    /// Chunk `i`, with its embedding when `with_embedding`.
    pub(crate) fn chunk(&self, i: usize, with_embedding: bool) -> Chunk {
        let (c, i) = self.at(i);
        let opt = |a: &UInt32Array| (!a.is_null(i)).then(|| a.value(i));
        let heading = c.heading.value(i);
        let heading = heading.as_string::<i32>();
        Chunk {
            doc_id: c.doc_id(i),
            ordinal: c.ordinal.value(i),
            text: String::from_utf8_lossy(c.text.value(i)).into_owned(),
            page_start: opt(&c.page_start),
            page_end: opt(&c.page_end),
            heading: heading.iter().flatten().map(str::to_owned).collect(),
            span_start: c.span_start.value(i),
            span_end: c.span_end.value(i),
            token_count: c.token_count.value(i),
            embedding: if with_embedding {
                c.embedding(i).map(<[f32]>::to_vec)
            } else {
                None
            },
        }
    }

    /// Chunk `i`'s document.
    pub(crate) fn doc_id(&self, i: usize) -> DocId {
        let (c, i) = self.at(i);
        c.doc_id(i)
    }

    /// Chunk `i`'s id as the segment stores it (written as `ChunkId::new` of its document and
    /// position: read, not hashed again).
    pub(crate) fn chunk_id(&self, i: usize) -> ChunkId {
        let (c, i) = self.at(i);
        ChunkId::from_stored(c.chunk_id.value(i))
    }

    /// Chunk `i`'s text, in place when it is valid UTF-8 (as written); bytes damaged since
    /// read as U+FFFD.
    pub(crate) fn text(&self, i: usize) -> Cow<'_, str> {
        let (c, i) = self.at(i);
        String::from_utf8_lossy(c.text.value(i))
    }

    /// Chunk `i`'s embedding, in place (`None` before the embedding stage).
    pub(crate) fn embedding(&self, i: usize) -> Option<&[f32]> {
        let (c, i) = self.at(i);
        c.embedding(i)
    }
}

impl Columns {
    fn of(batch: &RecordBatch) -> std::result::Result<Self, String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("missing column {name}"))
        };
        let wrong = |name: &str| format!("{name} has the wrong type");
        let doc_id = col("doc_id")?
            .as_fixed_size_binary_opt()
            .filter(|a| a.value_length() == 32)
            .ok_or_else(|| wrong("doc_id"))?
            .clone();
        let u32s = |name: &str| -> std::result::Result<UInt32Array, String> {
            Ok(col(name)?
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| wrong(name))?
                .clone())
        };
        let u64s = |name: &str| -> std::result::Result<UInt64Array, String> {
            Ok(col(name)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| wrong(name))?
                .clone())
        };
        let heading = col("heading")?
            .as_list_opt::<i32>()
            .filter(|l| l.values().as_string_opt::<i32>().is_some())
            .ok_or_else(|| wrong("heading"))?
            .clone();
        let embedding = col("embedding")?
            .as_fixed_size_list_opt()
            .filter(|l| l.values().as_primitive_opt::<Float32Type>().is_some())
            .ok_or_else(|| wrong("embedding"))?
            .clone();
        let text = col("text")?
            .as_binary_opt::<i32>()
            .ok_or_else(|| wrong("text"))?
            .clone();
        Ok(Self {
            chunk_id: u64s("chunk_id")?,
            doc_id,
            ordinal: u32s("ordinal")?,
            text,
            page_start: u32s("page_start")?,
            page_end: u32s("page_end")?,
            heading,
            span_start: u64s("span_start")?,
            span_end: u64s("span_end")?,
            token_count: u32s("token_count")?,
            embedding,
        })
    }

    fn doc_id(&self, i: usize) -> DocId {
        DocId::from_bytes(self.doc_id.value(i).try_into().expect("32 bytes, checked"))
    }

    fn embedding(&self, i: usize) -> Option<&[f32]> {
        if self.embedding.is_null(i) {
            return None;
        }
        let width = self.embedding.value_length() as usize;
        let values = self
            .embedding
            .values()
            .as_primitive::<Float32Type>()
            .values();
        let start = self.embedding.value_offset_at(i);
        values.get(start..start + width)
    }
}

/// `schema` with the top-level text column read as bytes (see [`Columns::text`]).
fn text_as_bytes(schema: Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), f.data_type()) {
            ("text", DataType::Utf8) => f.as_ref().clone().with_data_type(DataType::Binary),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
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

    /// A segment opens without reading its text; a damaged byte shows in its own chunk only
    /// (as U+FFFD), while decoding the file whole refuses it.
    #[test]
    fn damaged_text_is_read_lossily_in_place_and_refused_whole() {
        let chunks = sample(None);
        let mut bytes = encode_chunks(&chunks, 3).unwrap().to_vec();
        let needle = "chunk 1 — naïve".as_bytes();
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the text is stored as is");
        // The second byte of "—" (E2 80 94) becomes an invalid continuation.
        bytes[at + 9] = 0xFF;
        let file = ChunkFile::decode("k", Bytes::from(bytes.clone())).unwrap();
        assert_eq!(file.text(0), chunks[0].text);
        assert_eq!(file.text(2), chunks[2].text);
        let damaged = file.text(1);
        assert!(
            damaged.contains('\u{FFFD}') && damaged.ends_with("naïve ﬁrst"),
            "{damaged}"
        );
        assert_eq!(file.chunk(1, false).text, damaged);
        let err = decode_chunks("chunks/x/y.arrow", &bytes).unwrap_err();
        assert!(
            matches!(err, IndexError::Corrupt { ref detail, .. } if detail.contains("chunk 1")),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let err = decode_chunks("chunks/x/y.arrow", b"not arrow at all").unwrap_err();
        assert!(matches!(err, IndexError::Corrupt { ref key, .. } if key == "chunks/x/y.arrow"));
    }
}
