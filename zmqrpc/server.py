"""The RPC server: the one place where a message is delivered to application code.

A server takes requests on one ROUTER (bound in the configured port range, or connected to the proxies),
registers its topics (bare and directed) in the matchmaker, and runs every valid request on one of at
most ``rpc_thread_pool_size`` workers. Requests reach the workers and replies leave them through libzmq
alone: a ``zmq.proxy`` device in C between the ROUTER and an inproc DEALER, and a socket per worker. No
Python queue or I/O thread sits on the path. Under eventlet the workers are green threads with green
sockets, and the device runs on a real OS thread (:mod:`zmqrpc.green`).

Under ``zmq_security = curve`` a request carries its sender's key name (``Request.caller``, the ZAP
User-Id). libzmq drops a message's properties when it is sent on, so the User-Id does not survive the
device's hop to the workers: a direct server's device is then a Python relay (:class:`_StampingDevice`)
that reads each request's User-Id and prepends it as a frame. Requests through proxies or publishers come
from an authenticated proxy and have no caller of their own (``caller`` None; the rules are not applied).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from zmqrpc import green, metrics, protocol
from zmqrpc.dedup import DuplicateFilter, Seen
from zmqrpc.errors import NoSuchMethod, NotAuthorized, ReplyEvicted
from zmqrpc.logonce import WarnOnce
from zmqrpc.matchmaker import MatchMaker, Registrar, RoutingCache, create_matchmaker
from zmqrpc.protocol import Envelope, MessageType
from zmqrpc.security import load_security
from zmqrpc.sockets import (
    CLOSE_LINGER_MS,
    NOBLOCK,
    SocketFactory,
    new_routing_id,
    recv_frames,
    recv_message,
    send_frames,
    sync_connections,
)

if TYPE_CHECKING:
    from zmqrpc.config import Settings

LOG = logging.getLogger(__name__)

# How often a server re-reads which proxies and publishers exist (from its cached matchmaker view).
SYNC_INTERVAL = 1.0
# Messages a stamping device moves in one direction before it looks at the other.
DEVICE_BATCH = 64
# How often a stopping device's leftovers are drained while it ends.
DRAIN_INTERVAL = 0.01
# Messages that may wait at one worker: enough that the device hands over batches instead of waking for
# every message; a request that waits behind a long call is taken back by the rescuer.
WORKER_QUEUE = 32
# A request waiting at a worker that has run one call this long is taken back and dealt again.
RESCUE_AFTER = 0.02
# On stop, how often the wake-up message is sent again to workers that have not ended yet.
WORKER_WAKE_INTERVAL = 0.05
# On stop, time for the device to forward the replies the last workers sent.
REPLY_FLUSH_GRACE = 0.05

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
    # zmq_security = curve: the sender's key name (ZAP User-Id); None without CURVE or through a proxy.
    caller: str | None = None


Dispatcher = Callable[[Request], Any]


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


def _describe_safely(exc: BaseException) -> dict[str, str]:
    """describe_failure, even for an exception whose str() or traceback raises in turn."""
    try:
        return describe_failure(exc)
    except Exception as inner:
        return {"type": type(exc).__name__, "message": f"(cannot describe it: {inner!r})", "traceback": ""}


class _Device:
    """``zmq.proxy_steerable`` between two sockets, in C, on a real OS thread.

    The device owns both sockets while it runs. To change a socket's connections (a proxy or publisher
    came or went), :meth:`reconfigure` stops the device through its control socket, applies the change on
    the calling thread, and starts it again; messages wait in the sockets' queues meanwhile.

    A device blocks, deaf to its control socket, while it holds a message its backend cannot take (every
    peer full, or none left). :meth:`close` therefore drains the backend's endpoint until the device ends.
    """

    def __init__(
        self,
        factory: SocketFactory,
        frontend: zmq.Socket,
        backend: zmq.Socket,
        name: str,
        drain_endpoint: str | None = None,
    ) -> None:
        self.name = name
        self.frontend, self.backend = frontend, backend  # owned by the device while it runs
        self._factory, self._drain_endpoint = factory, drain_endpoint
        endpoint = f"inproc://zmqrpc-control-{uuid.uuid4().hex}"
        self._control_in = factory.inproc(zmq.PAIR)
        self._control_in.bind(endpoint)
        self._control = factory.inproc(zmq.PAIR)
        self._control.connect(endpoint)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = green.os_thread(self._run, self.name)
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self._control_in)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            LOG.error("%s stopped: %s", self.name, exc)

    def stop(self, drain: bool = False) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._control.send(b"TERMINATE")
            if not (drain and self._drain_endpoint):
                thread.join()
                return
            # Its last peers are gone: take (and drop) what it still forwards, so it reads TERMINATE.
            sink = self._factory.inproc(zmq.DEALER)
            sink.connect(self._drain_endpoint)
            try:
                while thread.is_alive():
                    thread.join(DRAIN_INTERVAL)
                    with contextlib.suppress(zmq.Again):
                        while True:
                            sink.recv(NOBLOCK)
            finally:
                sink.close(0)

    def reconfigure(self, change: Callable[[], None]) -> None:
        with self._lock:
            running = self._thread is not None
        if running:
            self.stop()
        try:
            change()
        finally:
            if running:
                self.start()

    def close(self) -> None:
        self.stop(drain=True)
        self._control.close(0)
        self._control_in.close(0)


class _StampingDevice(_Device):
    """A device in Python that prepends each request's ZAP User-Id (b"" when none) as a frame.

    libzmq clears a message's properties when a socket sends it, so behind ``zmq.proxy`` a worker could
    not learn who called. Replies pass through unchanged. Back-pressure is kept: a request the workers
    cannot take yet is held, and the frontend is not read until it went.
    """

    def _run(self) -> None:
        try:
            self._relay()
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            LOG.error("%s stopped: %s", self.name, exc)

    def _relay(self) -> None:
        front, back, control = self.frontend, self.backend, self._control_in
        poller = zmq.Poller()
        for sock in (front, back, control):
            poller.register(sock, zmq.POLLIN)
        held: list[Any] | None = None
        holding = False  # what the poller was last told: only a change costs two modify calls
        # Frames move as zmq.Frame objects: passed on without copying their bytes.
        while True:
            if holding != (held is not None):
                holding = held is not None
                poller.modify(front, 0 if holding else zmq.POLLIN)
                poller.modify(back, zmq.POLLIN | (zmq.POLLOUT if holding else 0))
            events = dict(poller.poll())
            if control in events:
                control.recv()
                return
            ready = events.get(back, 0)
            if ready & zmq.POLLIN:
                for _ in range(DEVICE_BATCH):
                    try:
                        replies = recv_frames(back)
                    except zmq.Again:
                        break
                    with contextlib.suppress(zmq.ZMQError):  # a caller gone: dropped, as zmq.proxy does
                        send_frames(front, replies)
            if held is not None and ready & zmq.POLLOUT:
                held = self._forward(back, held)
            if held is None and front in events:
                for _ in range(DEVICE_BATCH):
                    try:
                        frames = recv_frames(front)
                    except zmq.Again:
                        break
                    caller = self._caller(frames[0])
                    held = self._forward(back, [caller, *frames])
                    if held is not None:
                        break

    @staticmethod
    def _caller(first: zmq.Frame) -> bytes:
        """The User-Id of a request's connection (b"" for inproc: published fanout, rescued requests)."""
        try:
            return str(first.get("User-Id")).encode()
        except zmq.ZMQError:
            return b""

    @staticmethod
    def _forward(back: zmq.Socket, frames: list[Any]) -> list[Any] | None:
        try:
            send_frames(back, frames)
        except zmq.Again:
            return frames  # every worker's queue is full: hold it
        return None


class _Worker:
    """One dispatch thread and the socket it holds: requests arrive and replies leave through libzmq.

    ``busy_with`` is the request being run; another thread (a heartbeat, the rescuer) may use the socket
    only while it is set, under ``lock``, since the worker itself does not touch the socket until the run
    ends.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.busy_with: bytes | None = None
        self.busy_since = 0.0


class RpcServer:
    """Serves one or more bare topics (and their directed ``topic.<server>`` forms).

    Every request arrives on one ROUTER, the frontend: bound in the port range (direct modes, registered
    as ``host:port``), or connected to every proxy backend with the server's routing id as its own
    (``use_router_proxy``; a reply leaves through the proxy its request came from, since the ROUTER
    answers on the connection a request arrived on). A ``zmq.proxy`` device in C moves requests from the
    frontend to an inproc DEALER, which deals them to up to ``rpc_thread_pool_size`` workers, each holding
    its own DEALER (the zguide's multithreaded server). One worker runs everything, in the order it
    arrives, until a call runs longer than RESCUE_AFTER; then more workers start as load needs them. With
    ``use_pub_sub`` a second device feeds published fanout from a SUB socket into the frontend over
    inproc, so the workers see one stream.

    Back-pressure: at most WORKER_QUEUE messages wait at each worker, so when every worker is busy and
    its queue full the device stops reading, and the frontend's high-water mark pushes back on the
    senders.

    The DEALER deals round robin, so a message can wait at a worker that runs a long call while others
    are idle. A rescuer thread, awake only while some worker is busy, starts a worker when all are busy
    and one call has run RESCUE_AFTER seconds, takes back (under the busy worker's lock) what waits at such
    workers, and feeds it to the frontend again.
    """

    def __init__(
        self,
        settings: Settings,
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
        metrics.enable(opts.metrics_port, opts.metrics_bind_address)
        self._metrics = m = metrics.current()
        self._received_metric = protocol.by_message_type(m.received_by_type)
        self._max_size = opts.rpc_zmq_max_message_size
        self._pool_size = max(1, opts.rpc_thread_pool_size)
        self._via_proxy = bool(opts.use_router_proxy)
        self._pub_sub = bool(opts.use_pub_sub)
        self._owns_matchmaker = matchmaker is None
        self.matchmaker = matchmaker or create_matchmaker(settings)
        self._registrar = Registrar(self.matchmaker, opts.zmq_target_expire, opts.zmq_target_update)
        self._proxies = RoutingCache(self.matchmaker, opts.rpc_zmq_cache_refresh)
        self._duplicates = DuplicateFilter(opts.rpc_message_ttl, opts.rpc_reply_cache_bytes)
        self._security = load_security(opts)
        self._sockets = SocketFactory(opts, context, self._security)
        # A direct CURVE server learns each request's caller from a stamp its device prepends.
        self._stamped = self._security is not None and not self._via_proxy
        self._rules = self._security.rules if self._security is not None else None
        if self._security is not None:
            # The proxies' and publishers' key names, as they registered them (for the keys we expect).
            self._security.names = lambda address: protocol.key_names(
                self._proxies.lookup_cached(protocol.KEY_NAMES)
            ).get(address, [])
        uid = uuid.uuid4().hex
        self._frontend_inproc = f"inproc://zmqrpc-front-{uid}"
        self._workers_inproc = f"inproc://zmqrpc-workers-{uid}"
        # Published fanout enters the frontend from this routing id; no remote peer can guess it.
        self._published_id = b"zmqrpc-published-" + uid.encode()
        self._wake_id = b"zmqrpc-wake-" + uid.encode()  # and the stop wake-up from this one
        self._rescue_id = b"zmqrpc-rescued-" + uid.encode()  # and requests taken back from busy workers
        self._worker_states: list[_Worker] = []
        self._busy = 0
        self._busy_event = threading.Event()
        self._rescuer: threading.Thread | None = None
        self._front: _Device | None = None
        self._published: _Device | None = None
        self._backends: set[str] = set()  # proxy backends the frontend is connected to
        self._publishers: set[str] = set()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._running = False
        self._stop_sync = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self.address = ""
        self.port = 0
        self.drops = protocol.DropCounter(f"server {self.server} ({','.join(self.topics)})")
        self._warn_once = WarnOnce(LOG)
        self.processed = 0
        self.duplicates = 0

    def start(self) -> RpcServer:
        """Bind or connect, register in the matchmaker and start serving; returns self."""
        factory = self._sockets
        frontend = factory.router(mandatory=False)
        try:
            if self._via_proxy:
                self.address = new_routing_id(self.server)
                frontend.setsockopt(zmq.ROUTING_ID, self.address.encode())
                self._proxies.lookup(
                    protocol.PROXY_BACKENDS
                )  # first lookup: known (and refreshed) from now on
            else:
                self.port = factory.bind_in_range(frontend)
                self.address = f"{self.settings.zmq.advertise_host}:{self.port}"
            frontend.bind(self._frontend_inproc)
        except BaseException:
            frontend.close(0)
            raise
        backend = factory.inproc(zmq.DEALER, hwm=WORKER_QUEUE)
        backend.bind(self._workers_inproc)
        device = _StampingDevice if self._stamped else _Device
        self._front = device(
            factory, frontend, backend, f"zmqrpc-device-{self.topics[0]}", drain_endpoint=self._workers_inproc
        )
        if self._pub_sub:
            sub = factory.subscriber()
            for topic in self.topics:
                sub.setsockopt(zmq.SUBSCRIBE, protocol.subscription(topic))
            feed = self._frontend_feed(self._published_id)
            self._published = _Device(factory, sub, feed, f"zmqrpc-published-{self.topics[0]}")
            if not self.settings.zmq.subscribe_on:
                self._proxies.lookup(protocol.PROXY_PUBLISHERS)
        if self._security is not None and (self._via_proxy or self._pub_sub):
            self._proxies.lookup(protocol.KEY_NAMES)  # after the proxies' addresses: at least as fresh
        self._running = True
        if self._via_proxy:
            self._connect_to_proxies(frontend)
        else:
            self._sync_connections()
        self._front.start()
        if self._published is not None:
            self._published.start()
        self._add_worker()
        self._rescuer = threading.Thread(target=self._rescue_loop, name=f"zmqrpc-rescue-{self.topics[0]}")
        self._rescuer.daemon = True
        self._rescuer.start()
        self._sync_thread = threading.Thread(
            target=self._sync_loop, name=f"zmqrpc-sync-{self.topics[0]}", daemon=True
        )
        self._sync_thread.start()
        for topic in sorted(self._serving):
            self._registrar.add(topic, self.address)
        if self._security is not None and not self._via_proxy:
            # Which allowed key clients must find here (they check it in their own allowed-keys dir).
            own = self._security.own
            self._registrar.add(protocol.KEY_NAMES, f"{self.address}|{own.name}|{own.public.decode()}")
        if self._pub_sub:
            for topic in self.topics:
                self._registrar.add(protocol.subscribers_topic(topic), self.address)
        if self.pool:
            for topic in self.pooled_topics:
                self._registrar.add(protocol.pools_topic(topic), f"{self.address}|{self.pool}")
        LOG.info("serving %s on %s", ", ".join(sorted(self._serving)), self.address)
        return self

    def _connect_to_proxies(self, frontend: zmq.Socket) -> None:
        """Connect to the known proxy backends and wait (up to zmq_connect_timeout) until each has
        completed its handshake, so that no proxy meets this server's routing id before it knows it.
        Registering first let a client's first messages come back unroutable from a proxy."""
        monitor = frontend.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self._sync_connections()
            pending = len(self._backends)
            deadline = time.monotonic() + float(self.settings.zmq.zmq_connect_timeout)
            while pending and (left := deadline - time.monotonic()) > 0:
                if green.poll([(monitor, zmq.POLLIN)], int(left * 1000) + 1):
                    recv_monitor_message(monitor)
                    pending -= 1
            if pending:
                LOG.warning(
                    "server %s: %d proxy backend(s) of %s did not answer within %s s "
                    "(zmq_connect_timeout); serving anyway",
                    self.server,
                    pending,
                    ",".join(sorted(self._backends)),
                    self.settings.zmq.zmq_connect_timeout,
                )
        finally:
            frontend.disable_monitor()
            monitor.close(0)

    def unregister(self) -> None:
        """Remove this server from the matchmaker now but keep serving (a graceful drain: clients stop
        routing here once their caches refresh, while messages already on the way are still served)."""
        self._registrar.close()

    def stop(self) -> None:
        """Unregister, stop taking requests, finish running ones (their replies go out), close."""
        self._registrar.close()
        self._stop_sync.set()
        if self._sync_thread is not None:
            self._sync_thread.join()
        # Published fanout stops first, while the workers still take what it forwards.
        if self._published is not None:
            self._close_device(self._published)
        self._running = False
        self._busy_event.set()  # the rescuer sees the stop
        if self._rescuer is not None:
            self._rescuer.join()
        self._stop_workers()
        if self._front is not None:
            time.sleep(REPLY_FLUSH_GRACE)  # the device forwards the last replies
            self._close_device(self._front)
        self._front = self._published = None
        self._proxies.close()
        if self._owns_matchmaker:
            self.matchmaker.close()

    def _frontend_feed(self, identity: bytes) -> zmq.Socket:
        """A DEALER that puts messages into this server's own frontend, marked with ``identity`` (published
        fanout, requests taken back from a busy worker, the stop wake-up): workers tell them apart by it."""
        feed = self._sockets.inproc(zmq.DEALER)
        feed.setsockopt(zmq.ROUTING_ID, identity)
        feed.connect(self._frontend_inproc)
        return feed

    @staticmethod
    def _close_device(device: _Device) -> None:
        device.close()
        device.frontend.close(CLOSE_LINGER_MS)
        device.backend.close(CLOSE_LINGER_MS)

    def _stop_workers(self) -> None:
        """Wake every worker so it sees the server stopping; a busy one ends its request first.

        Workers block on their sockets with no timeout (an idle server costs no wake-ups), so the wake-up
        is a message, sent into the frontend over inproc like published fanout. The DEALER deals it to a
        worker with room in its queue, so it is sent again until every worker has gone.
        """
        with self._lock:
            workers = list(self._workers)
        if self._front is None or not workers:
            return
        waker = self._frontend_feed(self._wake_id)
        try:
            while alive := [worker for worker in workers if worker.is_alive()]:
                for _ in alive:
                    with contextlib.suppress(zmq.Again):
                        waker.send(b"", NOBLOCK)
                alive[0].join(WORKER_WAKE_INTERVAL)
        finally:
            waker.close(0)

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections
    def _sync_loop(self) -> None:
        while not self._stop_sync.wait(SYNC_INTERVAL):
            try:
                self._sync_connections()
            except Exception:  # the next round tries again; serving goes on meanwhile
                LOG.exception("server %s: cannot follow the proxies", self.server)

    def _sync_connections(self) -> None:
        """Follow the proxies the matchmaker knows: connect to new ones, drop those that are gone."""
        if self._via_proxy and self._front is not None:
            backends = set(self._proxies.lookup_cached(protocol.PROXY_BACKENDS))
            if not backends:
                self._warn_once(
                    "use_router_proxy = true but no proxy backend is registered yet (%s)",
                    protocol.PROXY_BACKENDS,
                )
            if backends != self._backends:
                front = self._front
                self._front.reconfigure(
                    lambda: sync_connections(front.frontend, self._backends, backends, self._sockets)
                )
        if self._published is not None:
            publishers = set(
                self.settings.zmq.subscribe_on or self._proxies.lookup_cached(protocol.PROXY_PUBLISHERS)
            )
            if not publishers:
                self._warn_once(
                    "use_pub_sub = true but no publisher is known (subscribe_on is empty and "
                    "nothing is registered under %s): fanout cannot reach this server",
                    protocol.PROXY_PUBLISHERS,
                )
            if publishers != self._publishers:
                published = self._published
                published.reconfigure(
                    lambda: sync_connections(published.frontend, self._publishers, publishers, self._sockets)
                )

    # ------------------------------------------------------------------ workers
    def _add_worker(self) -> None:
        """Start one more worker unless the pool is full (called with room to spare, or when none is idle)."""
        with self._lock:
            if len(self._workers) >= self._pool_size or not self._running:
                return
            self._idle += 1  # counted idle from now, so two busy workers do not both start one
            thread = threading.Thread(
                target=self._work, name=f"zmqrpc-{self.topics[0]}-{len(self._workers)}", daemon=True
            )
            self._workers.append(thread)
        thread.start()

    def _work(self) -> None:
        sock = self._sockets.blocking(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, WORKER_QUEUE)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        sock.connect(self._workers_inproc)
        worker = _Worker(sock)
        with self._lock:
            self._worker_states.append(worker)
        self._metrics.workers.inc()
        try:
            while True:
                frames = recv_message(sock, 0)
                if not self._running:
                    break  # stopping: whatever arrives now is not taken (it was not acked either)
                with self._lock:
                    self._idle -= 1
                try:
                    self._handle(worker, frames)
                except Exception:  # nothing one message does may take a worker away
                    LOG.exception("server %s: unexpected error handling a message", self.server)
                with self._lock:
                    self._idle += 1
                    self.processed += 1
        except zmq.ZMQError as exc:
            if self._running:
                LOG.error("server %s: worker socket failed, worker stops: %s", self.server, exc)
        finally:
            sock.close()
            self._metrics.workers.dec()

    def _handle(self, worker: _Worker, frames: list[bytes]) -> None:
        """Check one message, ack it if asked, run it, and send the reply on the worker's socket."""
        caller = None
        if self._stamped:
            stamp, frames = frames[0], frames[1:]
            if frames[0] == self._rescue_id:  # taken back from a busy worker: its stamp follows
                stamp, frames = frames[1], frames[2:]
            caller = stamp.decode("utf-8", "replace") or None
        elif frames[0] == self._rescue_id:
            frames = frames[1:]  # taken back from a busy worker: the message as that worker got it
        peer = frames[0]
        if peer == self._published_id:
            # [subscription, header, route = the publisher's id for the caller, topic, body]
            payload, prefix, source = frames[2:], None, "publisher"
        else:
            # [header, route, topic, body]; a reply goes back on the caller's connection (or proxy).
            payload, prefix, source = frames[1:], peer, "proxy" if self._via_proxy else peer.hex()
        try:
            env = protocol.decode(payload, self._max_size)
        except protocol.ProtocolError as exc:
            self.drops.drop(exc.reason, exc.detail, source)
            return
        if env.type in (MessageType.REPLY, MessageType.ACK, MessageType.UNROUTABLE, MessageType.HEARTBEAT):
            self.drops.drop("unexpected type", env.type.name, source)
            return
        if env.topic not in self._serving:
            self.drops.drop("wrong topic", env.topic, source)
            return
        if prefix is None and env.type is not MessageType.FANOUT:
            self.drops.drop("unexpected type", f"{env.type.name} on the subscriber socket", source)
            return
        self._received_metric[env.type].inc()
        # Rules apply to direct requests (published fanout came through an authenticated publisher); one
        # without a caller is refused, never let through (fail closed).
        if (
            self._stamped
            and self._rules
            and prefix is not None
            and self._refused(worker, prefix, env, caller, source)
        ):
            return
        acked = env.wants_ack and prefix is not None
        calls = env.type is MessageType.CALL and prefix is not None
        if acked:
            assert prefix is not None
            if calls:
                self._ack(worker, prefix, env)  # on receipt: the reply is the proof that it ran
            state = self._duplicates.seen(env.msg_id, time.monotonic())
            if state is not None:
                # A resend after a lost ack or reply: never run it twice.
                self.duplicates += 1
                self._metrics.duplicates.inc()
                self._answer_duplicate(worker, prefix, env, state)
                return
        heartbeat = functools.partial(self._heartbeat, worker, prefix, env) if prefix and calls else None
        request = Request(
            env.type, env.topic, env.body["context"], env.body["message"], env.msg_id, heartbeat, caller
        )
        with worker.lock:
            worker.busy_with, worker.busy_since = env.msg_id, time.monotonic()
        self._count_busy(1)
        try:
            result = self.dispatcher(request)
            body: dict[str, Any] = {"result": result}
        except (Exception, SystemExit) as exc:  # whatever the handler raises, the worker goes on
            if env.type is not MessageType.CALL:
                LOG.exception("%s on topic %r failed", env.type.name.lower(), env.topic)
            body = {"failure": _describe_safely(exc)}
        finally:
            with worker.lock:
                worker.busy_with = None
            self._count_busy(-1)
        if not calls:
            if acked:
                assert prefix is not None
                # Acked only now that its handler returned: a server that dies before this loses nothing,
                # since the sender resends what was not acked.
                self._duplicates.done(env.msg_id)
                self._ack(worker, prefix, env)
            return
        assert prefix is not None
        reply = self._frame_reply(env, body)
        if acked:
            self._duplicates.remember_reply(env.msg_id, reply)
        self._send(worker, prefix, reply)
        self._metrics.sent_by_type["reply"].inc()

    def _refused(
        self, worker: _Worker, prefix: bytes | None, env: Envelope, caller: str | None, source: str
    ) -> bool:
        """Check the authorization rules; a refused call gets an error reply naming why, a refused one-way
        message is a counted drop (acked if asked: sending it again would not help)."""
        assert self._rules is not None
        if caller is None:
            why: str | None = f"{env.type.name.lower()} to topic {env.topic!r} came without a caller key name"
        else:
            why = self._rules.check(caller, env.topic, env.type.name.lower())
        if why is None:
            return False
        self.drops.drop("not authorized", why, source)
        if prefix is not None and env.type is MessageType.CALL:
            self._send(
                worker, prefix, self._frame_reply(env, {"failure": describe_failure(NotAuthorized(why))})
            )
        elif prefix is not None and env.wants_ack:
            self._ack(worker, prefix, env)
        return True

    def _ack(self, worker: _Worker, prefix: bytes, env: Envelope) -> None:
        ack = protocol.encode(MessageType.ACK, "", {}, self._serializer, msg_id=env.msg_id, route=env.route)
        self._send(worker, prefix, ack)
        self._metrics.sent_by_type["ack"].inc()

    def _answer_duplicate(
        self, worker: _Worker, prefix: bytes, env: Envelope, state: Seen | list[bytes]
    ) -> None:
        """Answer a resend by what its first copy has come to; a call's resend was acked already."""
        if isinstance(state, list):
            self._send(worker, prefix, state)  # the finished call's reply, again
        elif state is Seen.DONE:
            self._ack(worker, prefix, env)
        elif state is Seen.EVICTED:
            evicted = ReplyEvicted(
                f"the call ran once, but its reply was dropped from the server's reply cache "
                f"(rpc_reply_cache_bytes={self._duplicates.max_reply_bytes}) before this resend; "
                "it is not run again"
            )
            self._send(worker, prefix, self._frame_reply(env, {"failure": describe_failure(evicted)}))
        elif env.type is not MessageType.CALL:
            # Still queued or running here: the sender keeps waiting for the ack instead of giving up.
            self._send(worker, prefix, self._heartbeat_frames(env))

    def _count_busy(self, change: int) -> None:
        self._metrics.workers_busy.inc(change)
        with self._lock:
            self._busy += change
            if self._busy:
                self._busy_event.set()
            else:
                self._busy_event.clear()

    def _rescue_loop(self) -> None:
        """While some worker is busy, take back what waits at workers that have run a call for a while."""
        feed = self._frontend_feed(self._rescue_id)
        try:
            while True:
                self._busy_event.wait()
                if not self._running:
                    return
                time.sleep(RESCUE_AFTER)
                for frames in self._take_back():
                    feed.send_multipart(frames)  # the frontend deals it again, to a worker with room
        finally:
            feed.close(0)

    def _take_back(self) -> list[list[bytes]]:
        """Add a worker when all are busy and one has run a call for RESCUE_AFTER, and take back what
        waits at such workers (they do not read while they run)."""
        stuck_since = time.monotonic() - RESCUE_AFTER
        with self._lock:
            stuck = [
                w for w in self._worker_states if w.busy_with is not None and w.busy_since <= stuck_since
            ]
            all_busy = self._idle == 0
        if not stuck or not self._running:
            return []
        if all_busy:
            self._add_worker()  # nothing when the pool is full
        with self._lock:
            if self._idle == 0:
                return []  # every worker is busy: the messages wait where they are (back-pressure)
        taken: list[list[bytes]] = []
        for worker in stuck:
            with worker.lock:
                while worker.busy_with is not None:
                    try:
                        frames = recv_message(worker.sock)
                    except zmq.Again:
                        break
                    # Taken back before: strip the old mark, the frontend adds it again.
                    if self._stamped:
                        taken.append(frames[2:] if frames[1] == self._rescue_id else frames)
                    else:
                        taken.append(frames[1:] if frames[0] == self._rescue_id else frames)
        return taken

    def _frame_reply(self, env: Envelope, body: dict[str, Any]) -> list[bytes]:
        def frame(content: dict[str, Any]) -> list[bytes]:
            return protocol.encode(
                MessageType.REPLY, "", content, self._serializer, msg_id=env.msg_id, route=env.route
            )

        try:
            frames = frame(body)
        except Exception as exc:  # TypeError, OverflowError, RecursionError...: the caller learns why
            frames = frame({"failure": describe_failure(TypeError(f"result cannot be serialized: {exc!r}"))})
        if sum(len(f) for f in frames) > self._max_size:
            frames = frame(
                {
                    "failure": describe_failure(
                        ValueError(f"reply is over rpc_zmq_max_message_size={self._max_size}")
                    )
                }
            )
        return frames

    def _heartbeat(self, worker: _Worker, prefix: bytes, env: Envelope) -> None:
        """Tell the caller the call still runs (any thread; only while the worker runs this call)."""
        frames = self._heartbeat_frames(env)
        with worker.lock:
            if worker.busy_with == env.msg_id:
                self._send(worker, prefix, frames)
                self._metrics.sent_by_type["heartbeat"].inc()

    def _heartbeat_frames(self, env: Envelope) -> list[bytes]:
        return protocol.encode(
            MessageType.HEARTBEAT, "", {}, self._serializer, msg_id=env.msg_id, route=env.route
        )

    def _send(self, worker: _Worker, prefix: bytes, frames: list[bytes]) -> None:
        try:
            send_frames(worker.sock, [prefix, *frames])
        except zmq.Again:
            self.drops.drop("reply queue full", "the server's outgoing queue is full", prefix.hex())
