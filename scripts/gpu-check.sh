#!/usr/bin/env bash
# The device check (issue 16): the engine on an NVIDIA GPU against its own CPU path on the same
# machine, bounded to 8 minutes, with a JSON summary.
#
#   scripts/gpu-check.sh [--quick] [embed|generate|all] [OUT_DIR]
#
# 1. Builds the engine's `gpu_check` example with the `cuda` feature (scripts/build-cuda.sh;
#    about 25 minutes cold on 2 cores), unless HEARTH_GPU_CHECK_BIN names one built already
#    (a GPU machine without a Rust toolchain runs a binary built elsewhere).
# 2. Where nvidia-smi sees a GPU: runs the engine's tests with the models on the GPU
#    (HEARTH_TEST_DEVICE=cuda; HEARTH_GPU_CHECK_TESTS names a built test binary), then the
#    example against the machine's CUDA libraries (PyTorch's cu13 wheels or a CUDA install):
#    the embedder and the generator on the GPU and on every CPU core.
#    Elsewhere: runs it with the link-time stub as libcuda.so.1, which checks the fallback
#    (opening cuda fails with a clear error, engine.device = "auto" picks the CPU) and takes
#    the CPU figures.
# 3. Writes OUT_DIR/gpu-check.json, OUT_DIR/gpu-check.log, OUT_DIR/engine-tests.log and, with a
#    GPU, OUT_DIR/nvidia-smi.txt
#    (OUT_DIR defaults to the cargo target directory).
#
# Models from HEARTH_MODELS (scripts/fetch-models.sh); HEARTH_GPU_CHECK_MODEL=FILE.gguf for
# another generator.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
args=()
OUT=
for a in "$@"; do
  case "$a" in
    --quick|embed|generate|all) args+=("$a") ;;
    *) OUT=$a ;;
  esac
done
TARGET=${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/hearth/target-cuda}
OUT=${OUT:-$TARGET}
mkdir -p "$OUT"
export HEARTH_MODELS=${HEARTH_MODELS:-$ROOT/models} HEARTH_GPU_CHECK_ROOT=$ROOT
export CARGO_TERM_PROGRESS_WHEN=never

BIN=${HEARTH_GPU_CHECK_BIN:-}
TESTS=${HEARTH_GPU_CHECK_TESTS:-}
if [ -z "$BIN" ]; then
  echo "building the cuda gpu_check and engine tests (scripts/build-cuda.sh)..." >&2
  scripts/build-cuda.sh build --release -p hearth-engine --example gpu_check >&2
  BIN=$TARGET/release/examples/gpu_check
  # (Not `tee /dev/stderr`: where stderr is a file, opening it again truncates it.)
  built=$(scripts/build-cuda.sh test --release -p hearth-engine --lib --no-run 2>&1) \
    || { echo "$built" >&2; exit 1; }
  echo "$built" >&2
  TESTS=$(echo "$built" | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p' | tail -1)
fi
[ -x "$BIN" ] || { echo "gpu-check: no binary at $BIN" >&2; exit 1; }

# The directory holding each library the cuda build links, searched where CUDA is usually found.
lib_dirs() {
  local roots=(/usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib
    /usr/lib/x86_64-linux-gnu)
  local py
  for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    local site
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
    roots+=("$site/nvidia/cu13/lib" "$site"/nvidia/*/lib)
  done
  local lib dir found
  for lib in "$@"; do
    found=
    for dir in "${roots[@]}"; do
      if [ -e "$dir/$lib" ]; then found=$dir; break; fi
    done
    if [ -z "$found" ]; then
      found=$(dirname "$(find / -xdev -name "$lib" 2>/dev/null | head -1)" 2>/dev/null || true)
    fi
    [ -n "$found" ] && [ "$found" != . ] && echo "$found"
  done | awk '!seen[$0]++' | paste -sd: -
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  head -1 "$OUT/nvidia-smi.txt" >&2 || true
  LIBS=$(lib_dirs libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13)
  mode=gpu
else
  # No GPU: the stub driver from the CUDA tree the build used.
  CUDA_HOME=${CUDA_HOME:-$(scripts/cuda-tree.sh)}
  STUB=$(mktemp -d)
  trap 'rm -rf "$STUB"' EXIT
  ln -sf "$CUDA_HOME/lib/stubs/libcuda.so" "$STUB/libcuda.so.1"
  LIBS=$STUB:$CUDA_HOME/lib
  mode=stub
fi
echo "gpu-check: $mode run, libraries from $LIBS" >&2
set -o pipefail
if [ -n "$TESTS" ]; then
  # The engine's tests, the models' forward passes on the device (HEARTH_TEST_DEVICE) against
  # references computed on the CPU; in a stub run, all on the CPU.
  device=cuda; [ "$mode" = stub ] && device=cpu
  echo "gpu-check: engine tests with HEARTH_TEST_DEVICE=$device" >&2
  (cd engine && CARGO_MANIFEST_DIR=$PWD HEARTH_TEST_DEVICE=$device \
    LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout 240 "$TESTS" 2>&1) \
    | tee "$OUT/engine-tests.log" | grep -E '^test result|FAILED|panicked' >&2
fi
LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
  timeout 480 "$BIN" "${args[@]}" --out "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.log"
if [ "$mode" = stub ] && ! grep -q '"cuda": null' "$OUT/gpu-check.json"; then
  echo "gpu-check: the stub driver opened a device?" >&2
  exit 1
fi
echo "gpu-check: $mode run done; summary in $OUT/gpu-check.json" >&2
