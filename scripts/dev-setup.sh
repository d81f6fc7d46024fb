#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 host, as root: Debian packages (real redis-server and
# redis-sentinel for the integration tests, promtool from prometheus for the alerting rules) and the project
# virtualenv (.venv) with zmqrpc and its tools.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# VENV_ONLY=1 (what the Makefile's targets use): only the virtualenv, for lint and molecule.
if [ "${VENV_ONLY:-0}" != 1 ]; then
    packages=(redis-server redis-sentinel redis-tools rabbitmq-server prometheus python3-venv python3-dev gcc make)
    missing=()
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dev-setup: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # The Debian packages start daemons on their default ports where an init system runs; tests start their
    # own on ports they pick, so stop the packaged ones to leave nothing behind.
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        systemctl disable --now redis-server redis-sentinel rabbitmq-server prometheus >/dev/null 2>&1 || true
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# The venv's one stamp: what it was installed from (the Makefile's targets use this script too).
stamp=.venv/.zmqrpc-deps
wanted=$(cat pyproject.toml requirements-ansible.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test,oslo]' -r requirements-ansible.txt
    echo "$wanted" > "$stamp"
fi
echo "dev-setup: ok ($(.venv/bin/python --version), zmqrpc $(.venv/bin/python -c 'import zmqrpc; print(zmqrpc.__version__)'))"
