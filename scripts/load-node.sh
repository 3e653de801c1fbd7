#!/usr/bin/env bash
# Runs the load generator's default mix against one fresh release node on the embedded store, as the README's
# benchmark row does: builds the release binaries, starts `commercex` on a new data directory (port 18000, metrics on
# 19464) with the sign-up and checkout budgets lifted, drives it with `commercex-load --users 50` for the duration
# given (default 60s) with its metrics scraped, prints the report, then stops the node (SIGTERM) and removes its data.
#
# Usage: scripts/load-node.sh [DURATION] [extra commercex-load arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60s}"
shift || true
cargo build --release --bins --quiet
bin="${CARGO_TARGET_DIR:-target}/release"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
admin_email=admin@load.test
admin_password=load-admin-password-1
COMMERCEX__STORE__DATA_DIR="$data" \
COMMERCEX__HTTP__ADDR=127.0.0.1:18000 \
COMMERCEX__TELEMETRY__METRICS_ADDR=127.0.0.1:19464 \
COMMERCEX__HTTP__AUTH_RATE_LIMIT_PER_MINUTE=1000000 \
COMMERCEX__CHECKOUT__CHECKOUTS_PER_USER_PER_MINUTE=1000000 \
COMMERCEX__CHECKOUT__MAX_PENDING_ORDERS_PER_USER=1000000 \
COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL="$admin_email" \
COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD="$admin_password" \
COMMERCEX__AUTH__JWT_SECRET=load-node-secret-0123456789abcdef0123456789 \
COMMERCEX__LOG__LEVEL=warn \
  "$bin/commercex" >"$data/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18000/health >/dev/null && break
  sleep 0.2
done
status=0
"$bin/commercex-load" --url http://127.0.0.1:18000 --users 50 --duration "$duration" \
  --admin-email "$admin_email" --admin-password "$admin_password" \
  --metrics http://127.0.0.1:19464/metrics "$@" || status=$?
kill -TERM "$server"
wait "$server" || true
exit "$status"
