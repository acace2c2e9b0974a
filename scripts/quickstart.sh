#!/usr/bin/env bash
# Quickstart on the embedded defaults: fetch the default models if missing, build hearth, ingest
# the sample corpus in testdata/ into the collection "demo" under ./hearth-data (extract, chunk,
# embed, index), and run one hybrid search over it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
echo "building hearth (release)..." >&2
cargo build --release --locked --quiet
hearth() { cargo run --release --locked --quiet -- "$@"; }
hearth ingest testdata/corpus --collection demo
echo
echo '$ hearth search "how do I convert a disk image to qcow2" --collection demo --top-k 3'
hearth search "how do I convert a disk image to qcow2" --collection demo --top-k 3
echo
echo "more:  cargo run --release -- search \"your question\" --collection demo [--mode dense|bm25|hybrid] [--json]"
echo "       cargo run --release -- docs --collection demo"
