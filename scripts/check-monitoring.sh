#!/usr/bin/env bash
# Check the monitoring that ships with zmqrpc: the alerting rules (promtool check rules, and the rules' unit
# tests), and the scrape configuration playbooks/monitoring.yml renders for every example inventory
# (promtool check config). promtool comes from Debian's prometheus package (scripts/dev-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
promtool check rules playbooks/files/zmqrpc-alerts.yml
(cd playbooks/files && promtool test rules zmqrpc-alerts.test.yml)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for inventory in inventory/*/; do
    name=$(basename "$inventory")
    [ "$name" = lab ] && continue
    .venv/bin/ansible-playbook -i "$inventory" playbooks/monitoring.yml -e "zmqrpc_monitoring_dir=$out/$name" >/dev/null
    promtool check config "$out/$name/prometheus.yml"
done
