"""zmqrpc health: one node's view of the bus as a probe, one JSON line and an exit status 0, 1 or 2.

Checks, in order:

* ``matchmaker``: it answers (a topic listing) within ``--timeout``.
* ``registrations``: this host's agent topics (``zmqrpc-agent`` and ``zmqrpc-agent.<rpc_zmq_host>``) are
  registered, and none is about to expire (see :func:`expiry_margin`).
* ``proxies``: when ``use_router_proxy`` or ``use_pub_sub`` needs them, proxy frontends, backends or
  publishers are registered and not about to expire.
* ``agent``: the local agent answers a ``ping`` call within ``--timeout``.

Each check is ``ok``, ``degraded`` or ``failed`` (or ``skipped`` when it cannot run); the exit status is
the worst of them: 0 healthy, 1 degraded, 2 unhealthy. A systemd unit or a timer runs it as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from zmqrpc import protocol
from zmqrpc.agent import AGENT_TOPIC
from zmqrpc.errors import ZmqRpcError

if TYPE_CHECKING:
    from zmqrpc.config import OptionValues, Settings

__all__ = ["EXIT_CODES", "Check", "add_arguments", "add_margin_argument", "expiry_margin", "probe", "run"]

EXIT_CODES = (
    "exit status: 0 healthy (every check ok), 1 degraded (a registration close to expiry, a proxy "
    "missing), 2 unhealthy (matchmaker unreachable, own registrations missing, agent not answering, "
    "or a bad config); the JSON line names each check's status and detail"
)
STATUS_EXIT = {"ok": 0, "skipped": 0, "degraded": 1, "failed": 2}
OVERALL = {0: "healthy", 1: "degraded", 2: "unhealthy"}


@dataclasses.dataclass
class Check:
    """One check's outcome: ``ok``, ``degraded``, ``failed`` or ``skipped``, and a sentence saying why."""

    name: str
    status: str
    detail: str


def expiry_margin(zmq_opts: OptionValues) -> float:
    """Seconds left under which a registration is about to expire.

    A registration refreshed every ``zmq_target_update`` seconds never has less than ``zmq_target_expire -
    zmq_target_update`` left; one with under half of that has missed its refresh (at least 1 s).
    """
    expire, update = float(zmq_opts.zmq_target_expire), float(zmq_opts.zmq_target_update)
    if expire <= 0:
        return 0.0
    return max((expire - update) / 2, 1.0)


def _left(seconds: float | None) -> str:
    return "never expires" if seconds is None else f"expires in {seconds:.1f}s"


def _check_registrations(
    topics: dict[str, dict[str, float | None]], host: str, margin: float, matchmaker: str
) -> Check:
    if matchmaker == "ring":
        return Check("registrations", "skipped", "the ring matchmaker is a static file: nothing registers")
    directed = f"{AGENT_TOPIC}.{host}"
    own = topics.get(directed, {})
    if not own:
        return Check("registrations", "failed", f"{directed} is not registered: is the agent running?")
    bare = topics.get(AGENT_TOPIC, {})
    missing = sorted(address for address in own if address not in bare)
    if missing:
        return Check("registrations", "failed", f"{', '.join(missing)} missing from {AGENT_TOPIC}")
    soonest = [
        (left, topic, address)
        for topic in (AGENT_TOPIC, directed)
        for address in own
        if (left := topics[topic][address]) is not None
    ]
    if soonest:
        left, topic, address = min(soonest)
        if left < margin:
            return Check(
                "registrations",
                "degraded",
                f"{address} under {topic} expires in {left:.1f}s (under {margin:g}s: a refresh was missed)",
            )
        return Check(
            "registrations", "ok", f"{', '.join(sorted(own))} on {AGENT_TOPIC} and {directed}, {_left(left)}"
        )
    return Check(
        "registrations", "ok", f"{', '.join(sorted(own))} on {AGENT_TOPIC} and {directed}, never expire"
    )


def needed_proxy_topics(zmq_opts: OptionValues) -> list[str]:
    """The proxy topics this node's topology needs registered."""
    needed = []
    if zmq_opts.use_router_proxy:
        needed += [protocol.PROXY_FRONTENDS, protocol.PROXY_BACKENDS]
    if zmq_opts.use_pub_sub:
        needed.append(protocol.PROXY_PUBLISHERS)
    return needed


def _check_proxies(
    topics: dict[str, dict[str, float | None]], zmq_opts: OptionValues, margin: float
) -> Check:
    needed = needed_proxy_topics(zmq_opts)
    if not needed:
        return Check("proxies", "ok", "none needed (use_router_proxy and use_pub_sub are false)")
    found, problems = [], []
    for topic in needed:
        members = topics.get(topic, {})
        if not members:
            problems.append(f"no proxy registered under {topic}")
            continue
        found.append(f"{len(members)} under {topic}")
        for address, left in sorted(members.items()):
            if left is not None and left < margin:
                problems.append(f"{address} under {topic} expires in {left:.1f}s")
    if zmq_opts.use_router_proxy:
        frontends = {a.rsplit(":", 1)[0] for a in topics.get(protocol.PROXY_FRONTENDS, {})}
        backends = {a.rsplit(":", 1)[0] for a in topics.get(protocol.PROXY_BACKENDS, {})}
        if frontends and backends and frontends != backends:
            problems.append(
                f"hosts with a frontend but no backend, or the reverse: {sorted(frontends ^ backends)}"
            )
    if problems:
        return Check("proxies", "degraded", "; ".join(problems + found))
    return Check("proxies", "ok", ", ".join(found))


def _check_agent(settings: Settings, host: str, timeout: float) -> Check:
    from zmqrpc.client import RpcClient

    started = time.perf_counter()
    try:
        with RpcClient(settings) as client:
            reply = client.call(AGENT_TOPIC, "ping", timeout=timeout, server=host)
    except ZmqRpcError as exc:
        return Check("agent", "failed", f"no answer from {AGENT_TOPIC}.{host}: {type(exc).__name__}: {exc}")
    elapsed = (time.perf_counter() - started) * 1000
    responder = reply.get("host") if isinstance(reply, dict) else None
    if responder != host:
        return Check("agent", "failed", f"{AGENT_TOPIC}.{host} answered as {responder!r}")
    return Check("agent", "ok", f"{AGENT_TOPIC}.{host} answered ping in {elapsed:.1f} ms")


def probe_settings(settings: Settings, timeout: float) -> Settings:
    """The settings a probe runs with: no metrics port of its own (the service it checks may hold it), and
    Redis operations bounded by ``timeout``."""
    if settings.zmq.metrics_port:
        settings = settings.with_zmq(metrics_port=0)
    return dataclasses.replace(settings, redis_socket_timeout=min(settings.redis_socket_timeout, timeout))


def probe(settings: Settings, timeout: float, margin: float | None = None) -> list[Check]:
    """Run every check against ``settings``' bus, as this host (``rpc_zmq_host``) sees it; a registration
    with under ``margin`` seconds left (default: :func:`expiry_margin`) is about to expire."""
    from zmqrpc.matchmaker import create_matchmaker

    settings = probe_settings(settings, timeout)
    host = settings.zmq.rpc_zmq_host
    margin = expiry_margin(settings.zmq) if margin is None else margin
    checks: list[Check] = []
    topics: dict[str, dict[str, float | None]] | None = None
    try:
        with create_matchmaker(settings) as matchmaker:
            started = time.perf_counter()
            topics = matchmaker.topics()
        elapsed = (time.perf_counter() - started) * 1000
        checks.append(
            Check(
                "matchmaker", "ok", f"{settings.matchmaker}: {len(topics)} topics listed in {elapsed:.1f} ms"
            )
        )
    except ZmqRpcError as exc:
        checks.append(Check("matchmaker", "failed", f"{settings.matchmaker}: {exc}"))
    if topics is None:
        checks.append(Check("registrations", "skipped", "the matchmaker is unreachable"))
        checks.append(Check("proxies", "skipped", "the matchmaker is unreachable"))
    else:
        checks.append(_check_registrations(topics, host, margin, settings.matchmaker))
        checks.append(_check_proxies(topics, settings.zmq, margin))
    checks.append(_check_agent(settings, host, timeout))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", action="append", help="oslo.config file (repeatable)")
    parser.add_argument("--transport-url", help="overrides [DEFAULT] transport_url")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds the agent's ping and each matchmaker request may take (default: %(default)s)",
    )
    add_margin_argument(parser)


def add_margin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expiry-margin",
        type=float,
        metavar="SECONDS",
        help="a registration with less left is about to expire (default: half of zmq_target_expire minus "
        "zmq_target_update, at least 1; the fleet is assumed to share those two options)",
    )


def run(args: argparse.Namespace) -> int:
    """``zmqrpc health``: print the checks as one JSON line; return the exit status."""
    from zmqrpc import config

    started = time.perf_counter()
    host = None
    try:
        if not args.timeout > 0:
            raise ZmqRpcError(f"--timeout must be more than 0 seconds, got {args.timeout}")
        settings = config.load_settings(url=args.transport_url, config_files=args.config_file or None)
        host = settings.zmq.rpc_zmq_host
        checks = probe(settings, args.timeout, args.expiry_margin)
    except ZmqRpcError as exc:
        checks = [Check("config", "failed", str(exc))]
    code = max(STATUS_EXIT[c.status] for c in checks)
    result: dict[str, Any] = {
        "status": OVERALL[code],
        "exit": code,
        "host": host,
        "checks": [dataclasses.asdict(c) for c in checks],
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    print(json.dumps(result, sort_keys=True), flush=True)
    return code
