"""The RPC client: call, cast, fanout and notify; the one place where a message is routed to a server.

Any number of threads may use one client. Caller threads look up routes (from the cached matchmaker view)
and frame the message; one I/O thread owns the sockets and completes reply futures.

Static direct mode keeps one DEALER per peer for the client's life. Dynamic mode opens a DEALER per message,
connected to the chosen server plus ``zmq_failover_connections`` other workers of the topic; with
ZMQ_IMMEDIATE the message goes only to a connection that completed, so a dead host is skipped, and a send
that finds no live connection within ``zmq_connect_timeout`` fails instead of hanging.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import zmq

from zmqrpc import protocol
from zmqrpc.errors import CallTimeout, ClientClosed, NoRouteError, RemoteError, Unreachable
from zmqrpc.ioloop import IOLoop
from zmqrpc.matchmaker import MatchMaker, RoutingCache, create_matchmaker
from zmqrpc.protocol import MessageType
from zmqrpc.sockets import CLOSE_LINGER_MS, SocketFactory, tcp_endpoint

LOG = logging.getLogger(__name__)

# How long a dynamic send waits for its chosen worker before also connecting to the failover workers.
# Long enough for a connect on a LAN, short enough that a dead worker costs little.
FAILOVER_GRACE = 0.05


@dataclass
class _Outgoing:
    frames: list[bytes]
    topic: str
    msg_id: bytes
    future: Future | None  # set for calls
    reroutable: bool  # a bare-topic message may go to another worker if its peer is unreachable
    deadline: float = 0.0  # calls: when the caller stops waiting (monotonic)
    tried: set[str] = field(default_factory=set)


class _Link:
    """One outgoing DEALER: a kept connection to a peer (static) or a one-shot connection (dynamic)."""

    def __init__(self, sock: zmq.Socket, addresses: list[str], dynamic: bool) -> None:
        self.sock = sock
        self.addresses = addresses
        self.dynamic = dynamic
        self.outbox: deque[_Outgoing] = deque()
        self.blocked_since: float | None = None
        self.awaiting: dict[bytes, float] = {}  # dynamic: msg_id -> reply deadline
        self.failover: list[str] = []  # dynamic: other workers to connect to if the first is slow
        self.failover_at = 0.0


class RpcClient:
    """Sends calls, casts, fanouts and notifications to servers found through the matchmaker."""

    def __init__(
        self,
        settings: Any,
        matchmaker: MatchMaker | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
        opts = settings.zmq
        self._opts = opts
        self._dynamic = bool(opts.use_dynamic_connections)
        self._serializer = protocol.get_serializer(opts.rpc_zmq_serialization)
        self._max_size = opts.rpc_zmq_max_message_size
        self._connect_timeout = float(opts.zmq_connect_timeout)
        self._owns_matchmaker = matchmaker is None
        self.matchmaker = matchmaker or create_matchmaker(settings)
        self.routes = RoutingCache(self.matchmaker, opts.rpc_zmq_cache_refresh)
        self._sockets = SocketFactory(opts, context)
        self._pending: dict[bytes, Future] = {}
        self._round_robin: dict[str, itertools.count] = {}
        self._peers: dict[str, _Link] = {}  # static links by address (I/O thread only)
        self._links: set[_Link] = set()  # every open link (I/O thread only)
        self.drops = protocol.DropCounter("client")
        self.undelivered = 0  # casts/fanouts that no live server took (counted, logged)
        self._closed = False
        self._loop = IOLoop("zmqrpc-client-io", tick_interval=FAILOVER_GRACE / 2)
        self._loop.add_ticker(self._check_links)
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
    ) -> Any:
        """Call ``method`` on one server of ``topic`` (or on ``server``) and return its result.

        Raises CallTimeout when no reply arrives within ``timeout`` seconds, RemoteError when the remote
        method raised, NoRouteError when no server is registered for the topic.
        """
        future = self.call_async(topic, method, args, timeout=timeout, context=context, server=server)
        return self.wait(future, timeout)

    def call_async(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float,
        context: dict[str, Any] | None = None,
        server: str | None = None,
    ) -> Future:
        """Start a call; the returned future's ``msg_id`` attribute identifies it. Use :meth:`wait`."""
        if timeout is None or timeout <= 0:
            raise ValueError(f"a call needs a positive timeout (got {timeout!r} for topic {topic!r})")
        target = f"{topic}.{server}" if server else topic
        body = {"message": {"method": method, "args": args or {}}, "context": context or {}}
        future: Future = Future()
        msg_id = protocol.new_msg_id()
        future.msg_id = msg_id  # type: ignore[attr-defined]
        self._pending[msg_id] = future
        try:
            self._send_one(
                MessageType.CALL, target, body, msg_id, future, reroutable=not server, timeout=timeout
            )
        except BaseException:
            self._pending.pop(msg_id, None)
            raise
        return future

    def wait(self, future: Future, timeout: float) -> Any:
        """Wait for a call started with :meth:`call_async`; same errors as :meth:`call`."""
        try:
            body = future.result(timeout)
        except FutureTimeout:
            self._pending.pop(future.msg_id, None)  # type: ignore[attr-defined]
            raise CallTimeout(f"no reply within {timeout} s") from None
        failure = body.get("failure")
        if failure is not None:
            raise RemoteError(
                str(failure.get("type", "Exception")),
                str(failure.get("message", "")),
                str(failure.get("traceback", "")),
            )
        return body.get("result")

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
        body = {"message": {"method": method, "args": args or {}}, "context": context or {}}
        self._cast_like(MessageType.CAST, target, body, reroutable=not server, strict=strict)

    def fanout(
        self,
        topic: str,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        context: dict[str, Any] | None = None,
        strict: bool = False,
    ) -> int:
        """Send ``method`` to every server of ``topic``; returns how many servers it was sent to."""
        body = {"message": {"method": method, "args": args or {}}, "context": context or {}}
        hosts = self._hosts(topic, strict)
        if not hosts:
            return 0
        msg_id = protocol.new_msg_id()
        frames = self._frame(MessageType.FANOUT, topic, body, msg_id)
        for address in hosts:
            out = _Outgoing(frames, topic, msg_id, None, reroutable=False)
            self._loop.submit(functools.partial(self._route, [address], out))
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
        """Send a notification to one listener of ``topic.priority`` (e.g. ``notifications.info``)."""
        message = {
            "priority": priority.lower(),
            "event_type": event_type,
            "payload": payload,
            "publisher_id": publisher_id,
            "timestamp": time.time(),
        }
        target = f"{topic}.{priority.lower()}"
        body = {"message": message, "context": context or {}}
        self._cast_like(MessageType.NOTIFY, target, body, reroutable=True, strict=strict)

    def close(self) -> None:
        """Stop the I/O thread, close sockets (bounded linger) and fail pending calls with ClientClosed."""
        if self._closed:
            return
        self._closed = True
        self._loop.submit(self._close_all)
        self._loop.stop()
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
        frames = protocol.encode(msg_type, topic, body, self._serializer, msg_id=msg_id)
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
        if not hosts:
            if strict:
                raise NoRouteError(topic)
            self.undelivered += 1
            LOG.warning("no server registered for topic %r: message not sent", topic)
        return hosts

    def _pick(self, topic: str, hosts: list[str]) -> list[str]:
        """Round robin over the topic's servers: the chosen one first, then the others as fallbacks."""
        counter = self._round_robin.get(topic)
        if counter is None:
            counter = self._round_robin.setdefault(topic, itertools.count())
        start = next(counter) % len(hosts)
        return hosts[start:] + hosts[:start]

    def _send_one(
        self,
        msg_type: MessageType,
        target: str,
        body: dict,
        msg_id: bytes,
        future: Future | None,
        reroutable: bool,
        strict: bool = True,
        timeout: float = 0.0,
    ) -> None:
        hosts = self._hosts(target, strict)
        if not hosts:
            return
        frames = self._frame(msg_type, target, body, msg_id)
        deadline = time.monotonic() + timeout if timeout else 0.0
        out = _Outgoing(frames, target, msg_id, future, reroutable, deadline)
        ordered = self._pick(target, hosts)
        self._loop.submit(lambda: self._route(ordered, out))

    def _cast_like(
        self, msg_type: MessageType, target: str, body: dict, reroutable: bool, strict: bool
    ) -> None:
        self._send_one(msg_type, target, body, protocol.new_msg_id(), None, reroutable, strict)

    # ------------------------------------------------------------------ I/O thread
    def _route(self, ordered: list[str], out: _Outgoing) -> None:
        """Hand a message to a link: the first candidate's peer (static) or a new one-shot link (dynamic)."""
        candidates = [a for a in ordered if a not in out.tried] or ordered
        if self._dynamic:
            # The chosen server plus zmq_failover_connections other workers of the same topic.
            link = self._open_link(candidates[:1], dynamic=True)
            if out.reroutable:
                link.failover = candidates[1 : 1 + max(0, self._opts.zmq_failover_connections)]
                link.failover_at = time.monotonic() + FAILOVER_GRACE
                out.tried.update(link.failover)
        else:
            address = candidates[0]
            peer = self._peers.get(address)
            if peer is None:
                peer = self._peers[address] = self._open_link([address], dynamic=False)
            link = peer
        out.tried.update(link.addresses)
        link.outbox.append(out)
        self._flush(link)

    def _open_link(self, addresses: list[str], dynamic: bool) -> _Link:
        sock = self._sockets.dealer(dynamic=dynamic)
        for address in addresses:
            sock.connect(tcp_endpoint(address))
        link = _Link(sock, addresses, dynamic)
        self._links.add(link)
        self._loop.watch(sock, zmq.POLLIN, functools.partial(self._on_events, link))
        return link

    def _close_link(self, link: _Link) -> None:
        self._links.discard(link)
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
                sock.send_multipart(out.frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                # No completed connection yet (ZMQ_IMMEDIATE) or the peer's queue is full (HWM).
                if link.blocked_since is None:
                    link.blocked_since = time.monotonic()
                break
            outbox.popleft()
            link.blocked_since = None
            if link.dynamic and out.future is not None:
                link.awaiting[out.msg_id] = out.deadline
        if link not in self._links:
            return
        if link.dynamic and not outbox and not link.awaiting:
            self._close_link(link)
            return
        self._loop.set_flags(sock, zmq.POLLIN | (zmq.POLLOUT if outbox else 0))

    def _receive(self, link: _Link) -> None:
        sock = link.sock
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                env = protocol.decode(frames, self._max_size)
            except protocol.ProtocolError as exc:
                self.drops.drop(exc.reason, exc.detail, ",".join(link.addresses))
                continue
            if env.type is not MessageType.REPLY:
                self.drops.drop("unexpected type", env.type.name, ",".join(link.addresses))
                continue
            link.awaiting.pop(env.msg_id, None)
            future = self._pending.pop(env.msg_id, None)
            if future is not None and not future.done():
                future.set_result(env.body)
        if link.dynamic and not link.outbox and not link.awaiting and link in self._links:
            self._close_link(link)

    def _check_links(self, now: float) -> None:
        """Fail or reroute messages stuck on links that have no live connection; expire dynamic links."""
        for link in list(self._links):
            if link.failover and link.outbox and now >= link.failover_at:
                # The chosen worker did not accept the connection quickly: let the others race for it.
                for address in link.failover:
                    link.sock.connect(tcp_endpoint(address))
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

    def _give_up_on(self, link: _Link) -> None:
        stuck = list(link.outbox)
        link.outbox.clear()
        LOG.warning(
            "no live connection to %s within %.1f s (zmq_connect_timeout): %d message(s) rerouted or failed",
            ",".join(link.addresses),
            self._connect_timeout,
            len(stuck),
        )
        for address in link.addresses:
            self.routes.forget_address(address)
        self._close_link(link)
        for out in stuck:
            others = [a for a in self.routes.lookup_cached(out.topic) if a not in out.tried]
            if out.reroutable and others:
                self._route(others, out)
            elif out.future is not None:
                if not out.future.done():
                    self._pending.pop(out.msg_id, None)
                    out.future.set_exception(
                        Unreachable(
                            f"no live server for topic {out.topic!r} at {','.join(sorted(out.tried))}"
                        )
                    )
            else:
                self.undelivered += 1

    def _close_all(self) -> None:
        for link in list(self._links):
            link.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            self._close_link(link)
