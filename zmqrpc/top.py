"""zmqrpc top: a live terminal view of the bus as the matchmaker and the agents see it.

Every ``--interval`` seconds it takes a sample: the matchmaker's topic listing (who serves what, and when
each registration expires), each agent's ``stats`` (its process's message counters, without the stats
calls themselves) and each registered proxy's ``/metrics`` (``zmqrpc_proxy_forwarded_total`` by direction,
on ``[zmq_proxy_opts] metrics_port`` or ``--proxy-metrics-port``). A frame shows two samples side by side:

* hosts, named by their directed topics (``<topic>.<rpc_zmq_host>``), with their topics, message rates and
  totals from their agent, and the registration closest to expiry;
* proxies (frontends, backends, publishers) and their forwarded rates, ``n/a`` when their metrics cannot
  be read;
* registrations about to expire (under :func:`~zmqrpc.health.expiry_margin`), highlighted and marked
  ``EXPIRING``.

On a terminal it is a rich ``Live`` view; otherwise (or with ``--once`` / ``--iterations``) frames are
printed one after another, without colour, or as JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from zmqrpc import protocol
from zmqrpc.address import format_host_port, parse_host_port
from zmqrpc.agent import AGENT_TOPIC
from zmqrpc.errors import ZmqRpcError
from zmqrpc.health import add_margin_argument, expiry_margin, probe_settings

if TYPE_CHECKING:
    from zmqrpc.client import RpcClient
    from zmqrpc.config import Settings
    from zmqrpc.matchmaker import MatchMaker

__all__ = ["DESCRIPTION", "Sample", "add_arguments", "bus_hosts", "frame", "run"]

DESCRIPTION = (
    "A live view of the bus as the matchmaker and the agents see it, refreshed every --interval seconds: "
    "hosts and their topics, per-host message rates from the agents (zmqrpc agent's stats), proxies and "
    "their forwarded rates (their /metrics on [zmq_proxy_opts] metrics_port), and registrations about to "
    "expire, highlighted. Ctrl-C quits."
)
INTERNAL_PREFIXES = ("zmqrpc-proxy.", "zmqrpc-subscribers:", "zmqrpc-pools:")
PROXY_KINDS = {
    protocol.PROXY_FRONTENDS: "frontend",
    protocol.PROXY_BACKENDS: "backend",
    protocol.PROXY_PUBLISHERS: "publisher",
}
DIRECTIONS = ("frontend_to_backend", "backend_to_frontend", "published")

Topics = dict[str, dict[str, float | None]]


@dataclasses.dataclass
class Sample:
    """What one refresh read: the matchmaker's topics, every agent's stats and every proxy's counters."""

    at: float  # time.monotonic()
    wall: float  # time.time()
    topics: Topics
    error: str = ""  # the matchmaker could not be read
    agents: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    proxies: dict[str, dict[str, float] | None] = dataclasses.field(default_factory=dict)


def _address_host(address: str) -> str:
    """The host part of a ``host:port`` address, or the name in a proxy routing id ``name/uuid``."""
    if "/" in address:
        return address.split("/", 1)[0]
    try:
        return parse_host_port(address)[0]
    except (ValueError, ZmqRpcError):
        return address


def bus_hosts(topics: Topics) -> dict[str, dict[str, Any]]:
    """Hosts as the matchmaker sees them: ``{host: {"topics", "registrations", "expires_in_s"}}``.

    A host is named by its directed topics: an address registered under both ``T`` and ``T.<name>`` is
    ``<name>``'s (its rpc_zmq_host); other addresses go by their host part. Proxy and bookkeeping topics
    are left out (proxies have a table of their own).
    """
    by_address: dict[str, set[str]] = {}
    for topic, members in topics.items():
        if topic.startswith(INTERNAL_PREFIXES):
            continue
        for address in members:
            by_address.setdefault(address, set()).add(topic)
    hosts: dict[str, dict[str, Any]] = {}
    for address, served in by_address.items():
        directed: dict[str, str] = {}  # directed topic -> its bare topic (the longest that fits)
        for topic in served:
            for bare in served:
                if topic.startswith(bare + ".") and len(bare) > len(directed.get(topic, "")):
                    directed[topic] = bare
        names = {topic[len(bare) + 1 :] for topic, bare in directed.items()}
        name = min(names, key=len) if names else _address_host(address)
        host = hosts.setdefault(name, {"topics": set(), "registrations": 0, "expires_in_s": None})
        host["topics"].update(t for t in served if t not in directed)
        for topic in served:
            host["registrations"] += 1
            left = topics[topic][address]
            if left is not None and (host["expires_in_s"] is None or left < host["expires_in_s"]):
                host["expires_in_s"] = left
    return hosts


def bus_proxies(topics: Topics) -> dict[str, dict[str, Any]]:
    """Registered proxies by host: ``{host: {"frontend", "backend", "publisher", "expires_in_s"}}``."""
    proxies: dict[str, dict[str, Any]] = {}
    for topic, kind in PROXY_KINDS.items():
        for address, left in sorted(topics.get(topic, {}).items()):
            proxy = proxies.setdefault(
                _address_host(address),
                {"frontend": None, "backend": None, "publisher": None, "expires_in_s": None},
            )
            proxy[kind] = address
            if left is not None and (proxy["expires_in_s"] is None or left < proxy["expires_in_s"]):
                proxy["expires_in_s"] = left
    return proxies


def scrape_forwarded(url: str, timeout: float) -> dict[str, float]:
    """``zmqrpc_proxy_forwarded_total`` by direction from a proxy's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return {
        sample.labels.get("direction", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "zmqrpc_proxy_forwarded_total"
    }


class Collector:
    """Takes samples: one matchmaker, one client for the agents' stats, a few threads to ask in parallel."""

    def __init__(self, settings: Settings, timeout: float, proxy_metrics_port: int) -> None:
        from zmqrpc.client import RpcClient
        from zmqrpc.matchmaker import create_matchmaker

        self.settings = probe_settings(settings, timeout)
        self.timeout = timeout
        self.proxy_metrics_port = proxy_metrics_port
        self.matchmaker: MatchMaker = create_matchmaker(self.settings)
        self.client: RpcClient = RpcClient(self.settings)
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="zmqrpc-top")

    def _stats(self, host: str) -> dict[str, Any] | None:
        try:
            reply = self.client.call(AGENT_TOPIC, "stats", timeout=self.timeout, server=host)
        except ZmqRpcError:
            return None  # shown as "no answer": an old agent without stats, a dead one, or a slow one
        return reply if isinstance(reply, dict) else None

    def _forwarded(self, host: str) -> dict[str, float] | None:
        url = f"http://{format_host_port(host, self.proxy_metrics_port)}/metrics"
        try:
            return scrape_forwarded(url, self.timeout)
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def sample(self) -> Sample:
        at, wall = time.monotonic(), time.time()
        try:
            topics = self.matchmaker.topics()
        except ZmqRpcError as exc:
            return Sample(at, wall, {}, error=str(exc))
        agents = sorted(h for h in bus_hosts(topics) if f"{AGENT_TOPIC}.{h}" in topics)
        proxies = sorted(bus_proxies(topics)) if self.proxy_metrics_port else []
        stats = {h: self._pool.submit(self._stats, h) for h in agents}
        forwarded = {h: self._pool.submit(self._forwarded, h) for h in proxies}
        return Sample(
            at,
            wall,
            topics,
            agents={h: f.result() for h, f in stats.items()},
            proxies={h: f.result() for h, f in forwarded.items()},
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()
        self.matchmaker.close()


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0 or now < before:  # unknown, or the process restarted
        return None
    return round((now - before) / seconds, 2)


def _total(counts: dict[str, Any] | None) -> float | None:
    """The sum of a stats reply's counters; None if it has none (an agent without metrics counts no sends)."""
    return float(sum(counts.values())) if counts else None


def frame(prev: Sample | None, cur: Sample, margin: float) -> dict[str, Any]:
    """One frame as data: rates are over the time from ``prev`` to ``cur`` (None without ``prev``)."""
    seconds = cur.at - prev.at if prev else 0.0
    hosts = []
    for name, host in sorted(bus_hosts(cur.topics).items()):
        stats = cur.agents.get(name)
        before = prev.agents.get(name) if prev else None
        row: dict[str, Any] = {
            "host": name,
            "topics": sorted(host["topics"]),
            "registrations": host["registrations"],
            "expires_in_s": None if host["expires_in_s"] is None else round(host["expires_in_s"], 1),
            "expiring": host["expires_in_s"] is not None and host["expires_in_s"] < margin,
            "agent": "none" if name not in cur.agents else ("ok" if stats else "no answer"),
            "received_total": None,
            "sent_total": None,
            "received_per_s": None,
            "sent_per_s": None,
            "received_per_s_by_type": {},
        }
        if stats:
            received, sent = stats.get("received", {}), stats.get("sent", {})
            row["received_total"], row["sent_total"] = _total(received), _total(sent)
            if before:
                old_received, old_sent = before.get("received", {}), before.get("sent", {})
                row["received_per_s"] = _rate(_total(received), _total(old_received), seconds)
                row["sent_per_s"] = _rate(_total(sent), _total(old_sent), seconds)
                by_type = {t: _rate(n, old_received.get(t), seconds) for t, n in received.items()}
                row["received_per_s_by_type"] = {t: r for t, r in sorted(by_type.items()) if r}
        hosts.append(row)
    proxies = []
    for name, proxy in sorted(bus_proxies(cur.topics).items()):
        counts = cur.proxies.get(name)
        old = prev.proxies.get(name) if prev else None
        proxies.append(
            {
                "host": name,
                **{kind: proxy[kind] for kind in ("frontend", "backend", "publisher")},
                "expires_in_s": None if proxy["expires_in_s"] is None else round(proxy["expires_in_s"], 1),
                "expiring": proxy["expires_in_s"] is not None and proxy["expires_in_s"] < margin,
                "metrics": "ok" if counts is not None else "n/a",
                "forwarded_total": counts,
                "forwarded_per_s": {
                    d: _rate(counts.get(d), old.get(d), seconds) if old else None for d in DIRECTIONS
                }
                if counts is not None
                else None,
            }
        )
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(cur.wall)),
        "interval_s": round(seconds, 3) if prev else None,
        "matchmaker": {"ok": not cur.error, "error": cur.error or None, "topics": len(cur.topics)},
        "expiry_margin_s": margin,
        "hosts": hosts,
        "proxies": proxies,
    }


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if value != int(value) or unit else f"{int(value)}"


def _expires(seconds: float | None, expiring: bool) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.1f}s EXPIRING" if expiring else f"{seconds:.1f}s"


def render(data: dict[str, Any], title: str) -> Any:
    """A frame as rich renderables: a heading line, the hosts table and the proxies table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    mm = data["matchmaker"]
    heading = Text(f"{title}  {data['time']}  ", style="bold")
    if mm["ok"]:
        heading.append(f"hosts {len(data['hosts'])}, topics {mm['topics']}, proxies {len(data['proxies'])}")
    else:
        heading.append(f"matchmaker unreachable: {mm['error']}", style="bold red")
    if data["interval_s"] is None:
        heading.append("  (rates from the next refresh)", style="dim")

    hosts = Table(title="hosts", title_justify="left", expand=False)
    for column, justify in (
        ("host", "left"),
        ("agent", "left"),
        ("recv/s", "right"),
        ("sent/s", "right"),
        ("recv/s by type", "left"),
        ("received", "right"),
        ("sent", "right"),
        ("expires in", "right"),
        ("topics", "left"),
    ):
        hosts.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in data["hosts"]:
        by_type = " ".join(f"{t} {r:.1f}" for t, r in row["received_per_s_by_type"].items())
        hosts.add_row(
            row["host"],
            row["agent"],
            _num(row["received_per_s"]),
            _num(row["sent_per_s"]),
            by_type or "-",
            _num(row["received_total"]),
            _num(row["sent_total"]),
            _expires(row["expires_in_s"], row["expiring"]),
            ", ".join(row["topics"]),
            style="bold red" if row["expiring"] else ("yellow" if row["agent"] == "no answer" else None),
        )

    proxies = Table(title="proxies", title_justify="left", expand=False)
    for column in ("host", "frontend", "backend", "publisher", "expires in", "metrics", *DIRECTIONS):
        proxies.add_column(column + ("/s" if column in DIRECTIONS else ""))
    for row in data["proxies"]:
        rates = row["forwarded_per_s"] or {}
        proxies.add_row(
            row["host"],
            row["frontend"] or "-",
            row["backend"] or "-",
            row["publisher"] or "-",
            _expires(row["expires_in_s"], row["expiring"]),
            row["metrics"],
            *(_num(rates.get(d)) if row["forwarded_per_s"] is not None else "n/a" for d in DIRECTIONS),
            style="bold red" if row["expiring"] else None,
        )
    legend = Text(
        f"EXPIRING: a registration with under {data['expiry_margin_s']:g}s left (a refresh was missed). "
        "Rates leave out top's own stats calls.",
        style="dim",
    )
    return Group(heading, hosts, proxies, legend)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", action="append", help="oslo.config file (repeatable)")
    parser.add_argument("--transport-url", help="overrides [DEFAULT] transport_url")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    parser.add_argument(
        "--once", action="store_true", help="print one frame (rates over one --interval) and exit"
    )
    parser.add_argument("--iterations", type=int, help="print this many frames and exit")
    parser.add_argument("--json", action="store_true", help="print each frame as a JSON line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="seconds an agent or a proxy may take to answer (default: 1)",
    )
    parser.add_argument(
        "--proxy-metrics-port",
        type=int,
        help="port of the proxies' /metrics (default: [zmq_proxy_opts] metrics_port; 0: do not scrape)",
    )
    add_margin_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``zmqrpc top``: refresh until Ctrl-C, or print ``--once`` / ``--iterations`` frames."""
    from rich.console import Console
    from rich.live import Live

    from zmqrpc import config

    if not args.interval > 0 or not args.timeout > 0:
        raise ZmqRpcError("--interval and --timeout must be more than 0 seconds")
    if args.iterations is not None and args.iterations < 1:
        raise ZmqRpcError(f"--iterations must be 1 or more, got {args.iterations}")
    settings = config.load_settings(url=args.transport_url, config_files=args.config_file or None)
    port = settings.proxy.metrics_port if args.proxy_metrics_port is None else args.proxy_metrics_port
    frames = 1 if args.once else args.iterations
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
    live = frames is None and console.is_terminal and not args.json
    margin = expiry_margin(settings.zmq) if args.expiry_margin is None else args.expiry_margin
    title = f"zmqrpc top: {settings.matchmaker} matchmaker"

    collector = Collector(settings, args.timeout, port)
    try:
        prev = collector.sample()
        shown = 0
        display = (
            Live(render(frame(None, prev, margin), title), console=console, auto_refresh=False)
            if live
            else None
        )
        with display if display is not None else contextlib.nullcontext():
            while frames is None or shown < frames:
                time.sleep(max(0.0, prev.at + args.interval - time.monotonic()))
                cur = collector.sample()
                data = frame(prev, cur, margin)
                prev = cur
                shown += 1
                if args.json:
                    print(json.dumps(data, sort_keys=True), flush=True)
                elif display is not None:
                    display.update(render(data, title), refresh=True)
                else:
                    console.print(render(data, title))
                    console.file.flush()
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()
    return 0
