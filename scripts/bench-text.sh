#!/usr/bin/env bash
# Makes (once) the real-text passages the dense-index benchmark embeds when run with
# HEARTH_BENCH_DATA=docs (benches/hnsw.rs): the Linux kernel's, Python's and Perl's
# documentation as Debian packages them (linux-doc-6.1 and python3.11-doc in reStructuredText,
# perl-doc in POD; ~40 MB of English technical prose, the kernel's translations left out), cut
# into passages of prose the way a user's manuals are: markup, tables
# and code blocks dropped, a paragraph per passage, long ones split at sentence ends near 300
# characters. Prints the passages file's path on stdout (one passage per line, in a fixed
# order); progress on stderr.
#
#     scripts/bench-text.sh      # -> /root/.cache/hearth/bench-text/docs.txt
#
# Debian replaces point releases of the packages; any available version will do (the figures
# in BENCHMARKS.md name the ones used, which the script records beside the file).
set -euo pipefail

cache="${HEARTH_CACHE:-$HOME/.cache/hearth}"
dir="$cache/bench-text"
out="$dir/docs.txt"
if [[ -s "$out" && -s "$dir/docs.versions" ]]; then
    echo "$out"
    exit 0
fi
mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Each package at the newest version whose file the mirror still has.
: > "$work/versions"
for pkg in linux-doc-6.1 python3.11-doc perl-doc; do
    fetched=""
    for v in $(apt-cache madison "$pkg" | awk '{print $3}'); do
        if (cd "$work" && apt-get download "$pkg=$v" >&2 2>/dev/null); then
            fetched="$v"
            break
        fi
        echo "$pkg $v is not on the mirror; trying an older one" >&2
    done
    if [[ -z "$fetched" ]]; then
        echo "error: no version of $pkg could be downloaded (apt-get update?)" >&2
        exit 1
    fi
    dpkg -x "$work/${pkg}_"*.deb "$work/x"
    echo "$pkg $fetched" >> "$work/versions"
done

python3 - "$work/x" "$out.tmp" <<'PY'
import gzip, pathlib, re, sys

root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = (
    sorted(f for f in root.rglob("Documentation/**/*.rst.gz") if "translations" not in f.parts)
    + sorted(root.rglob("python3.11/html/_sources/**/*.rst.txt"))
    + sorted(root.rglob("perl/*/pod/*.pod"))
)
pod_codes = re.compile(r"[BICLFSEXZ]<+\s*([^<>]*?)\s*>+")
markup = re.compile(r"^\s*(\.\.|[=\-~^*#+`:|]{3,}|[+|]|:\w[\w -]*:)")
roles = re.compile(r":[a-z:]+:`([^`<]*)(?:<[^>]*>)?`")
sentence_end = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
seen, passages = set(), []
for f in files:
    raw = f.read_bytes()
    text = (gzip.decompress(raw) if f.suffix == ".gz" else raw).decode("utf-8", "replace")
    in_code = False
    for para in re.split(r"\n\s*\n", text):
        lines = para.split("\n")
        first = lines[0]
        # an indented block after "::" is code; so is any indented paragraph following one
        if in_code and first[:1].isspace():
            continue
        in_code = para.rstrip().endswith("::")
        if first[:1].isspace() or first.startswith("="):
            continue
        lines = [l for l in lines if not markup.match(l)]
        p = " ".join(l.strip() for l in lines)
        p = roles.sub(r"\1", p).replace("``", "").replace("**", "")
        p = pod_codes.sub(r"\1", p)
        p = re.sub(r"\s+", " ", p).strip().rstrip(":")
        letters = sum(c.isalpha() for c in p)
        if len(p) < 60 or letters < 0.6 * len(p):
            continue
        pieces, cur = [], ""
        for s in sentence_end.split(p):
            if cur and len(cur) + len(s) > 300:
                pieces.append(cur)
                cur = s
            else:
                cur = f"{cur} {s}".strip()
        pieces.append(cur)
        for piece in pieces:
            if len(piece) >= 60 and piece not in seen:
                seen.add(piece)
                passages.append(piece)
out.write_text("\n".join(passages) + "\n")
print(f"{len(passages)} passages from {len(files)} files", file=sys.stderr)
PY
mv "$out.tmp" "$out"
mv "$work/versions" "$dir/docs.versions"
echo "$out"
