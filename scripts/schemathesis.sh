#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis (PyPI, in a virtualenv cached by scripts/infra.sh
# `tool`), once as an administrator and once as a user, against a `commercex` process this script
# starts on a free loopback port with a fresh data directory (the debug binary `cargo test` built) and stops by pid.
# It fails on any 5xx answer, any answer outside its documented schema, and any panic in the server's log.
# `GET /ws/notifications` (a WebSocket) and `POST /api/users/signout` (it would end the session the run uses) are
# left out. At most MAX_EXAMPLES (default 10) inputs per operation and phase.
set -euo pipefail
cd "$(dirname "$0")/.."

schemathesis="$(scripts/infra.sh tool schemathesis schemathesis==4.32.5 schemathesis)"

source scripts/debug-server.sh
export COMMERCEX__AUTH__JWT_SECRET=schemathesis-secret-0123456789abcdef0123456789 \
  COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL=admin@example.com COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD=admin-pass-1 \
  COMMERCEX__HTTP__AUTH_RATE_LIMIT_PER_MINUTE=100000 COMMERCEX__PAYMENTS__SIMULATED_LATENCY_MS=1 \
  COMMERCEX__LOG__LEVEL=warn
start_debug_server

token() { python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])'; }
admin="$(curl -fs -X POST "$base/api/users/signin" -H 'content-type: application/json' \
  -d '{"email": "admin@example.com", "password": "admin-pass-1"}' | token)"
user="$(curl -fs -X POST "$base/api/users/signup" -H 'content-type: application/json' \
  -d '{"email": "fuzz@example.com", "password": "pass-word-1", "name": "Fuzz"}' | token)"

for who in admin user; do
  echo "== schemathesis as the $who"
  # Run from the scratch directory: schemathesis keeps a cache in the working directory.
  (cd "$dir" && "$schemathesis" run "$base/api/openapi.json" -H "Authorization: Bearer ${!who}" \
    --max-examples "${MAX_EXAMPLES:-10}" --checks not_a_server_error,response_schema_conformance \
    --exclude-path /ws/notifications --exclude-path /api/users/signout --request-timeout 10 --no-color)
done
check_no_panic
