"""The RPC server: the one place where a message is delivered to application code.

A server binds a ROUTER in the configured port range, registers its topics (bare and directed) in the
matchmaker, and dispatches every valid request on a bounded thread pool (``rpc_thread_pool_size``). When
the pool is full it stops reading, so back-pressure reaches the senders through the high-water marks
instead of an unbounded queue. Replies go back on the connection the request came in on.
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from zmqrpc import protocol
from zmqrpc.ioloop import IOLoop
from zmqrpc.matchmaker import MatchMaker, Registrar, create_matchmaker
from zmqrpc.protocol import Envelope, MessageType
from zmqrpc.sockets import CLOSE_LINGER_MS, SocketFactory

LOG = logging.getLogger(__name__)

NOTIFICATION_PRIORITIES = ("audit", "debug", "info", "warn", "warning", "error", "critical", "sample")


@dataclass
class Request:
    """One delivered message, as the dispatcher sees it."""

    kind: MessageType
    topic: str
    context: dict[str, Any]
    message: dict[str, Any]
    msg_id: bytes


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


class RpcServer:
    """Serves one or more bare topics (and their directed ``topic.<server>`` forms)."""

    def __init__(
        self,
        settings: Any,
        topics: str | Iterable[str],
        dispatcher: Dispatcher | Iterable[object],
        *,
        server: str | None = None,
        matchmaker: MatchMaker | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        opts = settings.zmq
        self.settings = settings
        self.server = server or opts.rpc_zmq_host
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("a server needs at least one topic")
        self.dispatcher: Dispatcher = dispatcher if callable(dispatcher) else EndpointDispatcher(dispatcher)
        self._serving = set(self.topics) | {f"{t}.{self.server}" for t in self.topics}
        self._serializer = protocol.get_serializer(opts.rpc_zmq_serialization)
        self._max_size = opts.rpc_zmq_max_message_size
        self._pool_size = max(1, opts.rpc_thread_pool_size)
        self._owns_matchmaker = matchmaker is None
        self.matchmaker = matchmaker or create_matchmaker(settings)
        self._registrar = Registrar(self.matchmaker, opts.zmq_target_expire, opts.zmq_target_update)
        self._sockets = SocketFactory(opts, context)
        self._router: zmq.Socket | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop = IOLoop(f"zmqrpc-server-{self.topics[0]}")
        self._finished: deque[tuple[bytes, list[bytes] | None]] = deque()
        self._in_flight = 0
        self.address = ""
        self.port = 0
        self.drops = protocol.DropCounter(f"server {self.server} ({','.join(self.topics)})")
        self.processed = 0

    def start(self) -> RpcServer:
        """Bind, register in the matchmaker and start serving; returns self."""
        router = self._sockets.router()
        try:
            self.port = self._sockets.bind_in_range(router)
        except BaseException:
            router.close(0)
            raise
        self._router = router
        self.address = f"{self.settings.zmq.advertise_host}:{self.port}"
        self._executor = ThreadPoolExecutor(self._pool_size, thread_name_prefix=f"zmqrpc-{self.topics[0]}")
        self._loop.submit(lambda: self._loop.watch(router, zmq.POLLIN, self._on_request))
        self._loop.start()
        for topic in sorted(self._serving):
            self._registrar.add(topic, self.address)
        LOG.info("serving %s on %s", ", ".join(sorted(self._serving)), self.address)
        return self

    def stop(self) -> None:
        """Unregister, stop reading, finish running requests, close the socket."""
        self._registrar.close()
        if self._owns_matchmaker:
            self.matchmaker.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._loop.submit(self._close)
        self._loop.stop()

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ I/O thread
    def _close(self) -> None:
        if self._router is not None:
            self._drain_finished()
            self._loop.unwatch(self._router)
            self._router.close(CLOSE_LINGER_MS)
            self._router = None

    def _on_request(self, flags: int) -> None:
        router = self._router
        assert router is not None
        while self._in_flight < self._pool_size:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._accept(frames)
        if self._in_flight >= self._pool_size:
            # Pool full: stop reading until a worker finishes (back-pressure through the HWM).
            self._loop.set_flags(router, 0)

    def _accept(self, frames: list[bytes]) -> None:
        identity, payload = frames[0], frames[1:]
        peer = identity.hex()
        try:
            env = protocol.decode(payload, self._max_size)
        except protocol.ProtocolError as exc:
            self.drops.drop(exc.reason, exc.detail, peer)
            return
        if env.type in (MessageType.REPLY, MessageType.ACK):
            self.drops.drop("unexpected type", env.type.name, peer)
            return
        if env.topic not in self._serving:
            self.drops.drop("wrong topic", env.topic, peer)
            return
        self._in_flight += 1
        assert self._executor is not None
        self._executor.submit(self._work, identity, env)

    def _work(self, identity: bytes, env: Envelope) -> None:
        """Worker thread: run the request, frame the reply for a call, hand it to the I/O thread."""
        request = Request(env.type, env.topic, env.body["context"], env.body["message"], env.msg_id)
        try:
            result = self.dispatcher(request)
            body: dict[str, Any] = {"result": result}
        except Exception as exc:
            if env.type is not MessageType.CALL:
                LOG.exception("%s on topic %r failed", env.type.name.lower(), env.topic)
            body = {"failure": describe_failure(exc)}
        reply = None
        if env.type is MessageType.CALL:
            reply = self._frame_reply(env, body)
        self._finished.append((identity, reply))
        self._loop.submit(self._drain_finished)

    def _frame_reply(self, env: Envelope, body: dict[str, Any]) -> list[bytes]:
        try:
            frames = protocol.encode(MessageType.REPLY, "", body, self._serializer, msg_id=env.msg_id)
        except (TypeError, ValueError) as exc:
            body = {
                "failure": describe_failure(TypeError(f"result of {env.topic!r} cannot be serialized: {exc}"))
            }
            frames = protocol.encode(MessageType.REPLY, "", body, self._serializer, msg_id=env.msg_id)
        if sum(len(f) for f in frames) > self._max_size:
            failure = ValueError(f"reply is over rpc_zmq_max_message_size={self._max_size}")
            frames = protocol.encode(
                MessageType.REPLY,
                "",
                {"failure": describe_failure(failure)},
                self._serializer,
                msg_id=env.msg_id,
            )
        return frames

    def _drain_finished(self) -> None:
        router = self._router
        finished = self._finished
        while finished:
            identity, reply = finished.popleft()
            self._in_flight -= 1
            self.processed += 1
            if reply is None or router is None:
                continue
            try:
                router.send_multipart([identity, *reply], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.drops.drop("reply queue full", "caller's high-water mark reached", identity.hex())
            except zmq.ZMQError as exc:
                # EHOSTUNREACH with ROUTER_MANDATORY: the caller disconnected before its reply.
                self.drops.drop("unroutable reply", str(exc), identity.hex())
        if router is not None and self._in_flight < self._pool_size:
            self._loop.set_flags(router, zmq.POLLIN)
