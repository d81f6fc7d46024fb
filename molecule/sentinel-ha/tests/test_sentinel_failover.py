"""Failover drill: stop the master's Redis while the bus is in use.

Sentinels elect a new master and agree; the old one rejoins as a replica. Throughout, a long-lived zmqrpc
client on a compute keeps calling every other node's agent (zmq+sentinel://), and every call must succeed.
Registrations made after the failover land on the new master.
"""

import base64
import json
import time

import pytest
from conftest import (
    CONFIG_FILE,
    HOSTS,
    MASTER_NAME,
    VENV,
    address_of,
    lab_host,
    redis_cli,
    replicates_from,
    replication,
    sentinel_master_addr,
    wait_until,
)

TIMEOUT = 90  # down-after 2 s + election + reconfiguration, with a wide margin for a loaded machine
PROBE_LOG = "/var/tmp/zmqrpc-bus-probe.jsonl"
PROBE_STOP = "/var/tmp/zmqrpc-bus-probe.stop"
PROBE_UNIT = "zmqrpc-bus-probe"

# One RpcClient for the whole drill (as a service holds one): a call to each target every ~0.3 s, one JSON
# line per call. It stops when the stop file appears, or after 10 minutes.
PROBE = f"""
import json, os, sys, time
from zmqrpc import config
from zmqrpc.client import RpcClient

targets = sys.argv[1].split(",")
settings = config.load_settings(config_files=["{CONFIG_FILE}"])
deadline = time.monotonic() + 600
with RpcClient(settings) as client, open("{PROBE_LOG}", "a", buffering=1) as log:
    while time.monotonic() < deadline and not os.path.exists("{PROBE_STOP}"):
        for target in targets:
            started = time.time()
            entry = {{"at": started, "target": target}}
            try:
                reply = client.call("zmqrpc-agent", "ping", timeout=5, server=target)
                entry["responder"] = reply.get("host")
            except Exception as exc:
                entry["error"] = f"{{type(exc).__name__}}: {{exc}}"
            entry["ms"] = round((time.time() - started) * 1000, 1)
            log.write(json.dumps(entry) + "\\n")
        time.sleep(0.3)
"""


def probe_entries(host) -> list[dict]:
    text = host.run(f"cat {PROBE_LOG}").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bus_probe():
    """Start the calling client on a compute (a host that is not the first master), yield it, stop it."""
    prober = HOSTS[1]
    targets = [name for name in HOSTS if name != prober]
    host = lab_host(prober)
    host.run(f"systemctl stop {PROBE_UNIT}; rm -f {PROBE_LOG} {PROBE_STOP}")
    script = base64.b64encode(PROBE.encode()).decode()
    host.check_output(f"echo {script} | base64 -d > /var/tmp/zmqrpc-bus-probe.py")
    host.check_output(
        f"systemd-run --unit={PROBE_UNIT} {VENV}/bin/python /var/tmp/zmqrpc-bus-probe.py {','.join(targets)}"
    )
    wait_until(
        lambda: (
            {e["target"] for e in probe_entries(host) if e.get("responder") == e["target"]} == set(targets)
        ),
        30,
        f"the bus probe on {prober} gets answers from {targets} before the drill",
    )
    yield {"host": host, "prober": prober, "targets": targets}
    host.run(f"touch {PROBE_STOP}")
    host.run(f"timeout 15 sh -c 'while systemctl is-active -q {PROBE_UNIT}; do sleep 0.5; done'")
    host.run(f"systemctl stop {PROBE_UNIT}")


@pytest.fixture(scope="module")
def failover(bus_probe):
    """Stop the master's Redis; wait for the new master, the replica's switch and the old master's return."""
    ips = {name: address_of(name) for name in HOSTS}
    old_ip, _ = sentinel_master_addr(HOSTS[0])
    old_master = next(name for name, ip in ips.items() if ip == old_ip)
    survivors = [name for name in HOSTS if name != old_master]

    stopped_at = time.time()
    lab_host(old_master).check_output("systemctl stop redis-server")
    try:

        def new_master_agreed():
            answers = {sentinel_master_addr(name)[0] for name in HOSTS}
            return len(answers) == 1 and old_ip not in answers and answers.pop()

        new_ip = wait_until(new_master_agreed, TIMEOUT, "all Sentinels agree on a new master")
        new_master = next(name for name, ip in ips.items() if ip == new_ip)
        elected_at = time.time()
        assert new_master in survivors
        assert replication(new_master)["role"] == "master"

        other = next(name for name in survivors if name != new_master)
        wait_until(
            lambda: replicates_from(other, new_ip),
            TIMEOUT,
            f"{other} replicates from the new master {new_master}",
        )
    finally:
        lab_host(old_master).check_output("systemctl start redis-server")

    # The old master comes back as a master (its redis.conf says so); Sentinel demotes it.
    wait_until(
        lambda: replicates_from(old_master, new_ip),
        TIMEOUT,
        f"{old_master} rejoins as a replica of {new_master}",
    )
    # A few more calls after the old master is back, so the probe covers the whole drill.
    time.sleep(3)
    return {
        "old_master": old_master,
        "new_master": new_master,
        "new_ip": new_ip,
        "stopped_at": stopped_at,
        "elected_at": elected_at,
    }


def test_sentinels_fail_over_when_the_master_stops(failover):
    assert failover["new_master"] != failover["old_master"]


def test_the_bus_keeps_serving_calls_throughout_the_failover(bus_probe, failover):
    entries = probe_entries(bus_probe["host"])
    during = [e for e in entries if failover["stopped_at"] <= e["at"] <= failover["elected_at"]]
    failed = [e for e in entries if e.get("responder") != e["target"]]
    assert during, f"the probe on {bus_probe['prober']} made no call while the master was down"
    assert not failed, (
        f"{len(failed)} of {len(entries)} calls from {bus_probe['prober']} failed during the drill "
        f"(master {failover['old_master']} stopped at {failover['stopped_at']:.1f}, "
        f"{failover['new_master']} elected at {failover['elected_at']:.1f}): {failed[:5]}"
    )
    for target in bus_probe["targets"]:
        answered = [e for e in during if e.get("responder") == target]
        assert answered, f"{target}'s agent was not called while the master was down"


def test_registrations_after_the_failover_land_on_the_new_master(failover):
    """A node registers a target through Sentinel; the key is on the new master, and replicated."""
    node = HOSTS[2]
    topic, address = "zmqrpc-failover-check", f"{node}:59999"
    lab_host(node).check_output(
        f"{VENV}/bin/zmqrpc matchmaker register --config-file {CONFIG_FILE} "
        f"--topic {topic} --address {address} --expire 300"
    )
    key = f"zmqrpc:topic:{topic}"
    new_master = lab_host(failover["new_master"])
    assert redis_cli(new_master, "ZSCORE", key, address), (
        f"{key} {address} is not on {failover['new_master']}"
    )
    assert replication(failover["new_master"])["role"] == "master"
    redis_cli(new_master, "WAIT", str(len(HOSTS) - 1), "5000")
    for name in HOSTS:
        assert redis_cli(lab_host(name), "ZSCORE", key, address), f"{key} {address} did not reach {name}"
    listing = json.loads(
        lab_host(HOSTS[1]).check_output(f"{VENV}/bin/zmqrpc matchmaker list --config-file {CONFIG_FILE}")
    )
    assert address in listing.get(topic, {}), f"`zmqrpc matchmaker list` after the failover: {listing}"
    lab_host(node).check_output(
        f"{VENV}/bin/zmqrpc matchmaker unregister --config-file {CONFIG_FILE} "
        f"--topic {topic} --address {address}"
    )


@pytest.mark.parametrize("compute", HOSTS[1:])
def test_fresh_clients_find_every_agent_after_the_failover(failover, compute):
    for target in HOSTS:
        if target == compute:
            continue
        out = lab_host(compute).run(
            f"{VENV}/bin/zmqrpc ping --config-file {CONFIG_FILE} --server {target} --timeout 10"
        )
        assert out.rc == 0, f"call from {compute} to {target} after the failover: {out.stdout} {out.stderr}"
        assert json.loads(out.stdout)["responder"] == target


def test_sentinel_master_name_is_the_transport_urls_group():
    url = lab_host(HOSTS[0]).check_output(f"grep '^transport_url' {CONFIG_FILE}")
    assert url.rstrip().endswith(f"/{MASTER_NAME}"), url
