"""zmqrpc as an oslo.messaging driver: ``transport_url = zmq+redis://...`` in a service's config.

Installed with the ``zmqrpc[oslo]`` extra, which registers the ``oslo.messaging.drivers`` entry point
``zmq``. oslo.messaging picks a driver by the URL scheme before ``+``, so ``zmq://``, ``zmq+redis://`` and
``zmq+sentinel://`` all load :class:`ZmqDriver`. Options come from ``[oslo_messaging_zmq]`` in the service's
config (registered on the ``conf`` oslo.messaging hands over) and from the URL's query parameters, which win.

How oslo.messaging maps onto zmqrpc:

* ``RPCClient.call`` / ``cast``: a zmqrpc call / cast to ``topic`` or, with ``server=``, to ``topic.server``.
  ``prepare(fanout=True)``: a zmqrpc fanout.
* Exchanges are separate namespaces: a target in the driver's default exchange (``control_exchange``,
  ``openstack`` unless configured; also a target without exchange) uses its plain topic, as the old zmq
  driver did, so deployments keep their topic names; a target in any other exchange uses
  ``<exchange>/<topic>`` (:meth:`ZmqDriver.zmq_topic`), for calls, casts, fanout, directed targets,
  notifications and listeners, and in the dual backend's matchmaker checks.
* ``get_rpc_server``: a zmqrpc :class:`~zmqrpc.server.RpcServer` for ``topic`` and ``topic.server``, whose
  requests are handed to oslo.messaging's executor through a bounded inbox (:class:`ZmqListener`).
* ``Notifier``: a zmqrpc notification to ``topic.priority``; ``get_notification_listener(pool=...)``: a
  server in that pool, so every pool gets one copy, shared among the pool's listeners.
* Remote exceptions travel as oslo.messaging serializes them (``serialize_remote_exception``) and are
  rebuilt by the caller under its ``allowed_remote_exmods``. A call without a reply in time raises
  ``MessagingTimeout``, and so does a call to a topic nobody serves.
* Call monitoring: the caller sends its ``call_monitor_timeout``; while oslo's dispatcher runs the call it
  heartbeats, the server sends a zmqrpc HEARTBEAT frame back, and the caller gives up only when neither
  a heartbeat nor the reply came within ``call_monitor_timeout`` (or the overall timeout passed).

On the wire the zmqrpc message is ``{"method": <oslo method>, "args": {"oslo": <oslo's message, whole>,
"call_monitor_timeout": <seconds or null>}}`` (a notification carries oslo's whole message as its
payload), so nothing oslo puts in a message (version, namespace, message_id, timestamp) is lost. A reply is
``{"result": ...}``, ``{"failure": <serialized remote exception>}`` or ``{"redirect": <why>}`` (the server is
stopping and did not run the call: the caller sends it again elsewhere).

Dual backend (``[oslo_messaging_zmq] zmq_fallback_transport_url``, e.g. ``rabbit://...``), for migrating a
fleet node by node:

* A server listens on zmq and on the fallback.
* A call or cast goes over zmq when its target (``topic`` or ``topic.server``) is registered in the
  matchmaker, that is when the receiver is up, and over the fallback otherwise; also when the zmq send
  could not be delivered (the receiver died) or the server redirected it (it is stopping).
* Fanout and notifications go over the fallback while ``zmq_fallback_fanout`` is true (the default):
  only the fallback reaches every receiver while some still listen there alone. With false they go over
  zmq, or over the fallback when no zmq receiver of the topic is registered.
* A zmq receiver that stops (the server stops, or ``zmq_receiver_enabled`` turns false on a config
  reload: the rollback of one node) first unregisters from the matchmaker and keeps serving for
  ``rpc_zmq_cache_refresh + 1`` seconds (clients' route caches notice meanwhile), then redirects calls
  that still arrive and forwards casts over the fallback, so stopping the zmq receiver loses no call.

Operator steps: docs/migration.md.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from typing import Any

import oslo_messaging
from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common
from oslo_serialization import jsonutils

from zmqrpc.client import RpcClient
from zmqrpc.config import SCHEMES, ZMQ_GROUP, Settings, load_settings, mask_url, register_opts
from zmqrpc.errors import CallTimeout, ClientClosed, NoRouteError, RemoteError, Unreachable
from zmqrpc.matchmaker import MatchMaker, MatchmakerError, create_matchmaker
from zmqrpc.protocol import MessageType, pools_topic
from zmqrpc.server import Request, RpcServer

LOG = logging.getLogger(__name__)

EXCHANGE_SEPARATOR = "/"  # between a non-default exchange and the topic: "<exchange>/<topic>"
DEFAULT_EXCHANGE = "openstack"  # oslo.messaging's control_exchange default
DEFAULT_CALL_TIMEOUT = 60.0  # seconds, when neither the caller nor rpc_response_timeout says
REDIRECT_PAUSE = 0.05  # seconds between re-sends of a redirected call (the server is stopping)
_PLAIN = (str, int, float, bool, type(None))


def _primitive(value: Any) -> Any:
    """What the zmqrpc serializers can carry: oslo.serialization's to_primitive for anything not plain."""
    if isinstance(value, _PLAIN):
        return value
    return jsonutils.to_primitive(value, convert_instances=True)


class _Inbox:
    """A bounded queue between zmqrpc's dispatch threads and oslo.messaging's polling thread.

    ``put`` blocks while full (so zmqrpc stops reading: back-pressure) and fails once closed; ``get``
    returns None on timeout, or when closed and empty.
    """

    def __init__(self, size: int) -> None:
        self._items: collections.deque[base.IncomingMessage] = collections.deque()
        self._size = max(1, size)
        self._cond = threading.Condition()
        self.closed = False
        self._close_at: float | None = None

    def put(self, item: base.IncomingMessage) -> bool:
        with self._cond:
            while len(self._items) >= self._size and not self.closed:
                self._cond.wait()
            if self.closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> base.IncomingMessage | None:
        """One item; wait up to ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                close_at = self._close_at
                if close_at is not None and now >= close_at and not self.closed:
                    self.closed = True
                    self._cond.notify_all()
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                if self.closed:
                    return None
                ends = [t for t in (deadline, close_at) if t is not None]
                if ends and min(ends) <= now:
                    return None
                self._cond.wait(min(ends) - now if ends else None)

    def close_after(self, seconds: float) -> None:
        """Keep taking items for ``seconds`` more, then close."""
        with self._cond:
            if self._close_at is None:
                self._close_at = time.monotonic() + seconds
            self._cond.notify_all()

    def close(self) -> list[base.IncomingMessage]:
        """Close and return what was never polled."""
        with self._cond:
            self.closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left


class _ReplySlot:
    """Where oslo.messaging's reply to one call lands, for the zmqrpc thread that waits to send it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.value: dict[str, Any] = {}

    def set(self, value: dict[str, Any]) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    def wait(self) -> dict[str, Any]:
        self._event.wait()
        return self.value


class ZmqIncomingMessage(base.RpcIncomingMessage):
    """A call, cast, fanout or notification received over zmqrpc, as oslo.messaging's server sees it."""

    def __init__(
        self,
        ctxt: dict[str, Any],
        message: dict[str, Any],
        msg_id: str,
        slot: _ReplySlot | None = None,
        heartbeat: Any = None,
        client_timeout: float | None = None,
        on_done: Any = None,
    ) -> None:
        super().__init__(ctxt, message, msg_id)
        self.client_timeout = client_timeout
        self._slot = slot
        self._heartbeat = heartbeat
        self._on_done = on_done

    def acknowledge(self) -> None:
        """Nothing to do: zmqrpc acks (rpc_use_acks) when the message is received."""

    def requeue(self) -> None:
        """Not supported (require_features(requeue=True) raises)."""

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        if self._slot is None:
            return
        try:
            if failure is not None:
                value = {"failure": rpc_common.serialize_remote_exception(failure)}
            else:
                value = {"result": _primitive(reply)}
        except Exception as exc:  # the reply cannot be serialized: the caller learns why
            LOG.exception("cannot serialize the reply to %s", self.msg_id)
            value = {"failure": rpc_common.serialize_remote_exception((type(exc), exc, exc.__traceback__))}
        self.settle(value)

    def settle(self, value: dict[str, Any]) -> None:
        if self._slot is not None:
            self._slot.set(value)
            if self._on_done is not None:
                self._on_done(self)

    def heartbeat(self) -> None:
        if self._heartbeat is not None:
            try:
                self._heartbeat()
            except Exception:  # must not raise into oslo's watchdog
                LOG.exception("call-monitor heartbeat for %s failed", self.msg_id)


class _Receiver:
    """One zmqrpc RpcServer feeding a listener's inbox. Once ``accepting`` is off it refuses: calls get a
    redirect reply, casts are forwarded over the fallback."""

    def __init__(self, listener: ZmqListener) -> None:
        self.accepting = True
        self.listener = listener
        self.server = listener.new_server(self)

    def dispatch(self, request: Request) -> Any:
        return self.listener.dispatch(request, self)

    def retire(self, drain: float) -> None:
        """Unregister now, keep serving ``drain`` seconds (clients' caches refresh), then stop."""
        self.server.unregister()
        if drain > 0:
            time.sleep(drain)
        self.accepting = False
        self.server.stop()


class ZmqListener(base.PollStyleListener):
    """One oslo.messaging server or notification listener on zmqrpc: a zmqrpc RpcServer (the zmq
    receiver) whose dispatch threads hand requests to oslo's polling thread through a bounded inbox.

    ``stop`` unregisters from the matchmaker and keeps serving for a drain period (clients' route caches
    refresh meanwhile); after it, calls that still arrive are redirected and casts forwarded over the
    fallback (when configured). The receiver can also be retired and started again while the listener
    runs (``zmq_receiver_enabled``), so a dual-backend service keeps serving over its fallback alone.
    """

    def __init__(
        self,
        driver: ZmqDriver,
        topics: list[str],
        server: str | None,
        pool: str | None = None,
        target: oslo_messaging.Target | None = None,
    ) -> None:
        super().__init__(prefetch_size=-1)
        settings = driver.settings
        self._driver = driver
        self._topics = topics
        self._server_name = server
        self._pool = pool
        self._target = target
        self._inbox = _Inbox(settings.zmq.rpc_thread_pool_size)
        self._pending: set[ZmqIncomingMessage] = set()
        self._lock = threading.Lock()
        self._drain = float(settings.zmq.rpc_zmq_cache_refresh) + 1.0
        self._receiver: _Receiver | None = None
        self._retiring: list[threading.Thread] = []
        self._stopping = False
        self._cleaned = False
        if driver.receiver_enabled:
            self.enable_receiver()

    @property
    def address(self) -> str:
        """The zmq receiver's address ('' while it is disabled)."""
        receiver = self._receiver
        return receiver.server.address if receiver is not None else ""

    def new_server(self, receiver: _Receiver) -> RpcServer:
        return RpcServer(
            self._driver.settings,
            self._topics,
            receiver.dispatch,
            server=self._server_name,
            pool=self._pool,
            matchmaker=self._driver.matchmaker,
        )

    def enable_receiver(self) -> None:
        with self._lock:
            if self._receiver is not None or self._stopping:
                return
            receiver = self._receiver = _Receiver(self)
        receiver.server.start()

    def disable_receiver(self) -> None:
        """Retire the zmq receiver in the background: unregister, drain, stop."""
        with self._lock:
            receiver, self._receiver = self._receiver, None
            if receiver is None:
                return
            thread = threading.Thread(target=receiver.retire, args=(self._drain,), name="zmqrpc-retire")
            self._retiring.append(thread)
        thread.start()

    # ------------------------------------------------------------------ zmqrpc dispatch threads
    def dispatch(self, request: Request, receiver: _Receiver) -> Any:
        accepting = receiver.accepting
        if request.kind is MessageType.NOTIFY:
            payload = request.message.get("payload")
            if not isinstance(payload, dict):
                raise ValueError(
                    f"notification on {request.topic!r} does not carry an oslo.messaging message"
                )
            incoming = ZmqIncomingMessage(request.context, payload, request.msg_id.hex())
            if not (accepting and self._inbox.put(incoming)):
                LOG.warning("zmq receiver stopping: notification on %r dropped", request.topic)
            return None
        args = request.message.get("args") or {}
        message = args.get("oslo")
        if not isinstance(message, dict):
            raise ValueError(f"message on {request.topic!r} is not an oslo.messaging message")
        if request.kind is not MessageType.CALL:
            incoming = ZmqIncomingMessage(request.context, message, request.msg_id.hex())
            if not (accepting and self._inbox.put(incoming)):
                self._refuse_cast(request, message)
            return None
        if not accepting:
            return {"redirect": "zmq receiver stopped"}
        slot = _ReplySlot()
        incoming = ZmqIncomingMessage(
            request.context,
            message,
            request.msg_id.hex(),
            slot,
            request.heartbeat,
            args.get("call_monitor_timeout"),
            self._settled,
        )
        with self._lock:
            self._pending.add(incoming)
        if not self._inbox.put(incoming):
            incoming.settle({"redirect": "server stopping"})
        return slot.wait()

    def _settled(self, incoming: ZmqIncomingMessage) -> None:
        with self._lock:
            self._pending.discard(incoming)

    def _refuse_cast(self, request: Request, message: dict[str, Any]) -> None:
        """A cast reached a receiver that stopped taking work: forward it over the fallback, or drop it."""
        fallback = self._driver.fallback_driver
        if fallback is None or self._target is None or request.kind is MessageType.FANOUT:
            LOG.warning("zmq receiver stopping: %s on %r dropped", request.kind.name.lower(), request.topic)
            return
        server = self._target.server if request.topic not in self._topics else None
        target = oslo_messaging.Target(
            exchange=self._target.exchange, topic=self._target.topic, server=server
        )
        try:
            fallback.send(target, request.context, message)
        except Exception:
            LOG.exception(
                "zmq receiver stopping: could not forward a cast on %r over the fallback", request.topic
            )

    # ------------------------------------------------------------------ oslo.messaging's threads
    @base.batch_poll_helper
    def poll(self, timeout: float | None = None) -> ZmqIncomingMessage | None:
        return self._inbox.get(timeout)  # type: ignore[return-value]

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            receiver = self._receiver
        if receiver is not None:
            receiver.server.unregister()
        self._inbox.close_after(self._drain if receiver is not None else 0.0)

    def cleanup(self) -> None:
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = self._stopping = True
            receiver, self._receiver = self._receiver, None
            retiring = list(self._retiring)
            pending = list(self._pending)
        for left in self._inbox.close():
            if isinstance(left, ZmqIncomingMessage):
                left.settle({"redirect": "server stopped"})
        for incoming in pending:  # handed to oslo but never answered: do not leave the caller hanging
            incoming.settle({"redirect": "server stopped"})
        if receiver is not None:
            receiver.accepting = False
            receiver.server.stop()
        for thread in retiring:
            thread.join()


class _DualListener(base.Listener):
    """The zmq listener and the fallback's listener feeding one oslo.messaging server."""

    def __init__(self, listeners: list[base.Listener], batch_size: int, batch_timeout: float | None) -> None:
        super().__init__(batch_size, batch_timeout)
        self._listeners = listeners

    def start(self, on_incoming_callback: Any) -> None:
        super().start(on_incoming_callback)
        for listener in self._listeners:
            listener.start(on_incoming_callback)

    def stop(self) -> None:
        # zmq first: while it drains, calls redirected to the fallback are still served here.
        for listener in self._listeners:
            listener.stop()
        super().stop()

    def cleanup(self) -> None:
        for listener in self._listeners:
            listener.cleanup()


class ZmqDriver(base.BaseDriver):
    """oslo.messaging driver for ``zmq://``, ``zmq+redis://`` and ``zmq+sentinel://`` transport URLs."""

    prefetch_size = 0

    def __init__(
        self,
        conf: Any,
        url: Any,
        default_exchange: str | None = None,
        allowed_remote_exmods: list[str] | None = None,
    ) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        # oslo.messaging passes conf.control_exchange
        self.default_exchange: str = (
            default_exchange or getattr(conf, "control_exchange", None) or DEFAULT_EXCHANGE
        )
        # oslo.messaging registered its own [DEFAULT] transport_url before loading us; register_opts
        # tolerates that and adds [oslo_messaging_zmq], [zmq_proxy_opts] and [matchmaker_redis].
        register_opts(conf)
        try:
            self.settings: Settings = load_settings(conf=conf, url=str(url))
        except ValueError as exc:
            raise base.TransportDriverError(str(exc)) from exc
        self.matchmaker: MatchMaker = create_matchmaker(self.settings)
        self._client: RpcClient | None = None
        self._lock = threading.Lock()
        self._fallback_transport: Any = None
        self.fallback_driver: base.BaseDriver | None = None
        fallback_url = self.settings.zmq.zmq_fallback_transport_url
        if fallback_url:
            scheme = fallback_url.partition("://")[0]
            if scheme in SCHEMES or scheme.split("+")[0] == "zmq":
                raise base.TransportDriverError(
                    f"zmq_fallback_transport_url {mask_url(fallback_url)!r} must name another backend "
                    "(e.g. rabbit://), not zmq"
                )
            self._fallback_transport = oslo_messaging.get_rpc_transport(
                conf, url=fallback_url, allowed_remote_exmods=allowed_remote_exmods
            )
            self.fallback_driver = self._fallback_transport._driver
            LOG.info("zmqrpc: dual backend, fallback %s", mask_url(fallback_url))
        # zmq_receiver_enabled is mutable: a config reload (oslo.service: SIGHUP) retires or restarts the
        # zmq receivers of this transport's servers and listeners.
        self.receiver_enabled = bool(self.settings.zmq.zmq_receiver_enabled)
        self._listeners: weakref.WeakSet[ZmqListener] = weakref.WeakSet()
        driver_ref = weakref.ref(self)

        def on_mutate(conf: Any, fresh: dict[tuple[str | None, str], tuple[Any, Any]]) -> None:
            driver = driver_ref()
            if driver is not None and (ZMQ_GROUP, "zmq_receiver_enabled") in fresh:
                # ``fresh`` holds the raw text; the typed value comes from conf.
                driver.set_receiver_enabled(bool(conf[ZMQ_GROUP]["zmq_receiver_enabled"]))

        register_hook = getattr(conf, "register_mutate_hook", None)
        if register_hook is not None:
            register_hook(on_mutate)
        self._dual = (
            None
            if self.fallback_driver is None
            else _DualBackend(self, self.fallback_driver, bool(self.settings.zmq.zmq_fallback_fanout))
        )

    # ------------------------------------------------------------------ helpers
    def zmq_topic(self, target: oslo_messaging.Target) -> str:
        """The zmqrpc topic of ``target.topic``: plain in the default exchange, ``<exchange>/<topic>`` in
        any other, so servers of one exchange never get another exchange's messages."""
        exchange = target.exchange or self.default_exchange
        if exchange == self.default_exchange:
            return str(target.topic)
        return f"{exchange}{EXCHANGE_SEPARATOR}{target.topic}"

    def set_receiver_enabled(self, enabled: bool) -> None:
        """Start (True) or retire (False: unregister, drain, stop) the zmq receivers of every listener."""
        if enabled == self.receiver_enabled:
            return
        self.receiver_enabled = enabled
        LOG.warning(
            "zmqrpc: %s the zmq receivers (zmq_receiver_enabled)", "starting" if enabled else "retiring"
        )
        if not enabled and self.fallback_driver is None:
            LOG.warning("zmqrpc: no zmq_fallback_transport_url: this service stops receiving RPC")
        for listener in list(self._listeners):
            if enabled:
                listener.enable_receiver()
            else:
                listener.disable_receiver()

    def _zmq_listener(self, *args: Any, **kwargs: Any) -> ZmqListener:
        listener = ZmqListener(self, *args, **kwargs)
        self._listeners.add(listener)
        return listener

    @property
    def client(self) -> RpcClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = RpcClient(self.settings, matchmaker=self.matchmaker)
                client = self._client
        return client

    @staticmethod
    def _args(message: dict[str, Any], call_monitor_timeout: float | None) -> dict[str, Any]:
        return {"oslo": message, "call_monitor_timeout": call_monitor_timeout}

    def _with_primitives(self, send: Any, ctxt: Any, message: dict[str, Any]) -> Any:
        """Run ``send(ctxt, message)``; if the serializer rejects a type, retry with primitives only."""
        try:
            return send(ctxt, message)
        except TypeError:
            return send(_primitive(ctxt), _primitive(message))

    # ------------------------------------------------------------------ BaseDriver: sending
    def send(
        self,
        target: oslo_messaging.Target,
        ctxt: Any,
        message: dict[str, Any],
        wait_for_reply: bool | None = None,
        timeout: float | None = None,
        call_monitor_timeout: float | None = None,
        retry: int | None = None,
        transport_options: Any = None,
    ) -> Any:
        if self._dual is not None:
            return self._dual.send(
                target, ctxt, message, wait_for_reply, timeout, call_monitor_timeout, retry, transport_options
            )
        if target.fanout:
            return self.fanout(target, ctxt, message)
        topic = self.directed_topic(target)
        if wait_for_reply:
            try:
                return self.call(target, ctxt, message, self.deadline(timeout), call_monitor_timeout)
            except NoRouteError:
                raise oslo_messaging.MessagingTimeout(f"no server is registered for {topic!r}") from None
            except Unreachable as exc:
                raise oslo_messaging.MessagingTimeout(str(exc)) from None
        try:
            self.cast(target, ctxt, message)
        except NoRouteError:
            LOG.warning("no server is registered for %r: cast dropped", topic)
        return None

    def directed_topic(self, target: oslo_messaging.Target) -> str:
        """The zmqrpc topic a call or cast to ``target`` goes to: ``topic``, or ``topic.server``."""
        bare = self.zmq_topic(target)
        return f"{bare}.{target.server}" if target.server else bare

    def deadline(self, timeout: float | None) -> tuple[float, float]:
        """``(timeout, deadline)`` of a call: its own timeout, or ``rpc_response_timeout``."""
        if timeout is None:
            timeout = getattr(self.conf, "rpc_response_timeout", None) or DEFAULT_CALL_TIMEOUT
        return float(timeout), time.monotonic() + float(timeout)

    def fanout(self, target: oslo_messaging.Target, ctxt: Any, message: dict[str, Any]) -> None:
        """Fanout over zmq to every server of the target's topic."""
        bare = self.zmq_topic(target)
        method = str(message.get("method", ""))
        self._with_primitives(
            lambda c, m: self.client.fanout(bare, method, self._args(m, None), context=c), ctxt, message
        )

    def cast(self, target: oslo_messaging.Target, ctxt: Any, message: dict[str, Any]) -> None:
        """Cast over zmq; raises NoRouteError when no server of the target is registered."""
        method = str(message.get("method", ""))
        try:
            self._with_primitives(
                lambda c, m: self.client.cast(
                    self.zmq_topic(target),
                    method,
                    self._args(m, None),
                    context=c,
                    server=target.server,
                    strict=True,
                ),
                ctxt,
                message,
            )
        except ClientClosed as exc:
            raise oslo_messaging.MessageDeliveryFailure(str(exc)) from exc

    def call(
        self,
        target: oslo_messaging.Target,
        ctxt: Any,
        message: dict[str, Any],
        deadline: tuple[float, float],
        call_monitor_timeout: float | None,
    ) -> Any:
        """Call over zmq until ``deadline`` (from :meth:`deadline`), sending again when a stopping server
        redirects it. Raises NoRouteError or Unreachable when it was not delivered; every other failure is
        oslo.messaging's."""
        timeout, until = deadline
        bare = self.zmq_topic(target)
        topic = self.directed_topic(target)
        method = str(message.get("method", ""))
        monitor = float(call_monitor_timeout) if call_monitor_timeout else None
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise oslo_messaging.MessagingTimeout(f"no reply from {topic!r} within {timeout} s")
            try:
                body = self._with_primitives(
                    lambda c, m, left=remaining: self.client.call(
                        bare,
                        method,
                        self._args(m, call_monitor_timeout),
                        timeout=left,
                        context=c,
                        server=target.server,
                        monitor=monitor,
                    ),
                    ctxt,
                    message,
                )
            except (NoRouteError, Unreachable):
                raise  # not delivered: send() or the dual backend decides what follows
            except CallTimeout:
                if time.monotonic() < until - 0.01:
                    why = f"no reply nor heartbeat within call_monitor_timeout={call_monitor_timeout} s"
                else:
                    why = f"no reply within {timeout} s"
                raise oslo_messaging.MessagingTimeout(f"call to {topic!r}: {why}") from None
            except RemoteError as exc:  # the zmqrpc server itself failed (not the oslo endpoint)
                raise oslo_messaging.RemoteError(exc.exc_type, exc.message, exc.traceback) from None
            except ClientClosed as exc:
                raise oslo_messaging.MessageDeliveryFailure(str(exc)) from exc
            if not isinstance(body, dict):
                raise oslo_messaging.MessagingException(f"unexpected reply from {topic!r}: {body!r}")
            if "failure" in body:
                raise rpc_common.deserialize_remote_exception(body["failure"], self._allowed_remote_exmods)
            if "redirect" in body:
                # The server is stopping and did not run it: look the target up afresh and send again.
                LOG.debug("call to %r redirected (%s)", topic, body["redirect"])
                self.client.routes.invalidate(topic)
                time.sleep(REDIRECT_PAUSE)
                continue
            return body.get("result")

    def send_notification(
        self,
        target: oslo_messaging.Target,
        ctxt: Any,
        message: dict[str, Any],
        version: float,
        retry: int | None = None,
    ) -> None:
        if self._dual is not None and self._dual.notifies_over_fallback(target):
            return self._dual.fallback.send_notification(target, ctxt, message, version, retry=retry)
        return self.notify(target, ctxt, message)

    def notify(self, target: oslo_messaging.Target, ctxt: Any, message: dict[str, Any]) -> None:
        """Notify over zmq: ``target.topic`` is ``topic.priority``."""
        full = self.zmq_topic(target)  # topic.priority, in the target's exchange
        _, dot, priority = str(target.topic).rpartition(".")
        if not dot:
            raise oslo_messaging.InvalidTarget("a notification topic is topic.priority", target)
        topic = full[: -len(priority) - 1]
        try:
            self._with_primitives(
                lambda c, m: self.client.notify(
                    topic,
                    priority,
                    str(m.get("event_type", "")),
                    m,
                    context=c,
                    publisher_id=str(m.get("publisher_id", "")),
                ),
                ctxt,
                message,
            )
        except ClientClosed as exc:
            raise oslo_messaging.MessageDeliveryFailure(str(exc)) from exc
        return None

    # ------------------------------------------------------------------ BaseDriver: listening
    def listen(self, target: oslo_messaging.Target, batch_size: int, batch_timeout: float | None) -> Any:
        zmq_listener = base.PollStyleListenerAdapter(
            self._zmq_listener([self.zmq_topic(target)], target.server, target=target),
            batch_size,
            batch_timeout,
        )
        if self.fallback_driver is None:
            return zmq_listener
        fallback = self.fallback_driver.listen(target, batch_size, batch_timeout)
        return _DualListener([zmq_listener, fallback], batch_size, batch_timeout)

    def listen_for_notifications(
        self,
        targets_and_priorities: list[tuple[oslo_messaging.Target, str]],
        pool: str | None,
        batch_size: int,
        batch_timeout: float | None,
    ) -> Any:
        topics = sorted(
            {f"{self.zmq_topic(target)}.{priority}" for target, priority in targets_and_priorities}
        )
        zmq_listener = base.PollStyleListenerAdapter(
            self._zmq_listener(topics, None, pool=pool), batch_size, batch_timeout
        )
        if self.fallback_driver is None:
            return zmq_listener
        fallback = self.fallback_driver.listen_for_notifications(
            targets_and_priorities, pool, batch_size, batch_timeout
        )
        return _DualListener([zmq_listener, fallback], batch_size, batch_timeout)

    def cleanup(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self.matchmaker.close()
        if self._fallback_transport is not None:
            self._fallback_transport.cleanup()


class _DualBackend:
    """Sending while a fleet migrates (``zmq_fallback_transport_url``): over zmq when the target's zmq
    receiver is registered in the matchmaker, else over the fallback driver; a message that zmq did not
    deliver (no route, receiver unreachable, matchmaker down) goes over the fallback instead. Fanout and
    notifications go over the fallback while ``zmq_fallback_fanout`` is set, which every node listens on."""

    def __init__(self, zmq: ZmqDriver, fallback: base.BaseDriver, fanout_over_fallback: bool) -> None:
        self.zmq = zmq
        self.fallback = fallback
        self.fanout_over_fallback = fanout_over_fallback

    def registered(self, topic: str) -> bool:
        """Whether the matchmaker (through the client's route cache) knows a zmq receiver of ``topic``."""
        try:
            return bool(self.zmq.client.routes.lookup(topic))
        except MatchmakerError as exc:
            LOG.warning("matchmaker unavailable, %r goes over the fallback: %s", topic, exc)
            return False

    def send(
        self,
        target: oslo_messaging.Target,
        ctxt: Any,
        message: dict[str, Any],
        wait_for_reply: bool | None,
        timeout: float | None,
        call_monitor_timeout: float | None,
        retry: int | None,
        transport_options: Any,
    ) -> Any:
        zmq = self.zmq
        if target.fanout:
            if self.fanout_over_fallback or not self.registered(zmq.zmq_topic(target)):
                return self.fallback.send(
                    target, ctxt, message, retry=retry, transport_options=transport_options
                )
            return zmq.fanout(target, ctxt, message)
        topic = zmq.directed_topic(target)
        if not wait_for_reply:
            if self.registered(topic):
                try:
                    return zmq.cast(target, ctxt, message)
                except NoRouteError:
                    pass
            return self.fallback.send(target, ctxt, message, retry=retry, transport_options=transport_options)
        deadline = zmq.deadline(timeout)
        if self.registered(topic):
            try:
                return zmq.call(target, ctxt, message, deadline, call_monitor_timeout)
            except Unreachable as exc:
                # Never delivered (its receiver is gone): safe to send again over the fallback.
                LOG.info("zmq receiver of %r unreachable, sending over the fallback: %s", topic, exc)
            except (NoRouteError, MatchmakerError):
                pass  # not sent: a redirected call whose receiver has left zmq meanwhile
        return self.fallback.send(
            target,
            ctxt,
            message,
            wait_for_reply=True,
            timeout=max(0.001, deadline[1] - time.monotonic()),
            call_monitor_timeout=call_monitor_timeout,
            retry=retry,
            transport_options=transport_options,
        )

    def notifies_over_fallback(self, target: oslo_messaging.Target) -> bool:
        """Whether a notification to ``target`` goes over the fallback: while ``zmq_fallback_fanout`` is set,
        or when no zmq listener of it is registered (the fallback at least keeps it until one comes)."""
        full = self.zmq.zmq_topic(target)
        return self.fanout_over_fallback or not (self.registered(full) or self.registered(pools_topic(full)))
