#!/usr/bin/python
# Copyright: zmqrpc contributors
# Apache License 2.0 (see pyproject.toml)
"""Ansible module: make a running Redis Sentinel monitor a master, at runtime."""
# ruff: noqa: E402  (Ansible modules keep DOCUMENTATION, EXAMPLES and RETURN above the imports)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_sentinel_monitor
short_description: Ensure a Redis Sentinel monitors a master, using SENTINEL commands at runtime
description:
  - Connects to one Sentinel and compares what it monitors under O(name) with the wanted settings.
  - Only the differences are applied, with C(SENTINEL MONITOR), C(SENTINEL SET) and C(SENTINEL REMOVE).
    Sentinel persists them in its own configuration file, so that file never needs templating again.
  - A master whose address differs because Sentinel failed it over is left alone (no change);
    the address is only used to start monitoring, unless O(force_address=true).
  - Reports C(changed) only when a command was (or, in check mode, would be) sent.
version_added: "0.1.0"
author:
  - zmqrpc contributors
requirements:
  - redis-py (C(python3-redis) on Debian) on the host that runs the module.
options:
  name:
    description: Name of the monitored master (the Sentinel master group).
    type: str
    required: true
  state:
    description:
      - V(present) makes the Sentinel monitor the master with the given settings.
      - V(absent) makes it stop monitoring O(name).
    type: str
    choices: [present, absent]
    default: present
  ip:
    description:
      - Address of the master. Required when O(state=present).
      - Only used to start monitoring, or with O(force_address=true).
    type: str
  port:
    description: Port of the master.
    type: int
    default: 6379
  quorum:
    description: Number of Sentinels that must agree the master is down.
    type: int
    default: 2
  down_after_milliseconds:
    description: Time without a valid reply before the master is considered down. Unchanged when omitted.
    type: int
  failover_timeout:
    description: Failover timeout in milliseconds. Unchanged when omitted.
    type: int
  parallel_syncs:
    description: Replicas reconfigured at once after a failover. Unchanged when omitted.
    type: int
  auth_pass:
    description:
      - Password Sentinel uses to authenticate to the master and its replicas.
      - Sentinel does not report this value. It is compared with the C(sentinel auth-pass) line of
        O(config_file) when that file is given and readable; otherwise it is only set when monitoring starts.
    type: str
  config_file:
    description:
      - Sentinel's own configuration file, read (never written) to learn the current O(auth_pass).
    type: path
  force_address:
    description:
      - Re-point the Sentinel to O(ip)/O(port) even when the master moved because of a failover.
      - This removes and re-adds the master, and forgets its known replicas and Sentinels.
    type: bool
    default: false
  sentinel_host:
    description: Address of the Sentinel to talk to.
    type: str
    default: 127.0.0.1
  sentinel_port:
    description: Port of the Sentinel to talk to.
    type: int
    default: 26379
  sentinel_password:
    description: Password of the Sentinel itself (its C(requirepass)), if it has one.
    type: str
  sentinel_tls_ca_file:
    description:
      - Talk TLS to the Sentinel (one that serves only TLS), checking its certificate against this CA
        certificate. Unset, plain TCP.
    type: path
  connect_timeout:
    description: Seconds to wait for the Sentinel to answer.
    type: float
    default: 5.0
notes:
  - Supports check mode.
"""

EXAMPLES = r"""
- name: Monitor the zmqrpc master
  redis_sentinel_monitor:
    name: zmqrpc
    ip: 10.0.0.11
    port: 6379
    quorum: 2
    down_after_milliseconds: 5000
    failover_timeout: 60000
    parallel_syncs: 1
    auth_pass: "{{ redis_server_password }}"
    config_file: /etc/redis/sentinel/sentinel.conf

- name: Stop monitoring an old master group
  redis_sentinel_monitor:
    name: legacy
    state: absent
    sentinel_password: "{{ sentinel_password }}"
"""

RETURN = r"""
master:
  description: What the Sentinel monitors under O(name) after the run (empty when absent).
  returned: always
  type: dict
  sample: {"name": "zmqrpc", "ip": "10.0.0.11", "port": 6379, "quorum": 2, "flags": "master",
           "down_after_milliseconds": 5000, "failover_timeout": 60000, "parallel_syncs": 1,
           "config_epoch": 0, "num_slaves": 2, "num_other_sentinels": 2}
commands:
  description: SENTINEL commands sent (or that would be sent in check mode); passwords are masked.
  returned: always
  type: list
  elements: str
  sample: ["SENTINEL SET zmqrpc quorum 2"]
failed_over:
  description: True when the master's address differs from O(ip)/O(port) because Sentinel failed it over.
  returned: always
  type: bool
"""

import re
import shlex
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

REDIS_IMPORT_ERROR = None
try:
    import redis
except ImportError:  # pragma: no cover - exercised on hosts without redis-py
    redis = None
    REDIS_IMPORT_ERROR = traceback.format_exc()

# module option -> name in SENTINEL MASTER replies and SENTINEL SET
TUNABLES = {
    "quorum": "quorum",
    "down_after_milliseconds": "down-after-milliseconds",
    "failover_timeout": "failover-timeout",
    "parallel_syncs": "parallel-syncs",
}
INT_FIELDS = set(TUNABLES.values()) | {"port", "config-epoch", "num-slaves", "num-other-sentinels"}
MASKED = "********"


def parse_pairs(reply) -> dict:
    """Turn a [key, value, key, value, ...] reply (or a dict, as newer redis-py returns) into a dict.

    Integer fields are converted, whatever redis-py version parsed the reply.
    """
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=False)
    return {key: int(value) if key in INT_FIELDS else value for key, value in pairs}


def read_auth_pass(config_file: str, name: str) -> str | None:
    """Return the auth-pass Sentinel saved for master ``name`` in its config file, if any."""
    with open(config_file, encoding="utf-8") as stream:
        for line in stream:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if (
                len(words) >= 4
                and [w.lower() for w in words[:2]] == ["sentinel", "auth-pass"]
                and words[2] == name
            ):
                return words[3]
    return None


class Sentinel:
    """A connection to one Sentinel that logs every SENTINEL command it sends."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.commands: list[str] = []
        params = module.params
        self.where = f"Sentinel {params['sentinel_host']}:{params['sentinel_port']}"
        self.client = redis.Redis(
            host=params["sentinel_host"],
            port=params["sentinel_port"],
            password=params["sentinel_password"],
            socket_timeout=params["connect_timeout"],
            socket_connect_timeout=params["connect_timeout"],
            decode_responses=True,
            **(
                {"ssl": True, "ssl_ca_certs": params["sentinel_tls_ca_file"], "ssl_cert_reqs": "required"}
                if params["sentinel_tls_ca_file"]
                else {}
            ),
        )

    def call(self, *args):
        try:
            return self.client.execute_command(*args)
        except redis.AuthenticationError as exc:
            if not self.module.params["sentinel_password"]:
                self.module.fail_json(msg=f"{self.where} requires a password: set sentinel_password ({exc})")
            self.module.fail_json(msg=f"{self.where} refused the password (sentinel_password): {exc}")
        except redis.ConnectionError as exc:
            self.module.fail_json(
                msg=f"cannot reach {self.where}: {exc}. Is redis-sentinel running and listening there?"
            )
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc):
                self.module.fail_json(msg=f"{self.where} requires a password: set sentinel_password")
            raise

    def master(self, name: str) -> dict | None:
        try:
            reply = self.call("SENTINEL", "MASTER", name)
        except redis.ResponseError as exc:
            if "no such master" in str(exc).lower():
                return None
            self.module.fail_json(msg=f"{self.where}: SENTINEL MASTER {name} failed: {exc}")
        return parse_pairs(reply)

    def replicas(self, name: str) -> list[dict]:
        try:
            reply = self.call("SENTINEL", "REPLICAS", name)
        except redis.ResponseError:
            reply = self.call("SENTINEL", "SLAVES", name)  # Redis < 5
        return [parse_pairs(entry) for entry in reply]

    def send(self, *args, secret_index: int | None = None):
        """Send a changing command (unless in check mode) and record it, masking a password."""
        shown = [str(a) for a in args]
        if secret_index is not None:
            shown[secret_index] = MASKED
        self.commands.append(" ".join(shown))
        if self.module.check_mode:
            return
        try:
            self.call(*args)
        except redis.ResponseError as exc:
            command = " ".join(shown)
            self.module.fail_json(msg=f"{self.where}: '{command}' failed: {exc}", commands=self.commands)


def summary(master: dict | None) -> dict:
    if not master:
        return {}
    keys = [
        "name",
        "ip",
        "port",
        "flags",
        "quorum",
        "down-after-milliseconds",
        "failover-timeout",
        "parallel-syncs",
        "config-epoch",
        "num-slaves",
        "num-other-sentinels",
    ]
    return {key.replace("-", "_"): master[key] for key in keys if key in master}


def was_failed_over(sentinel: Sentinel, name: str, master: dict, ip: str, port: int) -> bool:
    """True when the wanted address is a replica of the current master or a failover happened."""
    if master.get("config-epoch", 0) > 0:
        return True
    return any(r.get("ip") == ip and r.get("port") == port for r in sentinel.replicas(name))


def run_module() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            ip=dict(type="str"),
            port=dict(type="int", default=6379),
            quorum=dict(type="int", default=2),
            down_after_milliseconds=dict(type="int"),
            failover_timeout=dict(type="int"),
            parallel_syncs=dict(type="int"),
            auth_pass=dict(type="str", no_log=True),
            config_file=dict(type="path"),
            force_address=dict(type="bool", default=False),
            sentinel_host=dict(type="str", default="127.0.0.1"),
            sentinel_port=dict(type="int", default=26379),
            sentinel_password=dict(type="str", no_log=True),
            sentinel_tls_ca_file=dict(type="path"),
            connect_timeout=dict(type="float", default=5.0),
        ),
        required_if=[("state", "present", ["ip"])],
        supports_check_mode=True,
    )
    params = module.params
    name = params["name"]

    for option in ("port", "sentinel_port"):
        if not 0 < params[option] < 65536:
            module.fail_json(msg=f"{option} must be between 1 and 65535, got {params[option]}")
    for option in ("quorum", "down_after_milliseconds", "failover_timeout", "parallel_syncs"):
        if params[option] is not None and params[option] < 1:
            module.fail_json(msg=f"{option} must be a positive integer, got {params[option]}")
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
        module.fail_json(msg=f"name {name!r} may only hold letters, digits and . _ : -")

    if redis is None:
        module.fail_json(msg=missing_required_lib("redis (python3-redis)"), exception=REDIS_IMPORT_ERROR)

    sentinel = Sentinel(module)
    current = sentinel.master(name)
    result = {"changed": False, "commands": sentinel.commands, "failed_over": False}

    if params["state"] == "absent":
        if current is not None:
            sentinel.send("SENTINEL", "REMOVE", name)
        result["changed"] = bool(sentinel.commands)
        result["master"] = summary(current) if module.check_mode else {}
        module.exit_json(**result)

    ip, port = params["ip"], params["port"]
    settings = {TUNABLES[k]: params[k] for k in TUNABLES if params[k] is not None}
    auth_pass = params["auth_pass"]

    if current is not None and (current["ip"], current["port"]) != (ip, port):
        if not params["force_address"] and was_failed_over(sentinel, name, current, ip, port):
            result["failed_over"] = True
        else:
            # An operator changed the master's address: start over with the new one.
            sentinel.send("SENTINEL", "REMOVE", name)
            current = None

    if current is None:
        sentinel.send("SENTINEL", "MONITOR", name, ip, port, params["quorum"])
        settings.pop("quorum")
        to_set = dict(settings)
        if auth_pass:
            to_set["auth-pass"] = auth_pass
    else:
        to_set = {key: value for key, value in settings.items() if current.get(key) != value}
        if auth_pass is not None:
            saved = None
            if params["config_file"]:
                try:
                    saved = read_auth_pass(params["config_file"], name)
                except OSError as exc:
                    module.fail_json(msg=f"cannot read config_file {params['config_file']}: {exc}")
                if saved != (auth_pass or None):
                    to_set["auth-pass"] = auth_pass

    for key, value in to_set.items():
        sentinel.send("SENTINEL", "SET", name, key, value, secret_index=4 if key == "auth-pass" else None)

    result["changed"] = bool(sentinel.commands)
    if module.check_mode or not result["changed"]:
        result["master"] = summary(current)
    else:
        result["master"] = summary(sentinel.master(name))
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
