"""The RPC client: call, cast, fanout and notify; the one place where a message is routed to a server.

Any number of threads may use one client. Caller threads look up routes (from the cached matchmaker view)
and frame the message; one I/O thread owns the sockets, completes reply futures and resends unacked
messages.

Connection modes (``[oslo_messaging_zmq]``):

* static direct (default): one DEALER per peer for the client's life.
* dynamic direct (``use_dynamic_connections``): a DEALER per message, connected to the chosen server; if
  that connection does not complete quickly, also to ``zmq_failover_connections`` other workers of the
  topic. With ZMQ_IMMEDIATE a message only goes to a completed connection, so a dead host is skipped, and a
  send that finds no live connection within ``zmq_connect_timeout`` is rerouted or fails, never hangs.
* router proxy (``use_router_proxy``): one DEALER, with a routing id of its own, connected to every proxy
  frontend; the route frame names the server's routing id.
* ``use_pub_sub``: fanout goes once to a publisher proxy instead of once per server.

With ``rpc_use_acks`` every call, cast and notification asks for an ack; without one in
``rpc_ack_timeout_base`` (times ``rpc_ack_timeout_multiplier`` per retry) it is resent, up to
``rpc_retry_attempts`` times (-1: forever), the routes asked of the matchmaker again when none is left. A
call is acked on receipt, a one-way message once its handler returned. Servers drop the duplicates.

Under ``zmq_security = curve`` a connection expects the key the client finds in its own allowed-keys
directory for the name the peer registered (:mod:`zmqrpc.security`): an address with no allowed key is
held down and counted as a drop ("untrusted peer"), and one whose handshake fails (a rogue registration
naming someone else's key) never completes its connection, so nothing is sent there and it is held down
after zmq_connect_timeout like a dead server.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from zmqrpc import metrics, protocol
from zmqrpc.errors import CallTimeout, ClientClosed, MatchmakerError, NoRouteError, RemoteError, Unreachable
from zmqrpc.ioloop import IOLoop
from zmqrpc.logonce import WarnOnce
from zmqrpc.matchmaker import MatchMaker, RoutingCache, create_matchmaker
from zmqrpc.protocol import Flags, MessageType
from zmqrpc.security import UntrustedPeer, load_security
from zmqrpc.sockets import (
    CLOSE_LINGER_MS,
    SocketFactory,
    new_routing_id,
    recv_message,
    send_frames,
)

if TYPE_CHECKING:
    from zmqrpc.config import Settings

LOG = logging.getLogger(__name__)

# How long a dynamic send waits for its chosen worker before also connecting to the failover workers.
# Long enough for a connect on a LAN, short enough that a dead worker costs little.
FAILOVER_GRACE = 0.05
# Dynamic mode: at most this many per-message sockets open at once; more messages wait, up to MAX_WAITING.
MAX_DYNAMIC_LINKS = 256
MAX_WAITING = 100_000
# How often the client re-reads which proxies exist (from its cached matchmaker view).
SYNC_INTERVAL = 1.0
# A proxy frontend with no live connection within zmq_connect_timeout is not chosen for this long.
PROXY_HOLD_DOWN = 10.0
# While messages wait for a first proxy frontend, the matchmaker is asked this often.
NO_PROXY_LOOKUP_INTERVAL = 0.1
# Idle caller sockets kept per peer: about the number of threads that call one server at once.
MAX_IDLE_PER_PEER = 64
# How long a caller's new socket may take to connect before its call goes to the I/O thread instead.
CONNECT_GRACE = 0.25
# A peer whose one-way socket could not take a message within zmq_connect_timeout: how long its one-way
# messages go to the I/O thread (which reroutes them) before the caller's socket is tried again.
ONEWAY_HOLD_DOWN = 10.0
# Under CURVE, the key names servers registered are asked of the matchmaker at most this often when an
# address has none yet (a server newer than the cache).
KEY_NAMES_REFRESH = 1.0
# A server address found to have an allowed key is checked again after this long (keys may be rotated out).
TRUST_TTL = 10.0
KEY_NAMES_PARSE = 0.5
# With acks, a call to a topic nobody serves yet asks the matchmaker again this often, within its timeout.
ROUTE_WAIT_STEP = 0.5
MAX_TRUST_CACHE = 100_000


@dataclass
class _Outgoing:
    frames: list[bytes]
    topic: str
    msg_id: bytes
    future: Future | None  # set for calls
    reroutable: bool  # a bare-topic message may go to another worker if its server is unreachable
    deadline: float = 0.0  # calls: when the caller stops waiting (monotonic)
    wants_ack: bool = False
    acked: bool = False  # the last send was acked (a call then still waits for its reply)
    delivered: bool = False  # some send was acked: only that server may run it
    attempts: int = 0  # resends so far
    ack_due: float = float("inf")
    dest: str = ""  # the address (direct) or routing id (proxy) it was last sent to
    tried: set[str] = field(default_factory=set)
    unroutable_via: set[str] = field(default_factory=set)  # proxies that did not know ``dest``


class _Link:
    """One outgoing DEALER: a kept connection to a peer (static), a one-shot connection (dynamic), or the
    connection to all proxy frontends."""

    def __init__(self, sock: zmq.Socket, addresses: list[str], dynamic: bool) -> None:
        self.sock = sock
        self.addresses = addresses
        self.dynamic = dynamic
        self.outbox: deque[_Outgoing] = deque()
        self.blocked_since: float | None = None
        self.awaiting: dict[bytes, float] = {}  # dynamic: msg_id -> when to stop waiting for reply/ack
        self.failover: list[str] = []  # dynamic: other workers to connect to if the first is slow
        self.failover_at = 0.0
        self.down_until = 0.0  # a proxy link that found no live connection: not chosen until then


class RpcClient:
    """Sends calls, casts, fanouts and notifications to servers found through the matchmaker."""

    def __init__(
        self,
        settings: Settings,
        matchmaker: MatchMaker | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
        opts = settings.zmq
        self._opts = opts
        metrics.enable(opts.metrics_port, opts.metrics_bind_address)
        self._metrics = m = metrics.current()
        self._sent_metric = protocol.by_message_type(m.sent_by_type)
        self._dynamic = bool(opts.use_dynamic_connections)
        self._via_proxy = bool(opts.use_router_proxy)
        self._pub_sub = bool(opts.use_pub_sub)
        self._acks = bool(opts.rpc_use_acks)
        self._serializer = protocol.get_serializer(opts.rpc_zmq_serialization)
        self._max_size = opts.rpc_zmq_max_message_size
        self._connect_timeout = float(opts.zmq_connect_timeout)
        self._owns_matchmaker = matchmaker is None
        self.matchmaker = matchmaker or create_matchmaker(settings)
        self.routes = RoutingCache(self.matchmaker, opts.rpc_zmq_cache_refresh)
        self._security = load_security(opts)
        if self._security is not None:
            self._security.names = self._key_names
        self._key_names_asked = 0.0
        self._parsed_names: tuple[float, dict[str, list[tuple[str, str]]]] = (-KEY_NAMES_PARSE, {})
        self._trust_checked: dict[str, float] = {}  # address -> when its key was last found allowed
        self._sockets = SocketFactory(opts, context, self._security)
        self._pending: dict[bytes, Future] = {}
        self._tracking: dict[bytes, _Outgoing] = {}  # calls and acked messages, until reply/ack (I/O thread)
        self._refreshing: set[str] = set()  # topics whose routes a thread is asking the matchmaker for
        self._round_robin: dict[str, itertools.count] = {}
        self._peers: dict[str, _Link] = {}  # static links by address (I/O thread only)
        self._links: set[_Link] = set()  # every open link (I/O thread only)
        self._dynamic_links = 0
        self._waiting: deque[tuple[list[str], _Outgoing]] = deque()  # dynamic: for a free socket
        # Through proxies: one DEALER per proxy frontend, all with the same routing id. Messages to one
        # server always take the same live proxy, so they arrive in the order sent (two proxies forward
        # independently); a reply may come back through any of them.
        self._proxy_links: dict[str, _Link] = {}
        self._proxy_identity = ""
        # Messages that came before any proxy frontend was known: (give up at, message).
        self._no_proxy: deque[tuple[float, _Outgoing]] = deque()
        self._next_sync = 0.0
        self._warn = WarnOnce(LOG)
        self.drops = protocol.DropCounter("client")
        self.undelivered = 0  # casts/fanouts that no live server took (counted, logged)
        self.resent = 0
        self._closed = False
        # Static direct links without acks: calls and casts go out on the caller's own socket. Other modes
        # need the I/O thread's bookkeeping (per-message sockets, proxies, resends).
        direct = not (self._dynamic or self._via_proxy or self._acks)
        self._pool = _CallerSockets(self._sockets, self._connect_timeout) if direct else None
        self._loop = IOLoop("zmqrpc-client-io", tick_interval=FAILOVER_GRACE / 2)
        self._loop.add_ticker(self._on_tick)
        if self._via_proxy or self._pub_sub:
            # Proxies are found through the matchmaker; this first lookup makes the cache follow them.
            if not self.routes.lookup(protocol.PROXY_FRONTENDS):
                self._warn(f"no proxy is registered under {protocol.PROXY_FRONTENDS} yet")
            self._loop.submit(self._open_proxy_links)
        if self._security is not None:
            # After the proxies' addresses, so at least as fresh; the cache follows them from now on.
            self.routes.lookup(protocol.KEY_NAMES)
        self._loop.start()

    # ------------------------------------------------------------------ public API (any thread)
    def call(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float,
        context: dict[str, Any] | None = None,
        server: str | None = None,
        monitor: float | None = None,
    ) -> Any:
        """Call ``method`` on one server of ``topic`` (or on ``server``) and return its result.

        Raises CallTimeout when no reply arrives within ``timeout`` seconds (Unreachable, a CallTimeout,
        sooner when the bus knows the server is gone), RemoteError when the remote method raised,
        NoRouteError when no server is registered for the topic. With ``monitor`` (call monitoring) it
        also gives up when neither the reply nor a server heartbeat came for ``monitor`` seconds.
        """
        target, ordered, frames = self._prepare_call(topic, method, args, timeout, context, server)
        msg_id = frames[0][protocol.MSG_ID_OFFSET :]
        measured = self._metrics
        started = time.perf_counter()
        measured.calls_in_flight.inc()
        try:
            if self._pool is not None:
                sock = self._pool.send(ordered[0], frames)
                if sock is not None:
                    # The caller's own socket: it waits for the reply right here, no other thread involved.
                    try:
                        return _result(self._await_reply(sock, msg_id, timeout, monitor))
                    finally:
                        self._pool.put(ordered[0], sock)
            future = self._start_call(frames, target, ordered, not server, timeout)
            return self._wait(future, timeout, monitor)
        except CallTimeout:
            measured.call_timeouts.inc()
            raise
        finally:
            measured.calls_in_flight.dec()
            measured.call_duration.observe(time.perf_counter() - started)

    def call_async(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float,
        server: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> Future:
        """Start a call; the returned future's ``msg_id`` attribute identifies it. Use :meth:`wait`.

        While the server runs the call it may send heartbeats (call monitoring): the future's
        ``heartbeat_at`` attribute is then the monotonic time of the last one.
        """
        target, ordered, frames = self._prepare_call(topic, method, args, timeout, context, server)
        future = self._start_call(frames, target, ordered, not server, timeout)
        measured = self._metrics
        if measured is not metrics.OFF:
            started = time.perf_counter()
            measured.calls_in_flight.inc()

            def finished(_: Future) -> None:
                measured.calls_in_flight.dec()
                measured.call_duration.observe(time.perf_counter() - started)

            future.add_done_callback(finished)
        return future

    def _prepare_call(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None,
        timeout: float,
        context: dict[str, Any] | None,
        server: str | None,
    ) -> tuple[str, list[str], list[bytes]]:
        """Check the timeout, find the servers in round-robin order and frame the call."""
        if timeout is None or timeout <= 0:
            raise ValueError(f"a call needs a positive timeout (got {timeout!r} for topic {topic!r})")
        target = f"{topic}.{server}" if server else topic
        ordered = self._pick(target, self._call_hosts(target, timeout))
        frames = self._frame(MessageType.CALL, target, _body(method, args, context), protocol.new_msg_id())
        return target, ordered, frames

    def wait(self, future: Future, timeout: float, monitor: float | None = None) -> Any:
        """Wait for a call started with :meth:`call_async`; same errors (and ``monitor``) as :meth:`call`."""
        try:
            return self._wait(future, timeout, monitor)
        except CallTimeout:
            self._metrics.call_timeouts.inc()
            raise

    def _wait(self, future: Future, timeout: float, monitor: float | None) -> Any:
        started = time.monotonic()
        deadline = started + timeout
        while monitor:
            # Call monitoring: wait in steps that end when the last heartbeat is ``monitor`` seconds old.
            now = time.monotonic()
            ends = min(deadline, max(started, getattr(future, "heartbeat_at", started)) + monitor)
            if ends <= now:
                if now < deadline:
                    self._forget(future)
                    raise CallTimeout(f"no reply nor heartbeat within {monitor} s (call monitoring)")
                break
            with contextlib.suppress(FutureTimeout):
                future.result(ends - now)
                break
            if future.done():
                break
        try:
            body = future.result(max(0.0, deadline - time.monotonic()))
        except CallTimeout:
            raise  # Unreachable, set by the I/O thread (a CallTimeout is also a TimeoutError)
        except FutureTimeout:
            self._forget(future)
            raise CallTimeout(f"no reply within {timeout} s") from None
        return _result(body)

    def _forget(self, future: Future) -> None:
        self._pending.pop(future.msg_id, None)  # type: ignore[attr-defined]
        self._tracking.pop(future.msg_id, None)  # type: ignore[attr-defined]
        future.cancel()  # given up: done, for its callbacks (the in-flight gauge)

    def cast(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        context: dict[str, Any] | None = None,
        server: str | None = None,
        strict: bool = False,
    ) -> None:
        """Send ``method`` to one server of ``topic`` without waiting for a result.

        A topic nobody serves is counted in ``undelivered`` and logged; ``strict`` raises NoRouteError.
        """
        target = f"{topic}.{server}" if server else topic
        body = _body(method, args, context)
        self._send_one(MessageType.CAST, target, body, protocol.new_msg_id(), None, not server, strict)

    def fanout(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        strict: bool = False,
        context: dict[str, Any] | None = None,
    ) -> int:
        """Send ``method`` to every server of ``topic``; returns how many servers it is meant for."""
        hosts = self._hosts(topic, strict)
        if not hosts:
            return 0
        frames = self._frame(MessageType.FANOUT, topic, _body(method, args, context), protocol.new_msg_id())
        unicast = hosts
        if self._pub_sub:
            unicast = self._publish(topic, hosts, frames)
        for host in unicast:
            # Each copy is its own message (own id), so acks and duplicate suppression work per server.
            copy = protocol.readdress(frames, msg_id=protocol.new_msg_id())
            if not self._send_direct(host, copy):
                self._submit_route([host], self._outgoing(copy, topic, None, False, self._acks))
        return len(hosts)

    def notify(
        self,
        topic: str,
        priority: str,
        event_type: str,
        payload: Any,
        *,
        context: dict[str, Any] | None = None,
        publisher_id: str = "",
        strict: bool = False,
    ) -> None:
        """Send a notification to ``topic.priority`` (e.g. ``notifications.info``): one listener of the
        default pool gets it, and one listener of each named pool."""
        message = {
            "priority": priority.lower(),
            "event_type": event_type,
            "payload": payload,
            "publisher_id": publisher_id,
            "timestamp": time.time(),
        }
        body = {"message": message, "context": context or {}}
        target = f"{topic}.{priority.lower()}"
        pools = sorted(
            {member.rpartition("|")[2] for member in self.routes.lookup(protocol.pools_topic(target))}
        )
        targets = [protocol.pool_topic(target, pool) for pool in pools]
        if not pools or self.routes.lookup(target):
            targets.insert(0, target)  # the default pool: listeners that named none
        for each in targets:
            self._send_one(MessageType.NOTIFY, each, body, protocol.new_msg_id(), None, True, strict)

    def close(self) -> None:
        """Stop the I/O thread, close sockets (bounded linger) and fail pending calls with ClientClosed."""
        if self._closed:
            return
        self._closed = True
        self._loop.submit(self._close_all)
        self._loop.stop()
        if self._pool is not None:
            self._pool.close()
        self.routes.close()
        if self._owns_matchmaker:
            self.matchmaker.close()
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(ClientClosed("client closed with the call pending"))
        self._pending.clear()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ caller-thread helpers
    def _frame(self, msg_type: MessageType, topic: str, body: dict, msg_id: bytes) -> list[bytes]:
        flags = Flags.WANTS_ACK if self._acks else Flags.NONE
        frames = protocol.encode(msg_type, topic, body, self._serializer, msg_id=msg_id, flags=flags)
        self._sent_metric[msg_type].inc()
        size = sum(len(f) for f in frames)
        if size > self._max_size:
            raise ValueError(
                f"message to {topic!r} is {size} bytes, over rpc_zmq_max_message_size={self._max_size}"
            )
        return frames

    def _hosts(self, topic: str, strict: bool) -> list[str]:
        if self._closed:
            raise ClientClosed("client is closed")
        hosts = self.routes.lookup(topic)
        if not hosts:
            # Maybe a server registered since the cache last looked: ask the matchmaker once more.
            self.routes.invalidate(topic)
            hosts = self.routes.lookup(topic)
        if self._security is not None and not self._via_proxy:
            hosts = self._trusted(hosts)
        if not hosts:
            if strict:
                raise NoRouteError(topic)
            self._count_undelivered()
            LOG.warning("no server registered for topic %r: message not sent", topic)
        return hosts

    def _call_hosts(self, target: str, timeout: float) -> list[str]:
        """A call's servers. With acks, finding none is not yet a failure, as for a resend: the call waits for
        a server to register, asking the matchmaker every ROUTE_WAIT_STEP seconds within its timeout, so a
        server that is restarting (an upgrade, a key rotation) still gets it. NoRouteError at the deadline."""
        if not self._acks:
            return self._hosts(target, True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._hosts(target, True)
            except NoRouteError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(ROUTE_WAIT_STEP, left))

    def _key_names(self, address: str) -> list[tuple[str, str]]:
        """The key names registered for ``address`` (cached; never a matchmaker round trip). The parsed
        list is kept for KEY_NAMES_PARSE seconds: it holds an entry per server of the bus."""
        now = time.monotonic()
        parsed_at, names = self._parsed_names
        if now - parsed_at > KEY_NAMES_PARSE:
            names = protocol.key_names(self.routes.lookup_cached(protocol.KEY_NAMES))
            self._parsed_names = (now, names)
        return names.get(address, [])

    def _trusted(self, hosts: list[str]) -> list[str]:
        """``hosts`` less those with no allowed key (held down and counted). Caller threads only: a host
        with no registered key name yet makes it ask the matchmaker again (at most every second). A host
        found trusted is not checked again for TRUST_TTL seconds (the check parses every key name)."""
        assert self._security is not None
        now = time.monotonic()
        checked = self._trust_checked
        unknown = [h for h in hosts if now - checked.get(h, -TRUST_TTL) >= TRUST_TTL]
        if not unknown:
            return hosts
        if any(not self._key_names(h) for h in unknown) and now - self._key_names_asked > KEY_NAMES_REFRESH:
            self._key_names_asked = now
            self.routes.invalidate(protocol.KEY_NAMES)
            with contextlib.suppress(MatchmakerError):
                self.routes.lookup(protocol.KEY_NAMES)
            self._parsed_names = (-KEY_NAMES_PARSE, {})  # parse the fresh list
        untrusted = set()
        for host in unknown:
            try:
                self._security.key_for(host)
            except UntrustedPeer as exc:
                self._untrusted(host, exc)
                untrusted.add(host)
                continue
            checked[host] = now
        if len(checked) > MAX_TRUST_CACHE:
            checked.clear()  # bounded: addresses come and go; they are simply checked again
        return [h for h in hosts if h not in untrusted]

    def _untrusted(self, address: str, exc: UntrustedPeer) -> None:
        self.routes.forget_address(address)
        self.drops.drop("untrusted peer", str(exc), address)

    def _connect(self, sock: zmq.Socket, address: str) -> None:
        """Connect to ``address`` with its allowed key; one without is held down, and never connected."""
        try:
            self._sockets.connect(sock, address)
        except UntrustedPeer as exc:
            self._untrusted(address, exc)

    def _pick(self, topic: str, hosts: list[str]) -> list[str]:
        """Round robin over the topic's servers: the chosen one first, then the others as fallbacks."""
        counter = self._round_robin.get(topic)
        if counter is None:
            counter = self._round_robin.setdefault(topic, itertools.count())
        start = next(counter) % len(hosts)
        return hosts[start:] + hosts[:start]

    def _outgoing(
        self, frames: list[bytes], topic: str, future: Future | None, reroutable: bool, wants_ack: bool
    ) -> _Outgoing:
        msg_id = frames[0][protocol.MSG_ID_OFFSET :]
        return _Outgoing(frames, topic, msg_id, future, reroutable, wants_ack=wants_ack)

    def _send_one(
        self,
        msg_type: MessageType,
        target: str,
        body: dict,
        msg_id: bytes,
        future: Future | None,
        reroutable: bool,
        strict: bool,
        timeout: float = 0.0,
    ) -> None:
        hosts = self._hosts(target, strict)
        if not hosts:
            return
        ordered = self._pick(target, hosts)
        frames = self._frame(msg_type, target, body, msg_id)
        if self._send_direct(ordered[0], frames):
            return
        out = self._outgoing(frames, target, future, reroutable, self._acks)
        if timeout:
            out.deadline = time.monotonic() + timeout
        self._submit_route(ordered, out)

    def _send_direct(self, dest: str, frames: list[bytes]) -> bool:
        """Send a one-way message from the caller's thread; False when the I/O thread must take it
        (no caller sockets in this mode, or no live connection to ``dest``)."""
        return self._pool is not None and self._pool.send_oneway(dest, frames)

    def _start_call(
        self, frames: list[bytes], target: str, ordered: list[str], reroutable: bool, timeout: float
    ) -> Future:
        """Hand a framed call to the I/O thread; the future completes with the reply's body."""
        future: Future = Future()
        msg_id = frames[0][protocol.MSG_ID_OFFSET :]
        future.msg_id = msg_id  # type: ignore[attr-defined]
        self._pending[msg_id] = future
        out = self._outgoing(frames, target, future, reroutable, self._acks)
        out.deadline = time.monotonic() + timeout
        self._submit_route(ordered, out)
        return future

    def _await_reply(
        self, sock: zmq.Socket, msg_id: bytes, timeout: float, monitor: float | None
    ) -> dict[str, Any]:
        """Wait on the caller's socket for the reply to ``msg_id``; a heartbeat extends ``monitor``."""
        alive = time.monotonic()
        deadline = alive + timeout
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise CallTimeout(f"no reply within {timeout} s")
            ends = min(deadline, alive + monitor) if monitor else deadline
            if now >= ends:
                raise CallTimeout(f"no reply nor heartbeat within {monitor} s (call monitoring)")
            sock.setsockopt(zmq.RCVTIMEO, max(1, int((ends - now) * 1000)))
            try:
                frames = recv_message(sock, 0)
            except zmq.Again:
                continue
            if len(frames) != protocol.FRAME_COUNT or frames[0][protocol.MSG_ID_OFFSET :] != msg_id:
                continue  # a late answer to an earlier call on this socket, which gave up on it
            try:
                env = protocol.decode(frames, self._max_size)
            except protocol.ProtocolError as exc:
                self.drops.drop(exc.reason, exc.detail, "a server")
                continue
            if env.type is MessageType.REPLY:
                self._metrics.received_by_type["reply"].inc()
                return env.body
            if env.type is MessageType.HEARTBEAT:
                self._metrics.received_by_type["heartbeat"].inc()
                alive = time.monotonic()

    def _count_undelivered(self) -> None:
        self.undelivered += 1
        self._metrics.unroutable.inc()

    def _hold_down(self, address: str) -> None:
        """A server found dead: out of the routes for a while (see RoutingCache.forget_address)."""
        self.routes.forget_address(address)
        self._metrics.routes_held_down.inc()

    def _submit_route(self, ordered: list[str], out: _Outgoing) -> None:
        self._loop.submit(functools.partial(self._route, ordered, out))

    def _publish(self, topic: str, hosts: list[str], frames: list[bytes]) -> list[str]:
        """Publish one copy through a proxy; returns the servers that need a unicast copy instead."""
        if not self.routes.lookup(protocol.PROXY_PUBLISHERS):
            self._warn(
                f"use_pub_sub = true but no proxy publishes ({protocol.PROXY_PUBLISHERS} is empty; check "
                "use_pub_sub on the proxies): fanout goes to each server instead"
            )
            return hosts
        subscribers = set(self.routes.lookup(protocol.subscribers_topic(topic)))
        others = [h for h in hosts if h not in subscribers]
        if others:
            self._warn(
                f"servers of {topic!r} without use_pub_sub ({', '.join(others)}): they get fanout one by one"
            )
        if subscribers & set(hosts):
            published = protocol.readdress(frames, route=protocol.publish_route(topic))
            # Published copies have no reply path, so they are never acked.
            self._loop.submit(
                functools.partial(self._send_published, self._outgoing(published, topic, None, False, False))
            )
        return others

    # ------------------------------------------------------------------ I/O thread
    def _route(self, ordered: list[str], out: _Outgoing) -> None:
        """Hand a message to a link for the first candidate not tried yet."""
        candidates = [a for a in ordered if a not in out.tried] or ordered
        dest = candidates[0]
        if self._via_proxy:
            out.frames = protocol.readdress(out.frames, route=dest.encode())
            proxy = self._proxy_link_for(dest, avoid=out.unroutable_via if dest == out.dest else ())
            if proxy is None:
                self._wait_for_a_proxy(out)
                return
            link = proxy
        elif self._dynamic:
            if self._dynamic_links >= MAX_DYNAMIC_LINKS:
                # Bounded sockets (the old driver "ate too many TCP sockets"): wait for one to close.
                if len(self._waiting) >= MAX_WAITING:
                    self._fail(out, f"{MAX_WAITING} messages already wait for a dynamic connection")
                else:
                    self._waiting.append((ordered, out))
                return
            try:
                link = self._open_link(candidates[:1], dynamic=True)
            except zmq.ZMQError as exc:  # e.g. EMFILE: out of file descriptors
                self._fail(out, f"cannot open a connection to {dest}: {exc}")
                return
            if out.reroutable:
                link.failover = candidates[1 : 1 + max(0, self._opts.zmq_failover_connections)]
                link.failover_at = time.monotonic() + FAILOVER_GRACE
        else:
            peer = self._peers.get(dest)
            if peer is None:
                peer = self._peers[dest] = self._open_link([dest], dynamic=False)
            link = peer
        out.dest = dest
        out.tried.add(dest)
        if out.future is not None or out.wants_ack:
            self._tracking[out.msg_id] = out
        link.outbox.append(out)
        self._flush(link)

    def _route_waiting(self) -> None:
        while self._waiting and self._dynamic_links < MAX_DYNAMIC_LINKS:
            self._route(*self._waiting.popleft())

    def _send_published(self, out: _Outgoing) -> None:
        link = self._proxy_link_for(out.topic)
        if link is None:
            self._wait_for_a_proxy(out)
            return
        link.outbox.append(out)
        self._flush(link)

    def _wait_for_a_proxy(self, out: _Outgoing) -> None:
        """No proxy frontend known yet: hold the message up to zmq_connect_timeout, looking them up."""
        now = time.monotonic()
        self._no_proxy.append((now + self._connect_timeout, out))
        self._next_sync = min(self._next_sync, now + NO_PROXY_LOOKUP_INTERVAL)

    def _resend_or_expire_waiting(self, now: float) -> None:
        waiting, self._no_proxy = self._no_proxy, deque()
        for give_up_at, out in waiting:
            if self._proxy_links:
                if out.dest:
                    self._route([out.dest], out)
                else:
                    self._send_published(out)
            elif now >= give_up_at:
                if out.dest:
                    self._defer_or_fail(out, "no proxy frontend is registered")
                else:
                    self._fail(out, "no proxy frontend is registered")
            else:
                self._no_proxy.append((give_up_at, out))

    def _proxy_link_for(self, key: str, avoid: Iterable[str] = ()) -> _Link | None:
        """The proxy link for messages to ``key``: the same one while the set of live proxies stays; not
        one in ``avoid`` (proxies that said they do not know the server) while another is left."""
        if not self._proxy_links:
            return None
        now = time.monotonic()
        links = [self._proxy_links[a] for a in sorted(self._proxy_links) if a not in avoid]
        if not links:
            links = [self._proxy_links[a] for a in sorted(self._proxy_links)]
        live = [link for link in links if link.down_until <= now] or links
        return live[zlib.crc32(key.encode()) % len(live)]

    def _open_link(self, addresses: list[str], dynamic: bool, identity: str | None = None) -> _Link:
        sock = self._sockets.dealer(dynamic=dynamic, identity=identity)
        for address in addresses:
            self._connect(sock, address)
        link = _Link(sock, list(addresses), dynamic)
        self._links.add(link)
        self._metrics.connections.inc()
        self._dynamic_links += dynamic
        self._loop.watch(sock, zmq.POLLIN, functools.partial(self._on_events, link))
        return link

    def _open_proxy_links(self) -> None:
        self._proxy_identity = new_routing_id(f"client-{self._opts.rpc_zmq_host}")
        self._sync_proxies(0.0)

    def _sync_proxies(self, now: float) -> None:
        """Follow the proxy frontends the matchmaker knows: a link for each new one, none for gone ones."""
        if not self._proxy_identity or now < self._next_sync:
            return
        self._next_sync = now + (NO_PROXY_LOOKUP_INTERVAL if self._no_proxy else SYNC_INTERVAL)
        wanted = set(self.routes.lookup_cached(protocol.PROXY_FRONTENDS))
        if not wanted and self._no_proxy:  # messages wait: ask the matchmaker, not the cache
            self.routes.invalidate(protocol.PROXY_FRONTENDS)
            wanted = set(self.routes.lookup(protocol.PROXY_FRONTENDS))
        for address in sorted(wanted - self._proxy_links.keys()):
            self._proxy_links[address] = self._open_link(
                [address], dynamic=False, identity=self._proxy_identity
            )
        for address in sorted(self._proxy_links.keys() - wanted):
            link = self._proxy_links.pop(address)
            stuck = list(link.outbox)
            self._close_link(link)
            for out in stuck:  # not sent yet: another proxy takes it
                if out.dest:
                    self._route([out.dest], out)
                else:
                    self._send_published(out)

    def _close_link(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self._metrics.connections.dec()
        if link.dynamic:
            self._dynamic_links -= 1
            if self._waiting:
                self._loop.submit(self._route_waiting)  # later, not recursively from inside a send
        for address in link.addresses:
            if self._peers.get(address) is link:
                del self._peers[address]
        self._loop.unwatch(link.sock)
        link.sock.close()  # the socket's own linger applies: finite on dynamic sockets

    def _on_events(self, link: _Link, flags: int) -> None:
        if flags & zmq.POLLIN:
            self._receive(link)
        if flags & zmq.POLLOUT:
            self._flush(link)

    def _flush(self, link: _Link) -> None:
        sock = link.sock
        outbox = link.outbox
        while outbox:
            out = outbox[0]
            try:
                send_frames(sock, out.frames)
            except zmq.Again:
                # No completed connection yet (ZMQ_IMMEDIATE) or the peer's queue is full (HWM).
                if link.blocked_since is None:
                    link.blocked_since = time.monotonic()
                break
            outbox.popleft()
            link.blocked_since = None
            now = time.monotonic()
            if out.wants_ack:
                out.ack_due = now + self._ack_timeout(out.attempts)
            if link.dynamic and (out.future is not None or out.wants_ack):
                link.awaiting[out.msg_id] = max(out.deadline, out.ack_due if out.wants_ack else 0.0)
        if link not in self._links:
            return
        if link.dynamic and not outbox and not link.awaiting:
            self._close_link(link)
            return
        self._loop.set_flags(sock, zmq.POLLIN | (zmq.POLLOUT if outbox else 0))

    def _ack_timeout(self, attempt: int) -> float:
        return float(self._opts.rpc_ack_timeout_base * self._opts.rpc_ack_timeout_multiplier**attempt)

    def _receive(self, link: _Link) -> None:
        sock = link.sock
        while True:
            try:
                frames = recv_message(sock)
            except zmq.Again:
                break
            try:
                env = protocol.decode(frames, self._max_size)
            except protocol.ProtocolError as exc:
                self.drops.drop(exc.reason, exc.detail, ",".join(link.addresses))
                continue
            received = self._metrics.received_by_type
            if env.type is MessageType.ACK:
                received["ack"].inc()
                self._on_ack(link, env.msg_id)
            elif env.type is MessageType.REPLY:
                received["reply"].inc()
                self._on_reply(link, env)
            elif env.type is MessageType.UNROUTABLE:
                self._metrics.unroutable.inc()
                self._on_unroutable(link, env)
            elif env.type is MessageType.HEARTBEAT:
                received["heartbeat"].inc()
                self._on_heartbeat(env.msg_id)
            else:
                self.drops.drop("unexpected type", env.type.name, ",".join(link.addresses))
        if link.dynamic and not link.outbox and not link.awaiting and link in self._links:
            self._close_link(link)

    def _on_ack(self, link: _Link, msg_id: bytes) -> None:
        out = self._tracking.get(msg_id)
        if out is None:
            return
        if out.future is None:  # a cast: nothing more to wait for
            del self._tracking[msg_id]
            link.awaiting.pop(msg_id, None)
            return
        # A call: the reply may still be lost on the way back (a proxy dies), so ask again later; the
        # server's duplicate filter answers with the reply it cached, or just acks while still working.
        out.acked = out.delivered = True
        out.ack_due = time.monotonic() + self._ack_timeout(out.attempts)

    def _on_reply(self, link: _Link, env: protocol.Envelope) -> None:
        link.awaiting.pop(env.msg_id, None)
        self._tracking.pop(env.msg_id, None)
        future = self._pending.pop(env.msg_id, None)
        if future is not None and not future.done():
            future.set_result(env.body)

    def _on_heartbeat(self, msg_id: bytes) -> None:
        """The server still runs the call: note when, on its future (``heartbeat_at``, monotonic). For a
        resent one-way message it means the server holds it, queued or running: wait for its ack afresh."""
        future = self._pending.get(msg_id)
        if future is not None:
            future.heartbeat_at = time.monotonic()  # type: ignore[attr-defined]
            return
        out = self._tracking.get(msg_id)
        if out is not None and out.future is None:
            out.attempts = 0
            out.ack_due = time.monotonic() + self._ack_timeout(0)

    def _on_unroutable(self, link: _Link, env: protocol.Envelope) -> None:
        """A proxy says the server we routed to is not connected to it: try the other proxies first (a
        server connects to a proxy that just started a little after clients may use it, and holding the
        server down then sent all its traffic to its peers), then another worker, or fail fast."""
        if env.route.startswith(protocol.PUBLISH):
            self._count_undelivered()
            self._warn("a proxy does not publish: use_pub_sub must be the same on services and proxies")
            return
        gone = env.route.decode(errors="replace")
        out = self._tracking.get(env.msg_id)
        if out is not None and out.dest == gone:
            out.unroutable_via.update(link.addresses)
            if self._proxy_links.keys() - out.unroutable_via:
                self._route([gone], out)
                return
        self._hold_down(gone)
        out = self._tracking.pop(env.msg_id, None)
        if out is None:
            self._count_undelivered()
            LOG.warning("a proxy could not route a message to %s (not connected)", gone or "a publisher")
            return
        self._retry_elsewhere(out, f"server {gone} is not connected to the proxies")

    def _retry_elsewhere(self, out: _Outgoing, why: str) -> None:
        others = [a for a in self.routes.lookup_cached(out.topic) if a not in out.tried]
        if out.reroutable and others:
            self._route(others, out)
        else:
            self._defer_or_fail(out, why)

    def _defer_or_fail(self, out: _Outgoing, why: str) -> None:
        if out.wants_ack:
            # Wait for the next resend: by then the server may be back (restarted, re-registered), and the
            # matchmaker asked again.
            out.ack_due = time.monotonic() + self._ack_timeout(out.attempts)
            self._tracking[out.msg_id] = out
            self._refresh_routes(out.topic)
        else:
            self._fail(out, why)

    def _fail(self, out: _Outgoing, why: str) -> None:
        self._tracking.pop(out.msg_id, None)
        if out.future is not None:
            self._pending.pop(out.msg_id, None)
            if not out.future.done():
                out.future.set_exception(Unreachable(f"call to {out.topic!r} not delivered: {why}"))
        else:
            self._count_undelivered()
            LOG.warning("message to %r not delivered: %s", out.topic, why)

    def _on_tick(self, now: float) -> None:
        self._sync_proxies(now)
        if self._no_proxy:
            self._resend_or_expire_waiting(now)
        for link in list(self._links):
            if link.failover and link.outbox and now >= link.failover_at:
                # The chosen worker did not accept the connection quickly: let the others race for it.
                for address in link.failover:
                    self._connect(link.sock, address)
                link.addresses += link.failover
                link.failover = []
            if link.blocked_since is not None and now - link.blocked_since > self._connect_timeout:
                self._give_up_on(link)
            elif link.dynamic and link.awaiting and not link.outbox:
                for msg_id, deadline in list(link.awaiting.items()):
                    if now > deadline:
                        del link.awaiting[msg_id]
                if not link.awaiting:
                    self._close_link(link)
        if self._acks:
            self._resend_unacked(now)

    def _resend_unacked(self, now: float) -> None:
        limit = self._opts.rpc_retry_attempts
        for out in [o for o in self._tracking.values() if o.ack_due <= now]:
            if out.future is not None and (out.future.done() or out.msg_id not in self._pending):
                self._tracking.pop(out.msg_id, None)  # the caller stopped waiting
                continue
            if not out.acked and limit is not None and limit >= 0 and out.attempts >= limit:
                self._fail(out, f"no ack after {out.attempts + 1} attempts (rpc_retry_attempts={limit})")
                continue
            if out.acked:
                out.attempts = 0  # the server has it: the retry budget restarts for the reply poll
            out.acked = False
            out.attempts += 1
            out.ack_due = float("inf")
            self.resent += 1
            self._metrics.resends.inc()
            hosts = self.routes.lookup_cached(out.topic)
            # The same server first, so its duplicate filter sees the resend; another if it is gone, unless
            # it had acked the call: running it elsewhere too would run it twice.
            if out.dest in hosts or out.delivered:
                ordered = [out.dest]
                out.tried.discard(out.dest)
            else:
                ordered = [h for h in hosts if h not in out.tried] or hosts
            if ordered:
                self._route(ordered, out)
            else:
                # No server known now: it counts as an attempt, and the next one comes after the backoff,
                # with the routes asked of the matchmaker meanwhile.
                self._defer_or_fail(out, "no server left for the topic")

    def _refresh_routes(self, topic: str) -> None:
        """Ask the matchmaker for ``topic``'s servers now, on a thread of its own: the I/O thread must not
        wait on the matchmaker. The next resend reads the result from the cache."""
        if topic in self._refreshing:
            return
        self._refreshing.add(topic)

        def refresh() -> None:
            try:
                self.routes.invalidate(topic)
                self.routes.lookup(topic)
            except MatchmakerError as exc:  # the cache logs the outage; the resend after next asks again
                LOG.debug("route refresh for %r failed: %s", topic, exc)
            finally:
                self._refreshing.discard(topic)

        threading.Thread(target=refresh, name=f"zmqrpc-refresh-{topic}", daemon=True).start()

    def _give_up_on(self, link: _Link) -> None:
        """No live connection within zmq_connect_timeout: reroute what waits on the link, or fail it."""
        stuck = list(link.outbox)
        link.outbox.clear()
        link.blocked_since = None
        LOG.warning(
            "no live connection to %s within %.1f s (zmq_connect_timeout): %d message(s) rerouted or failed",
            ",".join(link.addresses) or "any proxy",
            self._connect_timeout,
            len(stuck),
        )
        via_proxy = link in self._proxy_links.values()
        if via_proxy:
            # Held out of the choice for a while; what waited on it goes through another proxy.
            link.down_until = time.monotonic() + PROXY_HOLD_DOWN
        else:
            for address in link.addresses:
                self._hold_down(address)
            self._close_link(link)
        for out in stuck:
            if not via_proxy:
                self._retry_elsewhere(out, f"no live server at {','.join(sorted(out.tried))}")
            elif self._proxy_link_for(out.dest or out.topic) in (None, link):
                self._defer_or_fail(out, "no proxy frontend is reachable")
            elif out.dest:
                self._route([out.dest], out)
            else:
                self._send_published(out)

    def _close_all(self) -> None:
        for link in list(self._links):
            link.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            self._close_link(link)


def _body(method: str, args: dict[str, Any] | None, context: dict[str, Any] | None) -> dict[str, Any]:
    return {"message": {"method": method, "args": args or {}}, "context": context or {}}


def _result(body: dict[str, Any]) -> Any:
    """A reply's result, or its failure raised as RemoteError."""
    failure = body.get("failure")
    if failure is not None:
        raise RemoteError(
            str(failure.get("type", "Exception")),
            str(failure.get("message", "")),
            str(failure.get("traceback", "")),
        )
    return body.get("result")


class _CallerSockets:
    """The sockets caller threads send on directly, in static direct mode without acks.

    * A call checks a DEALER to its server out of a per-peer pool, sends, and waits for the reply on it:
      the socket is its thread's alone meanwhile. At most MAX_IDLE_PER_PEER idle sockets are kept per peer
      (static direct keeps its connections).
    * One-way messages (cast, fanout copies, notifications) share one DEALER per peer, under a lock held
      only for the send, so what one client sends a server arrives in the order it was sent.

    A call's new socket gets CONNECT_GRACE to complete its connection (ZMQ_IMMEDIATE); after that the call
    goes to the I/O thread, which waits zmq_connect_timeout and reroutes or fails it. A one-way message
    waits on its peer's socket up to zmq_connect_timeout instead: handing it to the I/O thread, which
    connects on a socket of its own, would let the next ones overtake it. A peer that cannot take a message
    within that time is passed by for ONEWAY_HOLD_DOWN (its messages go to the I/O thread, which reroutes
    them), so one dead server costs a caller one wait, not one per message.
    """

    def __init__(self, factory: SocketFactory, connect_timeout: float) -> None:
        self._factory = factory
        self._connect_timeout = connect_timeout
        self._idle: dict[str, list[zmq.Socket]] = {}
        self._oneway: dict[str, _OnewayPeer] = {}
        self._oneway_lock = threading.Lock()
        self._closed = False

    def send(self, dest: str, frames: list[bytes]) -> zmq.Socket | None:
        """Send a call on a socket to ``dest`` and return it, checked out; None if it has no live
        connection within CONNECT_GRACE (the socket is kept for next time)."""
        idle = self._idle.get(dest)
        try:
            sock = idle.pop() if idle else None
        except IndexError:  # another thread took the last one
            sock = None
        if sock is None:
            sock = self._new(dest)
        if not _send_when_connected(sock, frames):
            self.put(dest, sock)
            return None
        return sock

    def put(self, dest: str, sock: zmq.Socket) -> None:
        idle = self._idle.setdefault(dest, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_PEER:
            sock.close(CLOSE_LINGER_MS)
        else:
            idle.append(sock)

    def send_oneway(self, dest: str, frames: list[bytes]) -> bool:
        """Send a one-way message on the peer's shared socket; False if it has no live connection."""
        peer = self._oneway.get(dest)
        if peer is None:
            with self._oneway_lock:
                peer = self._oneway.get(dest)
                if peer is None:
                    peer = self._oneway[dest] = _OnewayPeer(self._new(dest))
        with peer.lock:
            if self._closed or time.monotonic() < peer.passed_by_until:
                return False
            if _send_when_connected(peer.sock, frames, self._connect_timeout):
                return True
            peer.passed_by_until = time.monotonic() + ONEWAY_HOLD_DOWN
            return False

    def _new(self, dest: str) -> zmq.Socket:
        sock = self._factory.dealer(blocking=True)
        self._factory.connect(sock, dest)  # the caller checked it is trusted (RpcClient._trusted)
        return sock

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close(CLOSE_LINGER_MS)
        with self._oneway_lock:
            entries, self._oneway = list(self._oneway.values()), {}
        for peer in entries:
            with peer.lock:
                peer.sock.close(CLOSE_LINGER_MS)


class _OnewayPeer:
    """A peer's shared socket for one-way messages; see _CallerSockets."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.passed_by_until = 0.0


def _send_when_connected(sock: zmq.Socket, frames: list[bytes], within: float = CONNECT_GRACE) -> bool:
    """Send now, or as soon as the socket has a live connection (and room), within ``within`` seconds."""
    deadline = time.monotonic() + within
    pause = 0.001
    while True:
        try:
            send_frames(sock, frames)
            return True
        except zmq.Again:
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)  # green under eventlet
            pause = min(pause * 2, CONNECT_GRACE / 4)
