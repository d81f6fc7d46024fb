#!/usr/bin/env bash
# Deploy zmqrpc on the local podman lab and smoke-test it. Run as root on a fresh Debian 12 machine.
#
#   bash scripts/deploy.sh                         deploy (TOPOLOGY=static-direct by default)
#   TOPOLOGY=router-proxy bash scripts/deploy.sh   another topology (one of inventory/*/, not lab)
#   bash scripts/deploy.sh destroy                 tear the lab down
#
# Steps: the venv and Debian packages (scripts/dev-setup.sh), podman and the settings this machine needs
# (scripts/lab-prereqs.sh), the lab base image (scripts/lab-image.sh), the lab's 3 hosts (playbooks/lab.yml:
# lab-ctl1 the controller with Redis and, in the proxy topologies, a proxy; lab-cmp1 and lab-cmp2 computes),
# `ansible-playbook -i inventory/lab site.yml` (which ends with the smoke test: a call between every pair of
# nodes, a fanout, a cast and a notification from each), then a short summary. A lab deployed with another
# topology is recreated first. The image is $ZMQRPC_LAB_IMAGE (default localhost/zmqrpc-lab:bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-deploy}
export TOPOLOGY=${TOPOLOGY:-static-direct}
STATE=.lab
started=$SECONDS
log() { printf '\n=== deploy: %s (%ds)\n' "$*" $((SECONDS - started)); }

case $action in
    deploy | destroy) ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "deploy: unknown action '$action' (deploy or destroy)" >&2; exit 2 ;;
esac
if [[ $(id -u) -ne 0 ]]; then
    echo "deploy: run this as root (it installs packages and runs rootful podman)" >&2
    exit 1
fi

export PATH=$PWD/.venv/bin:$PATH
export ANSIBLE_CONFIG=$PWD/ansible.cfg

if [[ $action == destroy ]]; then
    if [[ -x .venv/bin/ansible-playbook ]] && command -v podman >/dev/null; then
        log "removing the lab"
        ansible-playbook playbooks/lab.yml -e lab_state=absent
    fi
    rm -rf "$STATE"
    log "lab removed"
    exit 0
fi

log "venv and Debian packages (scripts/dev-setup.sh)"
bash scripts/dev-setup.sh
# Only now is PyYAML there to validate TOPOLOGY against the example inventories.
.venv/bin/python inventory/lab/lab.py --check >/dev/null

log "podman and this machine's podman settings (scripts/lab-prereqs.sh)"
bash scripts/lab-prereqs.sh

log "lab base image (scripts/lab-image.sh)"
bash scripts/lab-image.sh

mkdir -p "$STATE"
if [[ -f $STATE/topology && $(cat "$STATE/topology") != "$TOPOLOGY" ]]; then
    log "the lab runs $(cat "$STATE/topology"): recreating it for $TOPOLOGY"
    ansible-playbook playbooks/lab.yml -e lab_state=absent
fi
log "lab hosts (playbooks/lab.yml)"
ansible-playbook playbooks/lab.yml
echo "$TOPOLOGY" >"$STATE/topology"

log "site.yml, topology $TOPOLOGY, then the smoke test"
rm -f "$STATE/smoke.json"
ansible-playbook -i inventory/lab site.yml -e smoke_report_file="$PWD/$STATE/smoke.json"

log "done"
.venv/bin/python - "$STATE/smoke.json" "$((SECONDS - started))" <<'PY'
import json
import subprocess
import sys

report = json.load(open(sys.argv[1]))
inventory = json.loads(subprocess.check_output(["ansible-inventory", "-i", "inventory/lab", "--list"]))
groups = {
    name: data.get("hosts", [])
    for name, data in inventory.items()
    if name not in ("_meta", "all", "lab", "ungrouped", "zmqrpc_nodes") and data.get("hosts")
}
nodes = report["nodes"]


def address(host):
    out = subprocess.run(
        ["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", host],
        capture_output=True, text=True, check=False,
    )
    return out.stdout.strip() or "?"


print(f"zmqrpc lab: topology {report['topology']}, matchmaker {report['matchmaker']}, "
      f"deployed and smoke-tested in {sys.argv[2]} s")
print("hosts:")
for host in inventory["lab"]["hosts"]:
    member = [g for g, hosts in groups.items() if host in hosts]
    print(f"  {host:<10} {address(host):<15} {', '.join(member) or '(idle in this topology)'}")
print("endpoints (registered in the matchmaker):")
for topic, addresses in report["endpoints"].items():
    print(f"  {topic:<28} {', '.join(addresses)}")
calls = {(c["source"], c["target"].rpartition(".")[2]): c for c in report["checks"] if c["mode"] == "call"}
print("call latency in ms (row: from, column: to; a fresh client, connection set-up included):")
print("  " + " " * 10 + "".join(f"{n:>11}" for n in nodes))
for source in nodes:
    cells = []
    for target in nodes:
        check = calls.get((source, target))
        cells.append("FAIL" if check and not check["ok"] else f"{check['latency_ms']:.2f}" if check else "-")
    print(f"  {source:<10}" + "".join(f"{cell:>11}" for cell in cells))
others = [c for c in report["checks"] if c["mode"] != "call"]
for mode in ("fanout", "cast", "notify"):
    done = [c for c in others if c["mode"] == mode]
    ok = sum(1 for c in done if c["ok"])
    print(f"  {mode:<7} {ok}/{len(done)} ok (each node sent one; received exactly as expected)")
print(f"checks: {report['passed']} passed, {report['failed']} failed")
print("tear down: bash scripts/deploy.sh destroy")
PY
