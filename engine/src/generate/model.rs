//! The decoder's weights and its forward pass over one scheduler step.
//!
//! A step is a flat list of token rows from several sequences (prefill chunks and single
//! decode tokens side by side). Matmuls run once over all rows through candle's quantized
//! kernels (`QMatMul`, any GGUF block type); norms, rotary embeddings, activations and the
//! paged attention run in place on host buffers. Every row's arithmetic is independent of the
//! other rows in the step, so a sequence gets the same logits alone or in a full batch.

mod encoder;

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};

use super::arch::{Activation, ModelSpec};
use super::attention::{AttentionShape, paged_attention};
use super::gguf::GgufFile;
use super::kv::KvStore;
use super::lora::Module;
use super::qmatmul::{MappedMatrix, QuantRows, matmul_many};
use super::step::{StepSeq, add_adapter_deltas};

pub(crate) use encoder::{GemmaEncoder, is_gemma_dir};

/// A weight matrix: used in place from the mapped file by our own kernels on the CPU for the
/// block types they cover, else through candle's `QMatMul`.
enum Linear {
    Mapped(MappedMatrix),
    Candle { w: QMatMul, out: usize },
}

impl Linear {
    fn load(file: &GgufFile, name: &str, inp: usize, out: usize, device: &Device) -> Result<Self> {
        let dims = file.shape(name)?;
        if dims != [out, inp] {
            return Err(EngineError::Corrupt {
                path: file.path().to_owned(),
                detail: format!("tensor {name} has shape {dims:?}, expected [{out}, {inp}]"),
            });
        }
        if device.is_cpu()
            && let Some(mut m) = file.mapped(name)?
        {
            // The embeddings' rows are still read from the map (a tied output shares them).
            if m.repack() > 0 && name != "token_embd.weight" {
                file.release(name)?;
            }
            return Ok(Self::Mapped(m));
        }
        let q = file.tensor(name, device)?;
        // On a GPU the weights are dequantised to f16 once, at load: candle's fused kernels,
        // which quantise the activations to 8 bits with an f16 block sum, left SmolLM2's logits
        // 1.67 (mean) from the reference on an H200, where the CPU path is 0.11 and f16
        // weights 0.13 (reference_tests, `HEARTH_TEST_DEVICE=cuda`).
        let w = match device.is_cpu() {
            true => QMatMul::from_arc(q),
            false => q.dequantize_f16(device).map(QMatMul::TensorF16),
        }
        .map_err(internal)?;
        Ok(Self::Candle { w, out })
    }

    fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped(_))
    }

    /// `x (rows × in) → out (rows × out)`; `scratch.quant` must hold `x` quantised when the
    /// weight is mapped.
    fn forward(
        &self,
        x: &[f32],
        rows: usize,
        device: &Device,
        scratch: &mut Scratch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            Self::Mapped(m) => {
                matmul_many(&[m], &scratch.quant, &mut [out], &mut scratch.transposed);
            }
            Self::Candle { w, out: width } => {
                let inp = x.len() / rows.max(1);
                let xt = Tensor::from_slice(x, (rows, inp), device).map_err(internal)?;
                let y = candle_core::Module::forward(w, &xt).map_err(internal)?;
                *out = y
                    .flatten_all()
                    .and_then(|y| y.to_vec1::<f32>())
                    .map_err(internal)?;
                debug_assert_eq!(out.len(), rows * width);
            }
        }
        Ok(())
    }
}

/// Buffers reused by every matmul of a step.
#[derive(Default)]
struct Scratch {
    quant: QuantRows,
    transposed: Vec<f32>,
}

/// Everything a step needs besides the weights and the cache, kept between steps so that the
/// forward pass allocates nothing once its buffers have grown to the largest step seen (the
/// candle path for non-mapped weight types aside).
#[derive(Default)]
pub(crate) struct Workspace {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    x: Vec<f32>,
    normed: Vec<f32>,
    attn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    rope: Rope,
    scratch: Scratch,
}

/// Runs `x` through every linear in `ws` (they share their input), quantising `x` once; the
/// result of `ws[i]` goes to `outs[i]`.
fn project<const N: usize>(
    ws: [&Linear; N],
    x: &[f32],
    rows: usize,
    device: &Device,
    scratch: &mut Scratch,
    mut outs: [&mut Vec<f32>; N],
) -> Result<()> {
    if ws.iter().any(|w| w.is_mapped()) {
        scratch.quant.quantize(x, x.len() / rows.max(1));
    }
    let mapped = ws.map(|w| match w {
        Linear::Mapped(m) => Some(m),
        Linear::Candle { .. } => None,
    });
    // All mapped: one parallel pass.
    let (q, t) = (&scratch.quant, &mut scratch.transposed);
    match mapped.as_slice() {
        [Some(a)] => matmul_many(&[*a], q, &mut outs, t),
        [Some(a), Some(b)] => matmul_many(&[*a, *b], q, &mut outs, t),
        [Some(a), Some(b), Some(c)] => matmul_many(&[*a, *b, *c], q, &mut outs, t),
        _ => {
            for (o, w) in outs.into_iter().zip(ws) {
                w.forward(x, rows, device, scratch, o)?;
            }
        }
    }
    Ok(())
}

fn internal(e: candle_core::Error) -> EngineError {
    EngineError::Internal(format!("generator forward: {e}"))
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

enum Embeddings {
    Mapped(MappedMatrix),
    Candle(Arc<QTensor>),
}

/// The loaded decoder.
pub(crate) struct Model {
    pub(crate) spec: ModelSpec,
    device: Device,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
}

impl Model {
    pub(crate) fn load(file: &GgufFile, device: &Device) -> Result<Self> {
        let spec = ModelSpec::from_gguf(file)?;
        let (h, qd, kvd, f) = (spec.hidden, spec.q_dim(), spec.kv_dim(), spec.ffn);
        let opt = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if file.has_tensor(name) {
                file.vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let need = |name: String, len: usize| file.vector(&name, len);
            let layer = Layer {
                attn_norm: need(n("attn_norm.weight"), h)?,
                q: Linear::load(file, &n("attn_q.weight"), h, qd, device)?,
                k: Linear::load(file, &n("attn_k.weight"), h, kvd, device)?,
                v: Linear::load(file, &n("attn_v.weight"), h, kvd, device)?,
                o: Linear::load(file, &n("attn_output.weight"), qd, h, device)?,
                q_bias: if spec.qkv_bias {
                    opt(&n("attn_q.bias"), qd)?
                } else {
                    None
                },
                k_bias: if spec.qkv_bias {
                    opt(&n("attn_k.bias"), kvd)?
                } else {
                    None
                },
                v_bias: if spec.qkv_bias {
                    opt(&n("attn_v.bias"), kvd)?
                } else {
                    None
                },
                q_norm: if spec.qk_norm {
                    Some(need(n("attn_q_norm.weight"), spec.head_dim)?)
                } else {
                    None
                },
                k_norm: if spec.qk_norm {
                    Some(need(n("attn_k_norm.weight"), spec.head_dim)?)
                } else {
                    None
                },
                post_attn_norm: if spec.post_norms {
                    Some(need(n("post_attention_norm.weight"), h)?)
                } else {
                    None
                },
                ffn_norm: need(n("ffn_norm.weight"), h)?,
                gate: Linear::load(file, &n("ffn_gate.weight"), h, f, device)?,
                up: Linear::load(file, &n("ffn_up.weight"), h, f, device)?,
                down: Linear::load(file, &n("ffn_down.weight"), f, h, device)?,
                post_ffn_norm: if spec.post_norms {
                    Some(need(n("post_ffw_norm.weight"), h)?)
                } else {
                    None
                },
            };
            layers.push(layer);
        }
        let embeddings = match file.mapped("token_embd.weight")? {
            Some(m) if device.is_cpu() => Embeddings::Mapped(m),
            _ => Embeddings::Candle(file.tensor("token_embd.weight", device)?),
        };
        let output_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let output = Linear::load(file, output_name, h, spec.vocab, device)?;
        let norm = file.vector("output_norm.weight", h)?;
        Ok(Self {
            spec,
            device: device.clone(),
            embeddings,
            layers,
            norm,
            output,
        })
    }

    /// Runs one step: writes every row's keys and values into `kv` and returns the logits of
    /// the sequences that asked for them, `vocab` floats each, in sequence order (in `ws`).
    pub(crate) fn forward<'w>(
        &self,
        seqs: &[StepSeq<'_>],
        kv: &mut KvStore,
        ws: &'w mut Workspace,
    ) -> Result<&'w mut [f32]> {
        let spec = &self.spec;
        let (h, hd) = (spec.hidden, spec.head_dim);
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if rows == 0 {
            return Ok(&mut []);
        }
        ws.tokens.clear();
        ws.positions.clear();
        for s in seqs {
            ws.tokens.extend_from_slice(s.tokens);
            ws.positions
                .extend(s.start_pos..s.start_pos + s.tokens.len());
        }
        self.embed(&ws.tokens, &mut ws.x)?;
        let x = &mut ws.x;
        if spec.embed_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= spec.embed_scale);
        }
        let adapters = seqs.iter().any(|s| s.adapter.is_some());
        let lora = |m: Module, l: usize, x: &[f32], out: &mut [f32]| {
            if adapters {
                add_adapter_deltas(m, l, x, out, seqs);
            }
        };

        ws.normed.resize(rows * h, 0.0);
        ws.attn.resize(rows * spec.q_dim(), 0.0);
        let (normed, attn, scratch) = (&mut ws.normed, &mut ws.attn, &mut ws.scratch);
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(x, &layer.attn_norm, spec.rms_eps, normed);
            let (q, k, v) = (&mut ws.q, &mut ws.k, &mut ws.v);
            project(
                [&layer.q, &layer.k, &layer.v],
                normed,
                rows,
                &self.device,
                scratch,
                [&mut *q, &mut *k, &mut *v],
            )?;
            lora(Module::Q, l, normed, q);
            lora(Module::K, l, normed, k);
            lora(Module::V, l, normed, v);
            for (t, b) in [
                (&mut *q, &layer.q_bias),
                (&mut *k, &layer.k_bias),
                (&mut *v, &layer.v_bias),
            ] {
                if let Some(b) = b {
                    add_rows(t, b);
                }
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(q, w, spec.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(k, w, spec.rms_eps);
            }
            ws.rope
                .prepare(spec.rope_base[l], spec.rope_dims, &ws.positions);
            ws.rope.apply(q, hd, spec.rope_neox);
            ws.rope.apply(k, hd, spec.rope_neox);

            let kvd = spec.kv_dim();
            let mut r = 0;
            for s in seqs {
                for p in s.start_pos..s.start_pos + s.tokens.len() {
                    let (b, slot) = (s.blocks[p / kv.block_size], p % kv.block_size);
                    kv.write(
                        l,
                        b,
                        slot,
                        &k[r * kvd..(r + 1) * kvd],
                        &v[r * kvd..(r + 1) * kvd],
                    );
                    r += 1;
                }
            }
            let shape = AttentionShape {
                heads: spec.heads,
                kv_heads: spec.kv_heads,
                head_dim: hd,
                block_size: kv.block_size,
                scale: spec.attn_scale,
                window: spec.window[l],
            };
            paged_attention(&shape, kv.layer(l), seqs, q, attn);
            let o = &mut ws.o;
            project([&layer.o], attn, rows, &self.device, scratch, [&mut *o])?;
            lora(Module::O, l, attn, o);
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(o, w, spec.rms_eps);
            }
            add_in_place(x, o);

            rms_norm_rows(x, &layer.ffn_norm, spec.rms_eps, normed);
            let (g, u) = (&mut ws.gate, &mut ws.up);
            project(
                [&layer.gate, &layer.up],
                normed,
                rows,
                &self.device,
                scratch,
                [&mut *g, &mut *u],
            )?;
            lora(Module::Gate, l, normed, g);
            lora(Module::Up, l, normed, u);
            match spec.activation {
                Activation::Silu => silu_mul(g, u),
                Activation::GeluTanh => g
                    .iter_mut()
                    .zip(&*u)
                    .for_each(|(g, u)| *g = gelu_tanh(*g) * u),
            }
            let d = &mut ws.down;
            project([&layer.down], g, rows, &self.device, scratch, [&mut *d])?;
            lora(Module::Down, l, g, d);
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(d, w, spec.rms_eps);
            }
            add_in_place(x, d);
        }

        // Logits only for the last row of the sequences that need them.
        ws.last.clear();
        let mut end = 0;
        for s in seqs {
            end += s.tokens.len();
            if s.logits {
                let r = end - 1;
                let at = ws.last.len();
                ws.last.resize(at + h, 0.0);
                rms_norm_row(
                    &x[r * h..(r + 1) * h],
                    &self.norm,
                    spec.rms_eps,
                    &mut ws.last[at..],
                );
            }
        }
        let wanted = ws.last.len() / h;
        if wanted == 0 {
            return Ok(&mut []);
        }
        project(
            [&self.output],
            &ws.last,
            wanted,
            &self.device,
            scratch,
            [&mut ws.logits],
        )?;
        Ok(&mut ws.logits)
    }

    /// The embeddings of `tokens`, into `x`.
    fn embed(&self, tokens: &[u32], x: &mut Vec<f32>) -> Result<()> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.spec.vocab) {
            return Err(EngineError::InvalidInput(format!(
                "token id {t} is outside the vocabulary of {}",
                self.spec.vocab
            )));
        }
        match &self.embeddings {
            Embeddings::Mapped(m) => {
                let h = self.spec.hidden;
                x.resize(tokens.len() * h, 0.0);
                for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
                    m.dequantize_row(t as usize, row);
                }
            }
            Embeddings::Candle(q) => {
                let ids =
                    Tensor::from_slice(tokens, tokens.len(), &self.device).map_err(internal)?;
                let e = q.embedding(&ids).map_err(internal)?;
                *x = e
                    .flatten_all()
                    .and_then(|e| e.to_vec1::<f32>())
                    .map_err(internal)?;
            }
        }
        Ok(())
    }
}

/// Rotary tables for one step's positions at one base.
#[derive(Default)]
struct Rope {
    base: f32,
    dims: usize,
    positions: Vec<usize>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    fn prepare(&mut self, base: f32, dims: usize, positions: &[usize]) {
        if self.base == base && self.dims == dims && self.positions == positions {
            return;
        }
        self.base = base;
        self.dims = dims;
        self.positions.clear();
        self.positions.extend_from_slice(positions);
        let half = dims / 2;
        self.cos.clear();
        self.sin.clear();
        for &p in positions {
            for i in 0..half {
                let theta = 1f32 / base.powf((2 * i) as f32 / dims as f32);
                let a = p as f32 * theta;
                self.cos.push(a.cos());
                self.sin.push(a.sin());
            }
        }
    }

    /// Rotates the first `dims` dimensions of every head of every row.
    fn apply(&self, x: &mut [f32], head_dim: usize, neox: bool) {
        let half = self.dims / 2;
        let width = x.len() / self.positions.len();
        for (r, row) in x.chunks_mut(width).enumerate() {
            let cos = &self.cos[r * half..(r + 1) * half];
            let sin = &self.sin[r * half..(r + 1) * half];
            for head in row.chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = if neox {
                        (i, i + half)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let m = (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v / m * w;
    }
}

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks(n).zip(out.chunks_mut(n)) {
        rms_norm_row(xr, w, eps, or);
    }
}

/// Norms every `w.len()`-wide piece of `x` (every row, or every head of every row).
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for piece in x.chunks_mut(n) {
        let ss: f32 = piece.iter().map(|v| v * v).sum();
        let m = (ss / n as f32 + eps).sqrt();
        for (v, w) in piece.iter_mut().zip(w) {
            *v = *v / m * w;
        }
    }
}

fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_mut(b.len()) {
        add_in_place(row, b);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// `g[i] ← silu(g[i]) · u[i]`: in parallel over runs of 16,384 for a prefill's rows, each
/// compiled for AVX-512 or AVX2 where the CPU has them. Built for the baseline target it ran 4
/// wide with a `divps` per 4: 7% of a Qwen2.5-0.5B prefill profile. The same operations in the
/// same order on every path (no fused multiply-adds), so the results do not depend on it.
fn silu_mul(g: &mut [f32], u: &[f32]) {
    use rayon::prelude::*;
    const RUN: usize = 16_384;
    if g.len() <= RUN {
        return silu_mul_run(g, u);
    }
    g.par_chunks_mut(RUN)
        .zip(u.par_chunks(RUN))
        .for_each(|(g, u)| silu_mul_run(g, u));
}

fn silu_mul_run(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512f() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
        unsafe {
            return silu_mul_avx512(g, u);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe {
            return silu_mul_avx2(g, u);
        }
    }
    silu_mul_plain(g, u);
}

#[inline(always)]
fn silu_mul_plain(g: &mut [f32], u: &[f32]) {
    g.iter_mut().zip(u).for_each(|(g, u)| *g = silu(*g) * u);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn silu_mul_avx512(g: &mut [f32], u: &[f32]) {
    silu_mul_plain(g, u);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    silu_mul_plain(g, u);
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    // The polynomial exp (within 2 ulp): branch-free, so the loop over a row vectorises
    // (libm's expf was 2.4% of a Qwen2.5 run).
    x / (1.0 + crate::simd::exp(-x))
}

fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

#[cfg(test)]
impl Linear {
    /// The weight as a dense `out × in` f32 matrix.
    fn dense(&self) -> (Vec<f32>, usize, usize) {
        match self {
            Self::Mapped(m) => {
                let mut w = vec![0f32; m.rows * m.cols];
                for (j, row) in w.chunks_exact_mut(m.cols).enumerate() {
                    m.dequantize_row(j, row);
                }
                (w, m.rows, m.cols)
            }
            Self::Candle { w, .. } => {
                let t = match w {
                    QMatMul::QTensor(q) => q.dequantize(&Device::Cpu).unwrap(),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                        t.to_dtype(candle_core::DType::F32).unwrap()
                    }
                };
                let (o, i) = t.dims2().unwrap();
                (t.flatten_all().unwrap().to_vec1().unwrap(), o, i)
            }
        }
    }

    fn from_dense(w: Vec<f32>, out: usize, inp: usize) -> Self {
        let t = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
        Self::Candle {
            w: QMatMul::Tensor(t),
            out,
        }
    }
}

#[cfg(test)]
impl Model {
    /// A reference copy on the CPU with every weight dequantised to dense f32 and `adapter`
    /// merged into its projections (`W + scale·B·A`).
    pub(crate) fn dense_merged(&self, adapter: Option<&super::lora::Adapter>) -> Self {
        let merge = |lin: &Linear, l: usize, m: Module| {
            let (mut w, out, inp) = lin.dense();
            if let Some(pair) = adapter.and_then(|a| a.pair(l, m)) {
                let (r, a, bt) = pair.delta();
                for (o, wrow) in w.chunks_exact_mut(inp).enumerate() {
                    for j in 0..r {
                        let bo = bt[j * out + o];
                        for (wi, ai) in wrow.iter_mut().zip(&a[j * inp..(j + 1) * inp]) {
                            *wi += bo * ai;
                        }
                    }
                }
            }
            Linear::from_dense(w, out, inp)
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, x)| Layer {
                attn_norm: x.attn_norm.clone(),
                q: merge(&x.q, l, Module::Q),
                k: merge(&x.k, l, Module::K),
                v: merge(&x.v, l, Module::V),
                o: merge(&x.o, l, Module::O),
                q_bias: x.q_bias.clone(),
                k_bias: x.k_bias.clone(),
                v_bias: x.v_bias.clone(),
                q_norm: x.q_norm.clone(),
                k_norm: x.k_norm.clone(),
                post_attn_norm: x.post_attn_norm.clone(),
                ffn_norm: x.ffn_norm.clone(),
                gate: merge(&x.gate, l, Module::Gate),
                up: merge(&x.up, l, Module::Up),
                down: merge(&x.down, l, Module::Down),
                post_ffn_norm: x.post_ffn_norm.clone(),
            })
            .collect();
        let all: Vec<u32> = (0..self.spec.vocab as u32).collect();
        let mut rows = Vec::new();
        self.embed(&all, &mut rows).unwrap();
        let table =
            Tensor::from_vec(rows, (self.spec.vocab, self.spec.hidden), &Device::Cpu).unwrap();
        let table = QTensor::quantize(&table, candle_core::quantized::GgmlDType::F32).unwrap();
        let (w, out, inp) = self.output.dense();
        Self {
            spec: self.spec.clone(),
            device: Device::Cpu,
            embeddings: Embeddings::Candle(Arc::new(table)),
            layers,
            norm: self.norm.clone(),
            output: Linear::from_dense(w, out, inp),
        }
    }
}

#[cfg(test)]
mod silu_tests {
    /// The dispatched SiLU·up (AVX-512 or AVX2 here, in parallel above 16,384 values) gives
    /// the portable loop's floats to the bit, over ordinary values, values where `exp`
    /// saturates or flushes to zero, and a length that is not a multiple of any vector width.
    #[test]
    fn dispatched_silu_matches_the_portable_loop() {
        let n: usize = 40_003;
        let g: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => -100.0,
                1 => 95.0,
                _ => ((i * 7919) % 20_011) as f32 / 1_000.0 - 10.0,
            })
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 331.0 - 1.5)
            .collect();
        let mut want = g.clone();
        super::silu_mul_plain(&mut want, &u);
        let mut got = g;
        super::silu_mul(&mut got, &u);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }
}
