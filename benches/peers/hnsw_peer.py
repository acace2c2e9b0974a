#!/usr/bin/env python3
"""Dense-index peer for benches/hnsw.rs: hnswlib on the same vectors and ground truth.

    hnsw_peer.py --base base.f32 --queries queries.f32 --groundtruth gt.u32 --dim 384 \\
        [--k 10] [--M 16] [--ef-construction 200] [--ef 16,32,64,128,256] [--build-threads 2]

Files are raw little-endian arrays without a header: base.f32 is n x dim f32 and queries.f32 is
q x dim f32 (unit-norm rows, so inner product = cosine similarity); gt.u32 is q x k u32, the
exact top-k base row ids of each query, best first. n and q follow from the file sizes.

The index uses hnswlib's inner-product space. Build uses `--build-threads` threads; search uses
one thread (a single knn_query call over all queries with num_threads=1, so no Python overhead
per query), repeated `--search-reps` times, best rate reported.

Prints one JSON object on stdout: build wall and CPU seconds (time.process_time, all threads),
resident memory growth of the build (peak = VmHWM after the build, reset before it where the
kernel allows, minus the RSS before; and the RSS still held afterwards), and per ef: recall@k
and queries/s. Progress goes to stderr.
"""

import argparse
import json
import os
import sys
import time

import hnswlib
import numpy as np
import psutil


def vm_hwm_bytes():
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load(path, dim, dtype, what):
    size = os.path.getsize(path)
    item = np.dtype(dtype).itemsize * dim
    if size % item:
        sys.exit(f"hnsw_peer: {what} {path}: {size} bytes is not a multiple of {item}")
    return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<")).reshape(-1, dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--groundtruth", required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="16,32,64,128,256", help="comma-separated ef values")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--search-reps", type=int, default=3)
    args = ap.parse_args()
    efs = [int(x) for x in args.ef.split(",") if x]

    base = np.ascontiguousarray(load(args.base, args.dim, "f4", "base"), dtype=np.float32)
    queries = np.ascontiguousarray(load(args.queries, args.dim, "f4", "queries"), dtype=np.float32)
    gt = load(args.groundtruth, args.k, "u4", "groundtruth").astype(np.int64)
    n, q = base.shape[0], queries.shape[0]
    if gt.shape[0] != q:
        sys.exit(f"hnsw_peer: {q} queries but ground truth for {gt.shape[0]}")

    proc = psutil.Process()
    hwm_reset = reset_peak_rss()
    rss_before = proc.memory_info().rss
    c0, t0 = time.process_time(), time.perf_counter()
    index = hnswlib.Index(space="ip", dim=args.dim)
    index.init_index(max_elements=n, M=args.M, ef_construction=args.ef_construction, random_seed=100)
    index.set_num_threads(args.build_threads)
    index.add_items(base, np.arange(n), num_threads=args.build_threads)
    build_wall = time.perf_counter() - t0
    build_cpu = time.process_time() - c0
    rss_after = proc.memory_info().rss
    hwm = vm_hwm_bytes()
    print(f"hnsw_peer: built {n} x {args.dim} in {build_wall:.1f} s ({build_cpu:.1f} CPU-s)", file=sys.stderr)

    index.set_num_threads(1)
    per_ef = []
    for ef in efs:
        index.set_ef(max(ef, args.k))
        labels, _ = index.knn_query(queries[: min(q, 50)], k=args.k, num_threads=1)  # warm-up
        best = float("inf")
        for _ in range(args.search_reps):
            t0 = time.perf_counter()
            labels, _ = index.knn_query(queries, k=args.k, num_threads=1)
            best = min(best, time.perf_counter() - t0)
        hits = sum(len(set(labels[i].tolist()) & set(gt[i].tolist())) for i in range(q))
        recall = hits / (q * args.k)
        per_ef.append({"ef": ef, "recall": recall, "qps": q / best, "search_s": best})
        print(f"hnsw_peer: ef={ef} recall@{args.k}={recall:.4f} {q / best:.0f} q/s", file=sys.stderr)

    mib = 1024.0 * 1024.0
    json.dump(
        {
            "peer": "hnswlib",
            "versions": {
                "hnswlib": getattr(hnswlib, "__version__", "0.8.0"),
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            },
            "n": n,
            "dim": args.dim,
            "queries": q,
            "k": args.k,
            "M": args.M,
            "ef_construction": args.ef_construction,
            "build_threads": args.build_threads,
            "build_wall_s": build_wall,
            "build_cpu_s": build_cpu,
            "rss_before_mib": rss_before / mib,
            "rss_growth_mib": (rss_after - rss_before) / mib,
            "peak_rss_growth_mib": (hwm - rss_before) / mib if hwm is not None else None,
            "peak_rss_reset": hwm_reset,
            "search": per_ef,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
