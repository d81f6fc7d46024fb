#!/usr/bin/env python3
"""Ansible inventory of the local podman lab (playbooks/lab.yml creates it): three hosts, reached with the
containers.podman.podman connection. TOPOLOGY (default static-direct) names one of the example inventories
next to this one: its group_vars select the topology, and the lab's hosts take the parts it needs.

  lab-ctl1  controller: Redis (the master), and the central proxy in the proxy topologies
  lab-cmp1  compute     (a Redis replica and a Sentinel in sentinel-ha)
  lab-cmp2  compute     (same)

All three are always in group `lab`; all-in-one uses lab-ctl1 only. Run as an Ansible inventory script
(--list / --host NAME), or with --check to validate TOPOLOGY.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
DEFAULT_TOPOLOGY = "static-direct"
CONTROLLER, COMPUTES = "lab-ctl1", ["lab-cmp1", "lab-cmp2"]
PROXY_TOPOLOGIES = {"router-proxy", "pubsub", "local-publisher", "dynamic-pubsub"}


def load_yaml(path: Path):
    try:
        import yaml
    except ImportError:  # the script runs with the first python3 on PATH: use the project venv's instead
        venv_python = EXAMPLES.parent / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.executable).resolve() != venv_python.resolve():
            os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
        sys.exit(f"{__file__}: PyYAML is missing (run it with the project venv: .venv/bin/python)")
    return yaml.safe_load(path.read_text()) or {}


def topologies() -> list[str]:
    examples = (p.parent.parent for p in EXAMPLES.glob("*/group_vars/all.yml"))
    return sorted(example.name for example in examples if example != HERE)


def groups_for(topology: str) -> dict[str, list[str]]:
    nodes = [CONTROLLER] if topology == "all-in-one" else [CONTROLLER, *COMPUTES]
    groups: dict[str, list[str]] = {
        "lab": [CONTROLLER, *COMPUTES],
        "controllers": [CONTROLLER],
        "computes": [h for h in COMPUTES if h in nodes],
        "redis": [],
        "redis_master": [],
        "redis_replicas": [],
        "redis_sentinel": [],
        "zmq_proxies": [CONTROLLER] if topology in PROXY_TOPOLOGIES else [],
    }
    if topology != "all-in-one":
        groups["redis_master"] = [CONTROLLER]
    if topology == "sentinel-ha":
        groups["redis_replicas"] = list(COMPUTES)
        groups["redis_sentinel"] = [CONTROLLER, *COMPUTES]
    return groups


def inventory(topology: str) -> dict:
    groups = groups_for(topology)
    result: dict = {
        "all": {"children": ["lab", "redis", "redis_sentinel", "zmq_proxies", "zmqrpc_nodes"]},
        "redis": {"children": ["redis_master", "redis_replicas"]},
        "zmqrpc_nodes": {"children": ["controllers", "computes"]},
    }
    for name, hosts in groups.items():
        result.setdefault(name, {})["hosts"] = hosts
    # The topology's group_vars (the lab's own group_vars/ beside this script come on top of them).
    for path in sorted((EXAMPLES / topology / "group_vars").glob("*.yml")):
        result.setdefault(path.stem, {})["vars"] = load_yaml(path)
    result.setdefault("all", {}).setdefault("vars", {})["zmqrpc_lab_topology"] = topology
    # Per host, not on group all: the implicit localhost (delegate_to: localhost) takes group all's vars.
    hostvars = {
        host: {
            "ansible_connection": "containers.podman.podman",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        for host in groups["lab"]
    }
    result["_meta"] = {"hostvars": hostvars}
    return result


def main(argv: list[str]) -> int:
    topology = os.environ.get("TOPOLOGY") or DEFAULT_TOPOLOGY
    known = topologies()
    if topology not in known:
        print(f"{__file__}: unknown TOPOLOGY={topology!r}; one of: {', '.join(known)}", file=sys.stderr)
        return 1
    if argv[:1] == ["--check"]:
        print(topology)
        return 0
    if argv[:1] == ["--host"]:
        print(json.dumps(inventory(topology)["_meta"]["hostvars"].get(argv[1], {})))
        return 0
    print(json.dumps(inventory(topology), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
