#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, lint, unit, integration, module tests and molecule scenarios.
#   scripts/test.sh          everything (what .ci/run calls)
#   scripts/test.sh fast     lint + unit tests only, for iteration
# Run as root on Debian 12; it installs what it needs (scripts/dev-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
started=$SECONDS
stage() { printf '\n=== %s (%ds elapsed)\n' "$*" $((SECONDS - started)); }

stage "set-up"
scripts/dev-setup.sh

stage "lint: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
stage "lint: mypy"
.venv/bin/mypy zmqrpc

if [ "$mode" = fast ]; then
    stage "unit tests"
    .venv/bin/pytest -q tests/unit
    exit 0
fi

stage "unit, integration and module tests"
.venv/bin/pytest -q -p no:cacheprovider tests

stage "done"
