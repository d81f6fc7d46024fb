"""The bus lets no one in: a peer without the bus's keys is refused and its call never runs, a rogue
registration in the matchmaker receives nothing, the wire holds no plaintext, and Redis and Sentinel refuse
a client without the ACL password."""

from __future__ import annotations

import base64
import json
import shlex
import uuid

import pytest
from conftest import (
    ACL_PASSWORD,
    ACL_USER,
    CONFIG_FILE,
    DEFAULT_PASSWORD,
    REDIS_CA,
    SENTINEL_PASSWORD,
    VENV,
    insecure_config,
    lab_host,
    run_script,
)
from zmqrpc_lab import PROXIES, address_of, wait_until

CONTROLLER, ATTACKER, CALLER = "sec-ctl1", "sec-cmp2", "sec-cmp1"
ZMQRPC = f"{VENV}/bin/zmqrpc"

# Sends what a real client sends (the node's zmqrpc, its addresses and ports, a well-formed request):
# a call and a cast of `record` with a marker to the controller's agent. Prints what became of the call.
SENDER = """
import json, sys, time
from zmqrpc import RpcClient, load_settings

config, target, marker = sys.argv[1:4]
with RpcClient(load_settings(config_files=[config])) as client:
    try:
        client.call("zmqrpc-agent", "record", {"tag": marker}, timeout=5, server=target)
        outcome = "answered"
    except Exception as exc:
        outcome = "%s: %s" % (type(exc).__name__, exc)
    try:
        client.cast("zmqrpc-agent", "record", {"tag": marker + "-cast"}, server=target)
    except Exception:
        pass
    time.sleep(2)
print(json.dumps({"call": outcome}))
"""

SEEN = """
import json, sys
from zmqrpc import RpcClient, load_settings

with RpcClient(load_settings(config_files=[sys.argv[1]])) as client:
    print(json.dumps(client.call("zmqrpc-agent", "seen", timeout=10, server=sys.argv[2])))
"""


def seen_by(target: str) -> list:
    result = run_script(CALLER, SEEN, CONFIG_FILE, target)
    assert result.rc == 0, f"seen on {target}'s agent failed: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def send(config: str, marker: str) -> str:
    result = run_script(ATTACKER, SENDER, config, CONTROLLER, marker)
    assert result.rc == 0, f"the sender on {ATTACKER} failed to run: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])["call"]


@pytest.mark.parametrize("kind", ["no key", "unknown key"])
def test_a_peer_without_an_allowed_key_is_refused_and_its_call_never_runs(kind):
    host = lab_host(ATTACKER)
    config = f"/tmp/sec-{kind.replace(' ', '-')}.conf"
    if kind == "no key":
        insecure_config(ATTACKER, config, "none")
    else:  # CURVE, with a pair of its own that no allowed-keys directory holds
        host.check_output(
            f"{VENV}/bin/python -c 'import zmq.auth; zmq.auth.create_certificates(\"/tmp\", \"intruder\")'"
            " && chmod 0600 /tmp/intruder.key_secret"
        )
        insecure_config(ATTACKER, config, "curve", "/tmp/intruder.key_secret")
    marker = f"intruder-{uuid.uuid4().hex[:8]}"
    try:
        outcome = send(config, marker)
    finally:
        host.run(f"rm -f {config} /tmp/intruder.key /tmp/intruder.key_secret")
    assert outcome != "answered", f"a sender with {kind} got an answer from {CONTROLLER}'s agent"

    records = seen_by(CONTROLLER)
    assert not [r for r in records if str(r).startswith(marker)], f"{kind}: the agent ran it: {records}"
    if kind == "unknown key":  # ZAP refused it by address (logged once per address for a proxy's life)
        wanted = f"refused a peer from ::ffff:{address_of(ATTACKER)}: Unknown key"
        wait_until(lambda: any(wanted in proxy_journal(name) for name in PROXIES), 10, f"a proxy logs {wanted!r}")

    # The same request with the node's own key runs (so the refusal above was the key, not the request).
    marker = f"member-{uuid.uuid4().hex[:8]}"
    assert send(CONFIG_FILE, marker) == "answered"
    assert marker in seen_by(CONTROLLER)


def proxy_journal(name: str) -> str:
    return lab_host(name).check_output("journalctl -u zmqrpc-proxy -o cat --no-pager")


# A rogue listener: a ROUTER on a port of the service range, speaking CURVE with a key of its own (so any
# client that trusted the matchmaker would complete the handshake); it counts every message it receives.
ROGUE = """
import json, os, sys, time, zmq

port, stop, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sock = zmq.Context().socket(zmq.ROUTER)
public, secret = zmq.curve_keypair()
sock.curve_server, sock.curve_publickey, sock.curve_secretkey = True, public, secret
sock.bind("tcp://*:%d" % port)
open(ready, "w").close()
received, deadline = 0, time.monotonic() + 300
while not os.path.exists(stop) and time.monotonic() < deadline:
    if sock.poll(200):
        sock.recv_multipart()
        received += 1
print(json.dumps({"received": received}))
"""


def test_a_rogue_registration_receives_nothing():
    host = lab_host(ATTACKER)
    host.run("rm -f /tmp/sec-rogue.*")
    port = 55123
    rogue = f"{address_of(ATTACKER)}:{port}"
    host.check_output(f"cat > /tmp/sec-rogue.py <<'EOF'\n{ROGUE}\nEOF")
    host.check_output(
        f"systemd-run --unit sec-rogue --collect -p StandardOutput=file:/tmp/sec-rogue.out "
        f"{VENV}/bin/python /tmp/sec-rogue.py {port} /tmp/sec-rogue.stop /tmp/sec-rogue.ready"
    )
    wait_until(lambda: host.file("/tmp/sec-rogue.ready").exists, 20, "the rogue listener binds")
    # As a proxy (clients send through it, servers and subscribers connect to it) and as a server.
    topics = [f"zmqrpc-proxy.{kind}" for kind in ("frontend", "backend", "publisher")]
    topics += ["zmqrpc-agent", f"zmqrpc-agent.{CONTROLLER}"]
    register = [ZMQRPC, "matchmaker", "--config-file", CONFIG_FILE, "--address", rogue]
    for topic in topics:  # written with the node's own matchmaker credentials, as a compromised host could
        host.check_output(shlex.join([*register, "--topic", topic, "--expire", "60", "register"]))
    try:
        caller = lab_host(CALLER)
        for mode in ("call", "call", "cast", "fanout", "notify"):
            caller.run(f"{ZMQRPC} ping --config-file {CONFIG_FILE} --mode {mode} --timeout 5")
        caller.run(f"{ZMQRPC} ping --config-file {CONFIG_FILE} --server {CONTROLLER} --timeout 5")
        host.check_output("touch /tmp/sec-rogue.stop")
        wait_until(lambda: host.file("/tmp/sec-rogue.out").contains("received"), 20, "the rogue listener ends")
        received = json.loads(host.file("/tmp/sec-rogue.out").content_string.strip().splitlines()[-1])
    finally:
        for topic in topics:
            host.run(shlex.join([*register, "--topic", topic, "unregister"]))
        host.run("systemctl stop sec-rogue; rm -f /tmp/sec-rogue.*")
    assert received == {"received": 0}, f"the rogue registration {rogue} received messages: {received}"


def test_a_capture_on_the_lab_network_holds_no_plaintext():
    host = lab_host(CONTROLLER)
    pcap = "/tmp/sec-capture.pcap"
    host.check_output(
        f"systemd-run --unit sec-capture --collect tcpdump -i eth0 -U -Z root -w {pcap} tcp"
    )
    wait_until(lambda: host.file(pcap).exists, 20, "tcpdump starts writing")
    marker = f"payload-{uuid.uuid4().hex}"
    try:
        assert send(CONFIG_FILE, marker) == "answered"  # topic zmqrpc-agent.<host>, method record, the marker
        lab_host(CALLER).run(f"{ZMQRPC} ping --config-file {CONFIG_FILE} --mode fanout --timeout 5")
    finally:
        host.run("systemctl stop sec-capture")
    data = host.check_output(f"base64 -w0 {pcap}")
    host.run(f"rm -f {pcap}")
    raw = base64.b64decode(data)
    assert b"CURVE" in raw, f"the capture ({len(raw)} bytes) holds no ZeroMQ handshake: nothing was captured"
    for secret in (marker, "zmqrpc-agent", "record", ACL_PASSWORD, "zmqrpc:topic"):
        assert secret.encode() not in raw, f"the capture on {CONTROLLER} holds {secret!r} in plaintext"


def redis_cli(target: str, port: int, *args: str, tls: bool = True) -> str:
    options = f"--tls --cacert {REDIS_CA} " if tls else ""
    result = lab_host(CALLER).run(
        f"timeout 10 redis-cli {options}-h {target} -p {port} --no-auth-warning {' '.join(args)}"
    )
    return (result.stdout + result.stderr).strip()


def test_redis_refuses_a_client_without_the_acl_password():
    assert "NOAUTH" in redis_cli(CONTROLLER, 6379, "PING")
    assert "WRONGPASS" in redis_cli(CONTROLLER, 6379, "--user", ACL_USER, "--pass", "guess", "PING")
    assert "PONG" not in redis_cli(CONTROLLER, 6379, "PING", tls=False), "Redis answers plain TCP"
    as_zmqrpc = ("--user", ACL_USER, "--pass", shlex.quote(ACL_PASSWORD))
    assert redis_cli(CONTROLLER, 6379, *as_zmqrpc, "PING") == "PONG"
    # zmqrpc's user reaches zmqrpc's keys only
    assert redis_cli(CONTROLLER, 6379, *as_zmqrpc, "SET", "zmqrpc:sec-check", "1") == "OK"
    redis_cli(CONTROLLER, 6379, *as_zmqrpc, "DEL", "zmqrpc:sec-check")
    assert "NOPERM" in redis_cli(CONTROLLER, 6379, *as_zmqrpc, "SET", "other", "1")
    assert "NOPERM" in redis_cli(CONTROLLER, 6379, *as_zmqrpc, "CONFIG", "GET", "requirepass")
    assert "PONG" in redis_cli(CONTROLLER, 6379, "-a", shlex.quote(DEFAULT_PASSWORD), "PING")


@pytest.mark.parametrize("sentinel", ["sec-ctl1", "sec-cmp2"])
def test_sentinel_refuses_a_client_without_its_password(sentinel):
    assert "NOAUTH" in redis_cli(sentinel, 26379, "SENTINEL", "masters")
    assert "PONG" not in redis_cli(sentinel, 26379, "PING", tls=False), "Sentinel answers plain TCP"
    answer = redis_cli(sentinel, 26379, "-a", shlex.quote(SENTINEL_PASSWORD), "SENTINEL", "get-master-addr-by-name",
                       "zmqrpc")
    assert address_of(CONTROLLER) in answer, answer
