#!/usr/bin/env bash
# oslo.messaging's own functional suite (tests/functional/test_functional.py from the installed wheel)
# against zmqrpc in every documented topology: one real redis-server for the run, real proxy processes,
# each test in its own process under `timeout -s KILL`. Arguments go to the runner:
#   scripts/oslo-functional.sh [--topology NAME ...] [-k SUBSTRING] [--test-timeout S] [--json FILE]
# Needs the venv with the test and oslo extras (scripts/dev-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=$PWD exec .venv/bin/python -m tests.oslo_functional.runner "$@"
