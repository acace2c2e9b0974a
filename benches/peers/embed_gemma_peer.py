#!/usr/bin/env python3
"""EmbeddingGemma peer for benches/embed_gemma.rs: sentence-transformers + torch, f32, on the CPU.

    embed_gemma_peer.py INPUT.json

INPUT.json: {"model_dir": DIR, "passages": [...], "threads": 1, "batch": 32, "reps": 3,
"vectors": 16}. DIR is the sentence-transformers directory of EmbeddingGemma-300M as published
(modules.json, the Transformer, mean Pooling, two Dense modules and Normalize); it is loaded as
is, in float32, with max_seq_length 512 (hearth's cap for this model), and the passages are
encoded with prompt_name="document" ("title: none | text: ", the prefix hearth adds for a
passage), normalised.

torch runs on `threads` intra-op threads. One batch is encoded first as a warm-up; then the whole
set is encoded `reps` times (batch_size=`batch`). Prints one JSON object on stdout: best and
median passages/s, CPU seconds per rep (time.process_time, all threads; median) and in all, the
process's peak RSS in MiB (`peak_rss_mb`), the versions, and the unit vectors of the first
`vectors` passages (for the bench's agreement check). Progress goes to stderr.
"""

import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

MAX_SEQ_LENGTH = 512
PROMPT_NAME = "document"


def log(msg: str) -> None:
    print(f"embed_gemma_peer: {msg}", file=sys.stderr, flush=True)


def load_model(model_dir: str) -> SentenceTransformer:
    model = SentenceTransformer(model_dir, device="cpu", model_kwargs={"torch_dtype": torch.float32})
    model = model.float()  # whatever the checkpoint's dtype, the reference runs in f32
    model.max_seq_length = MAX_SEQ_LENGTH
    model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}, dtypes
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    assert PROMPT_NAME in model.prompts, sorted(model.prompts)
    return model


def encode(model, texts, batch):
    return model.encode(
        texts,
        prompt_name=PROMPT_NAME,
        batch_size=batch,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def token_stats(model, texts):
    prompt = model.prompts[PROMPT_NAME]
    tok = model.tokenizer
    counts = [len(tok(prompt + t, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]) for t in texts]
    return {"mean": float(np.mean(counts)) if counts else 0.0, "max": max(counts, default=0)}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: embed_gemma_peer.py INPUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    passages = cfg["passages"]
    threads = int(cfg.get("threads", 1))
    batch = int(cfg.get("batch", 32))
    reps = max(1, int(cfg.get("reps", 3)))
    n_vectors = int(cfg.get("vectors", 16))
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = load_model(cfg["model_dir"])
    load_s = time.perf_counter() - t0
    log(f"loaded in {load_s:.2f} s; {threads} torch thread(s), {len(passages)} passages")

    walls, cpus = [], []
    with torch.inference_mode():
        encode(model, passages[:batch], batch)  # warm-up
        for r in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            out = encode(model, passages, batch)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            assert out.shape[0] == len(passages), out.shape
            log(f"{len(passages)} passages, rep {r + 1}/{reps}: {walls[-1]:.2f} s ({len(passages) / walls[-1]:.2f}/s)")
        vectors = encode(model, passages[:n_vectors], batch) if n_vectors > 0 else np.zeros((0, 0))

    n = len(passages)
    best, median = min(walls), statistics.median(walls)
    result = {
        "peer": "sentence-transformers",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "batch": batch,
        "max_seq_length": model.max_seq_length,
        "prompt": model.prompts[PROMPT_NAME],
        "load_s": load_s,
        "passages": n,
        "tokens": token_stats(model, passages),
        "reps": reps,
        "walls_s": walls,
        "passages_per_s_best": n / best,
        "passages_per_s_median": n / median,
        "cpu_s": statistics.median(cpus),
        "cpu_s_total": sum(cpus),
        "dim": int(out.shape[1]),
        "vectors": [[float(x) for x in row] for row in vectors],
    }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
