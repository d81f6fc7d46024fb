"""Sockets: the only place zmqrpc creates ZeroMQ sockets, with their options and port-range binding.

Keeping creation here means one place sets high-water marks, linger, keepalive and CURVE keys: with
``zmq_security = curve`` every TCP socket carries the node's keypair, a socket that binds is a CURVE server
(ZAP domain enforced, so no handler means no peer), and :meth:`SocketFactory.connect` gives a socket the
key it must find at the other end (:mod:`zmqrpc.security`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import zmq

from zmqrpc import green
from zmqrpc.errors import BindError, PortRangeExhausted
from zmqrpc.security import ZAP_DOMAIN, CurveSecurity, UntrustedPeer, authenticator_for

if TYPE_CHECKING:
    from zmqrpc.config import OptionValues

LOG = logging.getLogger(__name__)

# Dynamic (per-message) sockets must never linger forever on a dead host (old driver bugs 1658913, 1663459).
DEFAULT_DYNAMIC_LINGER_MS = 1000
# On shutdown nothing may block on an unreachable peer, whatever zmq_linger says.
CLOSE_LINGER_MS = 1000
# zmq.NOBLOCK as a plain int: pyzmq ORs the flags once per frame, and an enum's __or__ is a visible cost
# on the hot path. (Sends copy: for frames of a few KB a copy is cheaper than a zero-copy Frame object.)
NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | NOBLOCK


def send_frames(sock: zmq.Socket, frames: Sequence[bytes | zmq.Frame]) -> None:
    """``sock.send_multipart(frames, NOBLOCK)`` at a third of its cost, with int flags and no per-frame type
    check (raises zmq.Again when it would block). A Frame goes without a copy.

    libzmq queues a multipart message whole or not at all, so once the first frame went, the rest go.
    """
    send = sock.send
    for frame in frames[:-1]:
        send(frame, _MORE)
    send(frames[-1], NOBLOCK)


def recv_frames(sock: zmq.Socket, flags: int = NOBLOCK) -> list[zmq.Frame]:
    """``sock.recv_multipart(flags, copy=False)`` at a third of its cost (zmq.Again when nothing waits).

    Each Frame already knows whether more follow; recv_multipart asks the socket again for every frame, a
    getsockopt through pyzmq's enum conversion. Only the first frame may wait: libzmq delivers a multipart
    message whole.
    """
    recv = sock.recv
    frame = recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def recv_message(sock: zmq.Socket, flags: int = NOBLOCK) -> list[bytes]:
    """``sock.recv_multipart(flags)``: the bytes of :func:`recv_frames`."""
    return [frame.bytes for frame in recv_frames(sock, flags)]


def tcp_endpoint(address: str) -> str:
    """'host:port' -> 'tcp://host:port' (IPv6 hosts in brackets, as :mod:`zmqrpc.address` writes them)."""
    return address if "://" in address else f"tcp://{address}"


class SocketFactory:
    """Creates sockets with the options from ``[oslo_messaging_zmq]``, and the CURVE material ``security``
    (None: zmq_security = none, plain sockets)."""

    def __init__(
        self,
        zmq_opts: OptionValues,
        context: zmq.Context | None = None,
        security: CurveSecurity | None = None,
    ) -> None:
        self.opts = zmq_opts
        self.context = context or zmq.Context.instance()
        self.security = security

    def _linger_ms(self, dynamic: bool) -> int:
        linger = self.opts.zmq_linger
        if linger is None or linger < 0:
            return DEFAULT_DYNAMIC_LINGER_MS if dynamic else -1
        return int(linger * 1000)

    def _configure(self, sock: zmq.Socket, dynamic: bool = False) -> zmq.Socket:
        hwm = self.opts.rpc_zmq_hwm
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, self._linger_ms(dynamic))
        # A hard guard far above our own size check, so an absurd frame cannot exhaust memory.
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.opts.rpc_zmq_max_message_size)
        if self.opts.zmq_tcp_keepalive != -1:
            sock.setsockopt(zmq.TCP_KEEPALIVE, self.opts.zmq_tcp_keepalive)
            for name, opt in (
                ("zmq_tcp_keepalive_idle", zmq.TCP_KEEPALIVE_IDLE),
                ("zmq_tcp_keepalive_cnt", zmq.TCP_KEEPALIVE_CNT),
                ("zmq_tcp_keepalive_intvl", zmq.TCP_KEEPALIVE_INTVL),
            ):
                value = getattr(self.opts, name)
                if value != -1:
                    sock.setsockopt(opt, value)
        sock.setsockopt(zmq.IPV6, 1)
        if self.security is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.security.own.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.security.own.secret)
        return sock

    def _serve(self, sock: zmq.Socket, endpoint: str) -> None:
        """Make a socket about to bind a CURVE server whose peers ZAP must accept."""
        if self.security is None:
            return
        # The context's authenticator starts now, before the first bind (a process that only connects,
        # a pure client, needs none).
        auth = authenticator_for(self.context, self.security)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        # Without a ZAP handler libzmq would accept anyone; enforced, it refuses everyone instead.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        auth.watch(sock, endpoint)

    def connect(self, sock: zmq.Socket, address: str) -> None:
        """Connect to ``host:port``; under CURVE, expecting the peer's allowed key (raises UntrustedPeer
        when there is none: nothing may be sent there)."""
        if self.security is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.security.key_for(address))
        sock.connect(tcp_endpoint(address))

    def dealer(
        self, dynamic: bool = False, identity: str | None = None, blocking: bool = False
    ) -> zmq.Socket:
        """A DEALER; with zmq_immediate, messages only queue on completed connections.

        ``identity`` gives it a routing id that is the same on every proxy it connects to. A ``blocking``
        one is for a caller's thread to wait on (green under eventlet).
        """
        sock = self._configure(
            self.blocking(zmq.DEALER) if blocking else self.context.socket(zmq.DEALER), dynamic
        )
        if self.opts.zmq_immediate or dynamic:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity.encode())
        return sock

    def subscriber(self) -> zmq.Socket:
        """A SUB socket for published fanout."""
        return self._configure(self.context.socket(zmq.SUB))

    def publisher(self) -> zmq.Socket:
        return self._configure(self.context.socket(zmq.PUB))

    def xpub(self) -> zmq.Socket:
        """A local publisher's downstream side: it passes its subscribers' subscriptions upstream."""
        return self._configure(self.context.socket(zmq.XPUB))

    def xsub(self) -> zmq.Socket:
        """A local publisher's upstream side, connected to the central publishers."""
        return self._configure(self.context.socket(zmq.XSUB))

    def router(self, mandatory: bool = True) -> zmq.Socket:
        """A ROUTER; ``mandatory`` reports unroutable messages (EHOSTUNREACH) instead of dropping them.

        A ROUTER that a ``zmq.proxy`` device owns must not be mandatory: the device stops on any send error.
        """
        sock = self._configure(self.context.socket(zmq.ROUTER))
        if mandatory:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        return sock

    def inproc(self, socket_type: int, hwm: int = 0) -> zmq.Socket:
        """A plain socket for an inproc endpoint inside this process (``hwm`` 0: the default)."""
        sock = self.context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if hwm:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        return sock

    def blocking(self, socket_type: int) -> zmq.Socket:
        """A socket the calling thread may block on: green under eventlet, plain otherwise."""
        return green.socket_class()(self.context, socket_type)

    def bind_in_range(self, sock: zmq.Socket) -> int:
        """Bind to a random port in rpc_zmq_min_port..rpc_zmq_max_port (max exclusive); return the port."""
        opts = self.opts
        low, high, tries = opts.rpc_zmq_min_port, opts.rpc_zmq_max_port, opts.rpc_zmq_bind_port_retries
        address = _bind_host(opts.rpc_zmq_bind_address)
        self._serve(sock, f"tcp://{address}")
        try:
            return sock.bind_to_random_port(f"tcp://{address}", low, high, max(tries, 1))
        except zmq.ZMQBindError:
            raise PortRangeExhausted(
                f"port range exhausted: no free port on {address} in {low}..{high} after {tries} attempts "
                "(rpc_zmq_min_port, rpc_zmq_max_port, rpc_zmq_bind_port_retries)"
            ) from None
        except zmq.ZMQError as exc:
            raise BindError(f"cannot bind tcp://{address} (rpc_zmq_bind_address): {exc}") from exc

    def bind_port(self, sock: zmq.Socket, host: str, port: int) -> int:
        """Bind to a fixed port (0 = random, as the proxy flags define); return the real port."""
        address = _bind_host(host)
        self._serve(sock, f"tcp://{address}:{port}")
        try:
            if port == 0:
                return sock.bind_to_random_port(f"tcp://{address}")
            sock.bind(f"tcp://{address}:{port}")
            return port
        except zmq.ZMQError as exc:
            raise BindError(f"cannot bind tcp://{address}:{port}: {exc}") from exc


def _bind_host(bind_address: str) -> str:
    return "*" if bind_address in ("", "0.0.0.0") else bind_address


def new_routing_id(name: str) -> str:
    """A readable, unique routing id for a DEALER that talks through proxies.

    It never starts with a zero byte: libzmq reserves those for the ids it generates, and zmqrpc uses a
    leading zero byte as the publish marker.
    """
    return f"{name}/{uuid.uuid4().hex[:12]}"


_UNTRUSTED_LOGGED: set[str] = set()


def sync_connections(
    sock: zmq.Socket, connected: set[str], wanted: Iterable[str], factory: SocketFactory | None = None
) -> None:
    """Connect ``sock`` to new addresses in ``wanted`` and disconnect from those no longer wanted.

    With a ``factory`` under CURVE, an address without an allowed key is skipped (logged; tried again on
    the next sync, when its key may have arrived)."""
    wanted_set = set(wanted)
    for address in sorted(wanted_set - connected):
        if factory is None:
            sock.connect(tcp_endpoint(address))
        else:
            try:
                factory.connect(sock, address)
            except UntrustedPeer as exc:
                if address not in _UNTRUSTED_LOGGED:
                    _UNTRUSTED_LOGGED.add(address)
                    LOG.warning("not connecting (logged once per address): %s", exc)
                continue
        connected.add(address)
    for address in sorted(connected - wanted_set):
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(tcp_endpoint(address))
        connected.discard(address)
