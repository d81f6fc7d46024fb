"""``zmqrpc plan``: what a bus of N nodes costs in each topology, by arithmetic alone.

The model (docs/scale.md checks it against a bus of up to 1,000 simulated nodes on one machine):

* a *node* is a host running ``services_per_node`` services; a *service* is one process holding one
  :class:`~zmqrpc.server.RpcServer` and one :class:`~zmqrpc.client.RpcClient` (each with its own
  matchmaker connection), like an OpenStack agent or the zmqrpc node agent;
* ``callers`` services call every server's directed topic (the full mesh the deployment guide's N² rule
  is about; by default all of them), so in static direct each caller keeps one connection per server;
* a proxy topology has ``proxies`` central proxies: every client connects to every frontend, every
  server to every backend, and with PUB/SUB every subscriber to every publisher.

What a socket costs comes from :data:`COSTS` (file descriptors per ZeroMQ socket and per connection,
threads and memory per server, per-message CPU times). Those follow the concurrency core: when it
changes, adjust :class:`Costs` and re-run ``zmqrpc scale-test`` to check the figures again.

The plan is pure arithmetic: no import of zmq or redis, so Ansible's filter plugin loads this file as it
is (roles/zmqrpc/filter_plugins/zmqrpc_plan.py) on a controller without zmqrpc installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from zmqrpc.errors import ConfigError

__all__ = [
    "COSTS",
    "DEFAULTS",
    "TOPOLOGIES",
    "Costs",
    "Plan",
    "PlanWarning",
    "Role",
    "Topology",
    "add_arguments",
    "main",
    "plan",
    "run",
]


@dataclasses.dataclass(frozen=True)
class Costs:
    """What one socket, thread or message costs. Measured with ``zmqrpc scale-test`` (docs/scale.md).

    The server and client figures belong to the concurrency core (a server's ROUTER behind a
    ``zmq.proxy`` device and an inproc DEALER, a socket per worker; a client's I/O loop link plus a
    pooled socket per calling thread). Change them here when the core changes, then re-measure.
    """

    # --- file descriptors. Every ZeroMQ socket holds one (its mailbox eventfd); every TCP connection
    # and every listening socket one.
    fd_per_connection: int = 1
    # One server before any traffic: its ROUTER, the device's inproc DEALER and control sockets, its
    # loop's eventfd (besides its listening socket and connections).
    server_base_fds: int = 5
    server_worker_fds: int = 1  # each worker started (one after the first message)
    subscriber_fds: int = 4  # use_pub_sub: the SUB socket and the device behind it
    # One client before it sends: its loop and matchmaker bookkeeping; then a socket per link.
    client_base_fds: int = 5
    client_fds_per_link: int = 1
    # Static direct: links a client keeps per server it calls (the I/O loop's, used by casts, fanout
    # and call_async, and the pooled socket of the one thread that calls).
    client_links_per_peer: int = 2
    # A proxy process before connections: Python, its ZeroMQ context, its loop.
    proxy_base_fds: int = 9
    # A Python process with a ZeroMQ context (stdio, the context's reaper and I/O thread mailboxes).
    process_base_fds: int = 12
    # Redis connections a matchmaker holds (redis-py's pool: one, a second under concurrent use).
    redis_connections_per_matchmaker: int = 1
    # --- threads: a server's device, registrar and bookkeeping threads; a routing-cache refresher in
    # proxy topologies; a device for the subscriber; the workers started (one after the first message,
    # up to rpc_thread_pool_size under load).
    server_base_threads: int = 4
    server_cache_threads: int = 1
    subscriber_threads: int = 1
    idle_workers_per_server: int = 1
    threads_per_client: int = 2  # I/O loop, routing-cache refresher
    process_base_threads: int = 3  # main, ZeroMQ I/O thread and reaper
    # --- memory (resident): a thread's stack and state, a TCP connection's buffers, a bare process.
    thread_rss_kb: float = 70.0
    connection_rss_kb: float = 3.0
    process_base_rss_mb: float = 35.0
    proxy_base_rss_mb: float = 38.0
    # --- CPU per message, for the fanout time: a client framing and queueing one unicast copy, a proxy
    # forwarding one, a publisher copying one to a subscriber (libzmq, no Python), a server taking one
    # off its socket and running the handler, a dynamic connection's set-up. One hop on a LAN.
    client_copy_us: float = 40.0
    proxy_forward_us: float = 25.0
    publish_copy_us: float = 2.0
    server_dispatch_us: float = 350.0
    dynamic_connect_us: float = 400.0
    hop_ms: float = 0.3
    # --- Redis: memory per matchmaker entry (sorted-set member and score), one core's comfortable rate.
    redis_bytes_per_entry: int = 120
    redis_comfortable_ops: int = 50_000
    redis_maxclients: int = 10_000


COSTS = Costs()


@dataclasses.dataclass(frozen=True)
class Topology:
    """One documented topology, as inventory/<name>/group_vars/all.yml selects it."""

    name: str
    router_proxy: bool = False
    pub_sub: bool = False
    dynamic: bool = False
    local_publisher: bool = False
    matchmaker: str = "redis"
    # Past this many nodes the plan warns, naming ``limit_reason``. None: only the computed limits apply.
    sensible_nodes: int | None = None
    limit_reason: str = ""

    @property
    def proxied(self) -> bool:
        """Clients hold a link to the proxy frontends (router proxy, or to publish fanout)."""
        return self.router_proxy or self.pub_sub

    @property
    def binds(self) -> bool:
        """Servers bind a port in rpc_zmq_min_port..rpc_zmq_max_port (every topology without router proxy)."""
        return not self.router_proxy


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology(
            "all-in-one",
            matchmaker="dummy",
            sensible_nodes=1,
            limit_reason="the dummy matchmaker is one host's files: other hosts cannot find the servers",
        ),
        Topology(
            "static-direct",
            sensible_nodes=100,
            limit_reason="every caller keeps a connection to every server: N² connections across the bus",
        ),
        Topology(
            "sentinel-ha",
            matchmaker="sentinel",
            sensible_nodes=100,
            limit_reason="static direct with Sentinel: every caller keeps a connection to every server, "
            "N² connections across the bus",
        ),
        Topology(
            "dynamic-direct",
            dynamic=True,
            sensible_nodes=300,
            limit_reason="a fanout opens one TCP connection per server (256 at a time) and the directed "
            "topics the callers use are refreshed from Redis one by one",
        ),
        Topology("router-proxy", router_proxy=True),
        Topology("pubsub", router_proxy=True, pub_sub=True),
        Topology("local-publisher", router_proxy=True, pub_sub=True, local_publisher=True),
        Topology("dynamic-pubsub", pub_sub=True, dynamic=True),
    )
}

# Documented defaults of the options the plan reads ([oslo_messaging_zmq]).
DEFAULTS: dict[str, Any] = {
    "zmq_target_update": 180.0,
    "rpc_zmq_cache_refresh": 10.0,
    "rpc_zmq_min_port": 49153,
    "rpc_zmq_max_port": 65536,
}
# A publisher past this many subscribers is past what the deployment guide documents for PUB/SUB.
MAX_SUBSCRIBERS = 10_000
# libzmq's default cap on the sockets of one context (ZMQ_MAX_SOCKETS).
ZMQ_MAX_SOCKETS = 1023
# The fanout time the plan warns past (seconds).
FANOUT_BUDGET_S = 1.0
# Ports: a random bind in the range tries rpc_zmq_bind_port_retries times; keeping the bound ports to a
# quarter of the range makes 100 tries all landing on a used port (0.25**100) impossible in practice.
PORT_HEADROOM = 4
MIN_PORT_RANGE = 100
# LimitNOFILE: the predicted need times this, rounded up to a multiple of 1024 (at least 1024).
NOFILE_HEADROOM = 1.5


@dataclasses.dataclass(frozen=True)
class Role:
    """One kind of process (or a whole node) on the bus: what each one holds."""

    count: int  # how many on the bus
    connections: int  # established TCP connections it holds (kept ones; dynamic ones come and go)
    fds: int
    threads: int
    rss_mb: float
    listening_ports: int = 0
    transient_connections: int = 0  # dynamic connections open at once at most (per message)


@dataclasses.dataclass(frozen=True)
class PlanWarning:
    limit: str  # connections, fds, ports, memory, time, redis, subscribers, proxies, matchmaker
    message: str


@dataclasses.dataclass(frozen=True)
class Plan:
    topology: str
    nodes: int
    services_per_node: int
    proxies: int
    callers: int
    clients: int
    server: Role  # one RpcServer (its sockets and threads, not the process around it)
    client: Role  # one RpcClient of a caller
    service: Role  # one service process: a server, a client and the process itself
    node: Role  # one node: its services (and its local publisher)
    proxy: Role | None
    local_publisher: Role | None
    bus_connections: int  # every kept TCP connection on the bus, each counted once
    limit_nofile: int  # LimitNOFILE for a service unit
    proxy_limit_nofile: int
    port_range: int  # rpc_zmq_max_port - rpc_zmq_min_port a node needs
    redis_connections: int
    redis_registrations_per_s: float
    redis_refreshes_per_s: float
    redis_ops_per_s: float
    redis_memory_mb: float
    fanout_s: float  # a fanout reaching every server, one node per host
    warnings: tuple[PlanWarning, ...]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _server(top: Topology, proxies: int, callers: int, costs: Costs) -> Role:
    """One RpcServer: its sockets, the connections they hold, its threads and memory."""
    fds = costs.server_base_fds + costs.idle_workers_per_server * costs.server_worker_fds
    threads = costs.server_base_threads + costs.idle_workers_per_server
    conns = 0
    listening = 0
    transient = 0
    if top.binds:
        listening = 1  # the ROUTER bound in the port range
        if top.dynamic:
            transient = min(callers, 256)
        else:
            conns += callers * costs.client_links_per_peer  # every caller keeps its links to it
    else:
        conns += proxies  # the ROUTER connected to every proxy backend
    if top.proxied:
        threads += costs.server_cache_threads
    if top.pub_sub:
        fds += costs.subscriber_fds
        threads += costs.subscriber_threads
        conns += 1 if top.local_publisher else proxies
    conns += 0 if top.matchmaker == "dummy" else costs.redis_connections_per_matchmaker
    fds += (conns + listening) * costs.fd_per_connection
    rss = (threads * costs.thread_rss_kb + conns * costs.connection_rss_kb) / 1024
    return Role(0, conns, fds, threads, rss, listening, transient)


def _client(top: Topology, proxies: int, servers: int, caller: bool, costs: Costs) -> Role:
    """One RpcClient: kept links to every server it calls (static) or one link to every proxy."""
    links = 0
    conns = 0
    transient = 0
    if top.proxied:
        links += proxies  # a DEALER per proxy frontend (messages to one server keep to one proxy)
        conns += proxies
    if not top.router_proxy and caller:
        if top.dynamic:
            transient = min(servers, 256)
        else:
            links += servers * costs.client_links_per_peer
            conns += servers * costs.client_links_per_peer
    conns += 0 if top.matchmaker == "dummy" else costs.redis_connections_per_matchmaker
    fds = costs.client_base_fds + links * costs.client_fds_per_link + conns * costs.fd_per_connection
    rss = (costs.threads_per_client * costs.thread_rss_kb + conns * costs.connection_rss_kb) / 1024
    return Role(0, conns, fds, costs.threads_per_client, rss, 0, transient)


def _nofile(fds: int) -> int:
    return max(1024, math.ceil(fds * NOFILE_HEADROOM / 1024) * 1024)


def _fanout_s(top: Topology, servers: int, services_per_node: int, costs: Costs, cores: int | None) -> float:
    """Time from the client's fanout() until the last server ran its handler.

    ``cores``: every server shares that many cores (one machine, as ``zmqrpc scale-test`` runs it) instead
    of one node per host.
    """
    if top.pub_sub:
        sending = costs.client_copy_us + servers * costs.publish_copy_us
    elif top.router_proxy:
        # The client's copies and the proxy's forwarding run in parallel: the slower of the two paces it.
        sending = servers * max(costs.client_copy_us, costs.proxy_forward_us)
    elif top.dynamic:
        sending = servers * costs.dynamic_connect_us
    else:
        sending = servers * costs.client_copy_us
    if cores:
        receiving = servers * costs.server_dispatch_us / cores
    else:
        receiving = services_per_node * costs.server_dispatch_us
    hops = 2 if top.proxied else 1
    return (sending + receiving) / 1e6 + hops * costs.hop_ms / 1e3


def plan(
    nodes: int,
    topology: str,
    services_per_node: int = 1,
    proxies: int | None = None,
    *,
    callers: int | None = None,
    clients: int | None = None,
    zmq_target_update: float = DEFAULTS["zmq_target_update"],
    rpc_zmq_cache_refresh: float = DEFAULTS["rpc_zmq_cache_refresh"],
    port_range: int | None = None,
    cores: int | None = None,
    costs: Costs = COSTS,
) -> Plan:
    """Predict what a bus of ``nodes`` hosts costs in ``topology``.

    ``callers``: services that call every server (default: all of them). ``clients``: RpcClients on the
    bus (default: one per service). ``port_range``: the configured rpc_zmq_max_port - rpc_zmq_min_port, to
    check. ``cores``: predict the fanout for every node sharing that many cores (one machine).
    """
    if topology not in TOPOLOGIES:
        raise ConfigError(f"unknown topology {topology!r}: expected one of {', '.join(TOPOLOGIES)}")
    top = TOPOLOGIES[topology]
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1 (got {nodes})")
    if services_per_node < 1:
        raise ConfigError(f"--services-per-node must be at least 1 (got {services_per_node})")
    if proxies is None:
        proxies = 3 if top.proxied else 0
    if top.proxied and proxies < 1:
        raise ConfigError(f"topology {topology} needs at least one proxy (got --proxies {proxies})")
    if not top.proxied:
        proxies = 0
    servers = nodes * services_per_node
    callers = servers if callers is None else max(0, callers)
    clients = servers if clients is None else max(0, clients)
    warnings: list[PlanWarning] = []

    server = dataclasses.replace(_server(top, proxies, callers, costs), count=servers)
    client = dataclasses.replace(_client(top, proxies, servers, callers > 0, costs), count=clients)
    service = Role(
        servers,
        server.connections + client.connections,
        costs.process_base_fds + server.fds + client.fds,
        costs.process_base_threads + server.threads + client.threads,
        costs.process_base_rss_mb + server.rss_mb + client.rss_mb,
        server.listening_ports,
        server.transient_connections + client.transient_connections,
    )

    local_publisher = None
    if top.local_publisher:
        lp_conns = proxies + services_per_node + 1  # upstream publishers, local subscribers, Redis
        local_publisher = Role(
            nodes,
            lp_conns,
            costs.proxy_base_fds + 2 + (lp_conns + 1) * costs.fd_per_connection,
            costs.process_base_threads + 2,
            costs.proxy_base_rss_mb + lp_conns * costs.connection_rss_kb / 1024,
            1,
        )
    lp = local_publisher
    node = Role(
        nodes,
        services_per_node * service.connections + (lp.connections if lp else 0),
        services_per_node * service.fds + (lp.fds if lp else 0),
        services_per_node * service.threads + (lp.threads if lp else 0),
        services_per_node * service.rss_mb + (lp.rss_mb if lp else 0.0),
        services_per_node * service.listening_ports + (lp.listening_ports if lp else 0),
        services_per_node * service.transient_connections,
    )

    proxy = None
    if top.proxied:
        frontend = clients
        backend = servers if top.router_proxy else 0
        subscribers = (nodes if top.local_publisher else servers) if top.pub_sub else 0
        conns = frontend + backend + subscribers + 1  # + Redis (its registrar)
        listening = 2 + (1 if top.pub_sub else 0)
        proxy = Role(
            proxies,
            conns,
            costs.proxy_base_fds + listening + (conns + listening) * costs.fd_per_connection,
            costs.process_base_threads + 2,  # + I/O loop and registrar
            costs.proxy_base_rss_mb + conns * costs.connection_rss_kb / 1024,
            listening,
        )
        if subscribers > MAX_SUBSCRIBERS:
            warnings.append(
                PlanWarning(
                    "subscribers",
                    f"each publisher has {subscribers} subscribers, past the {MAX_SUBSCRIBERS} the "
                    "deployment guide documents for PUB/SUB: use local publishers (one subscriber per node)",
                )
            )

    # Every kept TCP connection once (Redis apart): callers to servers, clients and servers to proxies,
    # subscribers to publishers, local subscribers to their local publisher.
    bus = 0
    if not top.proxied and not top.dynamic:
        bus += min(callers, clients) * servers * costs.client_links_per_peer
    bus += clients * proxies if top.proxied else 0
    bus += servers * proxies if top.router_proxy else 0
    if top.pub_sub:
        bus += nodes * proxies + servers if top.local_publisher else servers * proxies

    # Redis: registrations every zmq_target_update, refreshes every rpc_zmq_cache_refresh.
    redis_connections = 0
    reg = refresh = 0.0
    memory_mb = 0.0
    if top.matchmaker != "dummy":
        per_server_topics = 2 + (1 if top.pub_sub else 0)  # bare, directed (, subscribers)
        per_proxy_topics = 2 + (1 if top.pub_sub else 0)
        reg = (servers * per_server_topics + proxies * per_proxy_topics) / zmq_target_update
        server_cached = (1 if top.router_proxy else 0) + (1 if top.pub_sub and not top.local_publisher else 0)
        client_cached = (1 if top.proxied else 0) + (1 if top.pub_sub else 0)  # frontends, publishers
        caller_cached = servers + 1 + (1 if top.pub_sub else 0)  # every directed topic, the bare one(s)
        lp_cached = 1 if lp else 0
        refresh = (
            servers * server_cached
            + clients * client_cached
            + min(callers, clients) * caller_cached
            + nodes * lp_cached
        ) / rpc_zmq_cache_refresh
        redis_connections = (
            servers * costs.redis_connections_per_matchmaker
            + clients * costs.redis_connections_per_matchmaker
            + proxies
            + (nodes if lp else 0)
        )
        memory_mb = servers * per_server_topics * costs.redis_bytes_per_entry / 1e6
        if reg + refresh > costs.redis_comfortable_ops:
            warnings.append(
                PlanWarning(
                    "redis",
                    f"{reg + refresh:.0f} Redis ops/s, past the {costs.redis_comfortable_ops} one Redis core "
                    "serves comfortably: raise rpc_zmq_cache_refresh, or have fewer callers cache every "
                    "directed topic",
                )
            )
        if redis_connections > costs.redis_maxclients:
            warnings.append(
                PlanWarning(
                    "redis",
                    f"{redis_connections} Redis connections, past Redis's default maxclients "
                    f"{costs.redis_maxclients}: raise maxclients and Redis's LimitNOFILE",
                )
            )

    needed_ports = services_per_node if top.binds else 0
    port_needed = max(MIN_PORT_RANGE, needed_ports * PORT_HEADROOM) if top.binds else MIN_PORT_RANGE
    if port_range is not None and top.binds and port_range < port_needed:
        warnings.append(
            PlanWarning(
                "ports",
                f"rpc_zmq_max_port - rpc_zmq_min_port = {port_range}, under the {port_needed} that "
                f"{services_per_node} services per node need for random binds to succeed",
            )
        )

    fanout = _fanout_s(top, servers, services_per_node, costs, cores)
    if fanout > FANOUT_BUDGET_S:
        warnings.append(
            PlanWarning(
                "time",
                f"a fanout takes about {fanout:.2f} s to reach all {servers} servers, past the "
                f"{FANOUT_BUDGET_S:.0f} s budget" + ("" if top.pub_sub else ": publish it (use_pub_sub)"),
            )
        )
    if top.sensible_nodes is not None and nodes > top.sensible_nodes:
        connections = f" ({bus} connections, {node.connections} per node)" if not top.dynamic else ""
        warnings.insert(
            0,
            PlanWarning(
                "connections" if top.name in ("static-direct", "sentinel-ha") else "topology",
                f"{topology} past {top.sensible_nodes} nodes: {top.limit_reason}{connections}",
            ),
        )
    if proxy is not None and proxy.fds > 65536:
        warnings.append(
            PlanWarning(
                "fds",
                f"each proxy needs {proxy.fds} file descriptors, past 65536: add proxies (clients and "
                "servers connect to all of them, so more proxies do not lower this) or use local publishers",
            )
        )
    # Every socket but the connections and listening sockets is a ZeroMQ socket of the context.
    sockets = service.fds - costs.process_base_fds - service.connections - service.listening_ports
    if sockets > ZMQ_MAX_SOCKETS:
        warnings.append(
            PlanWarning(
                "fds",
                f"each service process holds about {sockets} ZeroMQ sockets, past libzmq's ZMQ_MAX_SOCKETS "
                f"({ZMQ_MAX_SOCKETS} by default): sockets fail with 'Too many open files' however high "
                "LimitNOFILE is",
            )
        )
    if service.fds > 65536:
        warnings.append(
            PlanWarning("fds", f"each service process needs {service.fds} file descriptors, past 65536")
        )

    return Plan(
        topology=topology,
        nodes=nodes,
        services_per_node=services_per_node,
        proxies=proxies,
        callers=callers,
        clients=clients,
        server=server,
        client=client,
        service=service,
        node=node,
        proxy=proxy,
        local_publisher=local_publisher,
        bus_connections=bus,
        limit_nofile=_nofile(service.fds + service.transient_connections),
        proxy_limit_nofile=_nofile(proxy.fds) if proxy else 0,
        port_range=port_needed,
        redis_connections=redis_connections,
        redis_registrations_per_s=round(reg, 3),
        redis_refreshes_per_s=round(refresh, 3),
        redis_ops_per_s=round(reg + refresh, 3),
        redis_memory_mb=round(memory_mb, 3),
        fanout_s=round(fanout, 4),
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------------------
# Command line: `zmqrpc plan`
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, required=True, help="hosts that run services")
    parser.add_argument("--topology", required=True, choices=sorted(TOPOLOGIES), help="as in inventory/")
    parser.add_argument(
        "--services-per-node", type=int, default=1, help="services (server + client) per node"
    )
    parser.add_argument("--proxies", type=int, help="central proxies (proxy topologies; default 3)")
    parser.add_argument(
        "--callers",
        type=int,
        help="services that call every server's directed topic (default: all: the full mesh)",
    )
    parser.add_argument("--clients", type=int, help="RpcClients on the bus (default: one per service)")
    parser.add_argument(
        "--zmq-target-update", type=float, default=DEFAULTS["zmq_target_update"], help="seconds"
    )
    parser.add_argument(
        "--rpc-zmq-cache-refresh", type=float, default=DEFAULTS["rpc_zmq_cache_refresh"], help="seconds"
    )
    parser.add_argument("--port-range", type=int, help="the configured rpc_zmq_max_port - rpc_zmq_min_port")
    parser.add_argument(
        "--cores",
        type=int,
        help="predict the fanout for every node sharing this many cores (one machine, as scale-test runs)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")


def from_args(args: argparse.Namespace) -> Plan:
    return plan(
        args.nodes,
        args.topology,
        args.services_per_node,
        args.proxies,
        callers=args.callers,
        clients=args.clients,
        zmq_target_update=args.zmq_target_update,
        rpc_zmq_cache_refresh=args.rpc_zmq_cache_refresh,
        port_range=args.port_range,
        cores=args.cores,
    )


def format_plan(p: Plan) -> str:
    """The plan as a table a person reads, then its warnings."""
    lines = [
        f"zmqrpc plan: {p.topology}, {p.nodes} nodes x {p.services_per_node} services, "
        f"{p.proxies} proxies, {p.callers} callers, {p.clients} clients",
        f"{'per':<16}{'count':>8}{'connections':>13}{'fds':>9}{'threads':>9}{'RSS MB':>9}{'ports':>7}",
    ]
    rows: list[tuple[str, Role | None]] = [
        ("server", p.server),
        ("client (caller)", p.client),
        ("service process", p.service),
        ("node", p.node),
        ("proxy", p.proxy),
        ("local publisher", p.local_publisher),
    ]
    for name, role in rows:
        if role is None:
            continue
        conns = f"{role.connections}" + (
            f"+{role.transient_connections}dyn" if role.transient_connections else ""
        )
        lines.append(
            f"{name:<16}{role.count:>8}{conns:>13}{role.fds:>9}{role.threads:>9}{role.rss_mb:>9.1f}"
            f"{role.listening_ports:>7}"
        )
    lines += [
        f"bus connections      {p.bus_connections}",
        f"LimitNOFILE          services {p.limit_nofile}"
        + (f", proxies {p.proxy_limit_nofile}" if p.proxy else ""),
        f"port range needed    rpc_zmq_max_port - rpc_zmq_min_port >= {p.port_range}",
        f"Redis                {p.redis_ops_per_s:.1f} ops/s "
        f"({p.redis_registrations_per_s:.1f} registrations, "
        f"{p.redis_refreshes_per_s:.1f} refreshes), {p.redis_connections} connections, "
        f"{p.redis_memory_mb:.1f} MB of entries",
        f"fanout to everyone   {p.fanout_s * 1000:.1f} ms",
    ]
    for warning in p.warnings:
        lines.append(f"WARNING [{warning.limit}]: {warning.message}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the plan; exit 0, or 1 when it warns (the topology is past a limit)."""
    p = from_args(args)
    print(json.dumps(p.as_dict(), sort_keys=True) if args.json else format_plan(p))
    return 1 if p.warnings else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zmqrpc plan", description="predict what a bus of N nodes costs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
