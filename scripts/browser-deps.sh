#!/usr/bin/env bash
# Installs what the browser test (tests/browser) needs, idempotently: Debian's Chromium at
# /usr/bin/chromium and playwright-core (npm, pinned in tests/browser/package-lock.json).
# Playwright never downloads a browser of its own: the test drives /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export DEBIAN_FRONTEND=noninteractive

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian)..." >&2
  if ! $SUDO apt-get install -y --no-install-recommends chromium; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
  fi
fi
/usr/bin/chromium --version >&2

if ! command -v npm >/dev/null; then
  echo "npm is missing: install Node.js (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

cd tests/browser
# Reinstall only when the lockfile changed since the last install.
stamp=node_modules/.hearth-lock
if [ -f package-lock.json ] && [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" \
  && [ -d node_modules/playwright-core ]; then
  echo "playwright-core already installed" >&2
else
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
  else
    npm install --no-audit --no-fund
  fi
  cp package-lock.json "$stamp"
fi
node -e "console.error('playwright-core', require('playwright-core/package.json').version)"
echo "browser test dependencies ready" >&2
