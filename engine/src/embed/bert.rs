//! A BERT encoder (post-LN, absolute positions, GELU) written directly over candle ops.
//!
//! Only what sentence embedding needs: no pooler, no token-type input beyond segment 0, no
//! dropout. Weights are rearranged once at load time so the forward pass does as little as
//! possible: Q, K and V are fused into one matrix (one matmul per layer instead of three), the
//! attention scale `1/sqrt(head_dim)` is folded into the query weights, the segment-0
//! token-type embedding is folded into the position table, and weight matrices are stored
//! `(in, out)` so every linear layer is one plain matmul over `(tokens, hidden)` activations.
//!
//! Two layouts of a batch ([`SeqLayout`]), chosen by device:
//! - CPU: sequences **packed** back to back with no padding at all; the linear layers run
//!   over all tokens at once and attention runs per sequence (batched over heads), sequences
//!   in parallel on the rayon pool. Element-wise work goes through the fused in-place kernels
//!   of `kernels.rs`.
//! - Other devices: sequences **padded** to the longest of the sub-batch, one batched
//!   attention with an additive mask, generic candle ops (few, large kernels suit a GPU).
//!
//! Both give the same vectors (a unit test checks it on a tiny random model).

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use candle_nn::ops::{layer_norm, softmax_last_dim};
use rayon::prelude::*;
use serde::Deserialize;

use super::pooling::{mean_pool_normalize, pooling_weights};
use super::{attention, int8, kernels, panels};
use crate::config::FETCH_HINT;
use crate::error::{EngineError, Result};

/// The fields of a Hugging Face BERT `config.json` that the encoder uses.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub(crate) struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(EngineError::ModelMissing {
                path: path.to_owned(),
                hint: FETCH_HINT,
            });
        }
        let raw = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |detail: String| EngineError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let cfg: Self = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
        cfg.check().map_err(corrupt)?;
        Ok(cfg)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "unsupported hidden_act {:?}: the embedder implements only \"gelu\" (erf)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "unsupported position_embedding_type {:?}: the embedder implements only \
                 \"absolute\"",
                self.position_embedding_type
            ));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must not be 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!("bad layer_norm_eps {}", self.layer_norm_eps));
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A dense layer. On the CPU the weights are packed into panels for our own matmul
/// (`panels.rs`); elsewhere they are a device tensor stored `(in, out)`, ready for
/// `x.matmul(&w)`. The bias is kept on the device and, for the fused CPU kernels, as a host
/// copy.
struct Linear {
    w: Weight,
    b: Tensor,
    b_host: Vec<f32>,
}

enum Weight {
    Packed(panels::Packed),
    Int8(int8::PackedI8),
    Device(Tensor),
}

impl Linear {
    /// `w`: `(in, out)`; on the CPU, quantised to int8 when `int8` (see `int8.rs`).
    fn new(w: Tensor, b: Tensor, int8: bool) -> candle_core::Result<Self> {
        let b_host = b.to_vec1()?;
        let w = if w.device().is_cpu() {
            let (k, n) = w.dims2()?;
            let host = w.flatten_all()?.to_vec1()?;
            if int8 {
                Weight::Int8(int8::PackedI8::new(&host, k, n))
            } else {
                Weight::Packed(panels::Packed::new(&host, k, n))
            }
        } else {
            Weight::Device(w)
        };
        Ok(Self { w, b, b_host })
    }

    /// `x`: `(rows, in)` → `(rows, out)`, bias not yet added.
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.w {
            Weight::Device(w) => x.matmul(w),
            Weight::Packed(w) => {
                let (m, k) = x.dims2()?;
                if k != w.rows() {
                    candle_core::bail!("linear: input width {k}, weights take {}", w.rows());
                }
                let mut y = vec![0.0f32; m * w.cols()];
                with_cpu_rows(x, |x| panels::matmul(x, w, &mut y, m))?;
                Tensor::from_vec(y, (m, w.cols()), &Device::Cpu)
            }
            Weight::Int8(w) => {
                let (m, k) = x.dims2()?;
                if k != w.rows() {
                    candle_core::bail!("linear: input width {k}, weights take {}", w.rows());
                }
                let mut y = vec![0.0f32; m * w.cols()];
                with_cpu_rows(x, |x| int8::matmul(x, w, &mut y, m))?;
                Tensor::from_vec(y, (m, w.cols()), &Device::Cpu)
            }
        }
    }
}

impl Linear {
    /// `x`: `(m, in)` → `y`: `(m, out)`, bias not yet added, on the CPU, into `y` (grown as
    /// needed, never shrunk; its first `m × out` values are overwritten).
    fn matmul_into(
        &self,
        x: &[f32],
        m: usize,
        y: &mut Vec<f32>,
        rows: &mut int8::Rows,
    ) -> candle_core::Result<()> {
        match &self.w {
            Weight::Device(_) => candle_core::bail!("linear: device weights on the CPU path"),
            Weight::Packed(w) => panels::matmul(x, w, sized(y, m * w.cols()), m),
            Weight::Int8(w) => int8::matmul_with(x, w, sized(y, m * w.cols()), m, rows),
        }
        Ok(())
    }
}

/// The first `len` values of `v`, growing it with zeros if it is shorter (the caller
/// overwrites them all).
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Runs `f` on the f32 elements of a CPU tensor, in place when it is contiguous (a copy
/// otherwise).
fn with_cpu_rows<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

struct Norm {
    w: Tensor,
    b: Tensor,
    w_host: Vec<f32>,
    b_host: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.w, &self.b, self.eps)
    }
}

/// How a batch's sequences lie in the `(tokens, hidden)` activations.
pub(crate) enum SeqLayout<'a> {
    /// Back to back, no padding: one attention per sequence. Best on the CPU, where no work is
    /// spent on padding at all.
    Packed {
        /// Length of each sequence, in order.
        lens: &'a [usize],
    },
    /// `batch` sequences, each padded on the right to `seq` tokens, with one batched attention.
    /// Best on GPUs, which want few large kernels.
    Padded {
        /// Number of sequences.
        batch: usize,
        /// Padded length.
        seq: usize,
        /// `(batch, 1, 1, seq)`: 0 for real tokens, [`MASKED`] for padding; added to the
        /// attention scores so no token attends to padding.
        mask_bias: &'a Tensor,
    },
}

struct Layer {
    /// Q, K and V fused: `(hidden, 3 * hidden)`, the query part pre-scaled.
    qkv: Linear,
    out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    ffn_norm: Norm,
}

/// The activations of the CPU forward pass over packed sequences ([`Bert::cpu_forward`]),
/// kept from call to call. Fresh buffers per layer (about 35 MB for 2,048 tokens) were paged
/// in and zeroed on every call: on the PostgreSQL manual's ingestion that was 8% of the CPU
/// time in the kernel and 3% in `memset`. They hold the largest batch seen (at most about
/// 38 MB for MiniLM's 2,048-token sub-batches).
#[derive(Default)]
struct Workspace {
    /// The hidden states, `(tokens, hidden)`.
    x: Vec<f32>,
    /// A layer's output before it becomes `x`.
    y: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    up: Vec<f32>,
    rows: int8::Rows,
}

/// The word-embedding table.
enum Word {
    /// `(vocabulary, hidden)` f32 on the model's device.
    Dense(Tensor),
    /// 4-bit blocks on the CPU, expanded row by row as tokens look them up.
    Q4(super::e5s::Q4Rows),
}

impl Word {
    /// The rows of `ids` (`(tokens,)` u32): `(tokens, hidden)`.
    fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(t) => t.index_select(ids, 0),
            Self::Q4(q) => {
                let ids = ids.to_vec1::<u32>()?;
                let dim = q.dim();
                let mut out = vec![0f32; ids.len() * dim];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim)) {
                    if id as usize >= q.rows() {
                        candle_core::bail!("token id {id} outside the {} words", q.rows());
                    }
                    q.row_into(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), dim), &Device::Cpu)
            }
        }
    }
}

/// A loaded BERT encoder.
pub(crate) struct Bert {
    cfg: BertConfig,
    device: Device,
    /// Use the fused in-place CPU kernels (`kernels.rs`) instead of generic candle ops.
    fused: bool,
    /// The CPU forward pass's buffers (one pass at a time: the embedder has one worker).
    workspace: std::sync::Mutex<Workspace>,
    word: Word,
    /// Position embeddings plus the token-type-0 embedding: `(max_positions, hidden)`.
    position: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
}

/// Where the weights come from.
enum Source<'a> {
    /// A `model.safetensors`, whose names may carry a `bert.` prefix.
    Safetensors {
        st: &'a MmapedSafetensors,
        prefix: &'static str,
    },
    /// Tensors already in memory, under the unprefixed names (an E5S1 file, `e5s.rs`).
    Tensors(&'a HashMap<String, Tensor>),
}

/// Reads tensors by their Hugging Face names as f32.
struct Weights<'a> {
    src: Source<'a>,
    device: &'a Device,
    path: &'a Path,
    int8: bool,
}

impl Weights<'_> {
    fn corrupt(&self, detail: String) -> EngineError {
        EngineError::Corrupt {
            path: self.path.to_owned(),
            detail,
        }
    }

    /// The tensor `name`, whatever its shape, as f32.
    fn any(&self, name: &str) -> Result<Tensor> {
        let t = match &self.src {
            Source::Safetensors { st, prefix } => {
                let full = format!("{prefix}{name}");
                st.load(&full, self.device)
                    .map_err(|e| self.corrupt(format!("tensor {full}: {e}")))?
            }
            Source::Tensors(map) => map
                .get(name)
                .ok_or_else(|| self.corrupt(format!("missing tensor {name}")))?
                .to_device(self.device)
                .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))?,
        };
        t.to_dtype(DType::F32)
            .map_err(|e| self.corrupt(format!("tensor {name}: {e}")))
    }

    fn has(&self, name: &str) -> bool {
        match &self.src {
            Source::Safetensors { st, prefix } => st.get(&format!("{prefix}{name}")).is_ok(),
            Source::Tensors(map) => map.contains_key(name),
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.any(name)?;
        if t.dims() != shape {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }

    /// A LayerNorm, under either `weight`/`bias` or the older `gamma`/`beta` names.
    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<Norm> {
        let (w, b) = if self.has(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let w = self.get(&format!("{name}.{w}"), &[dim])?;
        let b = self.get(&format!("{name}.{b}"), &[dim])?;
        Ok(Norm {
            w_host: model_op(w.to_vec1())?,
            b_host: model_op(b.to_vec1())?,
            w,
            b,
            // Narrowing is what candle's layer norm takes; 1e-12 stays representable.
            eps: eps as f32,
        })
    }

    /// A `torch.nn.Linear` (`weight` is `(out, in)`), transposed to `(in, out)`.
    /// A dense layer's weights as `(in, out)` and its bias.
    fn dense(&self, name: &str, input: usize, output: usize) -> Result<(Tensor, Tensor)> {
        let w = self.get(&format!("{name}.weight"), &[output, input])?;
        let b = self.get(&format!("{name}.bias"), &[output])?;
        Ok((model_op(w.t().and_then(|t| t.contiguous()))?, b))
    }

    fn linear(&self, name: &str, input: usize, output: usize) -> Result<Linear> {
        let (w, b) = self.dense(name, input, output)?;
        model_op(Linear::new(w, b, self.int8))
    }
}

/// Opens the safetensors file without reading it all into memory first; tensors are copied
/// out of the mapping into owned buffers, and the mapping is dropped once loading is done.
#[allow(unsafe_code)]
fn mmap_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the mapping is read-only and lives only while the weights are copied out of it
    // (inside `Bert::load`). hearth never writes model files, and they are installed once by
    // scripts/fetch-models.sh, so the file is not modified or truncated while it is mapped.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| EngineError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Maps a candle error inside the engine to [`EngineError::Internal`].
pub(crate) fn model_op<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| EngineError::Internal(format!("embedding model: {e}")))
}

impl Bert {
    /// Loads `model.safetensors` from `path` onto `device`.
    /// `int8`: the dense layers run in int8 on the CPU (`int8.rs`), else in f32.
    pub(crate) fn load(cfg: BertConfig, path: &Path, device: &Device, int8: bool) -> Result<Self> {
        if !path.is_file() {
            return Err(EngineError::ModelMissing {
                path: path.to_owned(),
                hint: FETCH_HINT,
            });
        }
        let st = mmap_safetensors(path)?;
        let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let w = Weights {
            src: Source::Safetensors { st: &st, prefix },
            device,
            path,
            int8,
        };
        let name = "embeddings.word_embeddings.weight";
        let word = w.any(name)?;
        match word.dims() {
            [_, d] if *d == cfg.hidden_size => {}
            dims => return Err(w.corrupt(format!("tensor {name} has shape {dims:?}"))),
        }
        Self::build(cfg, &w, Word::Dense(word))
    }

    /// Builds the encoder of an E5S1 model file (`e5s.rs`, read from `path`) on `device`: its
    /// word table stays in 4-bit blocks on the CPU.
    pub(crate) fn load_e5s(
        file: super::e5s::E5s,
        path: &Path,
        device: &Device,
        int8: bool,
    ) -> Result<Self> {
        let w = Weights {
            src: Source::Tensors(&file.tensors),
            device,
            path,
            int8,
        };
        let word = if device.is_cpu() {
            Word::Q4(file.word)
        } else {
            Word::Dense(model_op(file.word.to_tensor(device))?)
        };
        Self::build(file.cfg, &w, word)
    }

    fn build(cfg: BertConfig, w: &Weights<'_>, word: Word) -> Result<Self> {
        let (h, device, int8) = (cfg.hidden_size, w.device, w.int8);
        let position = w.get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let name = "embeddings.token_type_embeddings.weight";
        let token_type = w.any(name)?;
        match token_type.dims() {
            [n, d] if *n >= 1 && *d == h => {}
            dims => return Err(w.corrupt(format!("tensor {name} has shape {dims:?}"))),
        }
        let position = model_op(position.broadcast_add(&model_op(token_type.get(0))?))?;
        let emb_norm = w.norm("embeddings.LayerNorm", h, cfg.layer_norm_eps)?;

        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let (qw, qb) = w.dense(&format!("{p}.attention.self.query"), h, h)?;
            let (kw, kb) = w.dense(&format!("{p}.attention.self.key"), h, h)?;
            let (vw, vb) = w.dense(&format!("{p}.attention.self.value"), h, h)?;
            let qkv = model_op((|| {
                Linear::new(
                    Tensor::cat(&[(qw * scale)?, kw, vw], 1)?,
                    Tensor::cat(&[(qb * scale)?, kb, vb], 0)?,
                    int8,
                )
            })())?;
            layers.push(Layer {
                qkv,
                out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                )?,
                up: w.linear(&format!("{p}.intermediate.dense"), h, cfg.intermediate_size)?,
                down: w.linear(&format!("{p}.output.dense"), cfg.intermediate_size, h)?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"), h, cfg.layer_norm_eps)?,
            });
        }
        Ok(Self {
            cfg,
            device: device.clone(),
            fused: device.is_cpu(),
            workspace: std::sync::Mutex::default(),
            word,
            position,
            emb_norm,
            layers,
        })
    }

    /// Width of the hidden states.
    pub(crate) fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Most positions the model can embed.
    pub(crate) fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// The layout this encoder runs best with on its device: packed on the CPU, padded
    /// elsewhere.
    pub(crate) fn prefers_packed(&self) -> bool {
        self.fused
    }

    /// Embeds token sequences (each non-empty) in one forward pass: mean-pooled, L2-normalised
    /// rows, flat, in order. `packed` picks the layout (see [`SeqLayout`]).
    pub(crate) fn embed(&self, seqs: &[&[u32]], packed: bool) -> candle_core::Result<Vec<f32>> {
        let dev = &self.device;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let (tokens, starts) = if packed {
            let starts: Vec<usize> = lens
                .iter()
                .scan(0, |at, &len| {
                    let start = *at;
                    *at += len;
                    Some(start)
                })
                .collect();
            (lens.iter().sum(), starts)
        } else {
            (
                seqs.len() * longest,
                (0..seqs.len()).map(|b| b * longest).collect(),
            )
        };
        // Padding ids are 0 ([PAD] in BERT vocabularies); they never reach a real token.
        let mut ids = vec![0u32; tokens];
        let mut positions = vec![0u32; tokens];
        for (s, &start) in seqs.iter().zip(&starts) {
            ids[start..start + s.len()].copy_from_slice(s);
        }
        if packed {
            for (&len, &start) in lens.iter().zip(&starts) {
                for (p, i) in positions[start..start + len].iter_mut().zip(0u32..) {
                    *p = i;
                }
            }
        } else {
            for (p, i) in positions.iter_mut().zip(0u32..) {
                // Positions restart in every padded row.
                *p = i % longest.max(1) as u32;
            }
        }
        let ids = Tensor::from_vec(ids, tokens, dev)?;
        let positions = Tensor::from_vec(positions, tokens, dev)?;
        let hidden = if packed {
            if self.fused {
                return self.cpu_forward(&ids, &positions, &lens);
            }
            self.forward(&ids, &positions, &SeqLayout::Packed { lens: &lens })?
        } else {
            let mut bias = vec![MASKED; tokens];
            for (&len, &start) in lens.iter().zip(&starts) {
                bias[start..start + len].fill(0.0);
            }
            let mask_bias = Tensor::from_vec(bias, (seqs.len(), 1, 1, longest), dev)?;
            let layout = SeqLayout::Padded {
                batch: seqs.len(),
                seq: longest,
                mask_bias: &mask_bias,
            };
            self.forward(&ids, &positions, &layout)?
        };
        let weights = pooling_weights(&lens, &starts, tokens);
        let weights = Tensor::from_vec(weights, (seqs.len(), tokens), dev)?;
        mean_pool_normalize(&hidden, &weights)?
            .flatten_all()?
            .to_vec1()
    }

    /// Runs the encoder over a batch laid out as `layout` says.
    ///
    /// - `ids`: `(tokens,)` u32 token ids, padding included for [`SeqLayout::Padded`].
    /// - `positions`: `(tokens,)` u32 position of each token within its sequence.
    ///
    /// Returns the last hidden states, `(tokens, hidden)`. Rows at padded positions are
    /// computed but meaningless; pooling must leave them out.
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        layout: &SeqLayout<'_>,
    ) -> candle_core::Result<Tensor> {
        let max_pos = match layout {
            SeqLayout::Packed { lens } => lens.iter().copied().max().unwrap_or(0),
            SeqLayout::Padded { seq, .. } => *seq,
        };
        if max_pos > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {max_pos} tokens exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let x = (self.word.lookup(ids)? + self.position.index_select(positions, 0)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, layout)?;
        }
        Ok(x)
    }

    /// [`Self::forward`] over packed sequences on the CPU, then mean pooling, on the buffers of
    /// [`Workspace`]: the same kernels in the same order as the tensor path (the same bits,
    /// tested), without a fresh buffer per layer.
    fn cpu_forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        lens: &[usize],
    ) -> candle_core::Result<Vec<f32>> {
        let (h, inner) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let (heads, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let m: usize = lens.iter().sum();
        if lens.iter().copied().max().unwrap_or(0) > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "a sequence exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let emb = (self.word.lookup(ids)? + self.position.index_select(positions, 0)?)?;
        let emb = self.emb_norm.forward(&emb)?;
        // A panic inside a pass leaves the buffers as they were, which the next pass
        // overwrites before reading: nothing of the poisoned state is ever read.
        let mut guard = self
            .workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ws = &mut *guard;
        with_cpu_rows(&emb, |e| sized(&mut ws.x, m * h).copy_from_slice(e))?;
        for layer in &self.layers {
            layer
                .qkv
                .matmul_into(&ws.x[..m * h], m, &mut ws.qkv, &mut ws.rows)?;
            let qkv = &mut ws.qkv[..m * 3 * h];
            kernels::slices::add_bias(qkv, &layer.qkv.b_host)?;
            attention::packed_attention(qkv, lens, heads, hd, sized(&mut ws.ctx, m * h));
            layer
                .out
                .matmul_into(&ws.ctx[..m * h], m, &mut ws.y, &mut ws.rows)?;
            let norm = &layer.attn_norm;
            kernels::slices::bias_residual_norm(
                &mut ws.y[..m * h],
                &ws.x[..m * h],
                &layer.out.b_host,
                &norm.w_host,
                &norm.b_host,
                norm.eps,
            )?;
            std::mem::swap(&mut ws.x, &mut ws.y);
            layer
                .up
                .matmul_into(&ws.x[..m * h], m, &mut ws.up, &mut ws.rows)?;
            kernels::slices::bias_gelu(&mut ws.up[..m * inner], &layer.up.b_host)?;
            layer
                .down
                .matmul_into(&ws.up[..m * inner], m, &mut ws.y, &mut ws.rows)?;
            let norm = &layer.ffn_norm;
            kernels::slices::bias_residual_norm(
                &mut ws.y[..m * h],
                &ws.x[..m * h],
                &layer.down.b_host,
                &norm.w_host,
                &norm.b_host,
                norm.eps,
            )?;
            std::mem::swap(&mut ws.x, &mut ws.y);
        }
        Ok(attention::packed_mean_normalize(&ws.x[..m * h], lens, h))
    }

    /// One encoder layer over `x`: `(tokens, hidden)`.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        layout: &SeqLayout<'_>,
    ) -> candle_core::Result<Tensor> {
        let qkv = self.add_bias(layer.qkv.matmul(x)?, &layer.qkv)?;
        let ctx = match layout {
            SeqLayout::Packed { lens } if self.fused => {
                let (heads, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
                let mut ctx = vec![0.0f32; x.dim(0)? * heads * hd];
                with_cpu_rows(&qkv, |q| {
                    attention::packed_attention(q, lens, heads, hd, &mut ctx);
                })?;
                Tensor::from_vec(ctx, (x.dim(0)?, heads * hd), x.device())?
            }
            SeqLayout::Packed { lens } => self.packed_attention(&qkv, lens)?,
            SeqLayout::Padded {
                batch,
                seq,
                mask_bias,
            } => self.padded_attention(&qkv, *batch, *seq, mask_bias)?,
        };
        let x = self.residual_norm(layer.out.matmul(&ctx)?, &layer.out, x, &layer.attn_norm)?;
        let up = self.bias_gelu(layer.up.matmul(&x)?, &layer.up)?;
        self.residual_norm(layer.down.matmul(&up)?, &layer.down, &x, &layer.ffn_norm)
    }

    fn add_bias(&self, y: Tensor, lin: &Linear) -> candle_core::Result<Tensor> {
        if self.fused {
            kernels::add_bias_(&y, &lin.b_host)?;
            Ok(y)
        } else {
            y.broadcast_add(&lin.b)
        }
    }

    fn bias_gelu(&self, y: Tensor, lin: &Linear) -> candle_core::Result<Tensor> {
        if self.fused {
            kernels::bias_gelu_(&y, &lin.b_host)?;
            Ok(y)
        } else {
            y.broadcast_add(&lin.b)?.gelu_erf()
        }
    }

    /// `norm(y + bias + residual)`.
    fn residual_norm(
        &self,
        y: Tensor,
        lin: &Linear,
        residual: &Tensor,
        norm: &Norm,
    ) -> candle_core::Result<Tensor> {
        if self.fused {
            kernels::bias_residual_norm_(
                &y,
                residual,
                &lin.b_host,
                &norm.w_host,
                &norm.b_host,
                norm.eps,
            )?;
            Ok(y)
        } else {
            norm.forward(&(y.broadcast_add(&lin.b)? + residual)?)
        }
    }

    fn softmax(&self, scores: Tensor) -> candle_core::Result<Tensor> {
        if self.fused {
            kernels::softmax_(&scores)?;
            Ok(scores)
        } else {
            softmax_last_dim(&scores)
        }
    }

    /// Self-attention over packed sequences, one sequence per rayon task: no padding, no
    /// mask. `qkv`: `(tokens, 3 * hidden)`; returns `(tokens, hidden)`.
    fn packed_attention(&self, qkv: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        let heads = self.cfg.num_attention_heads;
        let hd = self.cfg.head_dim();
        let offsets: Vec<usize> = lens
            .iter()
            .scan(0, |at, &len| {
                let start = *at;
                *at += len;
                Some(start)
            })
            .collect();
        let parts = lens
            .par_iter()
            .zip(offsets.par_iter())
            .map(|(&len, &start)| {
                // (len, 3h) → (3, heads, len, hd)
                let s = qkv
                    .narrow(0, start, len)?
                    .reshape((len, 3, heads, hd))?
                    .permute((1, 2, 0, 3))?
                    .contiguous()?;
                let (q, k, v) = (s.get(0)?, s.get(1)?, s.get(2)?);
                // Scores (heads, len, len); the scale is already in the query weights.
                let probs = self.softmax(q.matmul(&k.t()?)?)?;
                probs
                    .matmul(&v)?
                    .transpose(0, 1)?
                    .reshape((len, heads * hd))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// Batched self-attention over padded sequences. `qkv`: `(batch * seq, 3 * hidden)`;
    /// returns `(batch * seq, hidden)`.
    fn padded_attention(
        &self,
        qkv: &Tensor,
        b: usize,
        l: usize,
        mask_bias: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let heads = self.cfg.num_attention_heads;
        let hd = self.cfg.head_dim();
        // (b*l, 3h) → (3, b, heads, l, hd): one copy gives all three operands a layout the
        // batched matmul can take as is.
        let qkv = qkv
            .reshape((b, l, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask_bias)?;
        let probs = self.softmax(scores)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * l, heads * hd))
    }
}

/// The value added to attention scores at padded positions: exp() of it is exactly 0.
pub(crate) const MASKED: f32 = f32::MIN;

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig {
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            position_embedding_type: absolute(),
        }
    }

    /// Writes a randomly initialised tiny BERT (with the `bert.` prefix and old-style
    /// `gamma`/`beta` norm names in the embeddings) and loads it back.
    fn tiny_bert() -> Bert {
        tiny_bert_in(false)
    }

    /// A tiny random BERT whose dense layers run in int8 when `int8`.
    fn tiny_bert_in(int8: bool) -> Bert {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![20, h]),
            ("embeddings.position_embeddings.weight".into(), vec![16, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
            ("embeddings.LayerNorm.gamma".into(), vec![h]),
            ("embeddings.LayerNorm.beta".into(), vec![h]),
        ];
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{p}.{name}.bias"), vec![out]));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{name}.weight"), vec![h]));
                shapes.push((format!("{p}.{name}.bias"), vec![h]));
            }
        }
        let tensors: std::collections::HashMap<String, Tensor> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0f32, 0.5, shape, &dev).unwrap();
                (format!("bert.{name}"), t)
            })
            .collect();
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "hearth-engine-tiny-bert-{}-{seq}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let bert = Bert::load(cfg, &path, &dev, int8).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        bert
    }

    fn rows(flat: Vec<f32>) -> Vec<Vec<f32>> {
        flat.chunks(8).map(<[f32]>::to_vec).collect()
    }

    #[test]
    fn tiny_bert_results_do_not_depend_on_layout_kernels_or_batch_mates() {
        let mut bert = tiny_bert();
        let a: &[u32] = &[1, 5, 7, 2];
        let b: &[u32] = &[1, 3, 4, 9, 10, 11, 19, 2];
        let c: &[u32] = &[1, 2];
        let alone: Vec<Vec<f32>> = [a, b, c]
            .iter()
            .map(|s| bert.embed(&[s], true).unwrap())
            .collect();
        let mut variants = Vec::new();
        for fused in [true, false] {
            bert.fused = fused;
            for packed in [true, false] {
                variants.push((
                    (fused, packed),
                    rows(bert.embed(&[a, b, c], packed).unwrap()),
                ));
            }
        }
        for (which, together) in &variants {
            for (x, y) in alone.iter().zip(together) {
                let ok = x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5);
                assert!(ok, "(fused, packed) = {which:?}: {x:?} vs {y:?}");
            }
        }
        for x in &alone {
            let norm: f32 = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert_ne!(alone[0], alone[1]);
    }

    /// The packed tensor path (`forward`, then pooling), which `cpu_forward` must equal.
    fn through_tensors(bert: &Bert, seqs: &[&[u32]]) -> Vec<f32> {
        let dev = Device::Cpu;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let ids = Tensor::new(seqs.concat().as_slice(), &dev).unwrap();
        let positions: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
        let positions = Tensor::new(positions.as_slice(), &dev).unwrap();
        let hidden = bert
            .forward(&ids, &positions, &SeqLayout::Packed { lens: &lens })
            .unwrap();
        let hidden: Vec<f32> = hidden.flatten_all().unwrap().to_vec1().unwrap();
        attention::packed_mean_normalize(&hidden, &lens, bert.hidden_size())
    }

    #[test]
    fn the_cpu_pass_over_reused_buffers_gives_the_tensor_paths_bits() {
        let a: &[u32] = &[1, 5, 7, 2];
        let b: &[u32] = &[1, 3, 4, 9, 10, 11, 19, 2];
        let c: &[u32] = &[1, 2];
        for int8 in [false, true] {
            let bert = tiny_bert_in(int8);
            // Large, small, then large again: stale values left in the buffers by an
            // earlier pass must never reach a result.
            for seqs in [&[a, b, c][..], &[c], &[b, a], &[a, b, c]] {
                let got = bert.embed(seqs, true).unwrap();
                let want = through_tensors(&bert, seqs);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "int8 {int8}, {} sequences",
                    seqs.len()
                );
            }
        }
    }

    #[test]
    fn tiny_bert_rejects_sequences_longer_than_its_positions() {
        let bert = tiny_bert();
        let long: Vec<u32> = vec![1; 17];
        for packed in [true, false] {
            assert!(bert.embed(&[&long], packed).is_err());
        }
    }

    #[test]
    fn config_rejects_unsupported_activation_by_name() {
        let mut cfg = tiny_config();
        cfg.check().unwrap();
        cfg.hidden_act = "relu".into();
        assert!(cfg.check().unwrap_err().contains("hidden_act \"relu\""));
        cfg.hidden_act = "gelu".into();
        cfg.num_attention_heads = 3;
        assert!(cfg.check().unwrap_err().contains("num_attention_heads"));
        cfg.num_attention_heads = 2;
        cfg.position_embedding_type = "relative_key".into();
        assert!(cfg.check().unwrap_err().contains("relative_key"));
    }
}
