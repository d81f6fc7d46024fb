"""The lab as the checks see it: hosts and groups from the scenario's molecule.yml, and the operator's tools.

Used by the checklist in this directory, which every scenario runs, and by the scenarios' own tests/
(they put this directory on sys.path). Everything expected is the documented contract (ports 50001/50002/50003
and 60001, /etc/zmqrpc/zmqrpc.conf, unit names), not the values the deployment used, so a host deployed with
other values fails a check that names it.

The checks parametrize themselves over the hosts each item concerns (ids are host names) and reach them with
testinfra's podman backend, so they need no conftest and no testinfra host list.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import json
import os
import re
import shlex
import textwrap
import time
from typing import Any

import pytest
import testinfra
import yaml

with open(os.environ["MOLECULE_FILE"], encoding="utf-8") as _stream:
    MOLECULE = yaml.safe_load(_stream)

SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME") or os.path.basename(
    os.path.dirname(os.environ["MOLECULE_FILE"])
)
# MOLECULE_FILE may be molecule's copy in its ephemeral directory: the scenario's own directory is this one.
_SCENARIO_DIR = os.environ.get("MOLECULE_SCENARIO_DIRECTORY") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), SCENARIO
)
_PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.dirname(os.path.dirname(_SCENARIO_DIR))
HOSTS: list[str] = [platform["name"] for platform in MOLECULE["platforms"]]


def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream) or {}


def _ansible_args() -> list[str]:
    """The scenario's ansible-playbook arguments (or the shared config's), as molecule passes them.

    MOLECULE_FILE is molecule's merged config, where provisioner.ansible_args became
    ansible.executor.args.ansible_playbook; a scenario's own molecule.yml still has provisioner.ansible_args.
    """
    provisioner = MOLECULE.get("provisioner", {})
    executor = MOLECULE.get("ansible", {}).get("executor", {}).get("args", {})
    args = provisioner.get("ansible_args") or executor.get("ansible_playbook")
    if args is None:
        shared = _load(os.path.join(_PROJECT_DIR, ".config", "molecule", "config.yml"))
        args = shared.get("provisioner", {}).get("ansible_args", [])
    return [os.path.expandvars(arg.replace("${MOLECULE_PROJECT_DIRECTORY}", _PROJECT_DIR)) for arg in args]


# What a test that runs a playbook itself passes, so the playbook sees the lab's settings as converge did.
ANSIBLE_ARGS: list[str] = _ansible_args()


def _extra_vars() -> dict[str, Any]:
    """The lab's own settings: the --extra-vars of the scenario's ansible_args."""
    found: dict[str, Any] = {}
    for arg in ANSIBLE_ARGS:
        if not arg.startswith("--extra-vars="):
            continue
        value = arg.removeprefix("--extra-vars=")
        found.update(_load(value[1:]) if value.startswith("@") else yaml.safe_load(value))
    return found


def _group_vars() -> dict[str, dict[str, Any]]:
    """Each group's variables as a host of that group sees them: the example inventory's group_vars the
    scenario links (all.yml, then <group>.yml), then the lab's extra vars."""
    links = MOLECULE.get("provisioner", {}).get("inventory", {}).get("links", {})
    directory = os.path.join(_SCENARIO_DIR, links.get("group_vars", f"../../inventory/{SCENARIO}/group_vars"))
    files = {
        os.path.splitext(entry)[0]: _load(os.path.join(directory, entry))
        for entry in sorted(os.listdir(directory))
        if entry.endswith((".yml", ".yaml"))
    }
    extra = _extra_vars()
    groups = {"all"} | {g for platform in MOLECULE["platforms"] for g in platform.get("groups", [])}
    return {g: {**files.get("all", {}), **files.get(g, {}), **extra} for g in sorted(groups)}


GROUP_VARS: dict[str, dict[str, Any]] = _group_vars()
VARS: dict[str, Any] = GROUP_VARS["all"]


def group(name: str) -> list[str]:
    """Hosts of an inventory group, in platform order."""
    return [p["name"] for p in MOLECULE["platforms"] if name in p.get("groups", [])]


NODES = group("zmqrpc_nodes")
COMPUTES = group("computes")
PROXIES = group("zmq_proxies")
REDIS = group("redis")
SENTINELS = group("redis_sentinel")
CONTROLLERS = group("controllers")
# Where the RPC exchange runs from: each compute; an all-in-one lab has none, so its only node.
SOURCES = COMPUTES or NODES
# Hosts the firewall role manages (a lab may add a bare probe host, in no group, to test it from outside).
FIREWALLED = [name for name in HOSTS if name in set(NODES) | set(PROXIES) | set(REDIS) | set(SENTINELS)]

# The topology this scenario selects (role zmqrpc's variables, with the role's defaults).
MATCHMAKER = VARS.get("zmqrpc_matchmaker", "redis")
USE_PUB_SUB = bool(VARS.get("zmqrpc_use_pub_sub", False))
USE_ROUTER_PROXY = bool(VARS.get("zmqrpc_use_router_proxy", False))
USE_DYNAMIC = bool(VARS.get("zmqrpc_use_dynamic_connections", False))
LOCAL_PUBLISHER = bool(VARS.get("zmqrpc_local_publisher", False))
# Security (the secure scenario): CurveZMQ on the bus, TLS to Redis and Sentinel.
CURVE = VARS.get("zmqrpc_security", "none") == "curve"
REDIS_TLS = bool(VARS.get("redis_tls_enabled", False))

# The documented contract.
CONFIG_FILE = "/etc/zmqrpc/zmqrpc.conf"
VENV = "/opt/zmqrpc/venv"
ZMQRPC = f"{VENV}/bin/zmqrpc"
AGENT_TOPIC = "zmqrpc-agent"
FRONTEND_PORT, BACKEND_PORT, PUBLISHER_PORT = 50001, 50002, 50003
LOCAL_PUBLISHER_PORT = 60001
PROXY_PORTS = (FRONTEND_PORT, BACKEND_PORT, PUBLISHER_PORT)
MATCHMAKER_PORTS = (6379, 26379)
PORT_RANGE = (49153, 65535)  # rpc_zmq_min_port .. rpc_zmq_max_port - 1
# Prometheus metrics: the node's services (the agent), the central proxy, the local publisher.
NODE_METRICS_PORT, PROXY_METRICS_PORT, LOCAL_PUBLISHER_METRICS_PORT = 9464, 9465, 9466
# Where Prometheus would run in the lab: the first controller (inventory/lab/group_vars/all.yml opens the
# metrics ports to it only).
MONITOR = CONTROLLERS[0] if CONTROLLERS else HOSTS[0]


@functools.cache
def lab_host(name: str):
    """A testinfra host for one lab machine (a podman container, as in the inventory)."""
    return testinfra.get_host(f"podman://{name}")


@functools.cache
def address_of(name: str) -> str:
    return lab_host(name).check_output("hostname -I").split()[0]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll predicate until it returns something truthy; fail after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not true after {timeout} s (last value: {last!r})")


# --- the bus, through the node's own CLI ------------------------------------------------------------


def ping(
    node: str, mode: str, server: str | None = None, hosts: list[str] | None = None, timeout: float = 10
) -> dict[str, Any]:
    """`zmqrpc ping` on `node` with its own config: the JSON it prints, plus "failure" (a readable reason).

    Never raises: an exchange runs all its messages, and each check then reports its own failure.
    """
    args = [ZMQRPC, "ping", "--config-file", CONFIG_FILE, "--mode", mode, "--timeout", str(timeout)]
    if server:
        args += ["--server", server]
    if hosts:
        args += ["--hosts", ",".join(hosts)]
    command = shlex.join(args)
    result = lab_host(node).run(command)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {}
    if result.rc != 0 or not answer.get("ok"):
        answer["failure"] = (
            f"{mode} from {node}{' to ' + server if server else ''} failed (exit {result.rc}): {command}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()[-2000:]}"
        )
    return answer


# --- services -----------------------------------------------------------------------------------------


def unit_property(host, unit: str, name: str) -> str:
    return host.check_output(f"systemctl show -p {name} --value {unit}").strip()


def journal_cursor(host, unit: str) -> str:
    out = host.check_output(f"journalctl -u {unit} -n 0 --show-cursor --no-pager")
    match = re.search(r"-- cursor: (\S+)", out)
    return match.group(1) if match else ""


def journal_since(host, unit: str, cursor: str) -> str:
    after = f"--after-cursor={shlex.quote(cursor)}" if cursor else ""
    return host.check_output(f"journalctl -u {unit} {after} -o cat --no-pager")


def proxy_stats(name: str, unit: str = "zmqrpc-proxy", kind: str = "proxy") -> dict[str, Any]:
    """Ask a proxy for its counters the operator's way: SIGUSR1, then read the line it logs."""
    host = lab_host(name)
    cursor = journal_cursor(host, unit)
    host.check_output(f"systemctl kill -s SIGUSR1 --kill-whom=main {unit}")
    marker = f"zmqrpc {kind} stats: "

    def logged():
        lines = [line for line in journal_since(host, unit, cursor).splitlines() if marker in line]
        return lines[-1] if lines else None

    line = wait_until(logged, 10, f"{unit} on {name} logs its stats after SIGUSR1")
    return json.loads(line.split(marker, 1)[1])


def _address(text: str) -> tuple[str, int]:
    """`ss` address:port, with IPv4-mapped IPv6 addresses (zmq's dual-stack sockets) shown as IPv4."""
    host, _, port = text.rpartition(":")
    return host.strip("[]").removeprefix("::ffff:"), int(port)


def established(name: str) -> list[dict[str, Any]]:
    """Established TCP connections on `name`: local/remote address and port, and the owning process.

    ss runs as the zmqrpc user: root in a lab container lacks CAP_SYS_PTRACE, so it cannot see which
    process of another user owns a socket.
    """
    out = lab_host(name).check_output("runuser -u zmqrpc -- ss -Htnp state established")
    connections = []
    for line in out.splitlines():
        fields = line.split()  # Recv-Q Send-Q Local Peer [Process] (no State column with a state filter)
        if len(fields) < 4:
            continue
        (local, local_port), (remote, remote_port) = _address(fields[2]), _address(fields[3])
        connections.append(
            {
                "local": local,
                "local_port": local_port,
                "remote": remote,
                "remote_port": remote_port,
                "process": " ".join(fields[4:]),
            }
        )
    return connections


def listening(name: str) -> list[dict[str, Any]]:
    """Listening TCP sockets on `name`: address, port and owning process (see established())."""
    out = lab_host(name).check_output("runuser -u zmqrpc -- ss -Htlnp")
    sockets = []
    for line in out.splitlines():
        fields = line.split()  # State Recv-Q Send-Q Local Peer [Process]
        if len(fields) < 5:
            continue
        address, port = _address(fields[3])
        sockets.append({"address": address, "port": port, "process": " ".join(fields[5:])})
    return sockets


def listening_ports(name: str) -> set[int]:
    return {sock["port"] for sock in listening(name)}


def pid_marker(pid: str) -> str:
    """How `ss -p` names a process: users:(("zmqrpc",pid=123,fd=7))."""
    return f"pid={pid},"


# --- what a node holds --------------------------------------------------------------------------------


def read_config(name: str) -> configparser.ConfigParser:
    """The node's config file, parsed (comments and blank lines ignored, like oslo.config)."""
    host = lab_host(name)
    assert host.file(CONFIG_FILE).exists, f"{CONFIG_FILE} is missing on {name}"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(host.check_output(f"cat {CONFIG_FILE}"))
    return parser


def matchmaker_topics(name: str) -> dict[str, dict[str, Any]]:
    """`zmqrpc matchmaker list` on `name` with its own config: topic -> {address: ttl}."""
    result = lab_host(name).run(shlex.join([ZMQRPC, "matchmaker", "list", "--config-file", CONFIG_FILE]))
    assert result.rc == 0, f"zmqrpc matchmaker list on {name} failed: {result.stderr.strip()}"
    return json.loads(result.stdout)


def agent_address(name: str, via: str | None = None) -> str:
    """The host:port the agent of `name` registered (asked from `via`, default `name` itself)."""
    members = matchmaker_topics(via or name).get(f"{AGENT_TOPIC}.{name}", {})
    assert len(members) == 1, f"agent of {name}: registrations {members}"
    return next(iter(members))


# One long-lived client: after each call, the local endpoints of the connections it holds to the agent.
_CLIENT_PROBE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from zmqrpc.client import RpcClient
    from zmqrpc.config import load_settings

    server, remote, calls, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    def endpoint(text):
        address, _, port = text.rpartition(":")
        return "%s:%s" % (address.strip("[]").replace("::ffff:", "", 1), port)

    def held():
        out = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True, text=True).stdout
        return sorted(
            endpoint(line.split()[2]) for line in out.splitlines()
            if "pid=%d," % os.getpid() in line and endpoint(line.split()[3]) == remote
        )

    snapshots = []
    with RpcClient(load_settings(config_files=[sys.argv[5]])) as client:
        for _ in range(calls):
            client.call("zmqrpc-agent", "ping", timeout=10, server=server)
            time.sleep(pause)
            snapshots.append(held())
    print(json.dumps(snapshots))
    """
)


def client_connections(source: str, server: str, calls: int = 3, pause: float = 0.5) -> list[list[str]]:
    """One client process on `source` calls the agent of `server` `calls` times; after each call (and
    `pause` seconds), the local endpoints of the connections it holds to that agent's address."""
    remote = agent_address(server, via=source)
    host = lab_host(source)
    script = f"/tmp/zmqrpc-client-probe-{os.getpid()}.py"
    host.check_output(f"cat > {script} <<'EOF'\n{_CLIENT_PROBE}\nEOF")
    try:
        out = host.check_output(
            shlex.join([f"{VENV}/bin/python", script, server, remote, str(calls), str(pause), CONFIG_FILE])
        )
    finally:
        host.run(f"rm -f {script}")
    return json.loads(out.strip().splitlines()[-1])


# --- firewall probes -----------------------------------------------------------------------------------


def unused_port(name: str, low: int, high: int) -> int:
    """A port in low..high that no TCP socket on `name` uses, in any state, preferring ports outside the
    kernel's ephemeral range: a port picked inside it can be taken by an outgoing connection (dynamic
    connections open many) before a probe listener binds it."""
    host = lab_host(name)
    first, last = (int(v) for v in host.check_output("cat /proc/sys/net/ipv4/ip_local_port_range").split())
    # ss -Htan columns: State Recv-Q Send-Q Local Peer
    sockets = [line.split() for line in host.check_output("ss -Htan").splitlines()]
    used = {_address(fields[3])[1] for fields in sockets if len(fields) >= 4}
    free = [port for port in range(low, high + 1) if port not in used]
    outside_ephemeral = [port for port in free if not first <= port <= last]
    if not free:
        pytest.fail(f"no unused port in {low}..{high} on {name} for a probe listener")
    return (outside_ephemeral or free)[0]


@contextlib.contextmanager
def tcp_listener(name: str, port: int):
    """A plain TCP listener on all addresses of `name` (a transient systemd unit), for reachability probes."""
    host = lab_host(name)
    unit = f"zmqrpc-probe-{port}"
    host.check_output(f"systemd-run --unit={unit} python3 -m http.server --bind 0.0.0.0 {port}")
    try:
        deadline = time.monotonic() + 20  # a loaded machine may start python slowly
        while port not in listening_ports(name):
            if time.monotonic() > deadline:
                journal = host.run(f"journalctl -u {unit} --no-pager -n 20").stdout
                pytest.fail(f"probe listener {name}:{port} did not start in 20 s, its journal:\n{journal}")
            time.sleep(0.5)
        yield host
    finally:
        host.run(f"systemctl stop {unit}")
        host.run(f"systemctl reset-failed {unit}")


def tcp_connects(source: str, target: str, port: int, timeout: float = 3) -> bool:
    """Can `source` open a TCP connection to target:port (a name or address)?"""
    probe = (
        "import socket, sys\n"
        f"try: socket.create_connection(('{target}', {port}), timeout={timeout})\n"
        "except OSError as exc: sys.exit(str(exc))\n"
    )
    return lab_host(source).run(f'python3 -c "{probe}"').rc == 0
