"""The envelope: round trips in both serializations and a clear reason for every kind of bad frame."""

from __future__ import annotations

import logging

import pytest

from zmqrpc import protocol
from zmqrpc.protocol import DropCounter, Flags, MessageType, ProtocolError

BODY = {"message": {"method": "ping", "args": {"n": 1}}, "context": {"user": "u"}}


@pytest.mark.parametrize("name", ["json", "msgpack"])
@pytest.mark.parametrize("msg_type", [t for t in MessageType if t is not MessageType.UNROUTABLE])
def test_round_trip(name: str, msg_type: MessageType) -> None:
    serializer = protocol.get_serializer(name)
    msg_id = protocol.new_msg_id()
    frames = protocol.encode(msg_type, "compute.host1", BODY, serializer, msg_id, b"route", Flags.WANTS_ACK)
    assert len(frames) == 4 and frames[1] == b"route"
    env = protocol.decode(frames, 1 << 20)
    assert (env.type, env.topic, env.body, env.msg_id, env.route) == (
        msg_type,
        "compute.host1",
        BODY,
        msg_id,
        b"route",
    )
    assert env.wants_ack and env.serializer == name


def _frames(**change: bytes) -> list[bytes]:
    frames = protocol.encode(MessageType.CALL, "compute", BODY, protocol.get_serializer("json"))
    names = ["header", "route", "topic", "body"]
    return [change.get(n, f) for n, f in zip(names, frames, strict=True)]


def _header(**fields: int) -> bytes:
    values = {
        "magic": protocol.MAGIC,
        "version": 1,
        "type": 1,
        "ser": 1,
        "flags": 0,
        "id": b"x" * 16,
        **fields,
    }
    return protocol.HEADER.pack(*values.values())


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (_frames()[:3], "bad frame count"),
        ([*_frames(), b""], "bad frame count"),
        (_frames(header=b"short"), "bad header"),
        (_frames(header=_header(magic=b"XX")), "bad magic"),
        (_frames(header=_header(version=2)), "unsupported version"),
        (_frames(header=_header(type=42)), "unknown message type"),
        (_frames(header=_header(ser=9)), "unknown serializer"),
        (_frames(topic=b"\xff\xfe"), "bad topic"),
        (_frames(topic=b""), "bad topic"),
        (_frames(topic=b"t" * 300), "bad topic"),
        (_frames(body=b"{broken"), "bad body"),
        (_frames(body=b"[1]"), "bad body"),
        (_frames(body=b'{"context": {}}'), "bad body"),
        (_frames(body=b'{"message": {}, "context": {}, "pad": "' + b"x" * 2000 + b'"}'), "oversized"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames, 1024)
    assert info.value.reason == reason


def test_unknown_serialization_names_the_option() -> None:
    with pytest.raises(ValueError, match="rpc_zmq_serialization"):
        protocol.get_serializer("yaml")


def test_drop_counter_counts_every_drop_and_logs_each_reason_once(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropCounter("server x")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            drops.drop("bad body", "json: oops", "peer1")
        drops.drop("oversized", "too big")
    assert drops.counts() == {"bad body": 3, "oversized": 1}
    assert drops.total == 4
    assert len(caplog.records) == 2
    assert "bad body" in caplog.records[0].getMessage() and "peer1" in caplog.records[0].getMessage()


def test_unroutable_notice_keeps_the_message_id_and_names_the_route() -> None:
    frames = protocol.encode(MessageType.CALL, "compute", BODY, protocol.get_serializer("msgpack"), b"i" * 16)
    notice = protocol.decode(protocol.unroutable_notice(frames[0], b"server-9"), 1024)
    assert (notice.type, notice.msg_id, notice.route, notice.body) == (
        MessageType.UNROUTABLE,
        b"i" * 16,
        b"server-9",
        {},
    )
    with pytest.raises(ProtocolError):
        protocol.decode([*protocol.unroutable_notice(frames[0], b"x")[:3], b"junk"], 1024)


def test_subscriptions_match_exactly_not_by_prefix() -> None:
    assert not protocol.subscription("foobar").startswith(protocol.subscription("foo"))
    assert protocol.publish_route("foo").startswith(protocol.PUBLISH)


def _nested(depth: int) -> object:
    """A list nested ``depth`` levels deep."""
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _call_frames(name: str, args: object) -> list[bytes]:
    body = {"message": {"method": "echo", "args": {"value": args}}, "context": {}}
    return protocol.encode(MessageType.CALL, "t", body, protocol.SERIALIZERS[name])


@pytest.mark.parametrize("name", sorted(protocol.SERIALIZERS))
def test_ints_past_64_bits_round_trip(name: str) -> None:
    values = [2**64, -(2**70), 2**128 - 1, 2**63 - 1, -(2**63), 7]
    env = protocol.decode(_call_frames(name, values), 1 << 20)
    assert env.body["message"]["args"]["value"] == values


@pytest.mark.parametrize("name", sorted(protocol.SERIALIZERS))
def test_nesting_is_bounded(name: str) -> None:
    # The body is a map (1), its "message" (2), "args" (3): the value may nest MAX_NESTING - 3 more.
    allowed = protocol.MAX_NESTING - 3
    env = protocol.decode(_call_frames(name, _nested(allowed)), 1 << 20)
    assert env.body["message"]["args"]["value"] == _nested(allowed)
    with pytest.raises(ProtocolError) as info:
        protocol.decode(_call_frames(name, _nested(allowed + 1)), 1 << 20)
    assert info.value.reason == "too deep"


@pytest.mark.parametrize("name", sorted(protocol.SERIALIZERS))
def test_a_body_that_expands_past_max_items_is_refused(name: str) -> None:
    # Many small lists, none over the per-container limit: the total is what is bounded.
    chunks = [[0] * 1000 for _ in range(protocol.MAX_ITEMS // 1000 + 1)]
    with pytest.raises(ProtocolError) as info:
        protocol.decode(_call_frames(name, chunks), 1 << 30)
    assert info.value.reason in ("too many items", "bad body")
    assert "items" in str(info.value) or "max_array_len" in str(info.value)


def test_unknown_msgpack_extension_is_a_bad_body() -> None:
    import msgpack

    frames = _call_frames("msgpack", None)
    frames[3] = msgpack.packb({"message": {"x": msgpack.ExtType(9, b"")}, "context": {}})
    with pytest.raises(ProtocolError, match="unknown msgpack extension type 9"):
        protocol.decode(frames, 1 << 20)
