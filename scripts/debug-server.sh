# Sourced by the scripts that test a running server (scripts/schemathesis.sh, scripts/browser.sh): builds the debug
# `commercex` binary and prepares a fresh data directory and a free loopback port for it. Sets:
#   $bin, $dir (scratch directory: the data in $dir/data, the server's log in $dir/log), $port, $base (its URL),
#   and exports COMMERCEX__STORE__DATA_DIR and COMMERCEX__HTTP__ADDR accordingly.
# Then:
#   start_debug_server      starts "$bin" with the caller's COMMERCEX__* environment and waits for /health
#   check_no_panic          fails, showing where, if the server's log holds a panic
# At exit the server is stopped by its pid and the scratch directory removed.

target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --bin commercex
bin="$target/debug/commercex"
dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# Metrics are served with the API: no second port to collide with another server on this machine.
export COMMERCEX__STORE__DATA_DIR="$dir/data" COMMERCEX__HTTP__ADDR="127.0.0.1:$port" COMMERCEX__TELEMETRY__METRICS_ADDR=""
pid=

stop_debug_server() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap stop_debug_server EXIT

start_debug_server() {
  "$bin" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -fs "$base/health" >/dev/null && return
    sleep 0.1
  done
  echo "the server did not answer on $base within 10 s; its log:" >&2
  cat "$dir/log" >&2
  exit 1
}

check_no_panic() {
  if grep -q "panicked" "$dir/log"; then
    echo "the server panicked:" >&2
    grep -A5 "panicked" "$dir/log" >&2
    exit 1
  fi
}
