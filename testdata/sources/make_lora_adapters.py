"""Makes the LoRA adapters in testdata/lora with PEFT itself, so that the engine is tested on
files exactly as PEFT writes them.

The base is a randomly initialised model of SmolLM2-135M's shape (the adapters' shapes and
names depend only on it; no download is needed). `init_lora_weights=False` gives random A and
B, so each adapter visibly changes the output. Next to each adapter, `delta.json` records
PEFT's own `get_delta_weight` (scale included) for one projection, a check on how the engine
reads rank, alpha and rsLoRA scaling.

Needs torch, transformers and peft:  python3 testdata/sources/make_lora_adapters.py OUT_DIR
"""

import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHAPE = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)

ADAPTERS = {
    # every projection, plain scaling alpha / r
    "all-r4": dict(
        seed=1,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_rslora=False,
        probe=(3, "mlp", "down_proj"),
    ),
    # attention only, rsLoRA scaling alpha / sqrt(r)
    "qv-r2-rslora": dict(
        seed=2,
        r=2,
        lora_alpha=4,
        target_modules=["q_proj", "v_proj"],
        use_rslora=True,
        probe=(7, "self_attn", "v_proj"),
    ),
}


def main(out):
    for name, spec in ADAPTERS.items():
        torch.manual_seed(spec["seed"])
        model = LlamaForCausalLM(SHAPE)
        config = LoraConfig(
            r=spec["r"],
            lora_alpha=spec["lora_alpha"],
            target_modules=spec["target_modules"],
            use_rslora=spec["use_rslora"],
            init_lora_weights=False,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft = get_peft_model(model, config)
        peft.peft_config["default"].base_model_name_or_path = BASE
        peft = peft.to(torch.float16)
        path = os.path.join(out, name)
        peft.save_pretrained(path)
        layer, block, module = spec["probe"]
        proj = getattr(getattr(peft.base_model.model.model.layers[layer], block), module)
        delta = proj.get_delta_weight("default").float()
        with open(os.path.join(path, "delta.json"), "w") as f:
            json.dump(
                {
                    "layer": layer,
                    "module": module,
                    "rows": 4,
                    "cols": 6,
                    "delta": delta[:4, :6].tolist(),
                    "peft": __import__("peft").__version__,
                },
                f,
                indent=1,
            )
        print(name, sorted(os.listdir(path)))


if __name__ == "__main__":
    main(sys.argv[1])
