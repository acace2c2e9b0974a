#!/usr/bin/env bash
# Creates (once) the Python virtual environment the benchmarks use to run their peers in the
# same invocation: sentence-transformers + torch (embeddings, benches/embed.rs), hnswlib
# (dense index, benches/hnsw.rs) and pypdfium2 (pdfium, a renderer scripts/renderers.py
# compares with poppler and MuPDF). Prints the venv's python path on stdout; all progress goes to
# stderr. Idempotent: a venv whose stamp matches the pinned versions is reused as is.
#
#     scripts/bench-peers.sh            # -> /root/.cache/hearth/bench-venv/bin/python
#     HEARTH_CACHE=/elsewhere scripts/bench-peers.sh
#
# torch is PyPI's default Linux wheel (large: it bundles CUDA libraries); the benchmarks use it
# on the CPU only. hnswlib has no wheel for recent Pythons and is compiled from source (needs a
# C++ compiler); it is built with its default flags (-march=native), as a user would get it.
set -euo pipefail

PINS=(
    "sentence-transformers==6.2.0"
    "transformers==5.23.0"
    "torch==2.15.0"
    "hnswlib==0.8.0"
    "numpy==2.4.6"
    "psutil==7.2.2"
    "pypdfium2==5.15.2"
)

cache="${HEARTH_CACHE:-$HOME/.cache/hearth}"
venv="$cache/bench-venv"
py="$venv/bin/python"
stamp="$venv/.hearth-pins"
want="$(printf '%s\n' "${PINS[@]}")"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$py"
    exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "bench-peers: $python not found" >&2; exit 1; }
mkdir -p "$cache"
if [[ ! -x "$py" ]]; then
    echo "bench-peers: creating $venv" >&2
    "$python" -m venv "$venv" >&2
fi
rm -f "$stamp"
echo "bench-peers: installing ${PINS[*]} (torch is a large download)" >&2
"$py" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
# numpy first: hnswlib's source build wants it at build time.
"$py" -m pip install --disable-pip-version-check "numpy==2.4.6" >&2
"$py" -m pip install --disable-pip-version-check "${PINS[@]}" >&2
# Smoke test: every peer module imports.
"$py" - >&2 <<'EOF'
import hnswlib, numpy, psutil, torch, sentence_transformers, transformers
print("bench-peers: ok: sentence-transformers", sentence_transformers.__version__,
      "transformers", transformers.__version__, "torch", torch.__version__,
      "hnswlib", getattr(hnswlib, "__version__", "0.8.0"), "numpy", numpy.__version__,
      "psutil", psutil.__version__)
EOF
echo "$want" >"$stamp"
echo "$py"
