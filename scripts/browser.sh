#!/usr/bin/env bash
# End-to-end tests of the web app (storefront at /, admin console at /admin) in a real browser: Debian's Chromium,
# headless, driven by playwright-core (npm, pinned in tests/browser/package-lock.json). Installs what is missing
# (apt-get install chromium, and nodejs and npm; npm ci in tests/browser), starts a `commercex` process (the debug binary, through
# scripts/debug-server.sh) on a free loopback port with a fresh data directory holding the demo catalog (`seed-demo`)
# and a 4-second access-token lifetime (so silent token renewal is exercised throughout), runs
# tests/browser/*.test.mjs, and stops the process by pid. Fails on any test failure and on a panic in the server's
# log. Screenshots of the main pages are written to $SCREENSHOT_DIR (default
# <target dir>/screenshots); `SCREENSHOT_DIR=docs/screenshots scripts/browser.sh` refreshes the README's.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
[ ${#missing[@]} -eq 0 ] || scripts/infra.sh apt "${missing[@]}"
lock="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
if [ "$(cat tests/browser/node_modules/.installed-lock 2>/dev/null)" != "$lock" ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock" >tests/browser/node_modules/.installed-lock
fi

source scripts/debug-server.sh
# The demo catalog and accounts (`commercex seed-demo`), so the pages look like a shop; the admin is the demo's.
export BASE_URL="$base" ADMIN_EMAIL=admin@example.com ADMIN_PASSWORD=demo-admin-1 ACCESS_TTL_SECS=4
export COMMERCEX__LOG__LEVEL=warn
"$bin" seed-demo >"$dir/seed.log" 2>&1 || { cat "$dir/seed.log" >&2; exit 1; }
export COMMERCEX__AUTH__ACCESS_TOKEN_TTL_SECS="$ACCESS_TTL_SECS" COMMERCEX__HTTP__AUTH_RATE_LIMIT_PER_MINUTE=100000
start_debug_server

export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$target/screenshots}"
node --test --test-reporter=spec tests/browser/
check_no_panic
