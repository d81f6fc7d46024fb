#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, lint, unit, integration, module tests, oslo.messaging's
# functional suite (scripts/oslo-functional.sh) and molecule scenarios.
#   scripts/test.sh          everything (what .ci/run calls)
#   scripts/test.sh fast     lint + unit tests only, for iteration
# Run as root on Debian 12; it installs what it needs (scripts/dev-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
# A log file (CI, `> file`) gets plain text: no colour codes from ruff, pytest, ansible or molecule, and no
# box characters around molecule's command output (the Makefile reads NO_COLOR).
if [ ! -t 1 ]; then
    export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
fi
started=$SECONDS
stage() { printf '\n=== %s (%ds elapsed)\n' "$*" $((SECONDS - started)); }

stage "set-up"
scripts/dev-setup.sh

stage "lint: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
stage "lint: mypy"
.venv/bin/mypy zmqrpc
stage "lint: yamllint, ansible-lint (production profile), argument_specs vs defaults"
make --no-print-directory lint-ansible

if [ "$mode" = fast ]; then
    stage "unit tests"
    .venv/bin/pytest -q tests/unit
    exit 0
fi

stage "unit, integration and module tests"
.venv/bin/pytest -q -p no:cacheprovider tests

# The same integration and oslo tests again with every test process eventlet-patched (tests/__init__.py),
# as nova-compute and most OpenStack services run: the green core must pass what the threading one does.
stage "integration and oslo tests, eventlet-patched"
ZMQRPC_TEST_EVENTLET=1 .venv/bin/pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    tests/integration/test_direct.py tests/integration/test_proxy_topologies.py \
    tests/integration/test_failures.py tests/oslo/test_topologies.py

stage "oslo.messaging's functional suite, every topology"
scripts/oslo-functional.sh

stage "lab: podman prerequisites and base image"
make --no-print-directory lab-prereqs lab-image

timings=()
for scenario_file in molecule/*/molecule.yml; do
    scenario=$(basename "$(dirname "$scenario_file")")
    stage "molecule scenario $scenario"
    begin=$SECONDS
    make --no-print-directory "molecule-$scenario"
    timings+=("$scenario $((SECONDS - begin))s")
done

stage "done"
printf 'molecule scenario times: %s\n' "${timings[*]:-none}"
