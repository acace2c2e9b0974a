#!/usr/bin/env bash
# Prints the path of a CUDA 13.0 tree (nvcc, headers, runtime libraries) assembled from PyPI
# wheels, building it first if it is missing. Used by scripts/build-cuda.sh: the `cuda` feature
# builds on a machine with no GPU and no CUDA installation. The libcuda.so placed under
# lib/stubs only satisfies the linker; every function in it reports "no device".
set -euo pipefail
ROOT=${CUDA_TREE:-$HOME/.cache/hearth/cuda-13.0}
if [ -x "$ROOT/bin/nvcc" ] && [ -e "$ROOT/lib/stubs/libcuda.so" ]; then
  echo "$ROOT"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The components of cuda-toolkit 13.0.2. Newer nvcc writes PTX that driver 580 cannot load.
python3 -m pip download -q --no-deps --only-binary=:all: \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$work/wheels" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3 >&2
# Wheels are zip files; Python (already needed for pip) unpacks them, keeping each file's mode
# (nvcc and its tools must stay executable), so no unzip is needed.
python3 - "$work/tree" "$work"/wheels/*.whl <<'PY'
import os, sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for member in z.infolist():
            if member.filename.startswith("nvidia/"):
                path = z.extract(member, sys.argv[1])
                mode = (member.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)
PY
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
mv "$work/tree/nvidia/cu13" "$ROOT"
cd "$ROOT/lib"
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
  ln -sf "$lib" "${lib%.so.*}.so"
done
ln -sfn lib "$ROOT/lib64"
# Link-time stand-in for the driver library: one function per driver entry point named in
# cuda.h or used by cudarc, each returning CUDA_ERROR_NO_DEVICE (100).
mkdir -p stubs
{
  gcc -E -P -I "$ROOT/include" "$ROOT/include/cuda.h" | grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' | tr -d '( \t'
  cat "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null |
    grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' | sed -E 's/^\s+fn //; s/\($//'
} | sort -u | awk '{ print "int " $1 "(void) { return 100; }" }' >stubs/driver_stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/driver_stub.c
echo "$ROOT"
