#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency rules, unit and integration tests (real
# models, real child processes, a real SeaweedFS S3 server) and docs. Benchmarks are type-checked
# by clippy --all-targets; `cargo bench` builds and runs them. The `cuda` build is checked on
# the CPU by scripts/gpu-check.sh with a stub driver (a cold build of it: ~11 min on 2 cores,
# CUDA 13.0 from PyPI wheels): its engine tests and the fallback. Ends with a 15 s pass of every
# fuzz target (scripts/fuzz.sh). Installs its own dependencies first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
export PATH="${HEARTH_CACHE:-$HOME/.cache/hearth}/venv/bin:$PATH"

# The suite writes a few GiB (the gigabyte mailbox, build outputs): say so early on a full disk.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the tests need about 4 GiB" >&2
fi
# Each step says how much disk is left: a suite that fails on a full disk shows where it filled.
step() { printf '\n== %s (%s MiB free)\n' "$*" "$(df -Pk . | awk 'NR == 2 { print int($4 / 1024) }')" >&2; }
step "cargo fmt --check";  cargo fmt --all -- --check
step "cargo clippy";       cargo clippy --workspace --all-targets --locked -- -D warnings
step "dependency rules";   scripts/check-deps.sh
step "cargo doc";          RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
step "cargo test";         cargo test --workspace --locked
step "GPU check, no GPU";  scripts/gpu-check.sh --quick
step "fuzz (short pass)";  scripts/fuzz.sh 15
