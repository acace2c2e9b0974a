#!/usr/bin/env bash
# Enforces the crate dependency rules of DESIGN.md on the normal (non-dev) dependency graph.
# (The object store client brings an HTTP client stack into hearth-index; what is forbidden below
# hearth-api is the HTTP *server* side: axum and utoipa. The engine has no HTTP client at all:
# models are local files, never downloaded at run time.)
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# crate | forbidden dependencies (regex on `cargo tree` package names)
rules=(
  "hearth-index|^(hearth-ingest|hearth-engine|hearth-api|candle-.*|cudarc|tokenizers|axum|axum-core|utoipa)$"
  "hearth-engine|^(hearth-index|hearth-ingest|hearth-api|object_store|arrow-.*|axum|axum-core|utoipa|tantivy|hnsw_rs|reqwest|hyper|ureq|hf-hub)$"
  "hearth-ingest|^(hearth-engine|hearth-api|candle-.*|cudarc|tokenizers|axum|axum-core|utoipa)$"
  "hearth-api|^(hearth)$"
)
for rule in "${rules[@]}"; do
  crate=${rule%%|*}; forbidden=${rule#*|}
  found=$(cargo tree -e normal -p "$crate" --prefix none --format '{p}' --locked 2>/dev/null \
    | awk '{print $1}' | sort -u | grep -E "$forbidden" || true)
  if [ -n "$found" ]; then
    echo "forbidden dependency of $crate: $(echo $found)" >&2; fail=1
  fi
done
# The binary's one door: `hearth` depends on hearth-api and on no other workspace crate, and its
# source names no other (a re-export through hearth-api is the way in).
direct=$(cargo tree -e normal -p hearth --depth 1 --prefix none --format '{p}' --locked 2>/dev/null \
  | awk '{print $1}' | sort -u | grep -E '^hearth-(index|ingest|engine)$' || true)
if [ -n "$direct" ]; then
  echo "forbidden dependency of hearth (the binary): $(echo $direct) (use hearth-api)" >&2; fail=1
fi
if grep -rnE '\bhearth_(index|ingest|engine)\b' src/; then
  echo "src/ names a workspace crate other than hearth_api (above)" >&2; fail=1
fi
[ $fail -eq 0 ] && echo "dependency rules hold" >&2
exit $fail
