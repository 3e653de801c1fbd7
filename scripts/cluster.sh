#!/usr/bin/env bash
# A local three-node cluster on this machine: the real servers from scripts/infra.sh, then three `commercex` nodes
# (release build) on http://127.0.0.1:8001, :8002 and :8003, in cluster mode on one MongoDB, Kafka and Redis, with
# product images in the S3 server's bucket.
#
#   scripts/cluster.sh up       build, start the servers and the nodes, wait until each is ready
#   scripts/cluster.sh down     stop the nodes this script started (SIGTERM: each hands its shards over), then the
#                               servers it started
#   scripts/cluster.sh status   each node's view of the cluster (needs COMMERCEX_ADMIN_PASSWORD)
#
# The bootstrap admin is admin@example.com with $COMMERCEX_ADMIN_PASSWORD (default change-me-1). Node data, logs
# and pid files live in $CARGO_TARGET_DIR/cluster (or ./target/cluster), with the JWT secret and the cluster secret
# (cluster.secret, which the nodes sign what they send each other with) generated there on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
RUN="$TARGET/cluster"
PORTS=(8001 8002 8003)
ADMIN_PASSWORD="${COMMERCEX_ADMIN_PASSWORD:-change-me-1}"

log() { printf 'cluster: %s\n' "$*" >&2; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  cargo build --release >&2
  local before; before="$(scripts/infra.sh status)"
  scripts/infra.sh up
  # Remember which servers this script started, so `down` stops only those.
  mkdir -p "$RUN"
  for service in redis mongo kafka s3; do
    if grep -q "^$service: stopped" <<<"$before"; then echo "$service"; fi
  done >"$RUN/started-servers"
  eval "$(scripts/infra.sh env)"
  [ -f "$RUN/jwt-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/jwt-secret"
  if [ ! -f "$RUN/cluster-secret" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/cluster-secret")
  fi
  local n=0
  for port in "${PORTS[@]}"; do
    n=$((n + 1))
    local dir="$RUN/node$n"
    mkdir -p "$dir"
    if running "$dir/pid"; then log "node$n already running"; continue; fi
    (
      cd "$dir"
      COMMERCEX__HTTP__ADDR="127.0.0.1:$port" \
      COMMERCEX__TELEMETRY__METRICS_ADDR="127.0.0.1:$((port + 1463))" \
      COMMERCEX__STORE__DATA_DIR="$dir" \
      COMMERCEX__STORE__BACKEND=mongodb \
      COMMERCEX__STORE__MONGODB__URI="$COMMERCEX_TEST_MONGODB_URI" \
      COMMERCEX__STORE__MONGODB__DATABASE=commercex_cluster \
      COMMERCEX__BUS__BACKEND=kafka \
      COMMERCEX__BUS__KAFKA__BROKERS="$COMMERCEX_TEST_KAFKA_BROKERS" \
      COMMERCEX__BUS__KAFKA__TOPIC_PREFIX=commercex-cluster \
      COMMERCEX__BUS__KAFKA__GROUP_ID=commercex-cluster \
      COMMERCEX__REDIS__URL="$COMMERCEX_TEST_REDIS_URL" \
      COMMERCEX__REDIS__KEY_PREFIX=commercex-cluster \
      COMMERCEX__CLUSTER__ENABLED=true \
      COMMERCEX__MEDIA__BACKEND=s3 \
      COMMERCEX__MEDIA__S3__ENDPOINT="$COMMERCEX_TEST_S3_ENDPOINT" \
      COMMERCEX__MEDIA__S3__BUCKET="$COMMERCEX_TEST_S3_BUCKET" \
      COMMERCEX__MEDIA__S3__ACCESS_KEY_ID=commercex \
      COMMERCEX__MEDIA__S3__SECRET_ACCESS_KEY=commercex-secret \
      COMMERCEX__CLUSTER__NODE_ID="node$n" \
      COMMERCEX__CLUSTER__SECRET="$(cat "$RUN/cluster-secret")" \
      COMMERCEX__AUTH__JWT_SECRET="$(cat "$RUN/jwt-secret")" \
      COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL=admin@example.com \
      COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD="$ADMIN_PASSWORD" \
      nohup "$TARGET/release/commercex" >log 2>&1 &
      echo $! >pid
    )
    log "node$n starting on http://127.0.0.1:$port (log: $dir/log)"
  done
  for port in "${PORTS[@]}"; do
    local deadline=$((SECONDS + 60))
    until curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { log "the node on $port did not get ready"; exit 1; }
      sleep 0.5
    done
    log "ready: http://127.0.0.1:$port"
  done
}

down() {
  for pidfile in "$RUN"/node*/pid; do
    [ -f "$pidfile" ] || continue
    if running "$pidfile"; then
      local pid; pid="$(cat "$pidfile")"
      kill "$pid"
      for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $(basename "$(dirname "$pidfile")") (pid $pid)"
    fi
    rm -f "$pidfile"
  done
  if [ -s "$RUN/started-servers" ]; then
    # shellcheck disable=SC2046
    scripts/infra.sh down $(cat "$RUN/started-servers")
    rm -f "$RUN/started-servers"
  fi
}

status() {
  local token
  token="$(curl -fsS "http://127.0.0.1:${PORTS[0]}/api/users/signin" -H 'content-type: application/json' \
    -d "{\"email\":\"admin@example.com\",\"password\":\"$ADMIN_PASSWORD\"}" | sed -E 's/.*"accessToken":"([^"]+)".*/\1/')"
  for port in "${PORTS[@]}"; do
    curl -fsS "http://127.0.0.1:$port/api/admin/cluster" -H "authorization: Bearer $token" || echo "node on $port: down"
    echo
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
