#!/usr/bin/env bash
# Validates the OpenAPI document the server serves (`GET /api/openapi.json`) with openapi-spec-validator, installed
# from PyPI into a virtualenv cached by scripts/infra.sh (`tool`). The document is
# written by the end-to-end test that checks it against the router, then validated; a failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

validator="$(scripts/infra.sh tool openapi openapi-spec-validator==0.9.0 openapi-spec-validator)"

out="${CARGO_TARGET_DIR:-$PWD/target}/openapi.json"
rm -f "$out"
COMMERCEX_OPENAPI_OUT="$out" cargo test --test api every_route_is_described_and_every_described_operation_is_served
[ -s "$out" ] || { echo "the document was not written to $out" >&2; exit 1; }
"$validator" "$out"
