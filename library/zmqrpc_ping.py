#!/usr/bin/python
# Copyright: zmqrpc contributors
# Apache License 2.0 (see pyproject.toml)
"""Ansible module: check the zmqrpc bus from a node: call, cast, fan out or notify the agents."""
# ruff: noqa: E402  (Ansible modules keep DOCUMENTATION, EXAMPLES and RETURN above the imports)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zmqrpc_ping
short_description: Check the zmqrpc bus from a node, by talking to the zmqrpc agents over it
description:
  - Runs the node's own C(zmqrpc ping) command (the zmqrpc CLI of role zmqrpc), so the message leaves from
    the node this module runs on, with that node's config file, matchmaker and topology.
  - V(call) calls C(ping) on the agent of O(server) (topic C(zmqrpc-agent.<server>)), or on any agent of
    O(topic) without O(server), and returns who answered and the round-trip latency.
  - V(cast) sends one-way to O(server) (or to any agent of O(topic)) and then asks the agents of O(hosts)
    (default O(server)) whether it arrived, exactly once.
  - V(fanout) sends one copy to every agent of O(topic) and checks that each agent of O(hosts) received it
    exactly once.
  - V(notify) sends a notification on C(zmqrpc-agent.info) and checks that exactly one of O(hosts)
    received it.
  - A failed check fails the task with a message that names the pair (this node and the target) and what
    went wrong.
  - Nothing is ever configured, so the module never reports C(changed). In check mode nothing is sent; the
    result says what would be.
version_added: "0.1.0"
author:
  - zmqrpc contributors
extends_documentation_fragment:
  - zmqrpc_node
requirements:
  - zmqrpc installed on the node (role zmqrpc), with the agents running (role zmqrpc_agent).
options:
  mode:
    description: What to send.
    type: str
    choices: [call, cast, fanout, notify]
    default: call
  server:
    description:
      - Host name (C(rpc_zmq_host)) of the agent to reach, for V(call) and V(cast); the message goes to the
        directed topic C(<topic>.<server>).
      - Without it a call or cast goes to any agent of O(topic) (round robin).
    type: str
  hosts:
    description:
      - Agents whose receipt is checked, for V(cast), V(fanout) and V(notify).
      - V(fanout) needs every one of them to have received exactly one copy (list every agent of the
        topic).
      - V(cast) and V(notify) need exactly one of them to have received it.
      - Required for V(fanout). For V(cast) it defaults to O(server).
    type: list
    elements: str
  topic:
    description: The agents' topic.
    type: str
    default: zmqrpc-agent
  timeout:
    description: Seconds to wait for the reply, and for the copies to arrive.
    type: float
    default: 5.0
  source:
    description:
      - Name of this node in results and messages. Defaults to C(rpc_zmq_host) of O(config_file), else the
        host name.
    type: str
notes:
  - Supports check mode.
seealso:
  - module: zmqrpc_matchmaker
"""

EXAMPLES = r"""
- name: Call the agent of compute2 from this node
  zmqrpc_ping:
    server: compute2
  register: ping

- name: Fanout from this node must reach every agent exactly once
  zmqrpc_ping:
    mode: fanout
    hosts: "{{ groups['zmqrpc_nodes'] }}"

- name: A cast to controller1, received there once
  zmqrpc_ping:
    mode: cast
    server: controller1

- name: A notification, received by exactly one agent
  zmqrpc_ping:
    mode: notify
    hosts: "{{ groups['zmqrpc_nodes'] }}"
"""

RETURN = r"""
ok:
  description: The check passed (always true unless the task failed; null in check mode).
  returned: always
  type: bool
source:
  description: This node's name.
  returned: always
  type: str
  sample: compute1
target:
  description: What was addressed, for messages and summaries.
  returned: always
  type: str
  sample: zmqrpc-agent.controller1
mode:
  description: O(mode).
  returned: always
  type: str
responder:
  description: Host name of the agent that answered a call.
  returned: when mode is call and not in check mode
  type: str
  sample: controller1
latency_ms:
  description: Round trip of a call, or time to hand a cast, fanout or notification to the bus, in ms.
  returned: when not in check mode
  type: float
  sample: 1.84
received:
  description: For cast, fanout and notify, copies each agent of O(hosts) received.
  returned: when mode is not call and not in check mode
  type: dict
  sample: {"controller1": 1, "compute1": 1, "compute2": 1}
sent_to:
  description: For fanout, how many agents the copy was sent to.
  returned: when mode is fanout and not in check mode
  type: int
reply:
  description: The agent's reply to a call.
  returned: when mode is call and not in check mode
  type: dict
command:
  description: The zmqrpc command run (or that would run in check mode).
  returned: always
  type: list
  elements: str
"""

import configparser
import json
import os
import socket

from ansible.module_utils.basic import AnsibleModule


def node_name(config_file: str) -> str:
    """rpc_zmq_host of the config file (oslo.config style), else this host's name."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(config_file)
        name = parser.get("oslo_messaging_zmq", "rpc_zmq_host", fallback="").strip()
    except (configparser.Error, OSError):
        name = ""
    return name or socket.gethostname()


def describe_target(params: dict) -> str:
    if params["server"]:
        return f"{params['topic']}.{params['server']}"
    if params["hosts"]:
        return f"{params['topic']} on {', '.join(params['hosts'])}"
    return params["topic"]


def what_went_wrong(mode: str, result: dict, hosts: list[str]) -> str:
    """A sentence on why ``zmqrpc ping`` (exit 1) judged a delivery wrong."""
    received = result.get("received") or {}
    if mode == "call":
        return f"no responder in the reply {result.get('reply')!r}"
    missing = sorted(h for h in hosts if received.get(h, 0) == 0)
    extra = sorted(h for h in hosts if received.get(h, 0) > 1)
    if mode == "fanout":
        parts = []
        if missing:
            parts.append(f"never reached {', '.join(missing)}")
        if extra:
            parts.append("duplicated on " + ", ".join(f"{h} ({received[h]} copies)" for h in extra))
        sent = result.get("sent_to")
        return "; ".join(parts) + (f" (sent to {sent} agent(s))" if sent is not None else "")
    total = sum(received.values())
    if total == 0:
        return f"received by none of {', '.join(hosts)}"
    return f"received {total} times, expected once: {received}"


def silent_agents(module: AnsibleModule, base: list[str], hosts: list[str], timeout: float) -> list[str]:
    """The agents of ``hosts`` that do not answer a directed call (``base``: zmqrpc ping --config-file F)."""
    silent = []
    for host in hosts:
        rc, _, _ = module.run_command([*base, "--server", host, "--timeout", str(min(timeout, 2.0))])
        if rc != 0:
            silent.append(host)
    return silent


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", default="call", choices=["call", "cast", "fanout", "notify"]),
            server=dict(type="str"),
            hosts=dict(type="list", elements="str"),
            topic=dict(type="str", default="zmqrpc-agent"),
            timeout=dict(type="float", default=5.0),
            config_file=dict(type="path", default="/etc/zmqrpc/zmqrpc.conf"),
            executable=dict(type="path", default="/opt/zmqrpc/venv/bin/zmqrpc"),
            source=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    mode = params["mode"]
    if params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be greater than 0, got {params['timeout']}")
    if mode == "notify" and params["server"]:
        module.fail_json(
            msg="server does not apply to notify (a notification goes to one listener of the pool)"
        )
    hosts = [h for h in params["hosts"] or [] if h]
    if mode == "fanout" and not hosts:
        module.fail_json(msg="fanout needs hosts: the agents that must each receive exactly one copy")
    if mode == "cast" and not hosts and params["server"]:
        hosts = [params["server"]]
    if mode == "call" and hosts:
        module.fail_json(msg="hosts applies to cast, fanout and notify; a call is checked by its reply")

    source = params["source"] or node_name(params["config_file"])
    target = describe_target(dict(params, hosts=hosts))
    command = [
        params["executable"],
        "ping",
        "--config-file",
        params["config_file"],
        "--mode",
        mode,
        "--topic",
        params["topic"],
        "--timeout",
        str(params["timeout"]),
    ]
    if params["server"]:
        command += ["--server", params["server"]]
    if hosts:
        command += ["--hosts", ",".join(hosts)]
    result = {"changed": False, "source": source, "target": target, "mode": mode, "command": command}
    pair = f"zmqrpc {mode} from {source} to {target}"

    if module.check_mode:
        module.exit_json(ok=None, msg=f"check mode: would send a {mode} from {source} to {target}", **result)

    if not os.access(params["executable"], os.X_OK):
        module.fail_json(
            msg=f"{pair}: {params['executable']} is missing or not executable on {source}; "
            "is role zmqrpc applied (or set executable)?",
            **result,
        )
    rc, stdout, stderr = module.run_command(command)
    lines = [line for line in stdout.splitlines() if line.strip()]
    answer = None
    if lines:
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            answer = None
    if rc == 2 or answer is None:
        error = stderr.strip().splitlines()[-1] if stderr.strip() else stdout.strip() or f"exit code {rc}"
        if mode != "call" and hosts:
            # The receipt check asks each agent of hosts what it saw: say which of them do not answer.
            silent = silent_agents(module, command[:4], hosts, params["timeout"])
            if silent:
                error += f" (agents that do not answer a call from {source}: {', '.join(silent)})"
        module.fail_json(msg=f"{pair} failed: {error}", rc=rc, stdout=stdout, stderr=stderr, **result)

    for key in ("responder", "latency_ms", "received", "sent_to", "reply"):
        if key in answer:
            result[key] = answer[key]
    if rc != 0 or not answer.get("ok"):
        module.fail_json(
            msg=f"{pair} failed the check: {what_went_wrong(mode, answer, hosts)}", ok=False, rc=rc, **result
        )
    module.exit_json(ok=True, **result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
