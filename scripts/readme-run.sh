#!/usr/bin/env bash
# Runs the README's first command as a new user would, from the repository's root: `cargo run --release`, then waits
# for GET /health on port 8000 and stops the server with SIGTERM (a clean exit is expected). The data directory the
# run creates (./data) is removed again unless it was there before. CI runs this so the README's command cannot
# break unseen.
set -euo pipefail
cd "$(dirname "$0")/.."

fresh_data=; [ -e data ] || fresh_data=1
log="$(mktemp)"
cargo build --release --quiet
cargo run --release >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -z "$fresh_data" ] || rm -rf data
  rm -f "$log"
}
trap cleanup EXIT

for _ in $(seq 300); do
  if curl -fs http://127.0.0.1:8000/health >/dev/null; then
    kill -TERM "$pid"
    status=0; wait "$pid" || status=$?
    pid=
    if [ "$status" != 0 ]; then
      echo "cargo run --release exited with status $status after SIGTERM; its output:" >&2
      cat "$log" >&2
      exit 1
    fi
    echo "cargo run --release: served /health on :8000 and stopped cleanly"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "cargo run --release exited before serving /health; its output:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "cargo run --release did not answer GET /health on :8000 within 30 s; its output:" >&2
cat "$log" >&2
exit 1
