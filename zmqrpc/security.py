"""CurveZMQ security: key files, the ZAP authenticator, peer keys and authorization rules.

With ``[oslo_messaging_zmq] zmq_security = curve`` every zmqrpc socket speaks CURVE (the options are set in
:mod:`zmqrpc.sockets`; this module supplies the keys):

* **Key files** are ``zmq.auth.create_certificates`` certificates. The node's own is
  ``zmq_curve_secret_key_file`` (``<name>.key_secret``, mode 0600); the peers allowed to connect are the
  ``<name>.key`` files of ``zmq_curve_allowed_keys_dir``. A key's *name* is its file stem, normally the
  host name, up to a ``+``: ``host-1+2027.key`` is a second key of ``host-1`` (a rotation holds both for a
  while). A bad file is a :class:`~zmqrpc.errors.ConfigError` naming it (the CLI exits 2).
* **Authentication** is pyzmq's ``zmq.auth`` ZAP handler, one per context, on a real OS thread, started
  before the first bind. Its User-Id is the key's name. Every CURVE server socket sets a ZAP domain with
  ZMQ_ZAP_ENFORCE_DOMAIN, so libzmq refuses every peer while no handler answers (no fail-open), and a
  watchdog ends the process (exit 70) when the handler thread dies. A refused peer is counted
  (``zmqrpc_auth_failures_total``) and logged once per address; it never reaches application code.
* **Peer keys**: a client takes a server's or proxy's public key from its *own* allowed-keys directory, by
  the key name the peer registered beside its address (topic :data:`~zmqrpc.protocol.KEY_NAMES`, members
  ``address|name|public key``), else by the address's host. The matchmaker only says which of the allowed
  keys to expect (the one in use during a rotation); a registered key that the directory does not allow
  for that name is ignored, and an address with no allowed key gets no connection (:class:`UntrustedPeer`).
* **Authorization**: ``zmq_curve_authorization`` rules say which key names may send which message types
  to which topics (:class:`Rules`); the server checks them before dispatch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from zmqrpc import green, metrics
from zmqrpc.errors import ConfigError, ZmqRpcError

if TYPE_CHECKING:
    from zmqrpc.config import OptionValues

__all__ = [
    "EXIT_AUTHENTICATOR_DIED",
    "ZAP_DOMAIN",
    "AllowedKeys",
    "Authenticator",
    "CurveSecurity",
    "Keypair",
    "Rules",
    "UntrustedPeer",
    "authenticator_for",
    "load_keypair",
    "load_security",
    "parse_rules",
    "running_authenticator",
]

LOG = logging.getLogger(__name__)

# Every zmqrpc CURVE server socket asks ZAP with this domain (and enforces it).
ZAP_DOMAIN = "zmqrpc"
# How a process ends when its authenticator died (EX_SOFTWARE): it must not keep running unauthenticated.
EXIT_AUTHENTICATOR_DIED = 70
# How often the handler thread looks for a changed allowed-keys directory, and the watchdog for a dead thread.
RELOAD_INTERVAL = 1.0
WATCHDOG_INTERVAL = 0.2
# Refused addresses remembered for the once-per-address log (bounded: a scan must not grow memory).
MAX_LOGGED_PEERS = 10_000
# Names that mean "this node" in an address (a local publisher is reached with the node's own key).
LOCAL_HOSTS = frozenset({"localhost", "ip6-localhost", "127.0.0.1", "::1"})
MESSAGE_TYPES = frozenset({"call", "cast", "fanout", "notify"})


class UntrustedPeer(ZmqRpcError):
    """No allowed public key for an address: nothing is sent to it."""


# --------------------------------------------------------------------------- key files


@dataclasses.dataclass(frozen=True)
class Keypair:
    """A node's key name and its z85 CURVE keys."""

    name: str
    public: bytes
    secret: bytes = dataclasses.field(repr=False)


def _key_name(path: Path) -> str:
    return path.name.removesuffix(".key_secret").removesuffix(".key").partition("+")[0]


def _read_certificate(path: Path, option: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option}: {path} is not a zmq.auth certificate: {exc}") from None
    for what, key in (("public-key", public), ("secret-key", secret)):
        if key is None:
            continue
        try:
            ok = len(key) == 40 and len(z85.decode(key)) == 32
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            raise ConfigError(f"{option}: {path} has a malformed {what} (expected 40 z85 characters)")
    return public, secret


def load_keypair(path: str | Path, option: str = "zmq_curve_secret_key_file") -> Keypair:
    """Load the node's own certificate; refuse a missing, open (group/other readable) or malformed one."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {file}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{option}: {file} is not a file")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ConfigError(
            f"{option}: {file} holds a secret key but is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {file}"
        )
    public, secret = _read_certificate(file, option)
    if not secret:
        raise ConfigError(
            f"{option}: {file} holds no secret-key (use the <name>.key_secret file of "
            "zmq.auth.create_certificates, not the public <name>.key)"
        )
    return Keypair(_key_name(file), public, secret)


class AllowedKeys:
    """The public keys of ``zmq_curve_allowed_keys_dir`` by name and by key, re-read when the directory
    changes (a rotation adds the new keys, then drops the old ones)."""

    def __init__(self, directory: str | Path, option: str = "zmq_curve_allowed_keys_dir") -> None:
        self.directory = Path(directory)
        self._option = option
        self._stamp: tuple[float, ...] = ()
        self._checked = 0.0  # monotonic time of the last look at the directory
        self.by_name: dict[str, tuple[bytes, ...]] = {}  # a name's keys, the newest file last
        self.by_key: dict[bytes, str] = {}
        self.reload(strict=True)

    def _signature(self) -> tuple[float, ...]:
        files = sorted(self.directory.glob("*.key"))
        return (self.directory.stat().st_mtime, *(f.stat().st_mtime for f in files), len(files))

    def maybe_reload(self) -> bool:
        """:meth:`reload` at most every RELOAD_INTERVAL seconds (cheap enough to call before each use)."""
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL:
            return False
        self._checked = now
        return self.reload()

    def reload(self, strict: bool = False) -> bool:
        """Read the directory again; True if it changed. ``strict`` (at start) raises ConfigError on any bad
        file; later a bad file is logged and the last good set is kept."""
        try:
            if not self.directory.is_dir():
                raise ConfigError(f"{self._option}: {self.directory} is not a directory")
            stamp = self._signature()
            if stamp == self._stamp:
                return False
            by_name: dict[str, tuple[bytes, ...]] = {}
            for file in sorted(self.directory.glob("*.key"), key=lambda f: (f.stat().st_mtime, f.name)):
                public, _ = _read_certificate(file, self._option)
                by_name[_key_name(file)] = (*by_name.get(_key_name(file), ()), public)
            if not by_name:
                raise ConfigError(
                    f"{self._option}: {self.directory} holds no <name>.key public certificates, so no peer "
                    "could connect"
                )
        except (ConfigError, OSError) as exc:
            if strict:
                if isinstance(exc, OSError):
                    raise ConfigError(f"{self._option}: cannot read {self.directory}: {exc}") from None
                raise
            LOG.error("allowed keys not reloaded, the previous %d stay: %s", len(self.by_name), exc)
            return False
        # Swapped whole: readers on other threads see the old or the new set, never half of one.
        self.by_key = {key: name for name, keys in by_name.items() for key in keys}
        self.by_name = by_name
        if self._stamp:
            LOG.info("allowed keys reloaded from %s: %s", self.directory, ", ".join(sorted(by_name)))
        self._stamp = stamp
        return True


# --------------------------------------------------------------------------- authorization


@dataclasses.dataclass(frozen=True)
class Rule:
    """``<key glob>:<topic glob>[:<types>]``; ``{key}`` in the topic glob is the sender's key name."""

    text: str
    key: str
    topic: str
    types: frozenset[str]

    def allows(self, caller: str, topic: str, kind: str) -> bool:
        if kind not in self.types or not fnmatch.fnmatchcase(caller, self.key):
            return False
        return fnmatch.fnmatchcase(topic, self.topic.replace("{key}", _glob_escape(caller)))


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


class Rules:
    """The ``zmq_curve_authorization`` rules: a request is allowed when any rule allows it (or when there
    are no rules at all)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, caller: str, topic: str, kind: str) -> str | None:
        """None when allowed, else why not (naming the rules that apply to this caller)."""
        if not self.rules or any(rule.allows(caller, topic, kind) for rule in self.rules):
            return None
        own = [rule.text for rule in self.rules if fnmatch.fnmatchcase(caller, rule.key)]
        return (
            f"{kind} to topic {topic!r} by {caller!r} is not allowed by zmq_curve_authorization "
            f"(rules for {caller!r}: {', '.join(own) if own else 'none'})"
        )


def parse_rules(texts: Iterable[str]) -> Rules:
    """Parse ``zmq_curve_authorization``; a malformed rule is a ConfigError naming it."""
    rules = []
    for text in texts:
        parts = text.strip().split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ConfigError(
                f"zmq_curve_authorization rule {text!r}: expected <key glob>:<topic glob>[:<types>]"
            )
        types = frozenset(parts[2].split("+")) if len(parts) == 3 else MESSAGE_TYPES
        if not types <= MESSAGE_TYPES:
            raise ConfigError(
                f"zmq_curve_authorization rule {text!r}: unknown type(s) "
                f"{', '.join(sorted(types - MESSAGE_TYPES))} (use {'+'.join(sorted(MESSAGE_TYPES))})"
            )
        rules.append(Rule(text.strip(), parts[0], parts[1], types))
    return Rules(rules)


# --------------------------------------------------------------------------- the settings


class CurveSecurity:
    """A process's CURVE material: its own keypair, the allowed keys, the rules, the key names the
    matchmaker announced (``names``, set by a client: address -> [names])."""

    def __init__(self, own: Keypair, allowed: AllowedKeys, rules: Rules) -> None:
        self.own = own
        self.allowed = allowed
        self.rules = rules
        # (name, z85 public key or "") the matchmaker says an address has (set by clients and servers).
        self.names: Callable[[str], list[tuple[str, str]]] = lambda address: []

    def key_for(self, address: str) -> bytes:
        """The public key a connection to ``address`` (``host:port``) must find at the other end: one that
        the allowed-keys directory holds for the name registered there (the registered key if allowed,
        else the name's newest), else for this node (a local address) or the address's host."""
        host = address.rpartition(":")[0].strip("[]")
        candidates = list(self.names(address))
        if host in LOCAL_HOSTS:
            candidates.append((self.own.name, self.own.public.decode()))
        candidates.append((host, ""))
        self.allowed.maybe_reload()  # a rotation may have added the peer's new key
        by_name = self.allowed.by_name
        for name, registered in candidates:
            keys = by_name.get(name, ())
            if registered:
                if registered.encode() in keys:
                    return registered.encode()
            elif keys:
                return keys[-1]
        for name, _ in candidates:  # a registered key not allowed: the name's newest allowed one
            if by_name.get(name):
                return by_name[name][-1]
        tried = ", ".join(dict.fromkeys(name for name, _ in candidates))
        raise UntrustedPeer(
            f"no allowed key for {address}: none of {tried} has a <name>.key in {self.allowed.directory} "
            "(zmq_curve_allowed_keys_dir)"
        )


def load_security(zmq_opts: OptionValues) -> CurveSecurity | None:
    """The process's CURVE material from ``[oslo_messaging_zmq]``, checked; None when zmq_security = none."""
    if zmq_opts.zmq_security != "curve":
        return None
    directory = str(zmq_opts.zmq_curve_allowed_keys_dir)
    with _LOCK:  # one AllowedKeys per directory and process: what one reloads, all see
        allowed = _ALLOWED.get(directory)
        if allowed is None:
            allowed = _ALLOWED[directory] = AllowedKeys(directory)
        else:
            allowed.reload(strict=True)
    return CurveSecurity(
        load_keypair(zmq_opts.zmq_curve_secret_key_file),
        allowed,
        parse_rules(zmq_opts.zmq_curve_authorization),
    )


_ALLOWED: dict[str, AllowedKeys] = {}


# --------------------------------------------------------------------------- the ZAP handler


class Authenticator(zmq.auth.Authenticator):
    """pyzmq's ZAP authenticator for CURVE, answering from :class:`AllowedKeys`, with the key's name as
    User-Id and refused peers counted and logged once. It runs on a thread of its own: an OS thread in a
    plain process, a green thread under eventlet, waiting through :func:`zmqrpc.green.poll` (libzmq waits
    for ZAP replies inside its own I/O thread, so a green handler blocks nothing, and it may take the
    process's green locks, which an OS thread may not).
    It also watches its context's CURVE server sockets for handshakes that never reach ZAP (a peer
    without a key), to count those too."""

    def __init__(self, context: zmq.Context, allowed: AllowedKeys) -> None:
        super().__init__(context, log=LOG)
        self.allowed = allowed
        self._pipe: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stopping = False
        self.cause = ""
        self._address = ""
        self._refused: set[str] = set()
        self._monitors: list[tuple[zmq.Socket, str]] = []
        self._monitor_lock = threading.Lock()

    # -- pyzmq's hooks
    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowed.by_key.get(z85.encode(client_public_key), "")

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        if domain != ZAP_DOMAIN:
            return False, b"Unknown domain"
        if z85.encode(client_key) in self.allowed.by_key:
            return True, b"OK"
        return False, b"Unknown key"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        if status_code != b"200":
            self._refuse(self._address, status_text.decode("utf-8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _refuse(self, peer: str, why: str) -> None:
        metrics.current().auth_failures.inc()
        if peer not in self._refused and len(self._refused) < MAX_LOGGED_PEERS:
            self._refused.add(peer)
            LOG.warning("refused a peer from %s: %s (logged once per address)", peer, why)

    # -- lifecycle
    def start(self) -> None:
        # pyzmq's start(), on plain sockets: the thread waits on them through green.poll (the hub under
        # eventlet; a green socket there would be a second reader of the same descriptor).
        socket_class = zmq.Socket
        self.zap_socket = self.context.socket(zmq.REP, socket_class=socket_class)
        self.zap_socket.linger = 1
        self.zap_socket.bind("inproc://zeromq.zap.01")
        self._pipe = self.context.socket(zmq.PAIR, socket_class=socket_class)
        endpoint = f"inproc://zmqrpc-zap-pipe-{id(self)}"
        self._pipe.bind(endpoint)
        thread_pipe = self.context.socket(zmq.PAIR, socket_class=socket_class)
        thread_pipe.connect(endpoint)
        self._thread = threading.Thread(target=self._run, args=(thread_pipe,), name="zmqrpc-zap", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="zmqrpc-zap-watchdog", daemon=True)
        self._watchdog.start()

    def watch(self, sock: zmq.Socket, label: str) -> None:
        """Count handshakes on ``sock`` (a CURVE server socket) that fail before ZAP is asked."""
        events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        monitor = sock.get_monitor_socket(events)
        with self._monitor_lock:
            self._monitors.append((monitor, label))
        self._command(b"WATCH")

    def kill_for_test(self) -> None:
        """Make the handler thread die, as a bug would (tests prove the process then stops)."""
        self._command(b"DIE")

    def _command(self, command: bytes) -> None:
        with self._monitor_lock:  # the pipe is one socket; any thread may bind or stop
            if self._pipe is not None:
                self._pipe.send(command)

    def stop(self) -> None:
        self._stopping = True
        self._command(b"TERMINATE")
        if self._thread is not None:
            self._thread.join(5)
        with self._monitor_lock:
            if self._pipe is not None:
                self._pipe.close(0)
                self._pipe = None
        super().stop()

    # -- the handler thread
    def _run(self, pipe: zmq.Socket) -> None:
        try:
            self._serve(pipe)
        except BaseException as exc:  # the watchdog reports it and ends the process
            self.cause = f"{type(exc).__name__}: {exc}"
        finally:
            pipe.close(0)
            with self._monitor_lock:
                for monitor, _ in self._monitors:
                    monitor.close(0)
                self._monitors.clear()
            if self.zap_socket is not None:
                # No handler bound now: libzmq refuses every CURVE peer (ZMQ_ZAP_ENFORCE_DOMAIN).
                self.zap_socket.close(0)
                self.zap_socket = None  # type: ignore[assignment]

    def _serve(self, pipe: zmq.Socket) -> None:
        watched: list[zmq.Socket] = []
        while True:
            items = [(pipe, zmq.POLLIN), (self.zap_socket, zmq.POLLIN), *((m, zmq.POLLIN) for m in watched)]
            events = dict(green.poll(items, int(RELOAD_INTERVAL * 1000)))
            if pipe in events:
                command = pipe.recv()
                if command == b"TERMINATE":
                    return
                if command == b"DIE":
                    raise RuntimeError("killed by the test hook")
                with self._monitor_lock:
                    watched[:] = [monitor for monitor, _ in self._monitors]
            if self.zap_socket in events:
                _run_now(self.handle_zap_message(self.zap_socket.recv_multipart()))
            for monitor in [m for m in watched if m in events]:
                self._on_monitor_event(watched, monitor)
            if not events:
                self.allowed.maybe_reload()

    def _on_monitor_event(self, watched: list[zmq.Socket], monitor: zmq.Socket) -> None:
        event = parse_monitor_message(monitor.recv_multipart())
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            watched.remove(monitor)
            with self._monitor_lock:
                self._monitors = [(m, label) for m, label in self._monitors if m is not monitor]
            monitor.close(0)
            return
        endpoint = event["endpoint"].decode("utf-8", "replace")
        self._refuse(f"a peer of {endpoint}", "CURVE handshake failed (no key, or not CURVE)")

    def _watch(self) -> None:
        """The watchdog: the process must not outlive its handler (it would serve nobody, or worse)."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            time.sleep(WATCHDOG_INTERVAL)  # green under eventlet
        if self._stopping:
            return
        LOG.critical(
            "the ZAP authenticator thread died (%s): no peer can be authenticated, the process exits with "
            "status %d",
            self.cause or "unknown cause",
            EXIT_AUTHENTICATOR_DIED,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_AUTHENTICATOR_DIED)


def _run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run pyzmq's async ZAP handler to its end: without a callback it never waits on anything."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the ZAP handler tried to wait (no callback is configured)")


_AUTHENTICATORS: dict[int, Authenticator] = {}
_LOCK = threading.Lock()


def running_authenticator(context: zmq.Context) -> Authenticator | None:
    """The context's authenticator, if one was started."""
    with _LOCK:
        auth = _AUTHENTICATORS.get(id(context))
    return auth if auth is not None and auth.context is context else None


def authenticator_for(context: zmq.Context, security: CurveSecurity) -> Authenticator:
    """The context's one authenticator, started on first use (before the first CURVE socket binds)."""
    with _LOCK:
        auth = _AUTHENTICATORS.get(id(context))
        if auth is None or auth.context is not context:
            auth = Authenticator(context, security.allowed)
            auth.start()
            _AUTHENTICATORS[id(context)] = auth
        return auth
