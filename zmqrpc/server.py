"""The RPC server: the one place where a message is delivered to application code.

A server binds a ROUTER in the configured port range, registers its topics (bare and directed) in the
matchmaker, and dispatches every valid request on a bounded thread pool (``rpc_thread_pool_size``). When
the pool is full it stops reading, so back-pressure reaches the senders through the high-water marks
instead of an unbounded queue. Replies go back on the connection the request came in on.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from zmqrpc import protocol
from zmqrpc.ioloop import IOLoop
from zmqrpc.matchmaker import MatchMaker, Registrar, RoutingCache, create_matchmaker
from zmqrpc.protocol import Envelope, MessageType
from zmqrpc.sockets import CLOSE_LINGER_MS, SocketFactory, new_routing_id, sync_connections, tcp_endpoint

LOG = logging.getLogger(__name__)

# How often a server re-reads which proxies and publishers exist (from its cached matchmaker view).
SYNC_INTERVAL = 1.0

NOTIFICATION_PRIORITIES = ("audit", "debug", "info", "warn", "warning", "error", "critical", "sample")


@dataclass
class Request:
    """One delivered message, as the dispatcher sees it."""

    kind: MessageType
    topic: str
    context: dict[str, Any]
    message: dict[str, Any]
    msg_id: bytes
    # Calls only: tells the caller the call is still running (call monitoring). Any thread may call it.
    heartbeat: Callable[[], None] | None = None


Dispatcher = Callable[[Request], Any]


class NoSuchMethod(AttributeError):
    """No endpoint has the requested method."""


class EndpointDispatcher:
    """Calls ``endpoint.method(context, **args)`` on the first endpoint that has the method.

    Notifications call ``endpoint.<priority>(context, publisher_id, event_type, payload, metadata)``.
    """

    def __init__(self, endpoints: Iterable[object]) -> None:
        self.endpoints = list(endpoints)

    def _find(self, name: str) -> Callable[..., Any] | None:
        if name.startswith("_"):
            return None
        for endpoint in self.endpoints:
            method = getattr(endpoint, name, None)
            if callable(method):
                return method
        return None

    def __call__(self, request: Request) -> Any:
        message = request.message
        if request.kind is MessageType.NOTIFY:
            handler = self._find(str(message.get("priority", "")))
            if handler is None:
                return None
            metadata = {"timestamp": message.get("timestamp"), "message_id": request.msg_id.hex()}
            return handler(
                request.context,
                message.get("publisher_id"),
                message.get("event_type"),
                message.get("payload"),
                metadata,
            )
        name = message.get("method")
        method = self._find(name) if isinstance(name, str) else None
        if method is None:
            raise NoSuchMethod(f"no endpoint on topic {request.topic!r} has method {name!r}")
        args = message.get("args") or {}
        return method(request.context, **args)


def describe_failure(exc: BaseException) -> dict[str, str]:
    """What a caller learns about a remote exception: its type, message and traceback."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


class WorkerPool:
    """Up to ``size`` worker threads fed by a SimpleQueue, started as load needs them.

    Cheaper per task than ThreadPoolExecutor.submit (no Future per message). The server bounds how many
    tasks are in flight, so the queue never holds more than ``size``.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._idle == 0 and len(self._threads) < self.size:
            with self._lock:
                if len(self._threads) < self.size:
                    thread = threading.Thread(
                        target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
        self._queue.put((fn, args))

    def shutdown(self) -> None:
        """Let queued tasks finish, then stop every worker."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            task = self._queue.get()
            with self._lock:
                self._idle -= 1
            if task is None:
                return
            fn, args = task
            try:
                fn(*args)
            except Exception:  # _work handles its own errors; this only guards the worker itself
                LOG.exception("%s: task failed", self.name)


@dataclass
class _ReplyPath:
    """Where a reply or ack to one request goes: a socket, its identity prefix, and the route frame."""

    sock: zmq.Socket
    prefix: list[bytes]
    route: bytes


class DuplicateFilter:
    """Message ids seen within ``rpc_message_ttl`` seconds, with the reply each call got.

    Used only for messages that ask for acks: a sender that missed an ack resends, and the resend must
    neither run again nor go unanswered.
    """

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[bytes, list[Any]] = OrderedDict()  # msg_id -> [expires, reply or None]

    def seen(self, msg_id: bytes, now: float) -> tuple[bool, list[bytes] | None]:
        """(already seen?, the reply it got if finished); records the id when new."""
        self._expire(now)
        entry = self._seen.get(msg_id)
        if entry is not None:
            return True, entry[1]
        self._seen[msg_id] = [now + self.ttl, None]
        return False, None

    def remember_reply(self, msg_id: bytes, reply: list[bytes]) -> None:
        entry = self._seen.get(msg_id)
        if entry is not None:
            entry[1] = reply

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            msg_id, (expires, _) = next(iter(seen.items()))
            if expires > now and len(seen) <= self.limit:
                break
            del seen[msg_id]

    def __len__(self) -> int:
        return len(self._seen)


class RpcServer:
    """Serves one or more bare topics (and their directed ``topic.<server>`` forms).

    Direct modes bind a ROUTER in the port range and register ``host:port``. With ``use_router_proxy`` the
    server instead connects one DEALER to each proxy backend and registers its routing id; a reply goes back
    through the proxy its request came from, the one the caller is known to be connected to. With
    ``use_pub_sub`` it also subscribes to the publishers (``subscribe_on``, or the proxies the matchmaker
    knows) for fanout to its bare topics.
    """

    def __init__(
        self,
        settings: Any,
        topics: str | Iterable[str],
        dispatcher: Dispatcher | Iterable[object],
        *,
        server: str | None = None,
        pool: str | None = None,
        matchmaker: MatchMaker | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        opts = settings.zmq
        self.settings = settings
        self.server = server or opts.rpc_zmq_host
        self.pool = pool
        # A notification listener in a pool shares that pool's copy with the pool's other listeners.
        self.pooled_topics = [topics] if isinstance(topics, str) else list(topics)
        self.topics = (
            [protocol.pool_topic(t, pool) for t in self.pooled_topics] if pool else self.pooled_topics
        )
        if not self.topics:
            raise ValueError("a server needs at least one topic")
        self.dispatcher: Dispatcher = dispatcher if callable(dispatcher) else EndpointDispatcher(dispatcher)
        self._serving = set(self.topics) | {f"{t}.{self.server}" for t in self.topics}
        self._serializer = protocol.get_serializer(opts.rpc_zmq_serialization)
        self._max_size = opts.rpc_zmq_max_message_size
        self._pool_size = max(1, opts.rpc_thread_pool_size)
        self._via_proxy = bool(opts.use_router_proxy)
        self._pub_sub = bool(opts.use_pub_sub)
        self._owns_matchmaker = matchmaker is None
        self.matchmaker = matchmaker or create_matchmaker(settings)
        self._registrar = Registrar(self.matchmaker, opts.zmq_target_expire, opts.zmq_target_update)
        self._proxies = RoutingCache(self.matchmaker, opts.rpc_zmq_cache_refresh)
        self._duplicates = DuplicateFilter(opts.rpc_message_ttl)
        self._sockets = SocketFactory(opts, context)
        self._inbound: zmq.Socket | None = None  # direct modes: the ROUTER bound in the port range
        self._backends: dict[str, zmq.Socket] = {}  # through proxies: one DEALER per proxy backend
        self._sub: zmq.Socket | None = None
        self._open = False  # sockets exist (between start and close, on the I/O thread)
        self._publishers: set[str] = set()
        self._executor: WorkerPool | None = None
        self._loop = IOLoop(f"zmqrpc-server-{self.topics[0]}")
        self._finished: deque[tuple[_ReplyPath | None, list[bytes] | None, bytes, bool]] = deque()
        self._in_flight = 0
        self._reading = True
        self._next_sync = 0.0
        self.address = ""
        self.port = 0
        self.drops = protocol.DropCounter(f"server {self.server} ({','.join(self.topics)})")
        self.processed = 0
        self.duplicates = 0

    def start(self) -> RpcServer:
        """Bind or connect, register in the matchmaker and start serving; returns self."""
        if self._via_proxy:
            self.address = new_routing_id(self.server)  # the DEALERs are made as the backends become known
            self._proxies.lookup(protocol.PROXY_BACKENDS)  # first lookup: known (and refreshed) from now on
        else:
            inbound = self._sockets.router()
            try:
                self.port = self._sockets.bind_in_range(inbound)
            except BaseException:
                inbound.close(0)
                raise
            self.address = f"{self.settings.zmq.advertise_host}:{self.port}"
            self._inbound = inbound
        self._open = True
        if self._pub_sub:
            self._sub = self._sockets.subscriber()
            for topic in self.topics:
                self._sub.setsockopt(zmq.SUBSCRIBE, protocol.subscription(topic))
            if not self.settings.zmq.subscribe_on:
                self._proxies.lookup(protocol.PROXY_PUBLISHERS)
        self._executor = WorkerPool(self._pool_size, f"zmqrpc-{self.topics[0]}")
        self._loop.submit(self._watch_sockets)
        self._loop.add_ticker(self._sync_connections)
        self._loop.start()
        for topic in sorted(self._serving):
            self._registrar.add(topic, self.address)
        if self._pub_sub:
            for topic in self.topics:
                self._registrar.add(protocol.subscribers_topic(topic), self.address)
        if self.pool:
            for topic in self.pooled_topics:
                self._registrar.add(protocol.pools_topic(topic), f"{self.address}|{self.pool}")
        LOG.info("serving %s on %s", ", ".join(sorted(self._serving)), self.address)
        return self

    def unregister(self) -> None:
        """Remove this server from the matchmaker now but keep serving (a graceful drain: clients stop
        routing here once their caches refresh, while messages already on the way are still served)."""
        self._registrar.close()

    def stop(self) -> None:
        """Unregister, stop reading, finish running requests, close the sockets."""
        self._registrar.close()
        if self._executor is not None:
            # Nothing read from now on, so nothing is handed to the executor after its shutdown.
            stopped = threading.Event()
            self._loop.submit(functools.partial(self._stop_reading, stopped))
            stopped.wait(2.0)
        self._proxies.close()
        if self._owns_matchmaker:
            self.matchmaker.close()
        if self._executor is not None:
            self._executor.shutdown()
        self._loop.submit(self._close)
        self._loop.stop()

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ I/O thread
    def _watch_sockets(self) -> None:
        if self._inbound is not None:
            self._loop.watch(self._inbound, zmq.POLLIN, self._on_inbound)
        if self._sub is not None:
            self._loop.watch(self._sub, zmq.POLLIN, self._on_published)
        self._sync_connections(0.0)

    def _sync_connections(self, now: float) -> None:
        """Follow the proxies the matchmaker knows: connect to new ones, drop those that are gone."""
        if now < self._next_sync:
            return
        self._next_sync = now + SYNC_INTERVAL
        if self._via_proxy and self._open:
            backends = self._proxies.lookup_cached(protocol.PROXY_BACKENDS)
            if not backends and not self._backends:
                _warn_once(
                    LOG,
                    "use_router_proxy = true but no proxy backend is registered yet (%s)",
                    protocol.PROXY_BACKENDS,
                )
            self._sync_backends(set(backends))
        if self._sub is not None:
            publishers = self.settings.zmq.subscribe_on or self._proxies.lookup_cached(
                protocol.PROXY_PUBLISHERS
            )
            if not publishers:
                _warn_once(
                    LOG,
                    "use_pub_sub = true but no publisher is known (subscribe_on is empty and "
                    "nothing is registered under %s): fanout cannot reach this server",
                    protocol.PROXY_PUBLISHERS,
                )
            sync_connections(self._sub, self._publishers, publishers)

    def _sync_backends(self, wanted: set[str]) -> None:
        """One DEALER per proxy backend: a reply must leave through the proxy its request came from.

        With one DEALER connected to every proxy, replies went out round robin, and a proxy the caller
        had not finished connecting to dropped the reply (the caller's identity unknown there).
        """
        for address in sorted(wanted - self._backends.keys()):
            sock = self._sockets.dealer(identity=self.address)
            sock.connect(tcp_endpoint(address))
            self._backends[address] = sock
            self._loop.watch(sock, zmq.POLLIN, functools.partial(self._on_backend, sock))
            if not self._may_read():
                self._loop.set_flags(sock, 0)
        for address in sorted(self._backends.keys() - wanted):
            sock = self._backends.pop(address)
            self._loop.unwatch(sock)
            sock.close(CLOSE_LINGER_MS)

    def _readers(self) -> list[zmq.Socket]:
        """Every socket requests arrive on."""
        sockets = [*self._backends.values()]
        sockets += [sock for sock in (self._inbound, self._sub) if sock is not None]
        return sockets

    def _may_read(self) -> bool:
        return self._reading and self._in_flight < self._pool_size

    def _close(self) -> None:
        self._drain_finished()
        self._open = False
        for sock in self._readers():
            self._loop.unwatch(sock)
            sock.close(CLOSE_LINGER_MS)
        self._inbound = self._sub = None
        self._backends.clear()

    def _stop_reading(self, done: threading.Event) -> None:
        self._reading = False
        for sock in self._readers():
            self._loop.set_flags(sock, 0)
        done.set()

    def _pause_if_full(self) -> None:
        if self._in_flight >= self._pool_size:
            # Pool full: stop reading until a worker finishes (back-pressure through the HWM).
            for sock in self._readers():
                self._loop.set_flags(sock, 0)

    def _on_inbound(self, flags: int) -> None:
        sock = self._inbound
        assert sock is not None
        # [identity, header, route, topic, body]; replies go back on the caller's connection.
        self._read(sock, lambda f: self._accept(f[1:], _ReplyPath(sock, [f[0]], b""), f[0].hex()))

    def _on_backend(self, sock: zmq.Socket, flags: int) -> None:
        # [header, route = the caller's id, topic, body]; the reply leaves through this same proxy.
        self._read(
            sock, lambda f: self._accept(f, _ReplyPath(sock, [], f[1] if len(f) > 1 else b""), "proxy")
        )

    def _on_published(self, flags: int) -> None:
        assert self._sub is not None
        # [subscription, header, route = the publisher's id for the caller, topic, body]
        self._read(self._sub, lambda f: self._accept(f[1:], None, "publisher"))

    def _read(self, sock: zmq.Socket, accept: Callable[[list[bytes]], None]) -> None:
        """Hand each waiting message to ``accept`` while the worker pool has room."""
        while self._in_flight < self._pool_size:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            accept(frames)
        self._pause_if_full()

    def _accept(self, payload: list[bytes], reply_to: _ReplyPath | None, peer: str) -> None:
        try:
            env = protocol.decode(payload, self._max_size)
        except protocol.ProtocolError as exc:
            self.drops.drop(exc.reason, exc.detail, peer)
            return
        if env.type in (MessageType.REPLY, MessageType.ACK, MessageType.UNROUTABLE, MessageType.HEARTBEAT):
            self.drops.drop("unexpected type", env.type.name, peer)
            return
        if env.topic not in self._serving:
            self.drops.drop("wrong topic", env.topic, peer)
            return
        if reply_to is None and env.type is not MessageType.FANOUT:
            self.drops.drop("unexpected type", f"{env.type.name} on the subscriber socket", peer)
            return
        acked = env.wants_ack and reply_to is not None
        if acked:
            assert reply_to is not None
            self._send(
                reply_to,
                protocol.encode(
                    MessageType.ACK, "", {}, self._serializer, msg_id=env.msg_id, route=reply_to.route
                ),
            )
            duplicate, reply = self._duplicates.seen(env.msg_id, time.monotonic())
            if duplicate:
                # A resend after a lost ack: never run it twice; answer a finished call again.
                self.duplicates += 1
                if reply is not None:
                    self._send(reply_to, reply)
                return
        self._in_flight += 1
        assert self._executor is not None
        self._executor.submit(self._work, reply_to, env, acked)

    def _work(self, reply_to: _ReplyPath | None, env: Envelope, acked: bool) -> None:
        """Worker thread: run the request, frame the reply for a call, hand it to the I/O thread."""
        heartbeat = None
        if env.type is MessageType.CALL and reply_to is not None:
            heartbeat = functools.partial(self._heartbeat, reply_to, env.msg_id)
        request = Request(
            env.type, env.topic, env.body["context"], env.body["message"], env.msg_id, heartbeat
        )
        try:
            result = self.dispatcher(request)
            body: dict[str, Any] = {"result": result}
        except Exception as exc:
            if env.type is not MessageType.CALL:
                LOG.exception("%s on topic %r failed", env.type.name.lower(), env.topic)
            body = {"failure": describe_failure(exc)}
        reply = None
        if env.type is MessageType.CALL and reply_to is not None:
            reply = self._frame_reply(env, body, reply_to.route)
        self._finished.append((reply_to, reply, env.msg_id, acked))
        self._loop.submit(self._drain_finished)

    def _frame_reply(self, env: Envelope, body: dict[str, Any], route: bytes) -> list[bytes]:
        def frame(content: dict[str, Any]) -> list[bytes]:
            return protocol.encode(
                MessageType.REPLY, "", content, self._serializer, msg_id=env.msg_id, route=route
            )

        try:
            frames = frame(body)
        except (TypeError, ValueError) as exc:
            frames = frame({"failure": describe_failure(TypeError(f"result cannot be serialized: {exc}"))})
        if sum(len(f) for f in frames) > self._max_size:
            frames = frame(
                {
                    "failure": describe_failure(
                        ValueError(f"reply is over rpc_zmq_max_message_size={self._max_size}")
                    )
                }
            )
        return frames

    def _heartbeat(self, reply_to: _ReplyPath, msg_id: bytes) -> None:
        frames = protocol.encode(
            MessageType.HEARTBEAT, "", {}, self._serializer, msg_id=msg_id, route=reply_to.route
        )
        self._loop.submit(functools.partial(self._send_if_open, reply_to, frames))

    def _send_if_open(self, reply_to: _ReplyPath, frames: list[bytes]) -> None:
        if self._open:
            self._send(reply_to, frames)

    def _send(self, reply_to: _ReplyPath, frames: list[bytes]) -> None:
        try:
            reply_to.sock.send_multipart([*reply_to.prefix, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.drops.drop("reply queue full", "caller's high-water mark reached", reply_to.route.hex())
        except zmq.ZMQError as exc:
            # EHOSTUNREACH with ROUTER_MANDATORY: the caller disconnected before its reply.
            self.drops.drop("unroutable reply", str(exc), (reply_to.prefix or [reply_to.route])[0].hex())

    def _drain_finished(self) -> None:
        finished = self._finished
        while finished:
            reply_to, reply, msg_id, acked = finished.popleft()
            self._in_flight -= 1
            self.processed += 1
            if reply is None or reply_to is None or not self._open:
                continue
            if acked:
                self._duplicates.remember_reply(msg_id, reply)
            self._send(reply_to, reply)
        if self._may_read():
            for sock in self._readers():
                self._loop.set_flags(sock, zmq.POLLIN)


_warned: set[str] = set()


def _warn_once(log: logging.Logger, message: str, *args: object) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message, *args)
