"""Proxies: the central router/publisher proxy and the local publisher.

:class:`CentralProxy` is the ``use_router_proxy`` / ``use_pub_sub`` proxy of the deployment guide: a frontend
ROUTER that clients connect to, a backend ROUTER that servers connect to and, when it publishes, a PUB socket
that servers (or local publishers) subscribe to. It reads only the route frame and follows the routing rules
in :mod:`zmqrpc.protocol` exactly:

* frontend ``[sender, header, route, topic, body]`` with ``route`` = PUBLISH + topic: published on the PUB as
  ``[subscription(topic), header, sender, topic, body]``;
* any other frontend message: out of the backend as ``[route, header, sender, topic, body]``; an unknown
  ``route`` is counted and answered with an UNROUTABLE notice to the sender;
* backend ``[server, header, route, topic, body]``: out of the frontend as ``[route, header, server, topic,
  body]``; an unknown ``route`` is counted (there is no reply path).

Anything else (wrong frame count, empty route, bad header, over ``rpc_zmq_max_message_size``) is dropped and
counted by reason. Nothing is ever blocked on: a full queue (high-water mark) is a counted drop. The proxy
keeps no message state, so any proxy may be restarted at any time.

Under ``zmq_security = curve`` with ``zmq_curve_authorization`` rules, the proxy is where the sender's key
name is known (servers behind it see only the proxy), so it checks the rules on the frontend: a refused
call is answered with a ``NotAuthorized`` reply, anything else refused is a counted drop.

:class:`LocalPublisher` (``--local-publisher``) subscribes to the central publishers (``subscribe_on``, or
the addresses registered under :data:`~zmqrpc.protocol.PROXY_PUBLISHERS`) and republishes on a local XPUB;
the exact subscriptions of its local subscribers are forwarded upstream.

Both expose ``start()``, ``stop()``, ``wait()`` and ``stats()`` (a JSON-ready dict of counters);
``log_stats()`` writes one ``... stats: {json}`` log line, which the CLI does on SIGUSR1 and at exit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from zmqrpc import metrics, protocol
from zmqrpc.address import format_host_port, parse_host_port
from zmqrpc.errors import BindError, ConfigError, MatchmakerError, NotAuthorized, ProxyError
from zmqrpc.ioloop import IOLoop
from zmqrpc.matchmaker import MatchMaker, Registrar, create_matchmaker
from zmqrpc.periodic import PeriodicTask
from zmqrpc.protocol import MessageType
from zmqrpc.security import load_security
from zmqrpc.sockets import (
    CLOSE_LINGER_MS,
    NOBLOCK,
    SocketFactory,
    recv_frames,
    recv_message,
    send_frames,
    sync_connections,
)

if TYPE_CHECKING:
    from zmqrpc.config import Settings

LOG = logging.getLogger(__name__)

# A message seen by a ROUTER: the peer's routing id, then the four envelope frames.
ROUTED_FRAMES = 1 + protocol.FRAME_COUNT
# Messages handled per socket before the loop polls again (fairness between frontend and backend).
BATCH = 256
# How often stats are logged with --debug (seconds, only when they changed).
DEBUG_STATS_INTERVAL = 10.0
# A published topic longer than this is refused (the same limit the envelope puts on topics).
_MAX_PUBLISH_ROUTE = 1 + protocol.MAX_TOPIC_LENGTH
# The largest message a PUB or XPUB accepts from a subscriber (libzmq MAXMSGSIZE): a subscription is a
# marker byte and a topic of at most MAX_TOPIC_LENGTH bytes plus its zero byte (ZMTP 3.1 adds a 10-byte
# SUBSCRIBE command name). libzmq keeps a subscription as one trie node per byte: one 1 MB subscription
# grew a PUB by 48 MB, and by 114 MB once its peer left (never given back); an XSUB that holds one (a local
# publisher forwards them upstream) segfaults when it is closed.
MAX_SUBSCRIPTION = 64 + protocol.MAX_TOPIC_LENGTH
# Host names that mean "this node" in a subscribe_on entry.
_LOCAL_NAMES = frozenset({"localhost", "ip6-localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "*"})


def advertised(host: str, port: int) -> str:
    """The ``host:port`` a proxy registers (IPv6 hosts in brackets)."""
    return format_host_port(host, port)


@dataclasses.dataclass
class _Link:
    """One direction through a central proxy, in at ``into`` and out at ``out`` to a ``peer``, counted."""

    into: str  # the ROUTER messages come in at
    out: str  # the ROUTER they leave by
    peer: str  # what the route frame names there: a server or a client
    unknown: str  # what happens when no such peer is connected (for the debug log)
    forwarded: int = 0
    unroutable: int = 0
    metric: Any = metrics.OFF.forwarded  # this direction's zmqrpc_proxy_forwarded_total


def _short(ident: bytes) -> str:
    text = repr(ident)
    return text if len(text) <= 42 else text[:39] + "..."


class _Proxy:
    """What both proxy kinds share: the socket factory, the I/O loop, binding, stopping, stats logging."""

    kind = "proxy"

    def __init__(self, settings: Settings, host: str, debug: bool, context: zmq.Context | None) -> None:
        self.settings = settings
        self.host = host
        self.debug = debug
        self.bind_address = settings.zmq.rpc_zmq_bind_address or "*"
        # zmq_security = curve: every bound socket is a CURVE server, and upstreams are checked by key.
        self._security = load_security(settings.zmq)
        self._factory = SocketFactory(settings.zmq, context, self._security)
        self._max_size = int(settings.zmq.rpc_zmq_max_message_size)
        self.drops = protocol.DropCounter(f"zmqrpc {self.kind}")
        metrics.enable(settings.proxy.metrics_port, settings.zmq.metrics_bind_address)
        self._metrics = metrics.current()
        self._loop = IOLoop(f"zmqrpc-{self.kind.replace(' ', '-')}")
        self._sockets: list[zmq.Socket] = []
        self._started = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._last_debug_stats = 0.0
        self._last_debug_snapshot: dict[str, Any] | None = None

    # --- to be provided by subclasses ---
    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def _open(self) -> list[tuple[zmq.Socket, Callable[[list[bytes]], None]]]:
        """Create and bind the sockets; return each one the loop reads, with the handler of one message."""
        raise NotImplementedError

    def _shutdown_extra(self) -> None:
        """Release what the subclass holds besides sockets (called after the loop stopped)."""

    # --- shared ---
    def _start_loop(self) -> bool:
        """Open the sockets (all closed again if one fails) and start the loop; False if started already."""
        if self._started:
            return False
        try:
            watched = self._open()
        except BaseException:
            self._close_sockets()
            raise
        if self._metrics is not metrics.OFF:
            watched += [(self._monitor(sock), self._on_connection_event) for sock, _ in watched]
        for sock, handler in watched:
            self._loop.watch(sock, zmq.POLLIN, functools.partial(self._drain, sock, handler))
        if self.debug:
            self._loop.add_ticker(self._debug_ticker)
        self._loop.start()
        self._started = True
        return True

    def _bind(self, sock: zmq.Socket, what: str, option: str, port: int) -> int:
        try:
            real = self._factory.bind_port(sock, self.bind_address, port)
        except BindError as exc:
            shown = "a random port" if port == 0 else f"port {port}"
            raise ProxyError(
                f"cannot bind the {what} socket to {shown} (--{option.replace('_', '-')} / "
                f"[zmq_proxy_opts] {option}): {exc.__cause__ or exc}"
            ) from None
        return real

    def _drain(self, sock: zmq.Socket, handle: Callable[[list[bytes]], None], _flags: int = 0) -> None:
        """Handle up to BATCH messages waiting on ``sock``, one at a time."""
        for _ in range(BATCH):
            try:
                frames = self._receive(sock)
            except zmq.Again:
                return
            if frames is None:
                continue
            try:
                handle(frames)
            except Exception as exc:  # one bad message must never stop the proxy
                LOG.exception("zmqrpc %s: unexpected error handling a message", self.kind)
                self.drops.drop("internal error", f"{type(exc).__name__}: {exc}")

    def _receive(self, sock: zmq.Socket) -> list[bytes] | None:
        """The frames of one message waiting on ``sock`` (zmq.Again when none waits), or None when it was
        refused on arrival (and counted there)."""
        return recv_message(sock)

    def _send(self, sock: zmq.Socket, frames: list[bytes], reason: str) -> bool:
        """Send without blocking; a message that cannot go now is dropped and counted under ``reason``."""
        try:
            send_frames(sock, frames)
        except zmq.ZMQError as exc:
            self.drops.drop(reason, str(exc))
            return False
        return True

    def _monitor(self, sock: zmq.Socket) -> zmq.Socket:
        """A monitor of ``sock``'s accepted and closed connections, for zmqrpc_connections_open."""
        return self._new_socket(sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED))

    def _on_connection_event(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_ACCEPTED:
            self._metrics.connections.inc()
        elif event == zmq.EVENT_DISCONNECTED:
            self._metrics.connections.dec()

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.bind_address}:{port}"

    def _new_socket(self, sock: zmq.Socket) -> zmq.Socket:
        self._sockets.append(sock)
        return sock

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close(linger=CLOSE_LINGER_MS)
        self._sockets.clear()

    def _debug_ticker(self, now: float) -> None:
        if now - self._last_debug_stats < DEBUG_STATS_INTERVAL:
            return
        self._last_debug_stats = now
        snapshot = self.stats()
        if snapshot != self._last_debug_snapshot:
            self._last_debug_snapshot = snapshot
            self.log_stats()

    def log_stats(self, level: int = logging.INFO) -> None:
        """One log line ``zmqrpc <kind> stats: {json}``."""
        LOG.log(level, "zmqrpc %s stats: %s", self.kind, json.dumps(self.stats(), sort_keys=True))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the proxy is stopped; False if ``timeout`` seconds passed first."""
        return self._stopped.wait(timeout)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set()

    def stop(self) -> None:
        """Stop forwarding, unregister from the matchmaker, close sockets, log final stats. Idempotent."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        try:
            self._before_loop_stop()
            if self._started:
                self._loop.stop()
            self._close_sockets()
            self._shutdown_extra()
            if self._started:
                self.log_stats()
        finally:
            self._stopped.set()

    def _before_loop_stop(self) -> None:
        """Hook run first in stop(): withdraw from the matchmaker while still forwarding."""

    def __enter__(self) -> _Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


class CentralProxy(_Proxy):
    """The central proxy: frontend ROUTER (clients), backend ROUTER (servers), optional PUB (fanout).

    Ports are the real ones after :meth:`start` (0 before start means "random").
    """

    kind = "proxy"

    def __init__(
        self,
        settings: Settings,
        host: str,
        frontend_port: int = 0,
        backend_port: int = 0,
        publisher_port: int = 0,
        publish: bool = False,
        debug: bool = False,
        matchmaker: MatchMaker | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(settings, host, debug, context)
        self.frontend_port = frontend_port
        self.backend_port = backend_port
        self.publisher_port = publisher_port
        self.publish = publish
        self._mm = matchmaker
        self._own_mm = matchmaker is None
        self._registrar: Registrar | None = None
        self._frontend: zmq.Socket | None = None
        self._backend: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        # Counters (written by the loop thread only). A client that names an unknown server gets an
        # UNROUTABLE notice back; a server that answers a client that is gone is only counted.
        forwarded = self._metrics.forwarded
        self._to_backend = _Link(
            "frontend", "backend", "server", "UNROUTABLE", metric=forwarded.labels("frontend_to_backend")
        )
        self._to_frontend = _Link(
            "backend", "frontend", "client", "counted", metric=forwarded.labels("backend_to_frontend")
        )
        self._published_metric = forwarded.labels("published")
        self.published = 0
        self._publish_refused = 0  # publish requests to a proxy that does not publish
        self._rules = self._security.rules if self._security is not None and self._security.rules else None

    # --- lifecycle ---
    def start(self) -> None:
        """Bind (raising ProxyError naming the port on failure), start forwarding, then register."""
        if self._start_loop():
            self._register()

    def _open(self) -> list[tuple[zmq.Socket, Callable[[list[bytes]], None]]]:
        front = self._new_socket(self._factory.router())
        back = self._new_socket(self._factory.router())
        self.frontend_port = self._bind(front, "frontend", "frontend_port", self.frontend_port)
        self.backend_port = self._bind(back, "backend", "backend_port", self.backend_port)
        if self.publish:
            pub = self._new_socket(self._factory.publisher())
            pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION)  # all a PUB receives is subscriptions
            self.publisher_port = self._bind(pub, "publisher", "publisher_port", self.publisher_port)
            self._pub = pub
        self._frontend, self._backend = front, back
        if self._mm is None:
            self._mm = create_matchmaker(self.settings)
        return [(front, self._from_frontend), (back, self._from_backend)]

    def _register(self) -> None:
        assert self._mm is not None
        zmq_opts = self.settings.zmq
        self._registrar = Registrar(self._mm, zmq_opts.zmq_target_expire, zmq_opts.zmq_target_update)
        for topic, address in self.registrations():
            self._registrar.add(topic, address)
            LOG.info("registered %s under %s (expire %ss)", address, topic, zmq_opts.zmq_target_expire)
            if self._security is not None:
                # Which allowed key clients and servers must find at this address.
                own = self._security.own
                self._registrar.add(protocol.KEY_NAMES, f"{address}|{own.name}|{own.public.decode()}")

    def registrations(self) -> list[tuple[str, str]]:
        """(matchmaker topic, host:port) pairs this proxy announces."""
        pairs = [
            (protocol.PROXY_FRONTENDS, advertised(self.host, self.frontend_port)),
            (protocol.PROXY_BACKENDS, advertised(self.host, self.backend_port)),
        ]
        if self.publish:
            pairs.append((protocol.PROXY_PUBLISHERS, advertised(self.host, self.publisher_port)))
        return pairs

    def describe(self) -> str:
        """``frontend tcp://*:50001, backend tcp://*:50002, publisher tcp://*:50003`` (real ports)."""
        parts = [
            f"frontend {self.endpoint(self.frontend_port)}",
            f"backend {self.endpoint(self.backend_port)}",
        ]
        parts.append(f"publisher {self.endpoint(self.publisher_port)}" if self.publish else "no publisher")
        return ", ".join(parts)

    def _before_loop_stop(self) -> None:
        if self._registrar is not None:
            self._registrar.close()  # unregisters every address (best effort; they expire otherwise)
            LOG.info("withdrew %s", ", ".join(f"{a} from {t}" for t, a in self.registrations()))

    def _shutdown_extra(self) -> None:
        if self._own_mm and self._mm is not None:
            self._mm.close()

    # --- stats ---
    def stats(self) -> dict[str, Any]:
        dropped = self.drops.counts()
        return {
            "forwarded_frontend_to_backend": self._to_backend.forwarded,
            "forwarded_backend_to_frontend": self._to_frontend.forwarded,
            "published": self.published,
            "unroutable_frontend": self._to_backend.unroutable,
            "unroutable_backend": self._to_frontend.unroutable,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
        }

    # --- the loop thread ---
    def _invalid(self, frames: list[bytes], side: str) -> bool:
        """Drop and count a message that breaks the envelope rules a proxy checks; True if dropped."""
        peer = f"{side} peer {_short(frames[0])}"
        if len(frames) != ROUTED_FRAMES:
            got = len(frames) - 1
            self.drops.drop("bad frame count", f"{got} frames, expected {protocol.FRAME_COUNT}", peer)
            return True
        size = sum(len(f) for f in frames) - len(frames[0])
        if size > self._max_size:
            self.drops.drop(
                "oversized", f"{size} bytes > limit {self._max_size} (rpc_zmq_max_message_size)", peer
            )
            return True
        header = frames[1]
        if len(header) != protocol.HEADER.size:
            self.drops.drop("bad header", f"{len(header)} bytes, expected {protocol.HEADER.size}", peer)
            return True
        if header[:2] != protocol.MAGIC:
            self.drops.drop("bad magic", repr(header[:2]), peer)
            return True
        if not frames[2]:
            self.drops.drop("empty route", "the route frame is empty", peer)
            return True
        return False

    def _receive(self, sock: zmq.Socket) -> list[bytes] | None:
        if self._rules is None or sock is not self._frontend:
            return super()._receive(sock)
        # Authorization: the sender's key name (ZAP User-Id) is a property of what the frontend receives.
        received = recv_frames(sock)
        frames = [frame.bytes for frame in received]
        try:
            caller = str(received[0].get("User-Id"))
        except zmq.ZMQError:
            caller = ""
        if self._invalid(frames, "frontend") or self._refused(caller, frames):
            return None
        return frames

    def _refused(self, caller: str, frames: list[bytes]) -> bool:
        """Check ``zmq_curve_authorization`` for one frontend message; answer a refused call."""
        assert self._rules is not None
        sender, header, route, topic, _ = frames
        try:
            kind = MessageType(header[protocol.TYPE_OFFSET])
        except ValueError:
            return False  # the server's own validation drops it
        if kind not in (MessageType.CALL, MessageType.CAST, MessageType.FANOUT, MessageType.NOTIFY):
            return False
        why = self._rules.check(caller, topic.decode("utf-8", "replace"), kind.name.lower())
        if why is None:
            return False
        self.drops.drop("not authorized", why, f"frontend peer {_short(sender)}")
        if kind is MessageType.CALL:
            serializer = protocol.serializer_for_code(header[protocol.SERIALIZER_OFFSET])
            if serializer is not None:
                from zmqrpc.server import describe_failure  # the one way a failure is described

                reply = protocol.encode(
                    MessageType.REPLY,
                    "",
                    {"failure": describe_failure(NotAuthorized(why))},
                    serializer,
                    msg_id=header[protocol.MSG_ID_OFFSET :],
                    route=route,
                )
                self._send(self._frontend, [sender, *reply], "reply queue full")  # type: ignore[arg-type]
        return True

    def _from_frontend(self, frames: list[bytes]) -> None:
        if self._invalid(frames, "frontend"):
            return
        sender, header, route, topic, body = frames
        if route[:1] == protocol.PUBLISH:
            self._publish(sender, header, route, topic, body)
            return
        assert self._backend is not None
        if self._forward(self._to_backend, self._backend, [route, header, sender, topic, body]) is False:
            self._notify_unroutable(sender, header, route)

    def _forward(self, link: _Link, sock: zmq.Socket, frames: list[bytes]) -> bool | None:
        """Send ``[route, header, sender, topic, body]`` out of ``link``'s outgoing ROUTER to the peer that
        ``route`` names, and count it. True: sent. False: no such peer is connected. None: dropped."""
        route, sender = frames[0], frames[2]
        try:
            send_frames(sock, frames)
        except zmq.Again:
            self.drops.drop(f"{link.out} queue full", f"{link.peer} {_short(route)} at its high-water mark")
            return None
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                self.drops.drop("send failed", f"{link.out} to {_short(route)}: {exc}")
                return None
            link.unroutable += 1
            self._metrics.unroutable.inc()
            if self.debug:
                LOG.debug(
                    "%s %s -> unknown %s %s: %s",
                    link.into,
                    _short(sender),
                    link.peer,
                    _short(route),
                    link.unknown,
                )
            return False
        link.forwarded += 1
        link.metric.inc()
        if self.debug:
            size = sum(len(frame) for frame in frames) - len(sender)
            LOG.debug("%s->%s %s -> %s, %d bytes", link.into, link.out, _short(sender), _short(route), size)
        return True

    def _publish(self, sender: bytes, header: bytes, route: bytes, topic: bytes, body: bytes) -> None:
        if self._pub is None:
            # A client with use_pub_sub = true talks to a proxy without a publisher: tell it, loudly once.
            self._publish_refused += 1
            if self._publish_refused == 1 or self._publish_refused % 1000 == 0:
                LOG.warning(
                    "zmqrpc proxy: %d publish request(s) refused (last from %s for %r): this proxy does not "
                    "publish (use_pub_sub = false and no --publisher-port); use_pub_sub must match across "
                    "services and proxies",
                    self._publish_refused,
                    _short(sender),
                    route[1:],
                )
            self._to_backend.unroutable += 1
            self._notify_unroutable(sender, header, route)
            return
        name = route[1:]
        if not name or len(route) > _MAX_PUBLISH_ROUTE or b"\x00" in name:
            # An empty topic or one with a zero byte would break exact subscription matching.
            self.drops.drop("bad publish topic", repr(name[:40]), f"frontend peer {_short(sender)}")
            return
        # name + b"\x00" is protocol.subscription(topic): SUB filters match the topic exactly.
        if not self._send(self._pub, [name + b"\x00", header, sender, topic, body], "publish failed"):
            return
        self.published += 1
        self._published_metric.inc()
        if self.debug:
            LOG.debug(
                "frontend->publisher %s topic %r, %d bytes",
                _short(sender),
                name,
                len(header) + len(route) + len(topic) + len(body),
            )

    def _notify_unroutable(self, sender: bytes, header: bytes, route: bytes) -> None:
        assert self._frontend is not None
        try:
            self._frontend.send_multipart([sender, *protocol.unroutable_notice(header, route)], NOBLOCK)
        except zmq.ZMQError as exc:  # the sender is gone too, or at its high-water mark
            self.drops.drop("unroutable notice undeliverable", f"to {_short(sender)}: {exc}")

    def _from_backend(self, frames: list[bytes]) -> None:
        if self._invalid(frames, "backend"):
            return
        server, header, route, topic, body = frames
        assert self._frontend is not None
        self._forward(self._to_frontend, self._frontend, [route, header, server, topic, body])


class LocalPublisher(_Proxy):
    """A per-node publisher: XSUB connected to the central publishers, XPUB bound on ``publisher_port``.

    Upstreams are ``subscribe_on`` (argument, else ``[oslo_messaging_zmq] subscribe_on``) when set; otherwise
    the addresses registered under PROXY_PUBLISHERS, re-read every ``refresh_interval`` seconds (every
    second while none is known). Local subscriptions are forwarded upstream as they are, so the central
    publishers filter exactly as for a direct subscriber.
    """

    kind = "local publisher"

    def __init__(
        self,
        settings: Settings,
        host: str,
        publisher_port: int = 0,
        debug: bool = False,
        matchmaker: MatchMaker | None = None,
        subscribe_on: list[str] | tuple[str, ...] | None = None,
        refresh_interval: float = 5.0,
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(settings, host, debug, context)
        self.publisher_port = publisher_port
        static = subscribe_on if subscribe_on is not None else settings.zmq.subscribe_on
        self.subscribe_on: tuple[str, ...] = tuple(static or ())
        self.refresh_interval = refresh_interval
        self._mm = matchmaker
        self._own_mm = matchmaker is None
        self._xpub: zmq.Socket | None = None
        self._xsub: zmq.Socket | None = None
        self._connected: set[str] = set()
        self._upstreams: tuple[str, ...] = ()  # readable from any thread
        # Upstream discovery: every refresh_interval, every second at most while no publisher is known.
        self._refresher = PeriodicTask(
            "zmqrpc-local-publisher-refresh",
            self._refresh_once,
            lambda: self.refresh_interval if self._upstreams else min(1.0, self.refresh_interval),
            what="local publisher: refreshing central publishers",
            logger=LOG,
        )
        self._mm_outage = False
        self.republished = 0
        self._republished_metric = self._metrics.forwarded.labels("republished")
        self.subscription_changes = 0

    @property
    def upstreams(self) -> tuple[str, ...]:
        """The central publishers currently connected to."""
        return self._upstreams

    def start(self) -> None:
        if self._start_loop() and not self.subscribe_on:
            self._refresher.start(first_delay=0.0)

    def _open(self) -> list[tuple[zmq.Socket, Callable[[list[bytes]], None]]]:
        xpub = self._new_socket(self._factory.xpub())
        xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION)  # all an XPUB receives is subscriptions
        xsub = self._new_socket(self._factory.xsub())
        self.publisher_port = self._bind(xpub, "publisher", "publisher_port", self.publisher_port)
        self._xpub, self._xsub = xpub, xsub
        self._drop_own_address()
        if not self.subscribe_on and self._mm is None:
            self._mm = create_matchmaker(self.settings)
        if self.subscribe_on:
            self._set_upstreams(list(self.subscribe_on))
        return [(xpub, self._subscription), (xsub, self._republish)]

    def _is_self(self, address: str) -> bool:
        try:
            host, port = parse_host_port(address)
        except ConfigError:
            return False
        if port != self.publisher_port:
            return False
        host = host.lower()
        names = {
            *_LOCAL_NAMES,
            self.host,
            socket.gethostname(),
            self.settings.zmq.rpc_zmq_host,
            self.bind_address,
        }
        return host in {str(n).strip("[]").lower() for n in names} or host.startswith("127.")

    def _drop_own_address(self) -> None:
        # Services on this node use subscribe_on = localhost:<this port>; when the local publisher reads
        # the same config file it must not subscribe to itself (a loop), but find the central publishers.
        own = [a for a in self.subscribe_on if self._is_self(a)]
        if own:
            self.subscribe_on = tuple(a for a in self.subscribe_on if a not in own)
            LOG.warning(
                "local publisher: ignoring subscribe_on %s: that is this local publisher itself; %s",
                ",".join(own),
                "using the other entries" if self.subscribe_on else "using the matchmaker instead",
            )

    def describe(self) -> str:
        source = (
            f"subscribe_on {','.join(self.subscribe_on)}"
            if self.subscribe_on
            else f"central publishers from the matchmaker ({protocol.PROXY_PUBLISHERS})"
        )
        return f"publisher {self.endpoint(self.publisher_port)}, subscribing to {source}"

    def stats(self) -> dict[str, Any]:
        dropped = self.drops.counts()
        return {
            "republished": self.republished,
            "subscription_changes": self.subscription_changes,
            "upstreams": sorted(self._upstreams),
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
        }

    def _before_loop_stop(self) -> None:
        self._refresher.stop(timeout=5.0)

    def _shutdown_extra(self) -> None:
        if self._own_mm and self._mm is not None:
            self._mm.close()

    # --- upstream discovery (refresher thread) ---
    def _refresh_once(self) -> None:
        assert self._mm is not None
        try:
            found = self._mm.get_hosts(protocol.PROXY_PUBLISHERS)
        except MatchmakerError as exc:
            if not self._mm_outage:
                self._mm_outage = True
                LOG.warning("local publisher: matchmaker unreachable, keeping current upstreams: %s", exc)
            return
        if self._mm_outage:
            self._mm_outage = False
            LOG.info("local publisher: matchmaker reachable again")
        found = [a for a in found if not self._is_self(a)]
        if self._security is not None:
            try:
                names = protocol.key_names(self._mm.get_hosts(protocol.KEY_NAMES))
            except MatchmakerError:
                names = {}
            self._security.names = lambda address: names.get(address, [])
        if tuple(sorted(found)) != self._upstreams:
            done = threading.Event()

            def apply() -> None:
                try:
                    self._set_upstreams(found)
                finally:
                    done.set()

            self._loop.submit(apply)
            done.wait(5.0)

    # --- the loop thread (or start(), before the loop runs) ---
    def _set_upstreams(self, wanted: list[str]) -> None:
        assert self._xsub is not None
        before = set(self._connected)
        sync_connections(self._xsub, self._connected, wanted, self._factory)
        for address in sorted(self._connected - before):
            LOG.info("local publisher: subscribed to central publisher %s", address)
        for address in sorted(before - self._connected):
            LOG.info("local publisher: left central publisher %s (no longer registered)", address)
        self._upstreams = tuple(sorted(self._connected))

    def _subscription(self, frames: list[bytes]) -> None:
        assert self._xsub is not None
        if len(frames) != 1 or frames[0][:1] not in (b"\x00", b"\x01"):
            # Anything but one (un)subscribe frame would go upstream as it is: count it instead.
            self.drops.drop("bad subscription", f"{len(frames)} frames, first {frames[0][:16]!r}")
            return
        if not self._send(self._xsub, frames, "subscription not forwarded"):
            return
        self.subscription_changes += 1
        if self.debug and frames and frames[0]:
            verb = "subscribe" if frames[0][:1] == b"\x01" else "unsubscribe"
            LOG.debug("local publisher: %s %r forwarded upstream", verb, frames[0][1:])

    def _republish(self, frames: list[bytes]) -> None:
        assert self._xpub is not None
        # A published message is [subscription, header, sender, topic, body].
        if len(frames) != ROUTED_FRAMES:
            self.drops.drop("bad frame count", f"{len(frames)} frames, expected {ROUTED_FRAMES}")
            return
        size = len(frames[1]) + len(frames[3]) + len(frames[4])  # header, topic, body
        if size > self._max_size:
            self.drops.drop("oversized", f"{size} bytes (rpc_zmq_max_message_size {self._max_size})")
            return
        if not self._send(self._xpub, frames, "publish failed"):
            return
        self.republished += 1
        self._republished_metric.inc()
        if self.debug:
            LOG.debug("local publisher: republished %r, %d bytes", frames[0][:-1], size)
