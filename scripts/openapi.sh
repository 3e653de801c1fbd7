#!/usr/bin/env bash
# Validates the OpenAPI document the server serves (`GET /api/openapi.json`) with openapi-spec-validator, installed
# from PyPI into a virtualenv cached in $COMMERCEX_INFRA_CACHE (default ~/.cache/commercex-infra). The document is
# written by the end-to-end test that checks it against the router, then validated; a failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${COMMERCEX_INFRA_CACHE:-$HOME/.cache/commercex-infra}"
VENV="$CACHE/openapi-venv"
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  echo "installing openapi-spec-validator 0.9.0 into a virtualenv (cached in $CACHE)" >&2
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openapi-spec-validator==0.9.0
fi

out="${CARGO_TARGET_DIR:-$PWD/target}/openapi.json"
rm -f "$out"
COMMERCEX_OPENAPI_OUT="$out" cargo test --test api every_route_is_described_and_every_described_operation_is_served
[ -s "$out" ] || { echo "the document was not written to $out" >&2; exit 1; }
"$VENV/bin/openapi-spec-validator" "$out"
