//! Model families: what differs between llama, qwen2/qwen3 and gemma3 decoders, read from a
//! GGUF file's metadata. The forward pass is one piece of code driven by a [`ModelSpec`].

use crate::error::{EngineError, Result};

use super::gguf::GgufFile;

/// The decoder families the generator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Family {
    fn parse(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }
}

/// The feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// SiLU(gate) · up.
    Silu,
    /// GELU (tanh approximation)(gate) · up.
    GeluTanh,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug)]
pub(crate) struct ModelSpec {
    pub(crate) architecture: String,
    pub(crate) name: String,
    pub(crate) layers: usize,
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) ffn: usize,
    pub(crate) vocab: usize,
    pub(crate) context: usize,
    pub(crate) rms_eps: f32,
    /// Rotary embedding over dimensions paired (i, i + d/2) rather than (2i, 2i + 1).
    pub(crate) rope_neox: bool,
    pub(crate) rope_dims: usize,
    /// Rotary base per layer.
    pub(crate) rope_base: Vec<f32>,
    /// Sliding attention window per layer: a query sees the keys less than this many
    /// positions back (itself included); `None` is full causal attention.
    pub(crate) window: Vec<Option<usize>>,
    /// RMS norm of each query and key head before the rotary embedding.
    pub(crate) qk_norm: bool,
    /// Biases on the query, key and value projections.
    pub(crate) qkv_bias: bool,
    /// Norms on the attention and feed-forward outputs before the residual add.
    pub(crate) post_norms: bool,
    /// Token embeddings are multiplied by this.
    pub(crate) embed_scale: f32,
    pub(crate) activation: Activation,
    /// Attention logits are multiplied by this.
    pub(crate) attn_scale: f32,
}

impl ModelSpec {
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.string("general.architecture")?.to_owned();
        let family = Family::parse(&arch).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "{}: architecture {arch:?}; the generator runs llama, qwen2, qwen3 and gemma3",
                file.path().display()
            ))
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let layers = file.usize(&key("block_count"))?;
        let hidden = file.usize(&key("embedding_length"))?;
        let heads = file.usize(&key("attention.head_count"))?;
        let kv_heads = file
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = match file.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let ffn = file.usize(&key("feed_forward_length"))?;
        let context = file.opt_usize(&key("context_length"))?.unwrap_or(2048);
        let rms_eps = file
            .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        let rope_dims = file
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        let freq_base = file.opt_f32(&key("rope.freq_base"))?;
        let embd = file.shape("token_embd.weight")?;
        let vocab = embd.first().copied().unwrap_or(0);

        let corrupt = |detail: String| EngineError::Corrupt {
            path: file.path().to_owned(),
            detail,
        };
        if layers == 0 || hidden == 0 || heads == 0 || kv_heads == 0 || head_dim == 0 || ffn == 0 {
            return Err(corrupt(format!(
                "degenerate shape: {layers} layers, hidden {hidden}, {heads} heads, \
                 {kv_heads} kv heads, head dim {head_dim}, ffn {ffn}"
            )));
        }
        if heads % kv_heads != 0 || rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(corrupt(format!(
                "{heads} heads are not a multiple of {kv_heads} kv heads, or rotary dims \
                 {rope_dims} do not fit head dim {head_dim}"
            )));
        }
        if embd.get(1) != Some(&hidden) || vocab == 0 {
            return Err(corrupt(format!("token_embd.weight has shape {embd:?}")));
        }

        let mut spec = Self {
            name: file
                .string("general.name")
                .map(str::to_owned)
                .unwrap_or_else(|_| arch.clone()),
            architecture: arch,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            context,
            rms_eps,
            rope_neox: false,
            rope_dims,
            rope_base: vec![freq_base.unwrap_or(10_000.0); layers],
            window: vec![None; layers],
            qk_norm: false,
            qkv_bias: false,
            post_norms: false,
            embed_scale: 1.0,
            activation: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
        };
        match family {
            Family::Llama => {}
            Family::Qwen2 => {
                spec.rope_neox = true;
                spec.qkv_bias = true;
            }
            Family::Qwen3 => {
                spec.rope_neox = true;
                spec.qk_norm = true;
            }
            Family::Gemma3 => {
                // Five sliding-window layers with a local rotary base, then one global layer.
                let window = file.usize("gemma3.attention.sliding_window")?;
                let pattern = file
                    .opt_usize("gemma3.attention.sliding_window_type")?
                    .unwrap_or(6);
                let local_base = file
                    .opt_f32("gemma3.rope.local_freq_base")?
                    .unwrap_or(10_000.0);
                let global_base = freq_base.unwrap_or(1_000_000.0);
                for l in 0..layers {
                    let sliding = pattern > 0 && (l + 1) % pattern != 0;
                    spec.window[l] = sliding.then_some(window);
                    spec.rope_base[l] = if sliding { local_base } else { global_base };
                }
                spec.rope_neox = true;
                spec.qk_norm = true;
                spec.post_norms = true;
                spec.embed_scale = (hidden as f32).sqrt();
                spec.activation = Activation::GeluTanh;
            }
        }
        Ok(spec)
    }

    /// Width of the query projection.
    pub(crate) fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key (and value) projection.
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
