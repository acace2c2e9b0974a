#!/usr/bin/env bash
# Builds hearth with the `cuda` feature for Hopper GPUs (H100/H200, sm_90a) on any x86-64
# machine, GPU or not. Arguments are passed to cargo, e.g.
#   scripts/build-cuda.sh build --release
#   scripts/build-cuda.sh test --release -p hearth-engine --no-run
# The CUDA build has its own target dir (CARGO_TARGET_DIR_CUDA) so it never invalidates the
# CPU build's cache. Keep CUDA_HOME stable between builds: changing it rebuilds candle.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --locked >/dev/null
CUDA_HOME=$(scripts/cuda-tree.sh)
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/hearth/target-cuda}
cmd=$1; shift
exec nice -n 15 cargo "$cmd" --locked --features cuda "$@"
