#!/usr/bin/python
# Copyright: zmqrpc contributors
# Apache License 2.0 (see pyproject.toml)
"""Ansible module: list, register, unregister and purge zmqrpc matchmaker entries."""
# ruff: noqa: E402  (Ansible modules keep DOCUMENTATION, EXAMPLES and RETURN above the imports)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zmqrpc_matchmaker
short_description: Inspect and edit the zmqrpc matchmaker (who serves which topic)
description:
  - Runs the node's own C(zmqrpc matchmaker) command, with that node's config file, so it works with every
    matchmaker the config names (Redis, Sentinel, the dummy one shared through C(rpc_zmq_ipc_dir), a ring file
    for reading).
  - V(list) returns every topic with its addresses and the seconds each has left.
  - V(register) adds an address to a topic, V(unregister) removes it. Both are idempotent, and report
    C(changed) only when the entry was absent (register) or present (unregister). An entry that is already
    registered is left as it is (its TTL is not refreshed).
  - V(purge) removes expired entries, and reports C(changed) when it removed any.
version_added: "0.1.0"
author:
  - zmqrpc contributors
extends_documentation_fragment:
  - zmqrpc_node
requirements:
  - zmqrpc installed on the node (role zmqrpc).
options:
  command:
    description: What to do.
    type: str
    choices: [list, register, unregister, purge]
    default: list
  topic:
    description:
      - The topic, a bare one (C(compute)) or a directed one (C(compute.host1)). Required to register and
        unregister; with V(list), only that topic is returned.
    type: str
  address:
    description:
      - The C(host:port) (or a proxy's routing id) that serves O(topic).
      - Required to register and unregister.
    type: str
  expire:
    description:
      - Seconds the registration lives; 0 or less never expires.
      - The default is zmqrpc's C(zmq_target_expire).
    type: int
    default: 300
notes:
  - Supports check mode. V(purge) in check mode cannot count the expired entries (the matchmaker only
    lists live ones), so it removes nothing and reports no change.
seealso:
  - module: zmqrpc_ping
"""

EXAMPLES = r"""
- name: Who serves what
  zmqrpc_matchmaker:
  register: matchmaker

- name: The agents' addresses
  ansible.builtin.debug:
    msg: "{{ matchmaker.topics['zmqrpc-agent'] | default({}) }}"

- name: A static target that never expires
  zmqrpc_matchmaker:
    command: register
    topic: legacy-service
    address: 10.0.0.20:5000
    expire: 0

- name: Withdraw it
  zmqrpc_matchmaker:
    command: unregister
    topic: legacy-service
    address: 10.0.0.20:5000

- name: Remove what expired
  zmqrpc_matchmaker:
    command: purge
"""

RETURN = r"""
topics:
  description:
    - After the command (as it would be, in check mode), each topic (only O(topic) when given) with its
      addresses and the seconds each has left (null when it never expires).
  returned: always
  type: dict
  sample: {"zmqrpc-agent": {"10.89.0.2:50211": 296.4}, "zmqrpc-agent.ctl1": {"10.89.0.2:50211": 296.4}}
hosts:
  description: The addresses of O(topic), sorted.
  returned: when topic is given
  type: list
  elements: str
  sample: ["10.89.0.2:50211"]
purged:
  description: Entries removed by V(purge).
  returned: when command is purge
  type: int
commands:
  description: zmqrpc commands that changed something (or would, in check mode).
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


class Matchmaker:
    """The node's ``zmqrpc matchmaker`` command."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        params = module.params
        self.base = [params["executable"], "matchmaker", "--config-file", params["config_file"]]
        self.changes: list[str] = []

    def run(self, *args: str) -> dict:
        command = [*self.base, *args]
        rc, stdout, stderr = self.module.run_command(command)
        if rc != 0:
            error = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {rc}"
            self.module.fail_json(
                msg=f"zmqrpc matchmaker {args[0]} failed: {error}",
                rc=rc,
                stdout=stdout,
                stderr=stderr,
                command=command,
                commands=self.changes,
            )
        try:
            return json.loads(stdout)
        except ValueError:
            self.module.fail_json(
                msg=f"zmqrpc matchmaker {args[0]} printed no JSON: {stdout.strip()[:200]!r}",
                command=command,
            )
        raise AssertionError("unreachable")

    def topics(self, topic: str | None = None) -> dict:
        return self.run("list", *(["--topic", topic] if topic else []))

    def change(self, *args: str) -> dict | None:
        """Run a changing command, unless in check mode; record it either way."""
        self.changes.append(" ".join(["zmqrpc matchmaker", *args]))
        if self.module.check_mode:
            return None
        return self.run(*args)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="str", default="list", choices=["list", "register", "unregister", "purge"]),
            topic=dict(type="str"),
            address=dict(type="str"),
            expire=dict(type="int", default=300),
            config_file=dict(type="path", default="/etc/zmqrpc/zmqrpc.conf"),
            executable=dict(type="path", default="/opt/zmqrpc/venv/bin/zmqrpc"),
        ),
        required_if=[
            ("command", "register", ["topic", "address"]),
            ("command", "unregister", ["topic", "address"]),
        ],
        supports_check_mode=True,
    )
    params = module.params
    command, topic, address = params["command"], params["topic"], params["address"]
    if not os.access(params["executable"], os.X_OK):
        module.fail_json(
            msg=f"{params['executable']} is missing or not executable: "
            "is role zmqrpc applied (or set executable)?"
        )
    matchmaker = Matchmaker(module)
    result: dict = {"changed": False, "commands": matchmaker.changes}

    if command in ("register", "unregister"):
        members = matchmaker.topics(topic).get(topic, {})
        present = address in members
        if command == "register" and not present:
            matchmaker.change(
                "register", "--topic", topic, "--address", address, "--expire", str(params["expire"])
            )
            if module.check_mode:
                members = dict(
                    members, **{address: None if params["expire"] <= 0 else float(params["expire"])}
                )
        elif command == "unregister" and present:
            matchmaker.change("unregister", "--topic", topic, "--address", address)
            if module.check_mode:
                members = {a: ttl for a, ttl in members.items() if a != address}
        result["changed"] = bool(matchmaker.changes)
        if result["changed"] and not module.check_mode:
            members = matchmaker.topics(topic).get(topic, {})
        result["topics"] = {topic: members} if members else {}
    elif command == "purge":
        if module.check_mode:
            result["purged"] = 0
            result["msg"] = (
                "check mode: expired entries cannot be counted without removing them; nothing purged"
            )
        else:
            purged = int(matchmaker.run("purge").get("purged", 0))
            result["purged"] = purged
            result["changed"] = purged > 0
        result["topics"] = matchmaker.topics(topic)
    else:
        result["topics"] = matchmaker.topics(topic)

    if topic:
        result["hosts"] = sorted(result["topics"].get(topic, {}))
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
