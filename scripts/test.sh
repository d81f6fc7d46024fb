#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, lint, unit, integration, module tests, oslo.messaging's
# functional suite (scripts/oslo-functional.sh) and molecule scenarios.
#   scripts/test.sh          everything (what .ci/run calls)
#   scripts/test.sh fast     lint + unit tests only, for iteration
#   scripts/test.sh molecule set-up, lab image and the molecule scenarios only
# Run as root on Debian 12; it installs what it needs (scripts/dev-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
case "$mode" in
    all | fast | molecule) ;;
    *) echo "usage: scripts/test.sh [all|fast|molecule] (got '$mode')" >&2; exit 2 ;;
esac
# A log file (CI, `> file`) gets plain text: no colour codes from ruff, pytest, ansible or molecule, and no
# box characters around molecule's command output (the Makefile reads NO_COLOR).
if [ ! -t 1 ]; then
    export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
fi
started=$SECONDS
stage() { printf '\n=== %s (%ds elapsed)\n' "$*" $((SECONDS - started)); }

stage "set-up"
scripts/dev-setup.sh

if [ "$mode" != molecule ]; then
    stage "lint: ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    stage "lint: mypy"
    .venv/bin/mypy zmqrpc
    stage "lint: yamllint, ansible-lint (production profile), argument_specs vs defaults"
    make --no-print-directory lint-ansible
    stage "lint: alerting rules and scrape configs (promtool)"
    scripts/check-monitoring.sh

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
        tests/integration/test_failures.py tests/integration/test_reliability.py tests/oslo/test_topologies.py \
        tests/integration/test_security.py tests/oslo/test_security.py

    stage "oslo.messaging's functional suite, every topology"
    scripts/oslo-functional.sh
fi

stage "lab: podman prerequisites and base image"
make --no-print-directory lab-prereqs lab-image

# The molecule scenarios, ZMQRPC_MOLECULE_JOBS at a time (default 2; each scenario has its own podman network
# and container names, and its hosts mostly wait on each other, so two share a 2-core machine well).
# Each scenario writes build/molecule-logs/<scenario>.log; a failed scenario's log is printed whole.
jobs=${ZMQRPC_MOLECULE_JOBS:-2}
logs=build/molecule-logs
rm -rf "$logs"
mkdir -p "$logs"
# ZMQRPC_MOLECULE_SKIP: scenarios left out (space-separated; default none). `secure`, the longest, starts first,
# so the last two scenarios end close together.
skip=" ${ZMQRPC_MOLECULE_SKIP-} "
scenarios=()
for scenario_file in molecule/secure/molecule.yml molecule/*/molecule.yml; do
    scenario=$(basename "$(dirname "$scenario_file")")
    [[ $skip == *" $scenario "* || " ${scenarios[*]} " == *" $scenario "* ]] || scenarios+=("$scenario")
done
stage "molecule: ${#scenarios[@]} scenarios, $jobs at a time (logs in $logs/)"

declare -A running=()  # pid -> scenario
timings=()
failed=()
molecule_scenario() {
    local begin=$SECONDS rc=0
    make --no-print-directory "molecule-$1" >"$logs/$1.log" 2>&1 || rc=$?
    echo $((SECONDS - begin)) >"$logs/$1.seconds"
    return $rc
}
reap() {
    local pid rc=0 scenario
    wait -n -p pid "${!running[@]}" || rc=$?
    scenario=${running[$pid]}
    unset "running[$pid]"
    timings+=("$scenario $(cat "$logs/$scenario.seconds")s")
    if ((rc == 0)); then
        printf 'molecule scenario %s passed in %ss (%d s elapsed)\n' "$scenario" "$(cat "$logs/$scenario.seconds")" \
            $((SECONDS - started))
    else
        failed+=("$scenario")
        printf '\n--- molecule scenario %s FAILED after %ss; its log (%s):\n' "$scenario" \
            "$(cat "$logs/$scenario.seconds")" "$logs/$scenario.log"
        cat "$logs/$scenario.log"
        printf -- '--- end of %s\n\n' "$logs/$scenario.log"
    fi
}
for scenario in "${scenarios[@]}"; do
    while ((${#running[@]} >= jobs)); do reap; done
    echo "molecule scenario $scenario: started"
    molecule_scenario "$scenario" &
    running[$!]=$scenario
done
while ((${#running[@]} > 0)); do reap; done

stage "done"
printf 'molecule scenario times: %s\n' "${timings[*]:-none}"
if ((${#failed[@]})); then
    echo "molecule scenarios failed: ${failed[*]}" >&2
    exit 1
fi
