#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (every document parser, the chunker, PII redaction and the
# API's JSON request bodies), each for a bounded time, seeded from testdata/ and fuzz/seeds/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# A crash, a timeout (20 s on one input) or memory over 2 GiB fails the run; the input is kept
# under fuzz/artifacts/TARGET/. The corpus grown by earlier runs is kept in
# ~/.cache/hearth/fuzz-corpus. Installs cargo-fuzz (crates.io) when it is missing. The targets
# are built in the dev profile (debug assertions on, quick to build): fine for short passes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz..." >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
# cargo fuzz passes nightly-only flags (-Z); the stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=$CACHE/fuzz-target

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
echo "building ${#targets[@]} fuzz targets..." >&2
cargo fuzz build -s none --dev

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
seed() { # TARGET FILES...
  local t=$1; shift
  mkdir -p "$seeds/$t"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$seeds/$t/"; done
}
# Small seeds keep the executions fast. testdata/broken/bomb.pdf is left out on purpose: a
# decompression bomb is stopped by the extraction process's memory and time limits
# (tests/it/ingest.rs), which an in-process fuzzer does not have; so are bomb.docx and
# huge-range.xlsx.
seed parse_pdf testdata/corpus/onboarding-handbook.pdf testdata/broken/truncated.pdf fuzz/seeds/parse_pdf/* \
  testdata/broken/encrypted.pdf
seed parse_html testdata/corpus/users-and-groups.html testdata/corpus/zlib-how.html
seed parse_markdown testdata/corpus/node-url.md testdata/corpus/incident-runbook.md testdata/broken/image.md
seed parse_text testdata/corpus/libffi-basics.txt testdata/broken/*.txt testdata/broken/random.bin
seed parse_office testdata/office/*.docx testdata/office/*.pptx testdata/office/*.xls* \
  testdata/office/*.od? testdata/office/offices.csv testdata/broken/macros.docm testdata/mail/*
seed parse_rtf testdata/office/runbook.rtf
seed chunker testdata/corpus/incident-runbook.md testdata/corpus/libffi-basics.txt
seed redact fuzz/seeds/redact/*
seed api_json fuzz/seeds/api_json/*

failed=()
for t in "${targets[@]}"; do
  corpus=$CACHE/fuzz-corpus/$t
  mkdir -p "$corpus" "$seeds/$t" "fuzz/artifacts/$t"
  echo "== fuzzing $t for ${SECS} s" >&2
  if ! cargo fuzz run -s none --dev "$t" "$corpus" "$seeds/$t" -- \
      -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 2>"$seeds/$t.log"; then
    tail -40 "$seeds/$t.log" >&2
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|^Done" "$seeds/$t.log" >&2 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing: no crash, hang or memory blow-up in ${#targets[@]} targets" >&2
