"""The zmqrpc wire envelope: the one place where a message is framed and where received frames are checked.

Every message is exactly four ZeroMQ frames (after any identity frames a ROUTER socket prepends)::

    header   22 bytes: b"ZR", version, type, serializer, flags, 16-byte message id
    route    the routing key a proxy forwards on (empty on direct connections)
    topic    the target topic, utf-8 ("compute", "compute.host1", "notifications.info")
    body     a dict serialized as json or msgpack

A proxy reads only the route frame. Everything received is validated by :func:`decode`, which raises
:class:`ProtocolError` with a short reason; I/O loops catch it and count the drop in a :class:`DropCounter`.

Routing through a proxy (``use_router_proxy``): every DEALER that talks through proxies has an explicit
routing id (the same on every proxy it connects to, so a reply may come back through any proxy).

* client -> proxy frontend: ``route`` is the destination server's routing id. The proxy sends the message
  out of its backend to that id, with ``route`` replaced by the sender's id; the server replies with
  ``route`` = that client id and the proxy forwards the same way in the other direction. So a proxy only
  ever swaps the route frame with the sender's id.
* ``route`` = :data:`PUBLISH` + topic: the proxy publishes ``[subscription(topic), header, sender_id,
  topic, body]`` on its PUB socket; :func:`subscription` ends the topic with a zero byte so SUB filters
  match it exactly (``foo`` never gets ``foobar``). A proxy that does not publish answers UNROUTABLE with
  that route unchanged, which tells the sender that ``use_pub_sub`` differs between it and the proxy.
* When the destination id is unknown to the proxy, it answers the sender with an UNROUTABLE message: the
  original header with its type changed, ``route`` = the unknown id, and empty topic and body.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import os
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from zmqrpc import metrics
from zmqrpc.errors import ProtocolError

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

MAGIC = b"ZR"
VERSION = 1
HEADER = struct.Struct("!2sBBBB16s")
# Where each field of HEADER starts: magic (2 bytes), then one byte each, then the 16-byte message id.
VERSION_OFFSET = 2
TYPE_OFFSET = 3
SERIALIZER_OFFSET = 4
FLAGS_OFFSET = 5
MSG_ID_OFFSET = 6  # the message id is the header's last 16 bytes
FRAME_COUNT = 4
MAX_TOPIC_LENGTH = 255


class MessageType(enum.IntEnum):
    CALL = 1
    CAST = 2
    FANOUT = 3
    NOTIFY = 4
    REPLY = 5
    ACK = 6
    UNROUTABLE = 7  # sent by a proxy: the route frame names no connected peer
    HEARTBEAT = 8  # server -> caller while a call runs (call monitoring); empty body


def by_message_type(by_name: Mapping[str, _T]) -> dict[MessageType, _T]:
    """``by_name`` (keyed "call", "cast", ...) keyed by MessageType instead: a dict lookup on the hot path."""
    return {t: by_name[t.name.lower()] for t in MessageType if t.name.lower() in by_name}


class Flags(enum.IntFlag):
    NONE = 0
    WANTS_ACK = 1


class Serializer:
    """A body codec; ``code`` is carried in the header so a mismatch is detected, not misread."""

    def __init__(self, name: str, code: int, dumps: Any, loads: Any) -> None:
        self.name = name
        self.code = code
        self.dumps = dumps
        self.loads = loads


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# Bounds on what one body may decode to, whatever its serializer: a real message nests a dozen levels and
# holds thousands of items, while a hostile one could nest until a decoder or handler recurses out of stack,
# or expand a few bytes into many objects (an empty list is one byte on the wire, 56 in memory).
MAX_NESTING = 100
MAX_ITEMS = 1_000_000

# msgpack ints are at most 64 bits; bigger ones (a uuid.int) travel as this extension type, as decimal text,
# so they round-trip as they do in json.
_BIG_INT_EXT = 1


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, int):  # msgpack asks only for ints it cannot pack
        return msgpack.ExtType(_BIG_INT_EXT, str(obj).encode())
    raise TypeError(f"cannot serialize {type(obj).__name__!r} objects with msgpack")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code != _BIG_INT_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    return int(data)  # Python refuses digit strings past sys.get_int_max_str_digits: a bounded cost


def _msgpack_dumps(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        ext_hook=_msgpack_ext,
        max_array_len=MAX_ITEMS,
        max_map_len=MAX_ITEMS,
    )


def _check_bounds(body: Any) -> None:
    """Raise ProtocolError when ``body`` nests deeper than MAX_NESTING or holds over MAX_ITEMS items."""
    items = 0
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_NESTING:
            raise ProtocolError("too deep", f"nested deeper than {MAX_NESTING} levels")
        items += len(children)
        if items > MAX_ITEMS:
            raise ProtocolError("too many items", f"more than {MAX_ITEMS} items")
        stack.extend((child, depth + 1) for child in children)


SERIALIZERS = {
    "json": Serializer("json", 1, _json_dumps, json.loads),
    "msgpack": Serializer("msgpack", 2, _msgpack_dumps, _msgpack_loads),
}
_SERIALIZER_BY_CODE = {s.code: s for s in SERIALIZERS.values()}


def serializer_for_code(code: int) -> Serializer | None:
    """The serializer a header's serializer byte names (None: unknown)."""
    return _SERIALIZER_BY_CODE.get(code)


def get_serializer(name: str) -> Serializer:
    try:
        return SERIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown serialization {name!r} (rpc_zmq_serialization): choose one of {sorted(SERIALIZERS)}"
        ) from None


# Which body keys each message type must carry, and their types.
_REQUIRED_BODY_KEYS: dict[MessageType, dict[str, type | tuple[type, ...]]] = {
    MessageType.CALL: {"message": dict, "context": dict},
    MessageType.CAST: {"message": dict, "context": dict},
    MessageType.FANOUT: {"message": dict, "context": dict},
    MessageType.NOTIFY: {"message": dict, "context": dict},
    MessageType.REPLY: {},
    MessageType.ACK: {},
    MessageType.UNROUTABLE: {},
    MessageType.HEARTBEAT: {},
}
_NO_TOPIC_TYPES = (MessageType.REPLY, MessageType.ACK, MessageType.UNROUTABLE, MessageType.HEARTBEAT)

# Route frame prefix asking a proxy to publish (routing ids set by zmqrpc never start with a zero byte).
PUBLISH = b"\x00"

# Well-known matchmaker topics under which proxies register their addresses ("host:port").
PROXY_FRONTENDS = "zmqrpc-proxy.frontend"
PROXY_BACKENDS = "zmqrpc-proxy.backend"
PROXY_PUBLISHERS = "zmqrpc-proxy.publisher"
# Under zmq_security = curve, servers and proxies register "address|key name|public key" here: which key a
# client must find at that address, if its own allowed-keys directory allows it for that name
# (zmqrpc.security).
KEY_NAMES = "zmqrpc-keys"


def key_names(members: list[str]) -> dict[str, list[tuple[str, str]]]:
    """``address|name|public key`` members of KEY_NAMES as address -> [(name, z85 public key or "")]."""
    names: dict[str, list[tuple[str, str]]] = {}
    for member in members:
        address, _, rest = member.partition("|")
        name, _, key = rest.partition("|")
        if address and name:
            names.setdefault(address, []).append((name, key))
    return names


def subscribers_topic(topic: str) -> str:
    """Matchmaker topic under which servers that take published fanout for ``topic`` register.

    A client compares it with the topic's servers, so a server without use_pub_sub still gets its copy
    (and the mismatch is reported) instead of silently missing published fanout.
    """
    return f"zmqrpc-subscribers:{topic}"


def pool_topic(topic: str, pool: str) -> str:
    """The topic a notification listener in ``pool`` serves: each pool gets one copy of a notification."""
    return f"{topic}@{pool}"


def pools_topic(topic: str) -> str:
    """Matchmaker topic listing the pools listening on ``topic``, as ``<listener address>|<pool>`` members
    (one per listener, so one listener leaving does not hide a pool that others still serve)."""
    return f"zmqrpc-pools:{topic}"


def publish_route(topic: str) -> bytes:
    """The route frame that asks a proxy to publish a message for ``topic``."""
    return PUBLISH + topic.encode()


def subscription(topic: str) -> bytes:
    """First frame of a published message and the SUB filter for ``topic``: exact match, not prefix."""
    return topic.encode() + b"\x00"


def unroutable_notice(header: bytes, route: bytes) -> list[bytes]:
    """What a proxy sends back when ``route`` names no connected peer (the header keeps the message id)."""
    if len(header) != HEADER.size:
        raise ProtocolError("bad header", f"{len(header)} bytes, expected {HEADER.size}")
    notice = bytearray(header)
    notice[TYPE_OFFSET] = MessageType.UNROUTABLE
    return [bytes(notice), route, b"", b""]


class _MessageIds:
    """Unique 16-byte message ids: 8 random bytes per process, then a counter.

    As unique across processes as a random 64-bit prefix makes them, and never repeated within one; a
    syscall per message (os.urandom) was a visible cost at tens of thousands of messages a second. A
    forked child draws a prefix of its own.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = int.from_bytes(os.urandom(8), "big") << 64
        self._counter = itertools.count(1)  # next() on it is atomic under the GIL

    def __call__(self) -> bytes:
        return (self._prefix | next(self._counter)).to_bytes(16, "big")


new_msg_id = _MessageIds()


@dataclass
class Envelope:
    """A decoded (or to-be-encoded) message."""

    type: MessageType
    topic: str
    body: dict[str, Any]
    msg_id: bytes = field(default_factory=new_msg_id)
    route: bytes = b""
    flags: Flags = Flags.NONE
    serializer: str = "json"

    @property
    def wants_ack(self) -> bool:
        return bool(self.flags & Flags.WANTS_ACK)


def encode(
    msg_type: MessageType,
    topic: str,
    body: dict[str, Any],
    serializer: Serializer,
    msg_id: bytes | None = None,
    route: bytes = b"",
    flags: Flags = Flags.NONE,
) -> list[bytes]:
    """Frame one message; returns the four frames to send."""
    header = HEADER.pack(MAGIC, VERSION, msg_type, serializer.code, flags, msg_id or new_msg_id())
    return [header, route, topic.encode(), serializer.dumps(body)]


def readdress(frames: list[bytes], msg_id: bytes | None = None, route: bytes | None = None) -> list[bytes]:
    """A copy of framed message with another message id and/or route (the body is not re-serialized)."""
    header, old_route, topic, body = frames
    if msg_id is not None:
        header = header[:MSG_ID_OFFSET] + msg_id
    return [header, old_route if route is None else route, topic, body]


# Lookup tables: enum construction is a visible cost on the hot path.
_TYPE_BY_CODE = {int(t): t for t in MessageType}
_FLAG_MASK = int(max(Flags))
_FLAGS_BY_BITS = [Flags(bits) for bits in range(_FLAG_MASK + 1)]


def decode(frames: list[bytes], max_size: int) -> Envelope:
    """Validate and decode four received frames; raise ProtocolError naming what is wrong."""
    if len(frames) != FRAME_COUNT:
        raise ProtocolError("bad frame count", f"expected {FRAME_COUNT}, got {len(frames)}")
    size = sum(len(f) for f in frames)
    if size > max_size:
        raise ProtocolError("oversized", f"{size} bytes > limit {max_size} (rpc_zmq_max_message_size)")
    header, route, topic_raw, body_raw = frames
    if len(header) != HEADER.size:
        raise ProtocolError("bad header", f"{len(header)} bytes, expected {HEADER.size}")
    magic, version, type_code, ser_code, flag_bits, msg_id = HEADER.unpack(header)
    flags = _FLAGS_BY_BITS[flag_bits & _FLAG_MASK]
    if magic != MAGIC:
        raise ProtocolError("bad magic", repr(magic))
    if version != VERSION:
        raise ProtocolError("unsupported version", f"{version} (this side speaks {VERSION})")
    msg_type = _TYPE_BY_CODE.get(type_code)
    if msg_type is None:
        raise ProtocolError("unknown message type", str(type_code))
    serializer = _SERIALIZER_BY_CODE.get(ser_code)
    if serializer is None:
        raise ProtocolError("unknown serializer", str(ser_code))
    if len(topic_raw) > MAX_TOPIC_LENGTH:
        raise ProtocolError("bad topic", f"longer than {MAX_TOPIC_LENGTH} bytes")
    try:
        topic = topic_raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("bad topic", "not utf-8") from None
    if msg_type not in _NO_TOPIC_TYPES and not topic:
        raise ProtocolError("bad topic", "empty")
    if msg_type is MessageType.UNROUTABLE:
        if body_raw:
            raise ProtocolError("bad body", "UNROUTABLE carries no body")
        return Envelope(msg_type, topic, {}, msg_id, route, flags, serializer.name)
    try:
        body = serializer.loads(body_raw)
    except Exception as exc:  # any decoder failure means an undecodable body
        raise ProtocolError("bad body", f"{serializer.name}: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad body", f"expected a map, got {type(body).__name__}")
    if len(body_raw) > MAX_NESTING:  # a shorter body cannot break either bound: skip the walk
        _check_bounds(body)
    for key, kind in _REQUIRED_BODY_KEYS[msg_type].items():
        if not isinstance(body.get(key), kind):
            raise ProtocolError("bad body", f"{msg_type.name} needs {key!r}")
    return Envelope(
        type=msg_type,
        topic=topic,
        body=body,
        msg_id=msg_id,
        route=route,
        flags=flags,
        serializer=serializer.name,
    )


class DropCounter:
    """Counts dropped messages per reason; logs the first drop of each reason (then every 1000th)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def drop(self, reason: str, detail: str = "", peer: str = "") -> None:
        metrics.current().dropped.labels(reason).inc()
        with self._lock:
            self._counts[reason] += 1
            count = self._counts[reason]
        if count == 1 or count % 1000 == 0:
            where = f" from {peer}" if peer else ""
            LOG.warning(
                "%s dropped a message%s (%s, %d so far): %s", self.owner, where, reason, count, detail
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
