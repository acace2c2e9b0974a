#!/usr/bin/env python3
"""Compares the three PDF renderers hearth could rasterise pages with for OCR, on the real PDF
corpus of scripts/pdf-corpus.sh: poppler's pdftoppm (what hearth runs), MuPDF's mutool and
pdfium (through the pypdfium2 wheel, which carries Google's pdfium build).

    apt-get install mupdf-tools poppler-utils
    "$(scripts/bench-peers.sh)" scripts/renderers.py ~/.cache/hearth/pdf-corpus/pdf [--every 10] [--pages 3]

Every Nth PDF of the corpus (sorted by path), its first pages, each rendered at 150 dpi in
gray. pdftoppm and mutool run as one process per page, as hearth runs its renderer (the start
of the program is part of the cost); pdfium renders in this process, as bindings would in the
extraction worker (no start cost, no isolation). A failure is a non-zero exit, a signal, an
exception or a 60 s timeout; a failure on a page another renderer draws is counted as that
renderer's. Prints pages/s and failures per renderer.
"""

import argparse
import os
import subprocess
import sys
import time

DPI = 150
TIMEOUT = 60


def pdf_files(corpus, every):
    files = []
    for root, _, names in os.walk(corpus):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(".pdf")]
    files.sort()
    return files[::every]


def run(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT)
        return p.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--pages", type=int, default=3)
    args = ap.parse_args()
    import pypdfium2 as pdfium

    out = "/dev/shm/hearth-render.pgm"
    stats = {name: {"secs": 0.0, "ok": 0, "failed": []} for name in ("pdftoppm", "mutool", "pdfium")}
    files = pdf_files(args.corpus, args.every)
    for i, path in enumerate(files):
        try:
            doc = pdfium.PdfDocument(path)
            count = len(doc)
        except Exception as e:  # noqa: BLE001 - any failure to open counts
            doc, count = None, 0
            stats["pdfium"]["failed"].append(f"{path}: open: {e}")
        pages = range(1, min(count or args.pages, args.pages) + 1)
        for page in pages:
            for name, cmd in (
                ("pdftoppm", ["pdftoppm", "-q", "-gray", "-r", str(DPI), "-f", str(page), "-l", str(page), path]),
                ("mutool", ["mutool", "draw", "-q", "-r", str(DPI), "-c", "gray", "-o", out, path, str(page)]),
            ):
                t = time.perf_counter()
                ok = run(cmd)
                stats[name]["secs"] += time.perf_counter() - t
                if ok:
                    stats[name]["ok"] += 1
                else:
                    stats[name]["failed"].append(f"{path} page {page}")
            if doc is not None:
                t = time.perf_counter()
                try:
                    doc[page - 1].render(scale=DPI / 72, grayscale=True)
                    stats["pdfium"]["ok"] += 1
                except Exception as e:  # noqa: BLE001
                    stats["pdfium"]["failed"].append(f"{path} page {page}: {e}")
                stats["pdfium"]["secs"] += time.perf_counter() - t
        print(f"[{i + 1}/{len(files)}] {path[len(args.corpus):]}", file=sys.stderr)
    if os.path.exists(out):
        os.remove(out)
    print(f"{len(files)} PDFs (every {args.every}th), first {args.pages} pages each, {DPI} dpi gray")
    for name, s in stats.items():
        done = s["ok"] + len(s["failed"])
        print(f"  {name:9} pages {done:5}  failed {len(s['failed']):3}  {s['secs']:7.1f} s  {s['ok'] / max(s['secs'], 1e-9):6.1f} pages/s")
        for f in s["failed"][:5]:
            print(f"      {f}")


if __name__ == "__main__":
    main()
