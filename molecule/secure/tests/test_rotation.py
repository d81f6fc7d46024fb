"""Key rotation under load: playbooks/rotate-keys.yml replaces every proxy's and node's CURVE key pair in two
phases while a long-lived client keeps calling every agent, and no call is lost. Afterwards each host uses
<name>+1, the old pairs are gone from every host and every allowed-keys directory, and new processes on
every node reach every agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CONFIG_FILE, CURVE_DIR, HOSTS, VENV, lab_host
from zmqrpc_lab import ANSIBLE_ARGS, wait_until

CALLER = "sec-cmp1"
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY") or Path(__file__).resolve().parents[3])
LOG, STOP, UNIT = "/var/tmp/sec-rotation-probe.jsonl", "/var/tmp/sec-rotation-probe.stop", "sec-rotation-probe"
# A whole playbook over the scenario's hosts: minutes on a loaded machine, far past pytest's default timeout.
PLAYBOOK_TIMEOUT = 900

# One RpcClient, as a service holds one: a call to every agent in turn, one JSON line per call, until the
# stop file appears (or 10 minutes pass). With acks, as a client that must not lose a call runs: a call
# that a restarting proxy or agent dropped is sent again (README, "Reliable delivery").
PROBE = f"""
import json, os, sys, time
from zmqrpc import RpcClient, load_settings

targets = sys.argv[1].split(",")
settings = load_settings(
    config_files=["{CONFIG_FILE}"],
    overrides={{"rpc_use_acks": True, "rpc_ack_timeout_base": 2.0, "rpc_retry_attempts": 10}},
)
with open("{LOG}", "a", buffering=1) as log, RpcClient(settings) as client:
    deadline = time.monotonic() + 600
    while not os.path.exists("{STOP}") and time.monotonic() < deadline:
        for target in targets:
            line = {{"target": target, "t": time.time()}}
            try:
                client.call("zmqrpc-agent", "ping", timeout=40, server=target)
                line["ok"] = True
            except Exception as exc:
                line["ok"], line["error"] = False, "%s: %s" % (type(exc).__name__, exc)
            log.write(json.dumps(line) + "\\n")
        time.sleep(0.1)
"""


def playbook(name: str, *options: str) -> subprocess.CompletedProcess:
    """ansible-playbook ``name`` (from the project) against the scenario's inventory, as converge runs it."""
    ephemeral = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    env = {**os.environ, "ANSIBLE_CONFIG": os.environ.get("ANSIBLE_CONFIG") or f"{ephemeral}/ansible.cfg"}
    command = [
        "ansible-playbook",
        "--inventory", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
        *ANSIBLE_ARGS,
        *options,
        str(PROJECT / name),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counters per host: {"sec-ctl1": {"ok": 57, "changed": 0, ...}}."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
        for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output.split("PLAY RECAP")[-1], re.M)
    }


def probe_lines() -> list[dict]:
    text = lab_host(CALLER).run(f"cat {LOG}").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(PLAYBOOK_TIMEOUT + 120)
def test_rotation_under_load_loses_no_call():
    host = lab_host(CALLER)
    host.check_output(f"rm -f {LOG} {STOP} && cat > /var/tmp/sec-rotation-probe.py <<'EOF'\n{PROBE}\nEOF")
    host.check_output(
        f"systemd-run --unit {UNIT} --collect {VENV}/bin/python /var/tmp/sec-rotation-probe.py {','.join(HOSTS)}"
    )
    try:
        wait_until(lambda: sum(line["ok"] for line in probe_lines()) >= len(HOSTS), 60, "the probe calls")
        started = time.time()
        result = playbook("playbooks/rotate-keys.yml")
        finished = time.time()
        assert result.returncode == 0, (
            f"rotate-keys.yml failed (exit {result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
        time.sleep(3)  # calls after the last phase, on the new keys only
    finally:
        host.run(f"touch {STOP}")
        wait_until(lambda: not host.service(UNIT).is_running, 30, "the probe stops")
    lines = probe_lines()
    failed = [line for line in lines if not line["ok"]]
    during = [line for line in lines if started <= line["t"] <= finished]
    assert not failed, f"{len(failed)} of {len(lines)} calls failed during the rotation: {failed[:5]}"
    assert len(during) >= 10 * len(HOSTS), f"only {len(during)} calls during the rotation: no steady load"
    assert {line["target"] for line in during} == set(HOSTS)


def test_every_host_uses_its_new_pair_and_only_new_keys_are_allowed():
    for name in HOSTS:
        host = lab_host(name)
        assert host.file(f"{CURVE_DIR}/in-use").content_string.strip() == f"{name}+1"
        assert host.file(CONFIG_FILE).contains(f"^zmq_curve_secret_key_file = {CURVE_DIR}/{name}+1.key_secret$")
        secret = host.file(f"{CURVE_DIR}/{name}+1.key_secret")
        assert (secret.user, secret.mode) == ("zmqrpc", 0o600), f"{name}: {secret.user} {oct(secret.mode)}"
        own = sorted(host.check_output(f"cd {CURVE_DIR} && ls *.key *.key_secret").split())
        assert own == [f"{name}+1.key", f"{name}+1.key_secret"], f"{name} still holds {own}"
        allowed = sorted(host.check_output(f"ls {CURVE_DIR}/allowed").split())
        assert allowed == sorted(f"{peer}+1.key" for peer in HOSTS), f"{name} allows {allowed}"
    # New processes on every node (on the new keys) reach every agent (restarted on theirs) exactly once.
    for name in HOSTS:
        result = lab_host(name).run(
            f"{VENV}/bin/zmqrpc ping --config-file {CONFIG_FILE} --mode fanout --hosts {','.join(HOSTS)} --timeout 10"
        )
        assert result.rc == 0, f"fanout from {name} after the rotation: {result.stdout} {result.stderr[-2000:]}"


@pytest.mark.timeout(PLAYBOOK_TIMEOUT + 60)
def test_site_yml_after_the_rotation_would_change_nothing():
    """site.yml keeps the rotated pairs: run again, in check mode, it would change nothing on any host (and
    it runs in check mode at all, with security on)."""
    result = playbook("site.yml", "--check")
    assert result.returncode == 0, (
        f"site.yml --check failed (exit {result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
    counters = recap(result.stdout)
    assert set(HOSTS) <= set(counters), f"PLAY RECAP names only {sorted(counters)}"  # and localhost
    changed = {host: c["changed"] for host, c in counters.items() if c["changed"] or c["failed"]}
    assert not changed, f"site.yml --check after the rotation would change: {changed}\n{result.stdout[-8000:]}"
