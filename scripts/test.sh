#!/usr/bin/env bash
# The whole test suite:
#   1. `cargo test`: unit, property, contract (embedded / in-process side) and end-to-end tests on the embedded defaults;
#      then the OpenAPI document checked by openapi-spec-validator (scripts/openapi.sh) and the API fuzzed from it by
#      schemathesis (scripts/schemathesis.sh); then the storefront and admin console in headless Chromium
#      (scripts/browser.sh);
#   2. the contract suites against the real servers (MongoDB, Kafka and Redis protocol servers and an S3-compatible
#      server, started by scripts/infra.sh; installed on first use, which takes a while and shows its progress);
#   3. the end-to-end suite again with store.backend = mongodb, bus.backend = kafka, redis.url set and
#      media.backend = s3;
#   4. the multi-process suite: `commercex` processes sharing those servers, and each server stopped and started
#      again under load (private instances started through scripts/infra.sh).
# Servers this script started are stopped at the end; servers that were already running are left running.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (embedded defaults)"
cargo test "$@"

echo "== the OpenAPI document, validated by openapi-spec-validator"
scripts/openapi.sh

echo "== the API fuzzed from its OpenAPI document by schemathesis"
scripts/schemathesis.sh

echo "== the storefront and admin console in headless Chromium"
scripts/browser.sh

before="$(scripts/infra.sh status)"
stop_started() {
  for service in redis mongo kafka s3; do
    if grep -q "^$service: stopped" <<<"$before"; then started+=" $service"; fi
  done
  [ -z "${started:-}" ] || scripts/infra.sh down $started
}
trap stop_started EXIT

echo "== starting the real servers"
# Servers started here begin empty: the databases, topics and keys of earlier runs are gone.
for service in redis mongo kafka s3; do
  if grep -q "^$service: stopped" <<<"$before"; then scripts/infra.sh clean "$service"; fi
done
scripts/infra.sh up
eval "$(scripts/infra.sh env)"

echo "== contract suites against MongoDB, Kafka, Redis and S3"
cargo test --test contract "$@" -- --include-ignored

echo "== end-to-end suite on MongoDB + Kafka + Redis + S3"
COMMERCEX_TEST_BACKENDS=real COMMERCEX_TEST_BUS=kafka cargo test --test api "$@"

echo "== several commercex processes, and each server stopped and started under load"
# Each test runs up to three nodes; two tests at a time keep a two-core machine from starving their heartbeats.
cargo test --test nodes "$@" -- --include-ignored --test-threads=2
