#!/usr/bin/env bash
# Installs the OpenID Connect provider the identity test (tests/it/oidc.rs) runs on loopback:
# panva's oidc-provider from npm, pinned in tests/oidc/package-lock.json, run by Node.js.
set -euo pipefail
cd "$(dirname "$0")/../tests/oidc"
if ! command -v npm >/dev/null; then
  echo "npm is missing: install Node.js (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
# Reinstall only when the lockfile changed since the last install.
stamp=node_modules/.hearth-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" && [ -d node_modules/oidc-provider ]; then
  echo "oidc-provider already installed" >&2
else
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi
node -e "console.error('oidc-provider', require('./node_modules/oidc-provider/package.json').version)"
