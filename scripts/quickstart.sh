#!/usr/bin/env bash
# Quickstart on the embedded defaults: fetch the default models if missing, build hearth, and
# ingest the sample corpus in testdata/ into the collection "demo" under ./hearth-data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
echo "building hearth (release)..." >&2
cargo run --release --locked --quiet -- ingest testdata/corpus --collection demo
echo
echo "documents and their state:  cargo run --release -- docs --collection demo"
