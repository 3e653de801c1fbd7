#!/usr/bin/env bash
# Real servers for the backend tests, on loopback ports:
#   Redis (Debian's redis-server), the Kafka-protocol broker nisshi 0.8.1, the MongoDB-protocol server nx-27017 0.8.1,
#   and an S3-compatible server (moto 5.2.5's moto_server, PyPI) with the bucket `commercex-test`.
#
#   scripts/infra.sh up [redis|mongo|kafka|s3 ...]
#                           install what is missing (first run: several minutes, progress shown), start, wait
#   scripts/infra.sh down [redis|mongo|kafka|s3 ...]
#                           stop only the processes this script started (by pid)
#   scripts/infra.sh clean [redis|mongo|kafka|s3 ...]
#                           delete the data of stopped servers (every test writes a database, topics or keys of its
#                           own; scripts/test.sh cleans the servers it starts so the target directory does not grow)
#   scripts/infra.sh env    print the variables the backend tests read (eval "$(scripts/infra.sh env)")
#   scripts/infra.sh status
#   scripts/infra.sh tool VENV PACKAGE==VERSION COMMAND
#                           install a Python tool into a cached virtualenv once; print its command's path
#   scripts/infra.sh apt PACKAGE ...
#                           install Debian packages (with sudo unless root)
#
# Installs are cached in $COMMERCEX_INFRA_CACHE (default ~/.cache/commercex-infra); server data and pid files live
# under the target directory ($CARGO_TARGET_DIR or ./target), in infra/, or in $COMMERCEX_INFRA_RUN. Ports:
# $COMMERCEX_INFRA_{REDIS,KAFKA,MONGO,S3}_PORT. The outage tests start private servers this way (their own run
# directory and ports) and stop and restart them.
#
# A Kafka broker that authenticates its clients: $COMMERCEX_INFRA_KAFKA_USERS ("name:password ...") makes `up kafka`
# create those SCRAM-SHA-256 and SCRAM-SHA-512 users and start the broker requiring SASL; with
# $COMMERCEX_INFRA_KAFKA_TLS=1 it also listens with TLS only, on a certificate for 127.0.0.1 made for it
# ($RUN/kafka/tls/cert.pem, which clients take as their CA).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${COMMERCEX_INFRA_CACHE:-$HOME/.cache/commercex-infra}"
RUN="${COMMERCEX_INFRA_RUN:-${CARGO_TARGET_DIR:-$PWD/target}/infra}"
REDIS_PORT="${COMMERCEX_INFRA_REDIS_PORT:-16379}"
KAFKA_PORT="${COMMERCEX_INFRA_KAFKA_PORT:-19092}"
MONGO_PORT="${COMMERCEX_INFRA_MONGO_PORT:-27018}"
S3_PORT="${COMMERCEX_INFRA_S3_PORT:-19000}"
S3_BUCKET=commercex-test
NISSHI="$CACHE/nisshi/bin/nisshi"
NX="$CACHE/nx-venv/bin/nx-27017"

log() { printf 'infra: %s\n' "$*" >&2; }

# Installs Debian packages $@ with apt.
apt_install() {
  log "installing $* (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

install_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
}

install_nisshi() {
  [ -x "$NISSHI" ] && return
  log "building nisshi 0.8.1 with cargo install (about 12 minutes, once; cached in $CACHE)"
  mkdir -p "$CACHE"
  CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install nisshi --version 0.8.1 --locked --ignore-rust-version \
    --no-default-features --features libsql,dynostore --root "$CACHE/nisshi" >&2
}

# Installs PyPI package $2 (`name==version`) into the virtualenv $CACHE/$1-venv unless its command $3 is there.
python_tool() {
  local venv="$CACHE/$1-venv"
  [ -x "$venv/bin/$3" ] && return
  # Debian's python3 makes virtualenvs only with python3-venv.
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "installing $2 into a virtualenv (cached in $CACHE)"
  mkdir -p "$CACHE"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$2" >&2
}

install_nx() { python_tool nx nx-27017==0.8.1 nx-27017; }
install_moto() { python_tool moto 'moto[server]==5.2.5' moto_server; }

# Whether the process recorded in pid file $1 is alive.
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Waits until `$2...` succeeds, for at most $1 seconds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_redis() {
  mkdir -p "$RUN/redis"
  running "$RUN/redis/pid" && return
  # Revocations live in Redis: append-only persistence keeps them across a restart, as in production.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" --save '' --appendonly yes \
    --daemonize yes --pidfile "$RUN/redis/pid" --logfile "$RUN/redis/log" >&2
  wait_for 20 redis-cli -p "$REDIS_PORT" ping || { log "redis did not answer; see $RUN/redis/log"; exit 1; }
  log "redis on 127.0.0.1:$REDIS_PORT"
}

# Starts nisshi on $KAFKA_PORT with extra broker arguments $@; returns once the port answers.
run_nisshi() {
  # nisshi is run from its data directory; the pid recorded is the broker's own.
  (
    cd "$RUN/kafka"
    GROUP_INITIAL_REBALANCE_DELAY=0s nohup "$NISSHI" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine sqlite://nisshi.db "$@" >>log 2>&1 &
    echo $! >pid
  )
  wait_for 30 port_open "$KAFKA_PORT" || { log "nisshi did not answer; see $RUN/kafka/log"; exit 1; }
}

start_kafka() {
  mkdir -p "$RUN/kafka"
  running "$RUN/kafka/pid" && return
  local users="${COMMERCEX_INFRA_KAFKA_USERS:-}" auth=()
  if [ -n "$users" ]; then
    # Users are written through a broker that does not yet ask for them, into the storage the real one reads.
    run_nisshi
    for user in $users; do
      for mechanism in scram256 scram512; do
        "$NISSHI" user create --broker "tcp://127.0.0.1:$KAFKA_PORT" --mechanism "$mechanism" \
          "${user%%:*}" "${user#*:}" >>"$RUN/kafka/log" 2>&1
      done
    done
    stop_pid "$RUN/kafka/pid" nisshi
    wait_for 10 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT)"
    auth+=(--authentication)
  fi
  if [ "${COMMERCEX_INFRA_KAFKA_TLS:-}" = 1 ]; then
    local tls="$RUN/kafka/tls"
    mkdir -p "$tls"
    [ -f "$tls/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=127.0.0.1" \
      -addext "subjectAltName=IP:127.0.0.1" -keyout "$tls/key.pem" -out "$tls/cert.pem" >/dev/null 2>&1
    auth+=(--cert "$tls/cert.pem" --key "$tls/key.pem")
  fi
  run_nisshi "${auth[@]}"
  log "kafka (nisshi) on 127.0.0.1:$KAFKA_PORT${users:+, SASL/SCRAM required}${COMMERCEX_INFRA_KAFKA_TLS:+, TLS}"
}

start_mongo() {
  mkdir -p "$RUN/mongo"
  running "$RUN/mongo/nx.pid" && return
  "$NX" -d --data-dir "$RUN/mongo" -p "$MONGO_PORT" --host 127.0.0.1 --pid-file "$RUN/mongo/nx.pid" \
    --log-file "$RUN/mongo/nx.log" >&2
  wait_for 30 port_open "$MONGO_PORT" || { log "nx-27017 did not answer; see $RUN/mongo/nx.log"; exit 1; }
  log "mongodb (nx-27017) on 127.0.0.1:$MONGO_PORT"
}

start_s3() {
  mkdir -p "$RUN/s3"
  running "$RUN/s3/pid" && return
  # moto keeps its buckets in memory: a restart begins empty, and the bucket is created again below.
  nohup "$CACHE/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$RUN/s3/log" 2>&1 &
  echo $! >"$RUN/s3/pid"
  wait_for 30 port_open "$S3_PORT" || { log "moto_server did not answer; see $RUN/s3/log"; exit 1; }
  # Unsigned bucket creation: moto does not check signatures.
  curl -fsS -X PUT "http://127.0.0.1:$S3_PORT/$S3_BUCKET" >/dev/null
  log "s3 (moto) on 127.0.0.1:$S3_PORT, bucket $S3_BUCKET"
}

stop_pid() {
  if running "$1"; then
    local pid; pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $2 (pid $pid)"
  fi
  rm -f "$1"
}

case "${1:-}" in
  up)
    shift
    services="${*:-redis mongo kafka s3}"
    for s in $services; do
      case "$s" in
        redis) install_redis; start_redis ;;
        mongo) install_nx; start_mongo ;;
        kafka) install_nisshi; start_kafka ;;
        s3) install_moto; start_s3 ;;
        *) echo "unknown service $s" >&2; exit 2 ;;
      esac
    done
    ;;
  down)
    shift
    for s in ${*:-s3 kafka mongo redis}; do
      case "$s" in
        s3) stop_pid "$RUN/s3/pid" moto_server ;;
        kafka) stop_pid "$RUN/kafka/pid" nisshi ;;
        mongo) stop_pid "$RUN/mongo/nx.pid" nx-27017 ;;
        redis) stop_pid "$RUN/redis/pid" redis ;;
        *) echo "unknown service $s" >&2; exit 2 ;;
      esac
    done
    ;;
  clean)
    shift
    for s in ${*:-redis mongo kafka s3}; do
      case "$s" in
        s3) pid=s3/pid ;;
        redis) pid=redis/pid ;;
        mongo) pid=mongo/nx.pid ;;
        kafka) pid=kafka/pid ;;
        *) echo "unknown service $s" >&2; exit 2 ;;
      esac
      if running "$RUN/$pid"; then log "$s is running; not cleaning it"; continue; fi
      rm -rf "${RUN:?}/$s"
    done
    ;;
  tool)
    # scripts/infra.sh tool VENV PACKAGE==VERSION COMMAND: installs a Python tool once, prints its command's path.
    [ $# -eq 4 ] || { echo "usage: $0 tool VENV PACKAGE==VERSION COMMAND" >&2; exit 2; }
    python_tool "$2" "$3" "$4"
    echo "$CACHE/$2-venv/bin/$4"
    ;;
  apt)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 apt PACKAGE ..." >&2; exit 2; }
    apt_install "$@"
    ;;
  env)
    echo "export COMMERCEX_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
    echo "export COMMERCEX_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "export COMMERCEX_TEST_MONGODB_URI=mongodb://127.0.0.1:$MONGO_PORT"
    echo "export COMMERCEX_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT COMMERCEX_TEST_S3_BUCKET=$S3_BUCKET"
    ;;
  status)
    for s in redis/pid kafka/pid mongo/nx.pid s3/pid; do
      if running "$RUN/$s"; then echo "${s%%/*}: running (pid $(cat "$RUN/$s"))"; else echo "${s%%/*}: stopped"; fi
    done
    ;;
  *)
    echo "usage: $0 up|down|clean|env|status|tool|apt" >&2; exit 2 ;;
esac
