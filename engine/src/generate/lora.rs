//! LoRA adapters in PEFT's format, applied as a low-rank side path on the quantized base.
//!
//! An adapter adds `scale · B (A x)` to the output of some of each layer's projections (q, k,
//! v, o, gate, up, down). The base weights are never changed, so one step mixes rows of
//! sequences with different adapters or none: each row gets its own adapter's delta.
//!
//! Files: `adapter_config.json` (PEFT's `LoraConfig`) and `adapter_model.safetensors` with
//! `…layers.{i}.{self_attn|mlp}.{q_proj|…}.lora_A.weight` (`[r, in]`) and `….lora_B.weight`
//! (`[out, r]`) in f32, f16 or bf16. Loading checks everything against the base model (layer
//! count, every shape, rank ≤ [`MAX_RANK`], options we do not implement) and keeps f32
//! copies with the scale folded into B.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::simd::dot;

use super::arch::ModelSpec;

/// The largest rank accepted.
pub(crate) const MAX_RANK: usize = 64;

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The projections an adapter may target, in the order of [`LayerLora`]'s slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Module {
    const ALL: [Self; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    fn peft_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    fn from_peft(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.peft_name() == name)
    }

    /// `(inputs, outputs)` of this projection in `spec`.
    pub(crate) fn dims(self, spec: &ModelSpec) -> (usize, usize) {
        let (h, q, kv, f) = (spec.hidden, spec.q_dim(), spec.kv_dim(), spec.ffn);
        match self {
            Self::Q => (h, q),
            Self::K | Self::V => (h, kv),
            Self::O => (q, h),
            Self::Gate | Self::Up => (h, f),
            Self::Down => (f, h),
        }
    }
}

/// One projection's low-rank pair.
pub(crate) struct LoraPair {
    rank: usize,
    /// `rank × in`, row-major.
    a: Vec<f32>,
    /// `rank × out` (Bᵀ), row-major, already multiplied by the scale.
    bt: Vec<f32>,
}

impl LoraPair {
    /// `(in, out)`: the widths of the rows it reads and adds to.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.a.len() / self.rank, self.bt.len() / self.rank)
    }

    /// `out += B (A x)` for one row, through [`Self::add_row_avx2`] when the CPU has AVX2 and
    /// FMA.
    pub(crate) fn add_to_row(&self, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe {
                return self.add_row_avx2(x, out);
            }
        }
        self.add_row(x, out);
    }

    /// [`Self::add_row`] compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn add_row_avx2(&self, x: &[f32], out: &mut [f32]) {
        self.add_row(x, out);
    }

    /// `out += B (A x)` for one row.
    #[inline(always)]
    fn add_row(&self, x: &[f32], out: &mut [f32]) {
        let mut t = [0f32; MAX_RANK];
        let t = &mut t[..self.rank];
        for (tj, a) in t.iter_mut().zip(self.a.chunks_exact(x.len())) {
            *tj = dot(a, x);
        }
        // out += Σ_j t_j · Bᵀ_j: rank passes that vectorise over the outputs.
        for (tj, bt) in t.iter().zip(self.bt.chunks_exact(out.len())) {
            for (o, b) in out.iter_mut().zip(bt) {
                *o += tj * b;
            }
        }
    }

    /// `(rank, A, scale·Bᵀ)`, both row-major.
    #[cfg(test)]
    pub(crate) fn delta(&self) -> (usize, &[f32], &[f32]) {
        (self.rank, &self.a, &self.bt)
    }
}

/// One layer's pairs, by [`Module`].
type LayerLora = [Option<LoraPair>; 7];

/// What an adapter is, for listings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInfo {
    /// The name it was registered under.
    pub name: String,
    /// The largest rank among its projections.
    pub rank: usize,
    /// `lora_alpha` from its configuration.
    pub alpha: f32,
    /// The projections it targets (PEFT names, e.g. `q_proj`).
    pub modules: Vec<String>,
    /// Number of adapter parameters.
    pub parameters: usize,
    /// `base_model_name_or_path` from its configuration, if any.
    pub base_model: Option<String>,
    /// Whether it is loaded in memory now (else it is loaded again when next asked for).
    pub resident: bool,
}

/// A loaded adapter.
pub(crate) struct Adapter {
    /// Distinguishes this adapter's cached KV blocks from everyone else's (never 0).
    pub(crate) id: u32,
    layers: Vec<LayerLora>,
    pub(crate) info: AdapterInfo,
}

impl Adapter {
    pub(crate) fn pair(&self, layer: usize, module: Module) -> Option<&LoraPair> {
        self.layers.get(layer)?[module as usize].as_ref()
    }

    /// Reads and checks the adapter in `dir` against `spec`.
    pub(crate) fn load(dir: &Path, name: &str, id: u32, spec: &ModelSpec) -> Result<Self> {
        let bad = |detail: String| EngineError::InvalidAdapter {
            name: name.to_owned(),
            detail,
        };
        let read = |file: &str, limit: u64| -> Result<Vec<u8>> {
            let path = dir.join(file);
            let io = |e| EngineError::Io {
                path: path.clone(),
                source: e,
            };
            let meta = std::fs::metadata(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    bad(format!("{file} is missing in {}", dir.display()))
                } else {
                    io(e)
                }
            })?;
            if meta.len() > limit {
                return Err(bad(format!(
                    "{file} is {} bytes; a rank-{MAX_RANK} adapter of this model needs at most {limit}",
                    meta.len()
                )));
            }
            std::fs::read(&path).map_err(io)
        };
        let config = LoraConfig::parse(&read(CONFIG_FILE, 1 << 20)?).map_err(bad)?;
        let weights = read(WEIGHTS_FILE, max_weights_bytes(spec))?;
        let tensors = candle_core::safetensors::load_buffer(&weights, &Device::Cpu)
            .map_err(|e| bad(format!("{WEIGHTS_FILE}: {e}")))?;
        drop(weights);

        let base = config.base_model.as_deref().unwrap_or("an unnamed model");
        let mut halves: HashMap<(usize, Module), [Option<candle_core::Tensor>; 2]> = HashMap::new();
        for (tname, t) in tensors {
            let (layer, module, half) = parse_tensor_name(&tname).map_err(bad)?;
            if layer >= spec.layers {
                return Err(bad(format!(
                    "tensor {tname} is for layer {layer}, but {} has {} layers \
                     (the adapter was made for {base})",
                    spec.name, spec.layers
                )));
            }
            let slot = &mut halves.entry((layer, module)).or_default()[half];
            if slot.replace(t).is_some() {
                return Err(bad(format!("tensor {tname} appears twice")));
            }
        }
        if halves.is_empty() {
            return Err(bad(format!("{WEIGHTS_FILE} holds no LoRA tensors")));
        }

        let mut layers: Vec<LayerLora> = (0..spec.layers).map(|_| Default::default()).collect();
        let mut modules = BTreeSet::new();
        let (mut max_rank, mut parameters) = (0, 0);
        for ((layer, module), [a, b]) in halves {
            let what = format!("layer {layer} {}", module.peft_name());
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("{what} has only one of lora_A and lora_B")));
            };
            let (inp, out) = module.dims(spec);
            let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
            let rank = ad.first().copied().unwrap_or(0);
            if rank == 0 || rank > MAX_RANK {
                return Err(bad(format!(
                    "{what} has rank {rank}; ranks 1 to {MAX_RANK} are supported"
                )));
            }
            if ad != [rank, inp] || bd != [out, rank] {
                return Err(bad(format!(
                    "{what}: lora_A is {ad:?} and lora_B is {bd:?}, but {} needs [{rank}, {inp}] \
                     and [{out}, {rank}] (the adapter was made for {base})",
                    spec.name
                )));
            }
            let to_vec = |t: candle_core::Tensor| -> Result<Vec<f32>> {
                let dtype = t.dtype();
                if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(bad(format!(
                        "{what} is stored as {dtype:?}; f32, f16 or bf16 are supported"
                    )));
                }
                t.to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| bad(format!("{what}: {e}")))
            };
            let a = to_vec(a)?;
            let scale = config.scale(rank);
            let b = to_vec(b)?;
            let mut bt = vec![0f32; b.len()];
            for (o, row) in b.chunks_exact(rank).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    bt[j * out + o] = v * scale;
                }
            }
            if a.iter().chain(&bt).any(|v| !v.is_finite()) {
                return Err(bad(format!("{what} holds NaN or infinite values")));
            }
            parameters += a.len() + bt.len();
            max_rank = max_rank.max(rank);
            modules.insert(module as usize);
            layers[layer][module as usize] = Some(LoraPair { rank, a, bt });
        }
        Ok(Self {
            id,
            layers,
            info: AdapterInfo {
                name: name.to_owned(),
                rank: max_rank,
                alpha: config.alpha,
                modules: modules
                    .into_iter()
                    .map(|m| Module::ALL[m].peft_name().to_owned())
                    .collect(),
                parameters,
                base_model: config.base_model,
                resident: true,
            },
        })
    }
}

/// The largest weights file a rank-[`MAX_RANK`] f32 adapter on every projection could need,
/// plus room for the safetensors header.
fn max_weights_bytes(spec: &ModelSpec) -> u64 {
    let per_layer: usize = Module::ALL
        .iter()
        .map(|m| {
            let (i, o) = m.dims(spec);
            MAX_RANK * (i + o)
        })
        .sum();
    (spec.layers * per_layer * 4) as u64 + (1 << 20)
}

/// `…layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}[.default].weight` → (layer, module, 0|1).
fn parse_tensor_name(name: &str) -> std::result::Result<(usize, Module, usize), String> {
    const UNSUPPORTED: [&str; 5] = [
        "lora_embedding_",
        "lora_magnitude_vector",
        "embed_tokens",
        "lm_head",
        ".bias",
    ];
    if let Some(u) = UNSUPPORTED.iter().find(|u| name.contains(*u)) {
        return Err(format!(
            "tensor {name} ({}) is not supported: only lora_A/lora_B weights of the q/k/v/o/\
             gate/up/down projections are",
            u.trim_matches(|c| c == '.' || c == '_')
        ));
    }
    let unknown = || format!("tensor {name} is not a LoRA weight of a decoder layer's projection");
    let rest = name
        .split_once("layers.")
        .map(|(_, r)| r)
        .ok_or_else(unknown)?;
    let parts: Vec<&str> = rest.split('.').collect();
    // [layer, block, module, lora_X, (adapter name,) weight]
    let (layer, block, module, half) = match parts.as_slice() {
        [l, b, m, h, "weight"] | [l, b, m, h, _, "weight"] => (*l, *b, *m, *h),
        _ => return Err(unknown()),
    };
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let module = Module::from_peft(module).ok_or_else(unknown)?;
    let expected_block = match module {
        Module::Q | Module::K | Module::V | Module::O => "self_attn",
        Module::Gate | Module::Up | Module::Down => "mlp",
    };
    if block != expected_block {
        return Err(unknown());
    }
    let half = match half {
        "lora_A" => 0,
        "lora_B" => 1,
        _ => return Err(unknown()),
    };
    Ok((layer, module, half))
}

/// The parts of PEFT's `LoraConfig` that matter at inference.
#[derive(Debug)]
struct LoraConfig {
    alpha: f32,
    rslora: bool,
    base_model: Option<String>,
}

impl LoraConfig {
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{CONFIG_FILE} is not a JSON object"))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let unsupported = |what: String| format!("unsupported adapter option: {what}");
        if let Some(t) = get("peft_type")
            && t.as_str() != Some("LORA")
        {
            return Err(unsupported(format!(
                "peft_type {t} (only LORA adapters load)"
            )));
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{CONFIG_FILE}: \"r\" (the rank) must be a positive integer"))?
            as usize;
        if r == 0 || r > MAX_RANK {
            return Err(format!("rank r = {r}; ranks 1 to {MAX_RANK} are supported"));
        }
        let alpha = match get("lora_alpha") {
            None => 8.0,
            Some(a) => a
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| format!("{CONFIG_FILE}: \"lora_alpha\" must be a number"))?
                as f32,
        };
        for flag in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
            if get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(format!("{flag} = true")));
            }
        }
        if let Some(b) = get("bias")
            && b.as_str() != Some("none")
        {
            return Err(unsupported(format!("bias = {b} (only \"none\")")));
        }
        for list in [
            "modules_to_save",
            "trainable_token_indices",
            "target_parameters",
            "layer_replication",
            "alora_invocation_tokens",
            "arrow_config",
        ] {
            let empty = match get(list) {
                None => true,
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                Some(_) => false,
            };
            if !empty {
                return Err(unsupported(format!("{list} = {}", obj[list])));
            }
        }
        if let Some(Value::Object(p)) = get("alpha_pattern")
            && !p.is_empty()
        {
            return Err(unsupported(
                "alpha_pattern (per-module lora_alpha)".to_owned(),
            ));
        }
        if let Some(Value::Array(targets)) = get("target_modules") {
            for t in targets {
                let t = t.as_str().unwrap_or_default();
                let last = t.rsplit('.').next().unwrap_or(t);
                if Module::from_peft(last).is_none() {
                    return Err(unsupported(format!(
                        "target module {t:?}; the q/k/v/o/gate/up/down projections can be adapted"
                    )));
                }
            }
        }
        Ok(Self {
            alpha,
            rslora: get("use_rslora").and_then(Value::as_bool) == Some(true),
            base_model: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// PEFT's scaling for a projection of rank `r`.
    fn scale(&self, r: usize) -> f32 {
        if self.rslora {
            self.alpha / (r as f32).sqrt()
        } else {
            self.alpha / r as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_follow_peft() {
        let ok = [
            (
                "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
                (3, Module::Q, 0),
            ),
            (
                "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight",
                (12, Module::Down, 1),
            ),
            (
                "base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight",
                (0, Module::Up, 0),
            ),
        ];
        for (name, want) in ok {
            assert_eq!(parse_tensor_name(name).unwrap(), want, "{name}");
        }
        for bad in [
            "base_model.model.model.layers.3.self_attn.q_proj.lora_C.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.self_attn.qkv_proj.lora_A.weight",
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_magnitude_vector",
        ] {
            assert!(parse_tensor_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn config_options_are_checked() {
        let parse = |s: &str| LoraConfig::parse(s.as_bytes());
        let c = parse(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"bias":"none","target_modules":["q_proj","v_proj"],"modules_to_save":null}"#).unwrap();
        assert_eq!(c.scale(8), 2.0);
        let c = parse(r#"{"r":16,"lora_alpha":32,"use_rslora":true}"#).unwrap();
        assert_eq!(c.scale(16), 8.0);
        for (bad, says) in [
            (r#"{"r":128,"lora_alpha":16}"#, "rank r = 128"),
            (r#"{"r":0}"#, "rank r = 0"),
            (r#"{"lora_alpha":16}"#, "\"r\""),
            (r#"{"r":8,"use_dora":true}"#, "use_dora"),
            (r#"{"r":8,"bias":"all"}"#, "bias"),
            (r#"{"r":8,"fan_in_fan_out":true}"#, "fan_in_fan_out"),
            (
                r#"{"r":8,"modules_to_save":["lm_head"]}"#,
                "modules_to_save",
            ),
            (r#"{"r":8,"alpha_pattern":{"q_proj":4}}"#, "alpha_pattern"),
            (
                r#"{"r":8,"target_modules":["embed_tokens"]}"#,
                "embed_tokens",
            ),
            (r#"{"r":8,"peft_type":"IA3"}"#, "IA3"),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"r":8,"#, "adapter_config.json"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn side_path_adds_scaled_low_rank_product() {
        // in = 3, out = 2, rank 2: A = [[1,0,0],[0,1,0]], B (scaled) = [[1,2],[3,4]].
        let pair = LoraPair {
            rank: 2,
            a: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            bt: vec![1.0, 3.0, 2.0, 4.0],
        };
        let mut out = [10.0, 20.0];
        pair.add_row(&[1.0, 2.0, 5.0], &mut out);
        assert_eq!(out, [10.0 + 1.0 + 4.0, 20.0 + 3.0 + 8.0]);
        let mut dispatched = [10.0, 20.0];
        pair.add_to_row(&[1.0, 2.0, 5.0], &mut dispatched);
        assert_eq!(dispatched, out);
        assert_eq!(pair.dims(), (3, 2));
    }
}
