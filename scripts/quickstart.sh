#!/usr/bin/env bash
# Quickstart on the embedded defaults: fetch the default models if missing, build hearth, and
# serve the API and web page on http://127.0.0.1:8080 with the sample corpus in testdata/
# ingested into the collection "demo" (in the background; the server says when it is done).
# Open mode (no API keys) on loopback only; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
echo "building hearth (release)..." >&2
cargo build --release --locked --quiet
exec cargo run --release --locked --quiet -- serve --open --ingest testdata/corpus --collection demo "$@"
