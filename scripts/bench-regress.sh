#!/usr/bin/env bash
# Regression check of the benchmarks between an earlier commit and the working tree, in one run:
# builds the earlier commit's benches in a worktree (own cargo target directory, so neither
# build can pick up the other's workspace crates), builds this tree's, then runs each bench
# binary of the two in alternation, peers off, so both see the same machine.
#
#   scripts/bench-regress.sh BASE_COMMIT [BENCH...]     (default: generate serve embed storage)
#
# HEARTH_BENCH_ROUNDS (default 2) rounds; HEARTH_BASE_TREE / HEARTH_BASE_TARGET name an existing
# worktree and target directory of the base to reuse.
# A bench the base commit does not have is copied from this tree into the base worktree (it
# must compile against the base's API). Output: bench-regress/{base,head}-{bench}-{round}.txt
# under this tree's target directory, and each bench's JSON next to it.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: scripts/bench-regress.sh BASE_COMMIT [BENCH...]}
shift
if [ $# -gt 0 ]; then BENCHES=("$@"); else BENCHES=(generate serve embed storage); fi
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}
HEAD_TARGET=${CARGO_TARGET_DIR:-$CACHE/target}
BASE_TARGET=${HEARTH_BASE_TARGET:-$CACHE/target-base}
BASE_TREE=${HEARTH_BASE_TREE:-$CACHE/base-tree}
export HEARTH_MODELS=${HEARTH_MODELS:-$CACHE/models} HEARTH_BENCH_NO_PEERS=1
ROUNDS=${HEARTH_BENCH_ROUNDS:-2}

if [ ! -d "$BASE_TREE" ]; then git worktree add --detach "$BASE_TREE" "$BASE"; fi
git -C "$BASE_TREE" checkout --quiet --detach "$BASE"
for b in "${BENCHES[@]}"; do
  if [ ! -f "$BASE_TREE/benches/$b.rs" ]; then
    cp "benches/$b.rs" "$BASE_TREE/benches/"
    printf '\n[[bench]]\nname = "%s"\nharness = false\n' "$b" >> "$BASE_TREE/Cargo.toml"
  fi
done
args=()
for b in "${BENCHES[@]}"; do args+=(--bench "$b"); done
bin_of() { # target dir, bench -> newest bench executable
  ls -t "$1"/release/deps/"$2"-* | grep -v '\.d$' | head -1
}
(cd "$BASE_TREE" && CARGO_TARGET_DIR=$BASE_TARGET cargo bench --locked --no-run "${args[@]}")
CARGO_TARGET_DIR=$HEAD_TARGET cargo bench --locked --no-run "${args[@]}"
OUT=$HEAD_TARGET/bench-regress
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for b in "${BENCHES[@]}"; do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    sides=(base head)
    if [ $((round % 2)) -eq 0 ]; then sides=(head base); fi
    for side in "${sides[@]}"; do
      if [ "$side" = base ]; then t=$BASE_TARGET; tree=$BASE_TREE; else t=$HEAD_TARGET; tree=$PWD; fi
      echo "== $side $b round $round (load $(cut -d' ' -f1 /proc/loadavg))" >&2
      (cd "$tree" && CARGO_MANIFEST_DIR=$tree CARGO_TARGET_DIR=$t "$(bin_of "$t" "$b")" --bench) \
        > "$OUT/$side-$b-$round.txt" 2>&1
      cp "$t/bench-$b.json" "$OUT/$side-$b-$round.json" 2>/dev/null || true
      tail -n 25 "$OUT/$side-$b-$round.txt" >&2
    done
  done
done
echo "results in $OUT" >&2
