//! LoRA on the real SmolLM2 model with adapters written by PEFT (testdata/lora, made by
//! testdata/sources/make_lora_adapters.py): the side path gives the logits of a dense model
//! with the adapter merged into its weights, scaling follows PEFT's, and bad adapters are
//! refused with a reason.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineError;

use super::arch::ModelSpec;
use super::gguf::GgufFile;
use super::kv::{KvPrecision, KvStore};
use super::lora::{Adapter, Module};
use super::model::{Model, Workspace};
use super::reference_tests::model_path;
use super::step::StepSeq;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/lora")
        .join(name)
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let file = GgufFile::open(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        Model::load(&file, &Device::Cpu).unwrap()
    })
}

fn adapter(name: &str, id: u32) -> Adapter {
    Adapter::load(&fixture(name), name, id, &model().spec).unwrap()
}

/// A fixed prompt of 40 token ids.
/// An f32 cache of `blocks` blocks of 16 for `spec`'s shape.
fn f32_cache(spec: &ModelSpec, blocks: usize) -> KvStore {
    KvStore::new(
        spec.layers,
        blocks,
        16,
        spec.kv_heads,
        spec.head_dim,
        KvPrecision::F32,
    )
}

fn prompt() -> Vec<u32> {
    (0..40).map(|i| 200 + 613 * i % 40_000).collect()
}

/// Logits of the prompt's last token, the prompt fed in chunks of 16.
fn logits(model: &Model, adapter: Option<&Adapter>) -> Vec<f32> {
    let spec = &model.spec;
    let mut kv = f32_cache(spec, 8);
    let mut ws = Workspace::default();
    let blocks: Vec<u32> = (0..8).collect();
    let p = prompt();
    let mut out = Vec::new();
    for start in (0..p.len()).step_by(16) {
        let end = (start + 16).min(p.len());
        out = model
            .forward(
                &[StepSeq {
                    tokens: &p[start..end],
                    start_pos: start,
                    blocks: &blocks,
                    logits: end == p.len(),
                    adapter,
                }],
                &mut kv,
                &mut ws,
            )
            .unwrap()
            .to_vec();
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn scaling_matches_peft() {
    // delta.json holds PEFT's own get_delta_weight (scale included) for one projection.
    for name in ["all-r4", "qv-r2-rslora"] {
        let a = adapter(name, 1);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(name).join("delta.json")).unwrap())
                .unwrap();
        let layer = json["layer"].as_u64().unwrap() as usize;
        let module = match json["module"].as_str().unwrap() {
            "down_proj" => Module::Down,
            "v_proj" => Module::V,
            other => panic!("fixture probes {other}"),
        };
        let (inp, _) = module.dims(&model().spec);
        let (r, la, lbt) = a.pair(layer, module).unwrap().delta();
        let out = lbt.len() / r;
        for (o, row) in json["delta"].as_array().unwrap().iter().enumerate() {
            for (i, want) in row.as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap() as f32;
                let got: f32 = (0..r).map(|j| lbt[j * out + o] * la[j * inp + i]).sum();
                // PEFT computed in f16.
                assert!(
                    (got - want).abs() <= 2e-3 * want.abs() + 2e-5,
                    "{name} [{o},{i}]: {got} vs PEFT {want}"
                );
            }
        }
    }
}

#[test]
fn side_path_equals_merged_weights() {
    let base = model();
    let lora = adapter("all-r4", 1);
    let dense = base.dense_merged(None);
    let merged = base.dense_merged(Some(&lora));

    // Same dense base: the side path and merged weights differ only by float rounding.
    let side = logits(&dense, Some(&lora));
    let reference = logits(&merged, None);
    let plain = logits(&dense, None);
    let effect = max_abs_diff(&reference, &plain);
    let err = max_abs_diff(&side, &reference);
    assert!(
        effect > 1.0,
        "the adapter barely changes the logits ({effect})"
    );
    assert!(
        err < 2e-3 * effect.max(1.0),
        "side path {err} off merged (effect {effect})"
    );

    // On the quantized base the side path adds no error of its own: the distance to the
    // merged dense reference is the base's quantisation error, as without an adapter.
    let quant_base_err = max_abs_diff(&logits(base, None), &plain);
    let quant_err = max_abs_diff(&logits(base, Some(&lora)), &reference);
    eprintln!(
        "adapter effect {effect:.3}; side path vs merged: dense base {err:.2e}, quantized base \
         {quant_err:.3} (quantized vs dense without adapter: {quant_base_err:.3})"
    );
    assert!(
        quant_err <= 1.5 * quant_base_err + 0.05,
        "quantized side path {quant_err} off merged; base alone is {quant_base_err} off dense"
    );
}

#[test]
fn batch_mixes_adapters_per_row() {
    // Three sequences, three adapter choices, one step: each row gets its own.
    let m = model();
    let (a, b) = (adapter("all-r4", 1), adapter("qv-r2-rslora", 2));
    let spec = &m.spec;
    let p = prompt();
    let mut kv = f32_cache(spec, 12);
    let blocks: Vec<Vec<u32>> = (0..3).map(|s| (s * 4..s * 4 + 4).collect()).collect();
    let choice = [Some(&a), None, Some(&b)];
    let steps: Vec<StepSeq<'_>> = (0..3)
        .map(|s| StepSeq {
            tokens: &p,
            start_pos: 0,
            blocks: &blocks[s],
            logits: true,
            adapter: choice[s],
        })
        .collect();
    let all = m
        .forward(&steps, &mut kv, &mut Workspace::default())
        .unwrap()
        .to_vec();
    let v = spec.vocab;
    for (s, choice) in choice.iter().enumerate() {
        let alone = {
            let mut kv = f32_cache(spec, 4);
            let blocks: Vec<u32> = (0..4).collect();
            m.forward(
                &[StepSeq {
                    tokens: &p,
                    start_pos: 0,
                    blocks: &blocks,
                    logits: true,
                    adapter: *choice,
                }],
                &mut kv,
                &mut Workspace::default(),
            )
            .unwrap()
            .to_vec()
        };
        assert_eq!(&all[s * v..(s + 1) * v], &alone[..], "sequence {s}");
    }
    assert!(max_abs_diff(&all[..v], &all[v..2 * v]) > 0.5);
    assert!(max_abs_diff(&all[2 * v..], &all[v..2 * v]) > 0.1);
}

/// A scratch copy of a fixture adapter, to be broken by the test.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-lora-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
}

/// Rewrites the weights file with `f` applied to the tensor map.
fn edit_weights(dir: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let p = dir.join("adapter_model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &p).unwrap();
}

#[test]
fn bad_adapters_are_refused_with_a_reason() {
    let spec = &model().spec;
    let load = |dir: &Path, spec: &ModelSpec| Adapter::load(dir, "t", 1, spec).map(|_| ());
    let expect = |r: crate::error::Result<()>, says: &str| {
        let e = r.expect_err(says).to_string();
        assert!(e.contains(says), "expected {says:?} in: {e}");
    };

    // Wrong base: gemma3-270m has another width and depth.
    let gemma = GgufFile::open(&model_path("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let gemma = ModelSpec::from_gguf(&gemma).unwrap();
    let e = Adapter::load(&fixture("all-r4"), "t", 1, &gemma)
        .err()
        .unwrap();
    assert!(
        matches!(e, EngineError::InvalidAdapter { .. }),
        "wrong base: {e}"
    );
    assert!(
        e.to_string().contains("SmolLM2-135M-Instruct"),
        "names the adapter's base: {e}"
    );

    let dir = scratch_copy("qv-r2-rslora", "cfg");
    edit_config(&dir, "use_dora", true.into());
    expect(load(&dir, spec), "use_dora");
    edit_config(&dir, "use_dora", false.into());
    edit_config(&dir, "r", 96.into());
    expect(load(&dir, spec), "rank r = 96");
    edit_config(&dir, "r", 2.into());
    edit_config(&dir, "modules_to_save", serde_json::json!(["lm_head"]));
    expect(load(&dir, spec), "modules_to_save");
    edit_config(&dir, "modules_to_save", serde_json::Value::Null);
    load(&dir, spec).unwrap();
    std::fs::write(dir.join("adapter_config.json"), b"{\"r\": 2,").unwrap();
    expect(load(&dir, spec), "adapter_config.json");
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    expect(load(&dir, spec), "adapter_config.json is missing");

    let dir = scratch_copy("qv-r2-rslora", "weights");
    let name = |l: usize, half: &str| {
        format!("base_model.model.model.layers.{l}.self_attn.q_proj.lora_{half}.weight")
    };
    edit_weights(&dir, |t| {
        t.remove(&name(5, "B"));
    });
    expect(
        load(&dir, spec),
        "layer 5 q_proj has only one of lora_A and lora_B",
    );

    let dir = scratch_copy("qv-r2-rslora", "shape");
    edit_weights(&dir, |t| {
        t.insert(
            name(0, "A"),
            Tensor::zeros((2, 512), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    expect(load(&dir, spec), "layer 0 q_proj: lora_A is [2, 512]");

    let dir = scratch_copy("qv-r2-rslora", "layer");
    edit_weights(&dir, |t| {
        for h in ["A", "B"] {
            let v = t[&name(0, h)].clone();
            t.insert(name(30, h), v);
        }
    });
    expect(load(&dir, spec), "is for layer 30, but");

    let dir = scratch_copy("qv-r2-rslora", "nan");
    edit_weights(&dir, |t| {
        let nan = (t[&name(1, "B")].ones_like().unwrap() * f64::NAN).unwrap();
        t.insert(name(1, "B"), nan);
    });
    expect(load(&dir, spec), "NaN");

    let dir = scratch_copy("qv-r2-rslora", "rank");
    edit_weights(&dir, |t| {
        t.insert(
            name(0, "A"),
            Tensor::zeros((65, 576), DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert(
            name(0, "B"),
            Tensor::zeros((576, 65), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    expect(load(&dir, spec), "rank 65");

    let dir = scratch_copy("qv-r2-rslora", "foreign");
    edit_weights(&dir, |t| {
        t.insert(
            "base_model.model.lm_head.lora_A.weight".into(),
            Tensor::zeros((2, 576), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    expect(load(&dir, spec), "lm_head");

    let dir = scratch_copy("qv-r2-rslora", "truncated");
    let w = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    expect(load(&dir, spec), "adapter_model.safetensors");
}
