//! EmbeddingGemma: the generator's gemma3 layers run as a bidirectional sentence encoder.
//!
//! The model is read from its sentence-transformers directory as published (`config.json`,
//! `model.safetensors`, `2_Dense/` and `3_Dense/`, `tokenizer.json`,
//! `config_sentence_transformers.json`). A text's vector is: token embeddings × √hidden, the
//! gemma3 layers with every position seeing every other (the sliding layers only those less
//! than `sliding_window / 2 + 1` away, as Hugging Face's bidirectional gemma3 sets it), the final
//! RMS norm, the mean over all tokens (`<bos>`, the prompt and `<eos>` included), the two dense
//! projections (768 → 3072 → 768, no bias, no activation) and L2 normalisation.
//!
//! Weights: in `int8` mode every matrix (the token table included) is quantised at load to
//! Q8_0 blocks in an anonymous map and runs on the generator's integer kernels; otherwise they
//! stay dense f32 and run through candle (the exact path the agreement test measures against).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use super::{
    Embeddings, Layer, Linear, Rope, Scratch, add_in_place, project, rms_norm_in_place,
    rms_norm_rows,
};
use crate::error::{EngineError, Result};
use crate::generate::arch::{Activation, ModelSpec};
use crate::generate::qmatmul::{BlockType, MappedMatrix, QK};

/// The parts of a gemma3 `config.json` the encoder reads.
#[derive(Deserialize)]
struct Config {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    rms_norm_eps: f32,
    rope_theta: f32,
    rope_local_base_freq: f32,
    sliding_window: usize,
    layer_types: Vec<String>,
    query_pre_attn_scalar: f32,
    #[serde(default)]
    use_bidirectional_attention: bool,
    vocab_size: usize,
    max_position_embeddings: usize,
    hidden_activation: String,
}

/// The prompts of `config_sentence_transformers.json`.
#[derive(Deserialize)]
struct SentenceConfig {
    #[serde(default)]
    prompts: std::collections::HashMap<String, String>,
}

/// Whether `dir` holds a gemma3 text model (`config.json` with `model_type` `gemma3_text`).
pub(crate) fn is_gemma_dir(dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        model_type: Option<String>,
    }
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|raw| serde_json::from_slice::<Peek>(&raw).ok())
        .and_then(|p| p.model_type)
        .is_some_and(|t| t == "gemma3_text")
}

/// A loaded EmbeddingGemma.
pub(crate) struct GemmaEncoder {
    spec: ModelSpec,
    device: Device,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// The sentence-transformers dense modules, in order.
    dense: Vec<Linear>,
    dim: usize,
    prompts: [String; 2],
}

impl GemmaEncoder {
    /// Loads the sentence-transformers directory `dir`; `int8`: Q8_0 weights on the integer
    /// kernels, else dense f32.
    pub(crate) fn load(dir: &Path, int8: bool) -> Result<Self> {
        let corrupt = |path: &Path, detail: String| EngineError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let cfg_path = dir.join("config.json");
        let cfg: Config = read_json(&cfg_path)?;
        let spec = spec(&cfg).map_err(|d| corrupt(&cfg_path, d))?;
        let st_path = dir.join("config_sentence_transformers.json");
        let prompts = match std::fs::read(&st_path) {
            Ok(raw) => {
                let sc: SentenceConfig =
                    serde_json::from_slice(&raw).map_err(|e| corrupt(&st_path, e.to_string()))?;
                let get = |k: &str| sc.prompts.get(k).cloned().unwrap_or_default();
                [get("query"), get("document")]
            }
            Err(_) => [String::new(), String::new()],
        };
        let weights = Weights::open(&dir.join("model.safetensors"), int8)?;
        let (h, qd, kvd, f, hd) = (
            spec.hidden,
            spec.q_dim(),
            spec.kv_dim(),
            spec.ffn,
            spec.head_dim,
        );
        // Gemma's RMS norms scale by (1 + w); the forward pass multiplies by what it is given.
        let norm = |name: &str, len: usize| -> Result<Vec<f32>> {
            let mut w = weights.vector(name, len)?;
            w.iter_mut().for_each(|v| *v += 1.0);
            Ok(w)
        };
        let mut layers = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let n = |s: &str| format!("layers.{l}.{s}");
            layers.push(Layer {
                attn_norm: norm(&n("input_layernorm.weight"), h)?,
                q: weights.linear(&n("self_attn.q_proj.weight"), qd, h)?,
                k: weights.linear(&n("self_attn.k_proj.weight"), kvd, h)?,
                v: weights.linear(&n("self_attn.v_proj.weight"), kvd, h)?,
                o: weights.linear(&n("self_attn.o_proj.weight"), h, qd)?,
                q_bias: None,
                k_bias: None,
                v_bias: None,
                q_norm: Some(norm(&n("self_attn.q_norm.weight"), hd)?),
                k_norm: Some(norm(&n("self_attn.k_norm.weight"), hd)?),
                post_attn_norm: Some(norm(&n("post_attention_layernorm.weight"), h)?),
                ffn_norm: norm(&n("pre_feedforward_layernorm.weight"), h)?,
                gate: weights.linear(&n("mlp.gate_proj.weight"), f, h)?,
                up: weights.linear(&n("mlp.up_proj.weight"), f, h)?,
                down: weights.linear(&n("mlp.down_proj.weight"), h, f)?,
                post_ffn_norm: Some(norm(&n("post_feedforward_layernorm.weight"), h)?),
            });
        }
        let embeddings = weights.embeddings("embed_tokens.weight", spec.vocab, h)?;
        let final_norm = norm("norm.weight", h)?;

        // The two dense modules, as the model is published (sentence-transformers' 2_Dense, 3_Dense).
        let mut dense = Vec::new();
        let mut width = h;
        for sub in ["2_Dense", "3_Dense"] {
            let path = dir.join(sub).join("model.safetensors");
            let w = Weights::open(&path, int8)?;
            let shape = w.shape("linear.weight")?;
            let [out, inp] = shape[..] else {
                return Err(corrupt(&path, format!("linear.weight has shape {shape:?}")));
            };
            if inp != width {
                return Err(corrupt(
                    &path,
                    format!("linear.weight takes {inp} inputs, the model gives {width}"),
                ));
            }
            dense.push(w.linear("linear.weight", out, inp)?);
            width = out;
        }
        Ok(Self {
            spec,
            device: Device::Cpu,
            embeddings,
            layers,
            norm: final_norm,
            dense,
            dim: width,
            prompts,
        })
    }

    /// Width of the sentence vectors.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Most positions the model was trained on.
    pub(crate) fn max_positions(&self) -> usize {
        self.spec.context
    }

    /// The prompt of a query and of a passage (`config_sentence_transformers.json`'s `query`
    /// and `document`).
    pub(crate) fn prompts(&self) -> &[String; 2] {
        &self.prompts
    }

    /// Unit-length sentence vectors of `seqs` (token ids with `<bos>`/`<eos>`), flat, in order.
    /// The sequences run packed in one pass: rows of all of them go through each matmul
    /// together, and each attends only within its own sequence.
    pub(crate) fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        let spec = &self.spec;
        let (h, hd) = (spec.hidden, spec.head_dim);
        let rows: usize = seqs.iter().map(|s| s.len()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<usize> = seqs.iter().flat_map(|s| 0..s.len()).collect();
        let bounds: Vec<(usize, usize)> = seqs
            .iter()
            .scan(0, |at, s| {
                let r = (*at, *at + s.len());
                *at += s.len();
                Some(r)
            })
            .collect();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= spec.vocab) {
            return Err(EngineError::InvalidInput(format!(
                "token id {t} is outside the vocabulary of {}",
                spec.vocab
            )));
        }
        let mut x = vec![0f32; rows * h];
        match &self.embeddings {
            Embeddings::Mapped(m) => {
                for (row, &t) in x.chunks_exact_mut(h).zip(&tokens) {
                    m.dequantize_row(t as usize, row);
                }
            }
            Embeddings::Candle(q) => {
                let ids = Tensor::from_slice(&tokens, tokens.len(), &self.device).map_err(op)?;
                x = q
                    .embedding(&ids)
                    .and_then(|e| e.flatten_all())
                    .and_then(|e| e.to_vec1::<f32>())
                    .map_err(op)?;
            }
        }
        x.iter_mut().for_each(|v| *v *= spec.embed_scale);

        let mut scratch = Scratch::default();
        let mut rope = Rope::default();
        let mut normed = vec![0f32; rows * h];
        let mut attn = vec![0f32; rows * spec.q_dim()];
        let (mut q, mut k, mut v, mut o) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut g, mut u, mut d) = (Vec::new(), Vec::new(), Vec::new());
        let dev = &self.device;
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, spec.rms_eps, &mut normed);
            project(
                [&layer.q, &layer.k, &layer.v],
                &normed,
                rows,
                dev,
                &mut scratch,
                [&mut q, &mut k, &mut v],
            )?;
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut q, w, spec.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut k, w, spec.rms_eps);
            }
            rope.prepare(spec.rope_base[l], spec.rope_dims, &positions);
            rope.apply(&mut q, hd, spec.rope_neox);
            rope.apply(&mut k, hd, spec.rope_neox);
            let shape = Shape {
                heads: spec.heads,
                kv_heads: spec.kv_heads,
                head_dim: hd,
                scale: spec.attn_scale,
                window: spec.window[l],
            };
            bidirectional_attention(&shape, &bounds, &q, &k, &v, &mut attn);
            project([&layer.o], &attn, rows, dev, &mut scratch, [&mut o])?;
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(&mut o, w, spec.rms_eps);
            }
            add_in_place(&mut x, &o);

            rms_norm_rows(&x, &layer.ffn_norm, spec.rms_eps, &mut normed);
            project(
                [&layer.gate, &layer.up],
                &normed,
                rows,
                dev,
                &mut scratch,
                [&mut g, &mut u],
            )?;
            gelu_mul(&mut g, &u);
            project([&layer.down], &g, rows, dev, &mut scratch, [&mut d])?;
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut d, w, spec.rms_eps);
            }
            add_in_place(&mut x, &d);
        }
        rms_norm_rows(&x, &self.norm, spec.rms_eps, &mut normed);

        // Mean over each sequence's tokens, then the dense modules, then unit length.
        let mut pooled = vec![0f32; seqs.len() * h];
        for (p, &(a, b)) in pooled.chunks_exact_mut(h).zip(&bounds) {
            for row in normed[a * h..b * h].chunks_exact(h) {
                add_in_place(p, row);
            }
            let n = (b - a) as f32;
            p.iter_mut().for_each(|v| *v /= n);
        }
        let mut cur = pooled;
        for lin in &self.dense {
            let mut next = Vec::new();
            project([lin], &cur, seqs.len(), dev, &mut scratch, [&mut next])?;
            cur = next;
        }
        for row in cur.chunks_exact_mut(self.dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(cur)
    }
}

/// The gemma3 shape of `cfg` as the generator's [`ModelSpec`], checked.
fn spec(cfg: &Config) -> std::result::Result<ModelSpec, String> {
    if cfg.model_type != "gemma3_text" {
        return Err(format!(
            "model_type {:?}: the encoder runs gemma3_text",
            cfg.model_type
        ));
    }
    if !cfg.use_bidirectional_attention {
        return Err(
            "use_bidirectional_attention is false: a causal gemma3 is a generator, not a \
             sentence encoder"
                .to_owned(),
        );
    }
    if cfg.hidden_activation != "gelu_pytorch_tanh" {
        return Err(format!(
            "hidden_activation {:?}: the encoder runs gelu_pytorch_tanh",
            cfg.hidden_activation
        ));
    }
    let (layers, heads, kv_heads) = (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    );
    if layers == 0
        || heads == 0
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || cfg.head_dim == 0
        || !cfg.head_dim.is_multiple_of(2)
        || !cfg.hidden_size.is_multiple_of(QK)
        || !cfg.intermediate_size.is_multiple_of(QK)
        || !(heads * cfg.head_dim).is_multiple_of(QK)
        || cfg.layer_types.len() != layers
    {
        return Err(format!(
            "unsupported shape: {layers} layers ({} layer types), {heads} heads, {kv_heads} kv \
             heads, head dim {}, hidden {}, ffn {}",
            cfg.layer_types.len(),
            cfg.head_dim,
            cfg.hidden_size,
            cfg.intermediate_size
        ));
    }
    // Hugging Face's bidirectional gemma3 turns the configured window into the exclusive
    // distance `sliding_window / 2 + 1` on either side of a query.
    let reach = cfg.sliding_window / 2 + 1;
    let mut window = Vec::with_capacity(layers);
    let mut rope_base = Vec::with_capacity(layers);
    for t in &cfg.layer_types {
        match t.as_str() {
            "sliding_attention" => {
                window.push(Some(reach));
                rope_base.push(cfg.rope_local_base_freq);
            }
            "full_attention" => {
                window.push(None);
                rope_base.push(cfg.rope_theta);
            }
            other => return Err(format!("layer type {other:?}")),
        }
    }
    Ok(ModelSpec {
        architecture: "gemma3_text".to_owned(),
        name: "embeddinggemma".to_owned(),
        layers,
        hidden: cfg.hidden_size,
        heads,
        kv_heads,
        head_dim: cfg.head_dim,
        ffn: cfg.intermediate_size,
        vocab: cfg.vocab_size,
        context: cfg.max_position_embeddings,
        rms_eps: cfg.rms_norm_eps,
        rope_neox: true,
        rope_dims: cfg.head_dim,
        rope_base,
        window,
        qk_norm: true,
        qkv_bias: false,
        post_norms: true,
        embed_scale: (cfg.hidden_size as f32).sqrt(),
        activation: Activation::GeluTanh,
        attn_scale: 1.0 / cfg.query_pre_attn_scalar.sqrt(),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let raw = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&raw).map_err(|e| EngineError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn op(e: candle_core::Error) -> EngineError {
    EngineError::Internal(format!("embedding model: {e}"))
}

/// One `model.safetensors`, mapped while the weights are converted out of it.
struct Weights {
    path: std::path::PathBuf,
    map: memmap2::Mmap,
    /// The header, parsed once: names, types, shapes and byte ranges after `data_start`.
    meta: safetensors::tensor::Metadata,
    data_start: usize,
    int8: bool,
}

impl Weights {
    #[allow(unsafe_code)]
    fn open(path: &Path, int8: bool) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: read-only, and only while the weights are converted into owned buffers; model
        // files are installed once and not modified while hearth runs.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        let (header, meta) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| EngineError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            map,
            meta,
            data_start: 8 + header,
            int8,
        })
    }

    fn corrupt(&self, detail: String) -> EngineError {
        EngineError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn info(&self, name: &str) -> Result<&safetensors::tensor::TensorInfo> {
        // A checkpoint saved from the causal-LM class names its weights under `model.`.
        self.meta
            .info(name)
            .or_else(|| self.meta.info(&format!("model.{name}")))
            .ok_or_else(|| self.corrupt(format!("no tensor {name}")))
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    /// Tensor `name`'s bytes and how to read them, checked to hold `len` values.
    fn raw(&self, name: &str, len: usize) -> Result<(&[u8], Decode)> {
        use safetensors::Dtype;
        let info = self.info(name)?;
        let n: usize = info.shape.iter().product();
        if n != len {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {:?}, expected {len} values",
                info.shape
            )));
        }
        let dtype = info.dtype;
        let decode = if dtype == Dtype::F32 {
            Decode::F32
        } else if dtype == Dtype::BF16 {
            Decode::Bf16
        } else if dtype == Dtype::F16 {
            Decode::F16
        } else {
            return Err(self.corrupt(format!("tensor {name} is {dtype:?}")));
        };
        let (start, end) = info.data_offsets;
        let data = self
            .map
            .get(self.data_start + start..self.data_start + end)
            .filter(|d| d.len() == len * decode.width())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "tensor {name}'s bytes do not match its shape or lie past the end of the file"
                ))
            })?;
        Ok((data, decode))
    }

    /// Tensor `name` as f32 values, checked to hold `len` of them.
    fn floats(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (data, decode) = self.raw(name, len)?;
        Ok(data
            .par_chunks_exact(decode.width())
            .map(|b| decode.value(b))
            .collect())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.floats(name, len)
    }

    /// The `out × inp` matrix `name` as a linear layer.
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let shape = self.shape(name)?;
        if shape != [out, inp] {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {shape:?}, expected [{out}, {inp}]"
            )));
        }
        if self.int8 {
            let (data, decode) = self.raw(name, out * inp)?;
            let mut m = q8_matrix(data, decode, out, inp)?;
            m.repack();
            return Ok(Linear::Mapped(m));
        }
        let w = self.floats(name, out * inp)?;
        let t = Tensor::from_vec(w, (out, inp), &Device::Cpu).map_err(op)?;
        Ok(Linear::Candle {
            w: QMatMul::Tensor(t),
            out,
        })
    }

    /// The token table: Q8_0 rows in `int8` mode, else dense f32.
    fn embeddings(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embeddings> {
        let shape = self.shape(name)?;
        if shape != [vocab, hidden] {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {shape:?}, expected [{vocab}, {hidden}]"
            )));
        }
        if self.int8 {
            let (data, decode) = self.raw(name, vocab * hidden)?;
            return Ok(Embeddings::Mapped(q8_matrix(data, decode, vocab, hidden)?));
        }
        let w = self.floats(name, vocab * hidden)?;
        let t = Tensor::from_vec(w, (vocab, hidden), &Device::Cpu).map_err(op)?;
        let q = QTensor::quantize(&t, GgmlDType::F32).map_err(op)?;
        Ok(Embeddings::Candle(Arc::new(q)))
    }
}

/// How a safetensors value is stored.
#[derive(Clone, Copy)]
enum Decode {
    F32,
    Bf16,
    F16,
}

impl Decode {
    fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    #[inline(always)]
    fn value(self, b: &[u8]) -> f32 {
        match self {
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::Bf16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            Self::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        }
    }
}

/// The stored matrix `data` (`rows × cols` values, `cols` a multiple of 32) as Q8_0 blocks
/// (f16 scale `max|w|/127`, 32 signed bytes rounded half away from zero, as ggml quantises) in
/// an anonymous map, read block by block: the 805 MB token table is never held in f32.
fn q8_matrix(data: &[u8], decode: Decode, rows: usize, cols: usize) -> Result<MappedMatrix> {
    let kind = BlockType::Q8_0;
    let blocks = rows * cols / QK;
    let len = blocks * kind.bytes();
    let mut map = memmap2::MmapMut::map_anon(len)
        .map_err(|e| EngineError::Internal(format!("mapping {len} bytes of weights: {e}")))?;
    map.par_chunks_exact_mut(kind.bytes())
        .zip(data.par_chunks_exact(QK * decode.width()))
        .for_each(|(dst, src)| {
            let mut x = [0f32; QK];
            for (v, b) in x.iter_mut().zip(src.chunks_exact(decode.width())) {
                *v = decode.value(b);
            }
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            dst[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            for (q, v) in dst[2..].iter_mut().zip(&x) {
                *q = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
        });
    let map = Arc::new(
        map.make_read_only()
            .map_err(|e| EngineError::Internal(format!("sealing weights: {e}")))?,
    );
    MappedMatrix::new(map, 0..len, kind, rows, cols)
        .ok_or_else(|| EngineError::Internal(format!("a {rows} x {cols} Q8_0 matrix")))
}

struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
    /// Keys less than this far from the query on either side; `None`: all of them.
    window: Option<usize>,
}

/// `out[r] = softmax(q[r]·Kᵀ·scale) V` per head, each row over the keys of its own sequence
/// (`bounds`, row ranges) within the window on both sides. Rows run in parallel, each compiled
/// for AVX2 where the CPU has it (the dot products are reductions, which the baseline build
/// leaves scalar).
fn bidirectional_attention(
    shape: &Shape,
    bounds: &[(usize, usize)],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    let qw = shape.heads * shape.head_dim;
    let seq_of: Vec<(usize, usize)> = bounds
        .iter()
        .flat_map(|&(a, b)| (a..b).map(move |_| (a, b)))
        .collect();
    out.par_chunks_exact_mut(qw)
        .enumerate()
        .for_each_init(Vec::new, |scores, (r, orow)| {
            let (a, b) = seq_of[r];
            let (lo, hi) = match shape.window {
                Some(w) => (a.max((r + 1).saturating_sub(w)), b.min(r + w)),
                None => (a, b),
            };
            let row = Row { r, lo, hi, q, k, v };
            #[cfg(target_arch = "x86_64")]
            if crate::simd::avx2_fma() {
                #[allow(unsafe_code)]
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe {
                    return attend_row_avx2(shape, &row, orow, scores);
                }
            }
            attend_row(shape, &row, orow, scores);
        });
}

/// One query row and the keys it sees, `lo..hi`.
struct Row<'a> {
    r: usize,
    lo: usize,
    hi: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_row_avx2(shape: &Shape, row: &Row<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    attend_row(shape, row, out, scores);
}

#[inline(always)]
fn attend_row(shape: &Shape, row: &Row<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let (hd, heads) = (shape.head_dim, shape.heads);
    let (qw, kvw) = (heads * hd, shape.kv_heads * hd);
    let group = heads / shape.kv_heads;
    let Row { r, lo, hi, q, k, v } = *row;
    scores.clear();
    scores.resize(hi - lo, 0.0);
    for hq in 0..heads {
        let kvh = hq / group;
        let qv = &q[r * qw + hq * hd..r * qw + (hq + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (s, j) in scores.iter_mut().zip(lo..hi) {
            let kv = &k[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
            *s = crate::simd::dot(qv, kv) * shape.scale;
            max = max.max(*s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = crate::simd::exp(*s - max);
            total += *s;
        }
        let o = &mut out[hq * hd..(hq + 1) * hd];
        o.fill(0.0);
        for (s, j) in scores.iter().zip(lo..hi) {
            let p = s / total;
            let vv = &v[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
            o.iter_mut().zip(vv).for_each(|(o, x)| *o += p * x);
        }
    }
}

/// `g[i] ← gelu_tanh(g[i]) · u[i]`, in parallel over runs of 16,384, each compiled for AVX2
/// where the CPU has it, with tanh from the polynomial `exp` (`tanh y = 1 − 2 / (e^{2y} + 1)`,
/// saturating to ±1 at both ends) so the loop vectorises: libm's `tanhf` per value would cost
/// about as much as the layer's matmuls.
fn gelu_mul(g: &mut [f32], u: &[f32]) {
    g.par_chunks_mut(1 << 14)
        .zip(u.par_chunks(1 << 14))
        .for_each(|(g, u)| {
            #[cfg(target_arch = "x86_64")]
            if crate::simd::avx2_fma() {
                #[allow(unsafe_code)]
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe {
                    return gelu_mul_avx2(g, u);
                }
            }
            gelu_mul_run(g, u);
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_mul_avx2(g: &mut [f32], u: &[f32]) {
    gelu_mul_run(g, u);
}

#[inline(always)]
fn gelu_mul_run(g: &mut [f32], u: &[f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    g.iter_mut().zip(u).for_each(|(g, u)| {
        let x = *g;
        let y = C * (x + 0.044_715 * x * x * x);
        let tanh = 1.0 - 2.0 / (crate::simd::exp(2.0 * y) + 1.0);
        *g = 0.5 * x * (1.0 + tanh) * u;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(edit: impl FnOnce(&mut serde_json::Value)) -> Config {
        let mut v = serde_json::json!({
            "model_type": "gemma3_text", "hidden_size": 768, "intermediate_size": 1152,
            "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1,
            "head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0, "sliding_window": 512,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 256, "use_bidirectional_attention": true,
            "vocab_size": 262_144, "max_position_embeddings": 2048,
            "hidden_activation": "gelu_pytorch_tanh"
        });
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_shape_follows_the_bidirectional_gemma3_config() {
        let s = spec(&config(|_| {})).unwrap();
        // A sliding layer sees positions less than 512 / 2 + 1 away, with the local base.
        assert_eq!(s.window, vec![Some(257), None]);
        assert_eq!(s.rope_base, vec![10_000.0, 1_000_000.0]);
        assert_eq!(s.attn_scale, 1.0 / 16.0);
        assert!((s.embed_scale - 768f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn configs_the_encoder_cannot_run_are_refused_by_name() {
        for (edit, needle) in [
            (
                Box::new(|v: &mut serde_json::Value| {
                    v["use_bidirectional_attention"] = false.into()
                }) as Box<dyn FnOnce(&mut serde_json::Value)>,
                "use_bidirectional_attention",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["model_type"] = "gemma2".into()),
                "gemma2",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["hidden_activation"] = "silu".into()),
                "silu",
            ),
            (
                Box::new(|v: &mut serde_json::Value| {
                    v["layer_types"] = serde_json::json!(["sliding_attention", "chunked"])
                }),
                "chunked",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["num_key_value_heads"] = 2.into()),
                "kv heads",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["num_hidden_layers"] = 3.into()),
                "layer types",
            ),
        ] {
            let err = spec(&config(edit)).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_directory_without_its_weights_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("hearth-gemma-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = serde_json::to_vec(&serde_json::json!({
            "model_type": "gemma3_text", "hidden_size": 768, "intermediate_size": 1152,
            "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 1,
            "head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "rope_local_base_freq": 1e4, "sliding_window": 512,
            "layer_types": ["full_attention"], "query_pre_attn_scalar": 256,
            "use_bidirectional_attention": true, "vocab_size": 64,
            "max_position_embeddings": 2048, "hidden_activation": "gelu_pytorch_tanh"
        }))
        .unwrap();
        std::fs::write(dir.join("config.json"), cfg).unwrap();
        assert!(is_gemma_dir(&dir));
        let err = GemmaEncoder::load(&dir, true).err().unwrap().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        // Weights that are not a safetensors file name the file.
        std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
        let err = GemmaEncoder::load(&dir, true).err().unwrap().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
