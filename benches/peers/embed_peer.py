#!/usr/bin/env python3
"""Embedding peer for benches/embed.rs: sentence-transformers + torch on the CPU.

    embed_peer.py INPUT.json

INPUT.json: {"model_dir": DIR, "passages_64": [...], "passages_256": [...], "queries": [...],
"threads": 2, "batch": 32, "reps": 3}. DIR is hearth's three-file model directory (config.json,
tokenizer.json, model.safetensors), built into a sentence-transformers model the same way as
testdata/sources/make_reference_embeddings.py does: Transformer(max_seq_length=256) + mean
Pooling(384) + Normalize.

Prints one JSON object on stdout: for each passage set the best and median passages/s over
`reps` encodes of the whole set (batch_size=`batch`), and CPU seconds (time.process_time, all
threads) of the timed encodes; for the queries, single-query latency p50/p99 (each query
encoded on its own) and CPU seconds; the process's peak RSS. Progress goes to stderr.
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
from sentence_transformers import SentenceTransformer  # noqa: E402

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import modules as models  # noqa: E402
except ImportError:  # older releases
    from sentence_transformers import models  # noqa: E402

MAX_SEQ_LENGTH = 256
DIM = 384


def load_model(model_dir: str) -> SentenceTransformer:
    if os.path.isfile(os.path.join(model_dir, "modules.json")):
        model = SentenceTransformer(model_dir, device="cpu")
        model.max_seq_length = MAX_SEQ_LENGTH
    else:
        transformer = models.Transformer(model_dir, max_seq_length=MAX_SEQ_LENGTH)
        pooling = models.Pooling(DIM, "mean")
        model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.eval()
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    return model


def encode(model, texts, batch):
    return model.encode(
        texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def token_stats(model, texts):
    tok = model.tokenizer
    counts = [len(tok(t, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]) for t in texts]
    return {"mean": float(np.mean(counts)) if counts else 0.0, "max": max(counts, default=0)}


def bench_passages(model, texts, batch, reps):
    walls, cpus = [], []
    for r in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        out = encode(model, texts, batch)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        assert out.shape == (len(texts), DIM), out.shape
        print(f"embed_peer: {len(texts)} passages rep {r + 1}/{reps}: {walls[-1]:.2f} s", file=sys.stderr)
    n = len(texts)
    best, median = min(walls), statistics.median(walls)
    return {
        "passages": n,
        "tokens": token_stats(model, texts),
        "reps": reps,
        "best_s": best,
        "median_s": median,
        "passages_per_s_best": n / best,
        "passages_per_s_median": n / median,
        "cpu_s_per_rep": statistics.median(cpus),
        "cpu_s_total": sum(cpus),
    }


def bench_queries(model, queries):
    lat = []
    c0 = time.process_time()
    for q in queries:
        t0 = time.perf_counter()
        out = encode(model, [q], 1)
        lat.append(time.perf_counter() - t0)
        assert out.shape == (1, DIM), out.shape
    cpu = time.process_time() - c0
    s = sorted(lat)
    return {
        "queries": len(queries),
        "p50_ms": percentile(s, 50) * 1e3,
        "p99_ms": percentile(s, 99) * 1e3,
        "mean_ms": statistics.fmean(s) * 1e3 if s else float("nan"),
        "cpu_s": cpu,
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: embed_peer.py INPUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    threads = int(cfg.get("threads", 2))
    batch = int(cfg.get("batch", 32))
    reps = int(cfg.get("reps", 3))
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = load_model(cfg["model_dir"])
    load_s = time.perf_counter() - t0

    # Warm-up: one batch of each passage kind and a few single queries.
    with torch.inference_mode():
        for key in ("passages_64", "passages_256"):
            if cfg.get(key):
                encode(model, cfg[key][:batch], batch)
        for q in cfg.get("queries", [])[:5]:
            encode(model, [q], 1)

        result = {
            "peer": "sentence-transformers",
            "versions": {
                "sentence_transformers": sentence_transformers.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            },
            "threads": threads,
            "torch_threads": torch.get_num_threads(),
            "batch": batch,
            "load_s": load_s,
        }
        for key in ("passages_64", "passages_256"):
            if cfg.get(key):
                result[key] = bench_passages(model, cfg[key], batch, reps)
        if cfg.get("queries"):
            result["queries"] = bench_queries(model, cfg["queries"])
    result["cpu_s_process"] = time.process_time()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
