//! A GGUF file, memory-mapped: its metadata and its tensors.
//!
//! The file is mapped read-only. On the CPU, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K
//! weights are used in place ([`GgufFile::mapped`]) when their rows fill whole blocks (256
//! weights for the K-quants); other tensors are read out of the map into candle's block
//! storage when the model is built, and metadata lookups name the missing or ill-typed key.

use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::ggml_file;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use memmap2::Mmap;

use crate::error::{EngineError, Result};

use super::qmatmul::{BlockType, MappedMatrix};

/// Tensor types the generator multiplies through candle's quantized kernels.
const SUPPORTED: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

pub(crate) struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    content: Content,
}

impl GgufFile {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::ModelMissing {
                    path: path.to_owned(),
                    hint: crate::config::FETCH_HINT,
                }
            } else {
                EngineError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
        let map = map_read_only(&file).map_err(|e| EngineError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        let content = Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
            let detail = e.to_string();
            // candle names the type it does not know; surface that as unsupported.
            if detail.contains("dtype") {
                EngineError::Unsupported(format!("{}: {detail}", path.display()))
            } else {
                EngineError::Corrupt {
                    path: path.to_owned(),
                    detail,
                }
            }
        })?;
        let file = Self {
            path: path.to_owned(),
            map: Arc::new(map),
            content,
        };
        file.check_tensor_types()?;
        Ok(file)
    }

    fn check_tensor_types(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            if !SUPPORTED.contains(&info.ggml_dtype) {
                return Err(EngineError::Unsupported(format!(
                    "{}: tensor {name} has type {:?}, which the generator does not implement",
                    self.path.display(),
                    info.ggml_dtype
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn content(&self) -> &Content {
        &self.content
    }

    fn corrupt(&self, detail: String) -> EngineError {
        EngineError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.value(key)
            .ok_or_else(|| self.corrupt(format!("metadata key {key} is missing")))
    }

    pub(crate) fn string(&self, key: &str) -> Result<&str> {
        self.required(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| self.corrupt(format!("metadata key {key} is not a string")))
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.corrupt(format!("metadata key {key} is missing")))
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(n) => u64::from(*n),
            Value::U16(n) => u64::from(*n),
            Value::U32(n) => u64::from(*n),
            Value::U64(n) => *n,
            Value::I8(n) => u64::try_from(*n).unwrap_or(u64::MAX),
            Value::I16(n) => u64::try_from(*n).unwrap_or(u64::MAX),
            Value::I32(n) => u64::try_from(*n).unwrap_or(u64::MAX),
            Value::I64(n) => u64::try_from(*n).unwrap_or(u64::MAX),
            Value::F32(_) | Value::F64(_) | Value::Bool(_) | Value::String(_) | Value::Array(_) => {
                return Err(self.corrupt(format!("metadata key {key} is not an integer")));
            }
        };
        usize::try_from(n)
            .ok()
            .filter(|&n| n < (1 << 40))
            .map(Some)
            .ok_or_else(|| self.corrupt(format!("metadata key {key} is out of range ({v:?})")))
    }

    pub(crate) fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(_) => Err(self.corrupt(format!("metadata key {key} is not a float"))),
        }
    }

    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The shape of a tensor, in candle's order (outermost first).
    pub(crate) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
            .ok_or_else(|| self.corrupt(format!("tensor {name} is missing")))
    }

    /// The bytes of a tensor in the map, its type and its dims (candle order).
    fn raw(&self, name: &str) -> Result<(std::ops::Range<usize>, GgmlDType, Vec<usize>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.corrupt(format!("tensor {name} is missing")))?;
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset.saturating_add(info.offset))
            .unwrap_or(usize::MAX);
        match start.checked_add(bytes) {
            Some(end) if end <= self.map.len() => {
                Ok((start..end, info.ggml_dtype, info.shape.dims().to_vec()))
            }
            _ => Err(self.corrupt(format!(
                "tensor {name} needs {bytes} bytes at offset {start}, past the end of the file"
            ))),
        }
    }

    /// A 2-D weight our own CPU kernels can use in place, or `None` for other block types and
    /// for rows that end inside a block.
    pub(crate) fn mapped(&self, name: &str) -> Result<Option<MappedMatrix>> {
        let (range, dtype, dims) = self.raw(name)?;
        let kind = match dtype {
            GgmlDType::Q4_0 => BlockType::Q4_0,
            GgmlDType::Q4_1 => BlockType::Q4_1,
            GgmlDType::Q5_0 => BlockType::Q5_0,
            GgmlDType::Q5_1 => BlockType::Q5_1,
            GgmlDType::Q8_0 => BlockType::Q8_0,
            GgmlDType::Q4K => BlockType::Q4K,
            GgmlDType::Q5K => BlockType::Q5K,
            GgmlDType::Q6K => BlockType::Q6K,
            GgmlDType::F32
            | GgmlDType::F16
            | GgmlDType::BF16
            | GgmlDType::Q8_1
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q8K => return Ok(None),
        };
        let [rows, cols] = dims[..] else {
            return Ok(None);
        };
        Ok(MappedMatrix::new(self.map.clone(), range, kind, rows, cols))
    }

    /// Drops this process's resident pages of tensor `name`, a matrix whose weights now live
    /// in repacked panels and are not read from the map again, so the process's memory does
    /// not count them twice (RSS: the Qwen2.5 0.5B Q4_K_M file is 469 MiB). Pages the tensor
    /// shares with a neighbour stay.
    pub(crate) fn release(&self, name: &str) -> Result<()> {
        let (range, _, _) = self.raw(name)?;
        release_pages(&self.map, range);
        Ok(())
    }

    /// Reads one tensor out of the map onto `device`.
    pub(crate) fn tensor(&self, name: &str, device: &Device) -> Result<Arc<QTensor>> {
        let (range, dtype, dims) = self.raw(name)?;
        // One copy, straight from the map into candle's block storage.
        let t = ggml_file::qtensor_from_ggml(dtype, &self.map[range], dims, device)
            .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))?;
        Ok(Arc::new(t))
    }

    /// Reads a small float tensor (a norm weight, a bias) into host memory.
    pub(crate) fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name, &Device::Cpu)?;
        let v = t
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))?;
        if v.len() != len {
            return Err(self.corrupt(format!(
                "tensor {name} has {} elements, expected {len}",
                v.len()
            )));
        }
        Ok(v)
    }
}

/// `madvise(MADV_DONTNEED)` over the whole pages inside `range` of a map made by
/// [`map_read_only`]; a failure (an old kernel) only leaves the pages resident.
#[allow(unsafe_code)]
fn release_pages(map: &Mmap, range: Range<usize>) {
    // Offsets aligned to 64 KiB are page-aligned for every page size up to that (the map
    // itself starts on a page).
    const ALIGN: usize = 1 << 16;
    let (start, end) = (
        range.start.next_multiple_of(ALIGN),
        range.end / ALIGN * ALIGN,
    );
    if start >= end {
        return;
    }
    // SAFETY: `map` is a read-only map of a file (`map_read_only`). MADV_DONTNEED drops this
    // process's pages of it; a later read faults the file's unchanged bytes back in, so any
    // slice borrowed from the map keeps reading the same bytes.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &std::fs::File) -> std::io::Result<Mmap> {
    // SAFETY: the map is only ever read, through `&[u8]`. The one hazard of a file map is
    // another process truncating or rewriting the file while it is mapped; model files are
    // immutable inputs (verified by hash when fetched), and the map is dropped with the
    // `GgufFile` once the weights have been read out of it.
    unsafe { Mmap::map(file) }
}
