"""Fuzzing every socket a zmqrpc process binds, with valid calls from a real client interleaved.

Targets (each a real process on a real redis-server):

* the RPC server's ROUTER in static direct mode (``tests.rpc_node``);
* the central proxy's frontend ROUTER, backend ROUTER and publisher (PUB), with a ``use_router_proxy`` +
  ``use_pub_sub`` server behind it;
* a local publisher's XPUB (``zmqrpc proxy --local-publisher``), through which that server subscribes;
* both ROUTERs of ``zmqrpc agent`` (its RPC server and its notification listener).

Each hypothesis example sends a batch of structured malformed messages (built from zmqrpc/protocol.py's
four-frame envelope, then mutated: wrong frame counts, truncated or extended headers, bad magic, versions,
types, serializers and flags, bad topics and routes, garbage / non-map / wrong-typed / deeply nested /
giant-int / expanding msgpack and json bodies, oversized frames), messages of plain random bytes, and now
and then a raw TCP stream (a mutated ZMTP greeting, huge frame lengths, random bytes). The publishers get
(un)subscriptions, non-subscription and multipart messages, subscriptions of 256 bytes to 1 MB (the long
ones over raw TCP), and peers that leave. Then the real client, an ``RpcClient`` in its own process
(:func:`caller_main`), makes a valid call (and, for the publishers, a fanout) that must arrive.

Every process under test runs with rpc_zmq_max_message_size = 1 MiB, so oversized messages stay cheap.

Besides "every valid call is answered, the process is alive, RSS grows by less than 50 MB" (per server: the
agent runs two), the test keeps its own account of what each message must become, from the documented
rules (protocol.py's decode for the server, proxy.py's routing rules for the proxy), and checks the
processes' counters against it: every
malformed message is a counted drop with the right reason (server ``drops``, proxy SIGUSR1 stats, the
agent's log), and every well-formed call sent by the fuzzer gets a reply (a result or an error).

Default: a fixed seed (hypothesis ``derandomize``) and a short budget. ``pytest --fuzz-seconds N`` fuzzes
each socket for about N seconds, with a new seed per round.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.procs import ROOT, ProxyProcess, ServerProcess
from tests.servers import RedisServer, free_port, stop_process, wait_until
from zmqrpc import protocol
from zmqrpc.matchmaker import RedisMatchMaker
from zmqrpc.protocol import HEADER, MAGIC, MessageType

pytestmark = pytest.mark.integration

MAX_SIZE = 1 << 20  # rpc_zmq_max_message_size of every process under test: oversized frames stay cheap
ZMQ_GUARD = 4 * MAX_SIZE  # libzmq MAXMSGSIZE that zmqrpc/sockets.py sets: a bigger frame drops the connection
RSS_BOUND_KB = 50 * 1024
TOPIC = "fuzz"
SERVER = "127.0.0.2"  # the direct-mode server; the one behind the proxy is PROXIED
PROXIED = "127.0.0.3"
AGENT_HOST = "127.0.0.7"
DEFAULT_EXAMPLES = 250  # per socket, fixed seed: the whole file stays around a minute on a loaded 2-core box
CALL_TIMEOUT = 10.0
FAST = {
    "zmq_target_update": 1,
    "zmq_target_expire": 5,
    "rpc_zmq_cache_refresh": 1,
    "zmq_connect_timeout": 1.0,
}
NO_REPLY_TYPES = (MessageType.REPLY, MessageType.ACK, MessageType.UNROUTABLE, MessageType.HEARTBEAT)

# --------------------------------------------------------------------------------------------------
# The real client, in its own process: JSON commands on stdin, one JSON answer per line on stdout.
# --------------------------------------------------------------------------------------------------


def caller_main(url: str, overrides: str) -> int:
    from zmqrpc.client import RpcClient
    from zmqrpc.config import load_settings

    client = RpcClient(load_settings(url=url, overrides=json.loads(overrides)))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "call":
                result: Any = client.call(
                    cmd["topic"],
                    cmd["method"],
                    cmd.get("args"),
                    timeout=cmd["timeout"],
                    server=cmd.get("server"),
                )
            elif cmd["op"] == "fanout":
                result = client.fanout(cmd["topic"], cmd["method"], cmd.get("args"))
            elif cmd["op"] == "identity":
                result = client._proxy_identity
            else:  # "drops"
                result = client.drops.counts()
            answer = {"ok": True, "result": result}
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, default=repr), flush=True)
    client.close()
    return 0


class Caller:
    """The client process; ``call()`` returns the result or raises AssertionError naming the failure."""

    def __init__(self, url: str, log: Path, **overrides: object) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_fuzz", "caller", url, json.dumps(overrides)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self._read().get("ready"), f"the caller did not start: {self.log.read_text()[-2000:]}"

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the caller process died: {self.log.read_text()[-2000:]}"
        return json.loads(line)

    def ask(self, op: str, **cmd: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **cmd}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def call(self, topic: str, method: str, args: dict | None = None, server: str | None = None) -> Any:
        answer = self.ask("call", topic=topic, method=method, args=args, server=server, timeout=CALL_TIMEOUT)
        assert answer["ok"], f"valid call {topic}.{method}({args}) failed: {answer['error']}"
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------------------------------
# Process health
# --------------------------------------------------------------------------------------------------


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


@dataclass
class Watched:
    """A process under fuzz: alive throughout, RSS within RSS_BOUND_KB of what it was after warm-up."""

    name: str
    proc: subprocess.Popen
    bound_kb: int = RSS_BOUND_KB
    before: dict[str, int] = field(default_factory=dict)

    def mark(self) -> None:
        self.before = memory_kb(self.proc.pid)

    def check(self) -> str:
        assert self.proc.poll() is None, f"{self.name} died with exit code {self.proc.returncode}"
        after = memory_kb(self.proc.pid)
        grown = after["VmRSS"] - self.before["VmRSS"]
        assert grown < self.bound_kb, f"{self.name}: RSS grew by {grown} kB ({self.before} -> {after})"
        return f"{self.name} RSS {self.before['VmRSS']} -> {after['VmRSS']} kB (peak {after['VmHWM']} kB)"


# --------------------------------------------------------------------------------------------------
# Strategies: the envelope of zmqrpc/protocol.py, then mutated
# --------------------------------------------------------------------------------------------------

JSON = protocol.get_serializer("json")
MSGPACK = protocol.get_serializer("msgpack")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=12),
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=10,
)
giant_ints = st.integers(2**64, 10**400) | st.integers(-(10**400), -(2**63) - 1)


def _mp(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _raw_request(ser: str, method: str, key: str, fragment: bytes) -> bytes:
    """A request body that carries ``fragment`` (already serialized) as ``args[key]``, or as the message's
    ``payload`` (what a notification listener reads) when ``key`` is "payload"."""
    if ser == "json":
        head = b'{"message":{"method":' + json.dumps(method).encode()
        if key == "payload":
            return head + b',"args":{},"payload":' + fragment + b'},"context":{}}'
        return head + b',"args":{' + json.dumps(key).encode() + b":" + fragment + b'}},"context":{}}'
    head = b"\x82" + _mp("message") + b"\x83" + _mp("method") + _mp(method)
    if key == "payload":
        return head + _mp("args") + b"\x80" + _mp("payload") + fragment + _mp("context") + b"\x80"
    return (
        head
        + _mp("args")
        + b"\x81"
        + _mp(key)
        + fragment
        + _mp("priority")
        + _mp("info")
        + _mp("context")
        + b"\x80"
    )


def _deep(ser: str, depth: int) -> bytes:
    return b"[" * depth + b"]" * depth if ser == "json" else b"\x91" * depth + b"\x90"


def _expanding(ser: str, count: int) -> bytes:
    """A list of ``count`` empty maps: 1 to 3 bytes each on the wire, ~64 bytes each once decoded."""
    if ser == "json":
        return b"[" + b"{}," * (count - 1) + b"{}]"
    return b"\xdd" + struct.pack("!I", count) + b"\x80" * count


# msgpack headers that promise more than follows (array32, map32, str32, bin32, ext32 of 2**32 - 1)
LYING_MSGPACK = [
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xffx",
    b"\xc6\xff\xff\xff\xff",
]
LYING_MSGPACK.append(b"\xc9\xff\xff\xff\xff\x05")


@st.composite
def fragments(draw: Any, ser: str) -> bytes:
    """The nasty part of a payload, serialized as ``ser``."""
    kind = draw(st.sampled_from(["deep", "giant int", "expanding", "lying", "ext", "big string"]))
    if kind == "deep":
        # Depths away from the recursion limit (1000), where the stack depth decides what json raises:
        # hypothesis raises the limit while it runs a test, so this process would decode what servers cannot.
        return _deep(ser, draw(st.sampled_from([20, 200, 500, 20_000])))
    if kind == "giant int":
        if ser == "json":
            return b"1" * draw(st.sampled_from([20, 300, 4000, 4400, 100_000]))
        return draw(
            st.sampled_from([b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7])
        )  # uint64 / int64 edges
    if kind == "expanding":
        return _expanding(
            ser, draw(st.sampled_from([1_000, 50_000, (MAX_SIZE - 200) // (3 if ser == "json" else 1)]))
        )
    if kind == "lying" and ser == "msgpack":
        return draw(st.sampled_from(LYING_MSGPACK))
    if kind == "ext" and ser == "msgpack":
        code = draw(st.sampled_from([-1, -128, 0, 5, 127]))  # -1 is the timestamp type: malformed ones raise
        data = draw(st.binary(max_size=20))  # ext8, written by hand: msgpack refuses to pack code < 0
        return b"\xc7" + bytes([len(data)]) + struct.pack("!b", code) + data
    size = draw(st.sampled_from([10, 1000, MAX_SIZE // 4]))
    return json.dumps("s" * size).encode() if ser == "json" else _mp("s" * size)


@st.composite
def bodies(draw: Any, methods: list[str], ser: str) -> bytes:
    """A body frame: a well-formed request, a nasty one, a wrong-typed one, a non-map, or garbage.

    Serialized as ``ser`` when it can be (json cannot carry bytes, msgpack cannot carry a giant int).
    """
    dumps = JSON.dumps if ser == "json" else MSGPACK.dumps
    method: Any = draw(st.sampled_from(methods) | st.text(max_size=8))
    kind = draw(
        st.sampled_from(["request"] * 3 + ["nasty"] * 3 + ["giant", "wrong types", "not a map", "garbage"])
    )
    if kind == "request":
        args = draw(st.dictionaries(st.text(max_size=6), values, max_size=3) | st.none() | values)
        message = {"method": method, "args": args}
        message.update(
            draw(st.dictionaries(st.sampled_from(["priority", "event_type", "payload"]), values, max_size=3))
        )
        try:
            return dumps(
                {
                    "message": message,
                    "context": draw(st.dictionaries(st.text(max_size=6), values, max_size=2)),
                }
            )
        except (TypeError, ValueError, OverflowError):  # e.g. bytes in json: send it as msgpack
            return MSGPACK.dumps({"message": message, "context": {}})
    if kind == "nasty":
        key = draw(st.sampled_from(["x", "tag", "payload"]))
        return _raw_request(ser, method if isinstance(method, str) else "echo", key, draw(fragments(ser)))
    if kind == "giant":  # json carries any int: a msgpack server cannot frame it back
        return JSON.dumps({"message": {"method": method, "args": {"x": draw(giant_ints)}}, "context": {}})
    if kind == "wrong types":
        message = draw(st.one_of(values, st.just({"method": method, "args": draw(values)})))
        context = draw(values | st.just({}))
        body = draw(
            st.sampled_from([{"message": message, "context": context}, {"message": message}, {"context": {}}])
        )
        try:
            return dumps(body)
        except (TypeError, ValueError, OverflowError):
            return MSGPACK.dumps(body)
    if kind == "not a map":
        try:
            return dumps(draw(values))
        except (TypeError, ValueError, OverflowError):
            return MSGPACK.dumps([1, 2])
    good = dumps({"message": {"method": "echo", "args": {}}, "context": {}})
    return draw(st.binary(max_size=64) | st.just(good[: draw(st.integers(0, len(good) - 1))]))


# Which part of an envelope a message breaks: most break one, some none (they must run and be answered).
BREAKS = ["none"] * 6 + ["magic", "version", "type", "serializer", "flags", "header size", "route", "topic"]
BREAKS += ["frame count", "empty frames", "one frame", "oversized", "beyond guard"]
REQUEST_TYPES = [MessageType.CALL] * 3 + [MessageType.CAST, MessageType.FANOUT, MessageType.NOTIFY]


@st.composite
def envelopes(draw: Any, routes: list[bytes], topics: list[bytes], methods: list[str]) -> list[bytes]:
    """Four frames per protocol.py (header, route, topic, body), with one part broken."""
    broken = draw(st.sampled_from(BREAKS))
    ser = draw(st.sampled_from(["json", "msgpack"]))
    fields = [
        MAGIC,
        protocol.VERSION,
        draw(st.sampled_from(REQUEST_TYPES)),
        protocol.SERIALIZERS[ser].code,
        0,
    ]
    fields[4] = draw(st.sampled_from([0, 0, 1]))  # WANTS_ACK now and then
    where = {"magic": 0, "version": 1, "type": 2, "serializer": 3, "flags": 4}.get(broken)
    if where == 0:
        fields[0] = draw(st.sampled_from([b"RZ", b"\x00\x00", b"ZQ"]) | st.binary(min_size=2, max_size=2))
    elif where is not None:  # any byte; for type and flags, valid ones (REPLY, ACK, ...) are also tried
        fields[where] = draw(st.sampled_from([*MessageType]) if where == 2 else st.integers(0, 255))
    header = HEADER.pack(*fields, b"\x00" * 16)  # the message id is made unique when sent
    if broken == "header size":
        header = draw(st.sampled_from([b"", header[: draw(st.integers(1, HEADER.size - 1))]]))
        header = draw(st.just(header) | st.just(header + draw(st.binary(min_size=1, max_size=8))))
    route = draw(st.sampled_from(routes))
    if broken == "route":
        route = draw(
            st.sampled_from([b"", b"\x00", b"\x00" + b"t" * 300, b"\x00fuzz\x00x"]) | st.binary(max_size=12)
        )
    topic = draw(st.sampled_from(topics))
    if broken == "topic":
        topic = draw(
            st.sampled_from([b"", b"other", b"\xff\xfe", b"x" * 300, topics[0] + b"\x00"]) | st.binary()
        )
    frames = [header, route, topic, draw(bodies(methods, ser))]
    if broken == "frame count":
        if draw(st.booleans()):
            del frames[draw(st.integers(0, 3))]
        else:
            frames.insert(draw(st.integers(0, 4)), draw(st.binary(max_size=32)))
    elif broken == "empty frames":
        frames = [b""] * draw(st.integers(1, 6))
    elif broken == "one frame":
        frames = [b"".join(frames)]
    elif broken == "oversized":  # over rpc_zmq_max_message_size, under libzmq's guard: a counted drop
        frames[3] = b"o" * draw(st.integers(MAX_SIZE + 1, 2 * MAX_SIZE))
    elif broken == "beyond guard":  # over libzmq MAXMSGSIZE: the connection is dropped, nothing is counted
        frames[draw(st.integers(0, 3))] = b"g" * (ZMQ_GUARD + 1)
    return frames


def random_messages(rng: random.Random) -> list[list[bytes]]:
    """Plain random bytes: random frame counts and sizes."""
    out = []
    for _ in range(rng.randint(1, 4)):
        sizes = [
            rng.choice([0, rng.randint(1, 40), HEADER.size, rng.randint(1, 4096)])
            for _ in range(rng.randint(1, 7))
        ]
        out.append([rng.randbytes(n) for n in sizes])
    return out


# --- raw TCP: what a non-ZeroMQ peer, or a broken ZeroMQ one, writes to a bound port -----------------

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31


def _zmtp_ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack("!I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def _zmtp_frame(data: bytes, more: bool) -> bytes:
    flags = 1 if more else 0
    if len(data) < 256:
        return bytes([flags]) + bytes([len(data)]) + data
    return bytes([flags | 2]) + struct.pack("!Q", len(data)) + data


@st.composite
def tcp_streams(draw: Any, socket_type: bytes, frames: list[bytes]) -> bytes:
    hello = GREETING + _zmtp_ready(socket_type)
    kind = draw(st.sampled_from(["random", "bad greeting", "huge length", "frames", "bad command"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "bad greeting":
        greeting = bytearray(GREETING)
        for _ in range(draw(st.integers(1, 4))):
            greeting[draw(st.integers(0, len(greeting) - 1))] = draw(st.integers(0, 255))
        return bytes(greeting) + draw(st.binary(max_size=64))
    if kind == "huge length":  # a frame that claims more than libzmq's guard, or all of memory
        size = draw(st.sampled_from([2**63 - 1, 2**40, ZMQ_GUARD + 1, MAX_SIZE * 3]))
        return hello + b"\x02" + struct.pack("!Q", size) + draw(st.binary(max_size=64))
    if kind == "bad command":
        return GREETING + b"\x04" + draw(st.binary(min_size=1, max_size=40))
    wire = b"".join(_zmtp_frame(f, i < len(frames) - 1) for i, f in enumerate(frames))
    return hello + wire[: draw(st.integers(0, len(wire)))]


def send_tcp(port: int, data: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        s.settimeout(0.05)
        with contextlib.suppress(OSError):
            s.recv(4096)


# --------------------------------------------------------------------------------------------------
# The expected outcome of a message, from the documented rules
# --------------------------------------------------------------------------------------------------


def beyond_guard(frames: list[bytes]) -> bool:
    return any(len(f) > ZMQ_GUARD for f in frames)


def server_verdict(payload: list[bytes], serving: set[str], published: bool = False) -> tuple[str, Any]:
    """What an RpcServer must do with ``[header, route, topic, body]``: ("drop", reason) or ("run", env)."""
    try:
        env = protocol.decode(payload, MAX_SIZE)
    except protocol.ProtocolError as exc:
        return "drop", exc.reason
    if env.type in NO_REPLY_TYPES:
        return "drop", "unexpected type"
    if env.topic not in serving:
        return "drop", "wrong topic"
    if published and env.type is not MessageType.FANOUT:
        return "drop", "unexpected type"
    return "run", env


def proxy_verdict(frames: list[bytes], frontend: bool, known: set[bytes]) -> tuple[str, str]:
    """What the central proxy must do with a message from a frontend or backend peer (proxy.py's rules)."""
    if len(frames) != protocol.FRAME_COUNT:
        return "drop", "bad frame count"
    if sum(len(f) for f in frames) > MAX_SIZE:
        return "drop", "oversized"
    header, route = frames[0], frames[1]
    if len(header) != HEADER.size:
        return "drop", "bad header"
    if header[:2] != MAGIC:
        return "drop", "bad magic"
    if not route:
        return "drop", "empty route"
    if frontend and route[:1] == protocol.PUBLISH:
        name = route[1:]
        if not name or len(name) > protocol.MAX_TOPIC_LENGTH or b"\x00" in name:
            return "drop", "bad publish topic"
        return "publish", name.decode(errors="replace")
    return ("forward", "") if route in known else ("unroutable", "")


# --------------------------------------------------------------------------------------------------
# The fuzzing driver
# --------------------------------------------------------------------------------------------------


class Ledger:
    """What the fuzzer sent and what must follow from it."""

    def __init__(self) -> None:
        self.drops: dict[str, Counter[str]] = defaultdict(Counter)  # process -> reason -> count
        self.replies: dict[str, set[bytes]] = defaultdict(set)  # fuzz socket -> ids of calls to answer
        self.acks: dict[str, set[bytes]] = defaultdict(set)  # fuzz socket -> ids of requests to ack
        self.sent = 0
        self.last: list[str] = []  # a short record of the latest messages, for a failure message

    def note(self, frames: list[bytes], outcome: str) -> None:
        self.sent += 1
        shown = [f[:40] + (b"...(%d bytes)" % len(f) if len(f) > 40 else b"") for f in frames]
        self.last = [*self.last[-19:], f"{outcome}: {shown!r}"]

    def recent(self) -> str:
        return "\n".join(self.last)

    def expect_server(
        self,
        who: str,
        payload: list[bytes],
        serving: set[str],
        answer_to: str | None,
        published: bool = False,
    ) -> str:
        """Account for ``payload`` reaching server ``who``; its calls are answered on ``answer_to``."""
        verdict, what = server_verdict(payload, serving, published)
        if verdict == "drop":
            self.drops[who][what] += 1
            return f"{who} drops: {what}"
        if answer_to is not None:  # a request that came on a ROUTER connection (not published)
            if what.type is MessageType.CALL:
                self.replies[answer_to].add(what.msg_id)
            if what.wants_ack:
                self.acks[answer_to].add(what.msg_id)
        return f"{who} runs {what.type.name}"

    def summary(self) -> str:
        drops = {who: dict(c) for who, c in self.drops.items()}
        replies = {k: len(v) for k, v in self.replies.items()}
        return f"{self.sent} messages; expected drops {drops}; calls to answer {replies}"


class FuzzSocket:
    """A socket that sends fuzz messages to one bound endpoint and keeps what comes back."""

    def __init__(
        self, ctx: zmq.Context, kind: int, endpoint: str, name: str, ident: bytes | None = None
    ) -> None:
        self.ctx, self.kind, self.endpoint, self.name, self.ident = ctx, kind, endpoint, name, ident
        self.sock = ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)  # a target that stops reading fails the test, not hangs it
        if ident is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, ident)
        self.sock.connect(endpoint)
        self.answers: dict[bytes, list[MessageType]] = defaultdict(list)
        self.received: list[list[bytes]] = []

    def send(self, frames: list[bytes]) -> None:
        if beyond_guard(frames):
            # libzmq drops the connection: use a connection of its own, so nothing queued behind is lost.
            throwaway = self.ctx.socket(self.kind)
            throwaway.setsockopt(zmq.LINGER, 2000)
            throwaway.connect(self.endpoint)
            throwaway.send_multipart(frames)
            throwaway.close()
            return
        try:
            self.sock.send_multipart(frames)
        except zmq.Again:
            raise AssertionError(f"{self.name} stopped reading (send timed out)") from None

    def drain(self) -> None:
        while self.sock.poll(0, zmq.POLLIN):
            frames = self.sock.recv_multipart()
            self.received.append(frames)
            if self.kind == zmq.DEALER and len(frames) == protocol.FRAME_COUNT:
                with contextlib.suppress(protocol.ProtocolError):
                    env = protocol.decode(frames, 8 * MAX_SIZE)
                    self.answers[env.msg_id].append(env.type)

    def wait_answers(self, ledger: Ledger, timeout: float = CALL_TIMEOUT) -> None:
        """Every well-formed call the fuzzer made got a REPLY, every WANTS_ACK request an ACK."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            missing = [m for m in ledger.replies[self.name] if MessageType.REPLY not in self.answers[m]]
            no_ack = [m for m in ledger.acks[self.name] if MessageType.ACK not in self.answers[m]]
            if not missing and not no_ack:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} well-formed calls got no reply and {len(no_ack)} requests no ack "
                    f"through {self.name}; latest messages:\n{ledger.recent()}"
                )
            self.sock.poll(100, zmq.POLLIN)

    def close(self) -> None:
        self.sock.close(linger=0)


def unique_ids(frames: list[bytes]) -> list[bytes]:
    """Give a full-size header a fresh message id (duplicate suppression is not what is fuzzed here)."""
    if frames and len(frames[0]) == HEADER.size:
        return [frames[0][: protocol.MSG_ID_OFFSET] + protocol.new_msg_id(), *frames[1:]]
    return frames


def with_random(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly structured messages; one in four is plain random bytes (from a seeded Random)."""
    return st.one_of(
        strategy, strategy, strategy, st.randoms(use_true_random=False).map(lambda r: random_messages(r)[0])
    )


def run_fuzz(
    budget: float, example: Callable[[Any], None], label: str, examples: int = DEFAULT_EXAMPLES
) -> str:
    """Run ``example(data)`` under hypothesis: a fixed seed by default, new seeds for ``budget`` seconds.

    No shrinking: the targets are live processes whose state carries from one example to the next, so a
    failure is reported with the latest messages sent (Ledger.recent) instead of a shrunk example.
    """
    base = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    count = 0

    def body(data: Any) -> None:
        nonlocal count
        count += 1
        example(data)

    started = time.monotonic()
    if budget <= 0:
        settings(base, derandomize=True)(given(st.data())(body))()
    else:
        for round_no in itertools.count():
            round_seed = zlib.crc32(label.encode()) + round_no  # printed, so a failing round can be rerun
            print(f"{label}: round {round_no}, hypothesis seed {round_seed}", flush=True)
            seed(round_seed)(settings(base, max_examples=100)(given(st.data())(body)))()
            if time.monotonic() - started > budget:
                break
    return f"{label}: {count} examples in {time.monotonic() - started:.1f}s"


def settle(check: Callable[[], dict[str, int]], expected: dict[str, int], what: str, ledger: Ledger) -> None:
    """Wait until a process's drop counts equal the expected ones (they are counted asynchronously)."""
    expected = {k: v for k, v in expected.items() if v}
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: check() == expected, 10, what)
    got = check()
    assert got == expected, f"{what}: counted {got}, expected {expected}; latest messages:\n{ledger.recent()}"


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    diff = Counter(after)
    diff.subtract(before)
    return {k: v for k, v in diff.items() if v}


@pytest.fixture(scope="module")
def budget(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--fuzz-seconds") or 0)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def proxy_round(
    data: Any, strategy: st.SearchStrategy, account: Callable[[list[bytes]], None], fuzzer: Any, socket: str
) -> None:
    """One example against a proxy socket at ``socket`` (host:port): a few messages from ``strategy`` (each
    accounted for first), and now and then a raw TCP stream to the same port."""
    for frames in data.draw(st.lists(with_random(strategy), min_size=1, max_size=6)):
        frames = unique_ids(frames)
        account(frames)
        fuzzer.send(frames)
    if data.draw(st.integers(0, 3)) == 0:
        port = int(socket.rsplit(":", 1)[1])
        send_tcp(port, data.draw(tcp_streams(b"DEALER", unique_ids(data.draw(strategy)))))


def checked_call(caller: Caller, n: int, server: str = SERVER) -> None:
    result = caller.call(TOPIC, "echo", {"n": n}, server=server)
    assert result["args"] == {"n": n} and result["server"] == server, result


# Methods a fuzzed request names on tests.rpc_node (not ``sleep`` or ``record``/``info``: a test helper
# that sleeps on request, or keeps what it is sent, is not what is under test).
METHODS = ["echo", "whoami", "fail", "big", "deep", "peak", "seen", "no_such_method", "_private"]
SERVING = {TOPIC, f"{TOPIC}.{SERVER}"}
TOPICS = [TOPIC.encode(), f"{TOPIC}.{SERVER}".encode()]
PROXIED_SERVING = {TOPIC, f"{TOPIC}.{PROXIED}"}
PROXIED_TOPICS = [TOPIC.encode(), f"{TOPIC}.{PROXIED}".encode()]


# --------------------------------------------------------------------------------------------------
# 1. The RPC server's ROUTER, static direct mode
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def direct(
    redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Caller]]:
    options = {**FAST, "rpc_zmq_max_message_size": MAX_SIZE, "rpc_zmq_serialization": "msgpack"}
    server = ServerProcess(
        redis.url, [TOPIC], SERVER, rpc_zmq_host=SERVER, rpc_zmq_bind_address=SERVER, **options
    )
    server.start()
    caller = None
    try:
        caller = Caller(redis.url, tmp_path_factory.mktemp("direct") / "caller.log", **options)
        yield server, caller
    finally:
        if caller is not None:
            caller.close()
        server.stop()


def test_fuzz_direct_server_router(
    direct: tuple[ServerProcess, Caller], ctx: zmq.Context, budget: float
) -> None:
    server, caller = direct
    assert server.proc is not None
    watched = Watched("rpc server", server.proc)
    fuzzer = FuzzSocket(ctx, zmq.DEALER, f"tcp://{server.address}", "server")
    ledger = Ledger()
    strategy = envelopes([b"", b"r"], TOPICS, METHODS)
    checked_call(caller, -1)
    drops_before = caller.call(TOPIC, "drops", server=SERVER)
    calls = itertools.count()

    def example(data: Any) -> None:
        for frames in data.draw(st.lists(with_random(strategy), min_size=1, max_size=6)):
            frames = unique_ids(frames)
            if beyond_guard(frames):
                ledger.note(frames, "connection dropped by libzmq")
            else:
                ledger.note(frames, ledger.expect_server("server", frames, SERVING, "server"))
            fuzzer.send(frames)
        if data.draw(st.integers(0, 3)) == 0:
            send_tcp(server.port, data.draw(tcp_streams(b"DEALER", unique_ids(data.draw(strategy)))))
        checked_call(caller, next(calls))

    # Warm-up (thread stacks, first allocations), then the RSS baseline.
    run_fuzz(0, example, "direct-warmup", examples=3)
    fuzzer.wait_answers(ledger)
    watched.mark()
    done = run_fuzz(budget, example, "direct server")
    fuzzer.wait_answers(ledger)
    settle(
        lambda: delta(caller.call(TOPIC, "drops", server=SERVER), drops_before),
        ledger.drops["server"],
        "the server's drop counts",
        ledger,
    )
    print(f"\n{done}; {ledger.summary()}; {watched.check()}")
    fuzzer.close()


# --------------------------------------------------------------------------------------------------
# 2-5. The central proxy (frontend, backend, publisher) and a local publisher, with a server behind
# --------------------------------------------------------------------------------------------------

STATS_RE = re.compile(r"zmqrpc (?:proxy|local publisher) stats: (\{.*\})$", re.MULTILINE)


def proxy_stats(proxy: ProxyProcess) -> dict[str, Any]:
    """Ask a proxy for its counters (SIGUSR1) and return the line it logs."""
    assert proxy.proc is not None

    def lines() -> list[str]:
        return STATS_RE.findall(proxy.log.read_text(errors="replace")) if proxy.log.exists() else []

    before = len(lines())
    proxy.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: len(lines()) > before, 10, "a stats line after SIGUSR1")
    return json.loads(lines()[-1])


@dataclass
class Topology:
    central: ProxyProcess
    local: ProxyProcess
    server: ServerProcess
    caller: Caller
    frontend: str
    backend: str
    publisher: str
    local_port: int
    caller_id: bytes

    def watched(self) -> list[Watched]:
        assert self.central.proc and self.local.proc and self.server.proc
        return [
            Watched("central proxy", self.central.proc),
            Watched("local publisher", self.local.proc),
            Watched("server behind the proxy", self.server.proc),
        ]

    def server_drops(self) -> dict[str, int]:
        return self.caller.call(TOPIC, "drops", server=PROXIED)

    def fanout_arrives(self, tag: str) -> None:
        """A fanout through the central publisher and the local publisher reaches the server."""
        answer = self.caller.ask("fanout", topic=TOPIC, method="record", args={"tag": tag})
        assert answer["ok"] and answer["result"] == 1, answer
        seen = wait_until(lambda: tag in self.caller.call(TOPIC, "seen", server=PROXIED), 10, f"fanout {tag}")
        assert seen


@pytest.fixture(scope="module")
def topology(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("proxy")
    extra = f"rpc_zmq_max_message_size = {MAX_SIZE}\n"
    central = ProxyProcess(tmp, redis.url, use_pub_sub=True, extra=extra).start()
    started: list[Any] = [central]
    try:
        mm = RedisMatchMaker([redis.address])
        try:
            names = (protocol.PROXY_FRONTENDS, protocol.PROXY_BACKENDS, protocol.PROXY_PUBLISHERS)
            found = wait_until(
                lambda: all(mm.get_hosts(n) for n in names) and names, 20, "the proxy in Redis"
            )
            frontend, backend, publisher = (mm.get_hosts(n)[0] for n in found)
        finally:
            mm.close()
        local_port = free_port()
        local = ProxyProcess(
            tmp, redis.url, use_pub_sub=True, local_publisher=True, publisher_port=local_port,
            subscribe_on=publisher, extra=extra,
        ).start()  # fmt: skip
        started.append(local)
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", local_port), 1).close() or True, 20, "local pub"
        )
        options = {
            **FAST,
            "rpc_zmq_max_message_size": MAX_SIZE,
            "use_router_proxy": True,
            "use_pub_sub": True,
            "subscribe_on": [f"127.0.0.1:{local_port}"],
        }
        server = ServerProcess(redis.url, [TOPIC], PROXIED, rpc_zmq_host=PROXIED, **options).start()
        started.append(server)
        caller = Caller(redis.url, tmp / "caller.log", **options)
        started.append(caller)
        topo = Topology(central, local, server, caller, frontend, backend, publisher, local_port, b"")
        checked_call(caller, -1, PROXIED)
        topo.caller_id = caller.ask("identity")["result"].encode()
        yield topo
    finally:
        for proc in reversed(started):
            proc.close() if isinstance(proc, Caller) else proc.stop()


def test_fuzz_proxy_frontend(topology: Topology, ctx: zmq.Context, budget: float) -> None:
    topo = topology
    watched = topo.watched()
    server_id = topo.server.address.encode()
    fuzzer = FuzzSocket(ctx, zmq.DEALER, f"tcp://{topo.frontend}", "frontend", ident=b"fuzz-front")
    ledger = Ledger()
    routes = [server_id, server_id, protocol.publish_route(TOPIC), protocol.publish_route("other"), b"nobody"]
    strategy = envelopes(routes, PROXIED_TOPICS, METHODS)
    expected: Counter[str] = Counter()  # proxy counters the fuzz must move
    calls = itertools.count()

    def account(frames: list[bytes]) -> None:
        if beyond_guard(frames):
            ledger.note(frames, "connection dropped by libzmq")
            return
        verdict, what = proxy_verdict(frames, True, {server_id})
        if verdict == "drop":
            ledger.drops["proxy"][what] += 1
            ledger.note(frames, f"proxy drops: {what}")
            return
        header, _, topic, body = frames
        payload = [header, b"fuzz-front", topic, body]  # the route frame becomes the sender's id
        if verdict == "forward":
            expected["forwarded_frontend_to_backend"] += 1
            outcome = ledger.expect_server("server", payload, PROXIED_SERVING, "frontend")
        elif verdict == "publish":
            expected["published"] += 1
            # Only the server subscribes (to exactly "fuzz", through the local publisher).
            published = what == TOPIC
            outcome = (
                ledger.expect_server("server", payload, PROXIED_SERVING, None, True) if published else "-"
            )
        else:
            expected["unroutable_frontend"] += 1
            outcome = "UNROUTABLE notice"
        ledger.note(frames, f"proxy {verdict}; {outcome}")

    def example(data: Any) -> None:
        proxy_round(data, strategy, account, fuzzer, topo.frontend)
        checked_call(topo.caller, next(calls), PROXIED)

    run_fuzz(0, example, "frontend-warmup", examples=3)
    fuzzer.wait_answers(ledger)
    for w in watched:
        w.mark()
    stats_before, server_before = proxy_stats(topo.central), topo.server_drops()
    expected.clear()
    ledger.drops.clear()
    done = run_fuzz(budget, example, "proxy frontend")
    fuzzer.wait_answers(ledger)
    topo.fanout_arrives("after-frontend-fuzz")
    settle(lambda: delta(topo.server_drops(), server_before), ledger.drops["server"], "server drops", ledger)
    stats = proxy_stats(topo.central)
    assert delta(stats["dropped"], stats_before["dropped"]) == dict(ledger.drops["proxy"]), ledger.recent()
    moved = {k: stats[k] - stats_before[k] for k in expected}
    assert moved["unroutable_frontend"] == expected["unroutable_frontend"], (moved, expected)
    # The caller's calls and fanouts go through too: at least what the fuzzer sent.
    assert all(moved[k] >= expected[k] for k in expected), (moved, expected)
    # The notice keeps the header (bad version or type and all), so count the frames, not decoded messages.
    notices = sum(len(f) == 4 and f[0][3:4] == bytes([MessageType.UNROUTABLE]) for f in fuzzer.received)
    assert notices >= expected["unroutable_frontend"] - 1  # the warm-up's last one may still be in flight
    print(f"\n{done}; {ledger.summary()}; " + "; ".join(w.check() for w in watched))
    fuzzer.close()


def test_fuzz_proxy_backend(topology: Topology, ctx: zmq.Context, budget: float) -> None:
    topo = topology
    watched = topo.watched()
    # What the backend forwards to a client: to "fuzz-sink" (a DEALER on the frontend) or to the real caller.
    sink = FuzzSocket(ctx, zmq.DEALER, f"tcp://{topo.frontend}", "sink", ident=b"fuzz-sink")
    probe = protocol.encode(MessageType.CALL, TOPIC, {"message": {}, "context": {}}, JSON, route=b"nobody")
    sink.send(probe)  # answered UNROUTABLE once the proxy knows the sink's id
    wait_until(lambda: sink.drain() or sink.received, 10, "the sink's connection to the frontend")
    sink.received.clear()
    fuzzer = FuzzSocket(ctx, zmq.DEALER, f"tcp://{topo.backend}", "backend", ident=b"fuzz-back")
    ledger = Ledger()
    known = {b"fuzz-sink", topo.caller_id}
    strategy = envelopes([b"fuzz-sink", b"fuzz-sink", topo.caller_id, b"nobody"], PROXIED_TOPICS, METHODS)
    expected: Counter[str] = Counter()
    calls = itertools.count()

    def account(frames: list[bytes]) -> None:
        if beyond_guard(frames):
            ledger.note(frames, "connection dropped by libzmq")
            return
        verdict, what = proxy_verdict(frames, False, known)
        if verdict == "drop":
            ledger.drops["proxy"][what] += 1
        elif verdict == "forward":
            expected["forwarded_backend_to_frontend"] += 1
            expected["to sink" if frames[1] == b"fuzz-sink" else "to caller"] += 1
        else:
            expected["unroutable_backend"] += 1
        ledger.note(frames, f"proxy {verdict} {what}")

    def example(data: Any) -> None:
        proxy_round(data, strategy, account, fuzzer, topo.backend)
        checked_call(topo.caller, next(calls), PROXIED)

    run_fuzz(0, example, "backend-warmup", examples=3)
    for w in watched:
        w.mark()
    stats_before = proxy_stats(topo.central)
    expected.clear()
    ledger.drops.clear()
    sink.drain()
    sink.received.clear()
    done = run_fuzz(budget, example, "proxy backend")
    topo.fanout_arrives("after-backend-fuzz")
    wait_until(lambda: sink.drain() or len(sink.received) >= expected["to sink"], 10, "forwarded messages")
    assert len(sink.received) == expected["to sink"], ledger.recent()
    # Forwarded as [header, sender, topic, body]: the route frame became the backend peer's id.
    assert all(len(f) == protocol.FRAME_COUNT and f[1] == b"fuzz-back" for f in sink.received)
    stats = proxy_stats(topo.central)
    assert delta(stats["dropped"], stats_before["dropped"]) == dict(ledger.drops["proxy"]), ledger.recent()
    assert stats["unroutable_backend"] - stats_before["unroutable_backend"] == expected["unroutable_backend"]
    moved = stats["forwarded_backend_to_frontend"] - stats_before["forwarded_backend_to_frontend"]
    assert moved >= expected["forwarded_backend_to_frontend"]
    client_drops = topo.caller.ask("drops")["result"]
    print(
        f"\n{done}; {ledger.summary()}; client drops {client_drops}; " + "; ".join(w.check() for w in watched)
    )
    fuzzer.close()
    sink.close()


# Subscription traffic: what a SUB/XSUB peer sends to a PUB or XPUB. Subscriptions of 10 kB and more go
# over raw TCP (big_subscription): an XSUB in this process that holds one would crash it when it closes.
BIG_SUBSCRIPTIONS = [10_000, 100_000, MAX_SIZE]


def big_subscription(size: int, socket_type: bytes) -> bytes:
    return GREETING + _zmtp_ready(socket_type) + _zmtp_frame(b"\x01" + b"s" * size, False)


@st.composite
def subscription_messages(draw: Any) -> list[bytes]:
    kind = draw(st.sampled_from(["sub", "sub", "unsub", "other", "empty", "multipart", "long", "server's"]))
    if kind in ("sub", "unsub", "other"):
        first = {"sub": b"\x01", "unsub": b"\x00"}.get(kind) or bytes([draw(st.integers(2, 255))])
        return [first + draw(st.binary(max_size=40))]
    if kind == "empty":
        return [b""]
    if kind == "multipart":
        return draw(st.lists(st.binary(max_size=20), min_size=2, max_size=4))
    if kind == "long":  # the longest a topic may be, and longer
        return [b"\x01" + b"s" * draw(st.sampled_from([256, 257, 300]))]
    # the server's own subscription, subscribed and unsubscribed by someone else: it must keep its copy
    return [draw(st.sampled_from([b"\x01", b"\x00"])) + protocol.subscription(TOPIC)]


def fuzz_publisher(
    topo: Topology, ctx: zmq.Context, budget: float, port: int, label: str, proxy: ProxyProcess
) -> None:
    watched = topo.watched()
    endpoint = f"tcp://127.0.0.1:{port}"
    peers = [FuzzSocket(ctx, zmq.XSUB, endpoint, f"{label} peer {i}") for i in range(3)]
    sent: Counter[str] = Counter()
    tags = itertools.count()

    def example(data: Any) -> None:
        for frames in data.draw(st.lists(subscription_messages(), min_size=1, max_size=8)):
            i = data.draw(st.integers(0, len(peers) - 1))
            peers[i].send(frames)
            sent["frames"] += len(frames)
            sent["not (un)subscribe"] += sum(f[:1] not in (b"\x00", b"\x01") for f in frames)
        if data.draw(st.integers(0, 4)) == 0:  # a peer leaves: libzmq drops its subscriptions
            i = data.draw(st.integers(0, len(peers) - 1))
            peers[i].close()
            peers[i] = FuzzSocket(ctx, zmq.XSUB, endpoint, f"{label} peer {i}")
        if data.draw(st.integers(0, 3)) == 0:
            ztype = data.draw(st.sampled_from([b"SUB", b"XSUB"]))
            send_tcp(port, data.draw(tcp_streams(ztype, data.draw(subscription_messages()))))
        if data.draw(st.integers(0, 3)) == 0:
            ztype = data.draw(st.sampled_from([b"SUB", b"XSUB"]))
            send_tcp(port, big_subscription(data.draw(st.sampled_from(BIG_SUBSCRIPTIONS)), ztype))
            sent["big subscriptions"] += 1
        for peer in peers:
            peer.drain()  # whatever they subscribed to (the server's fanout, say): read and forget
        n = next(tags)
        checked_call(topo.caller, n, PROXIED)
        if n % 5 == 0:
            topo.fanout_arrives(f"{label}-{n}")

    run_fuzz(0, example, f"{label}-warmup", examples=3)
    for w in watched:
        w.mark()
    stats_before = proxy_stats(proxy)
    done = run_fuzz(budget, example, label)
    for peer in peers:
        peer.close()
    topo.fanout_arrives(f"after-{label}-fuzz")
    time.sleep(0.5)  # the peers' disconnects reach the publisher
    stats = proxy_stats(proxy)
    dropped = delta(stats["dropped"], stats_before["dropped"])
    if proxy is topo.local:  # the local publisher reads what its XPUB passes on, and counts what is no
        # subscription; XPUB passes each frame of a multipart message as a message of its own.
        assert set(dropped) <= {"bad subscription"}, dropped
        assert (
            0 < dropped.get("bad subscription", 0) <= sent["not (un)subscribe"]
            or not sent["not (un)subscribe"]
        )
    else:  # a PUB handles subscriptions in libzmq: the proxy sees nothing to count
        assert dropped == {}, dropped
    print(f"\n{done}; sent {dict(sent)}; " + "; ".join(w.check() for w in watched))


def test_fuzz_proxy_publisher(topology: Topology, ctx: zmq.Context, budget: float) -> None:
    port = int(topology.publisher.rsplit(":", 1)[1])
    fuzz_publisher(topology, ctx, budget, port, "proxy publisher", topology.central)


def test_fuzz_local_publisher(topology: Topology, ctx: zmq.Context, budget: float) -> None:
    fuzz_publisher(topology, ctx, budget, topology.local_port, "local publisher", topology.local)


# --------------------------------------------------------------------------------------------------
# 6. zmqrpc agent: its RPC server and its notification listener, each a ROUTER
# --------------------------------------------------------------------------------------------------

AGENT_TOPICS = {"rpc": "zmqrpc-agent", "notifications": "zmqrpc-agent.info"}
RETENTION_PROBES = 300  # records and notifications of half a megabyte each: 150 MB if the agent kept them
# record keeps what it is sent (bounded by the agent): named most often, so a retention shows in RSS.
AGENT_METHODS = ["ping", "info", "record", "record", "record", "record", "seen", "stats", "no_such_method"]


@dataclass
class AgentProc:
    proc: subprocess.Popen
    log: Path
    addresses: dict[str, str]
    caller: Caller


@pytest.fixture
def agent(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    tmp = tmp_path_factory.mktemp("agent")
    conf = tmp / "agent.conf"
    conf.write_text(
        f"[DEFAULT]\ntransport_url = {redis.url}\n[oslo_messaging_zmq]\nrpc_zmq_host = {AGENT_HOST}\n"
        f"rpc_zmq_bind_address = {AGENT_HOST}\nzmq_target_update = 1\nzmq_target_expire = 5\n"
        f"rpc_zmq_max_message_size = {MAX_SIZE}\n"
    )
    log = tmp / "agent.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zmqrpc.cli", "agent", "--config-file", str(conf)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    caller = None
    mm = RedisMatchMaker([redis.address])
    try:
        addresses = {
            name: wait_until(lambda t=topic: mm.get_hosts(f"{t}.{AGENT_HOST}"), 20, f"the agent's {name}")[0]
            for name, topic in AGENT_TOPICS.items()
        }
        options = {**FAST, "rpc_zmq_max_message_size": MAX_SIZE}
        caller = Caller(redis.url, tmp / "caller.log", **options)
        yield AgentProc(proc, log, addresses, caller)
    finally:
        mm.close()
        if caller is not None:
            caller.close()
        stop_process(proc)


def test_fuzz_agent(agent: AgentProc, ctx: zmq.Context, budget: float) -> None:
    # Two servers in one process, each with its own workers: each may keep ~20-30 MB of allocator high-water
    # after decoding large payloads (a plateau: +64 MB after 40 s of fuzz, +55 MB after 90 s).
    watched = Watched("agent", agent.proc, 2 * RSS_BOUND_KB)
    fuzzers = {
        name: FuzzSocket(ctx, zmq.DEALER, f"tcp://{address}", name)
        for name, address in agent.addresses.items()
    }
    serving = {name: {topic, f"{topic}.{AGENT_HOST}"} for name, topic in AGENT_TOPICS.items()}
    strategies = {
        name: envelopes([b"", b"r"], [t.encode() for t in sorted(serving[name])], AGENT_METHODS)
        for name in AGENT_TOPICS
    }
    ledger = Ledger()
    calls = itertools.count()

    def ping(n: int) -> None:
        result = agent.caller.call("zmqrpc-agent", "ping", {"n": n}, server=AGENT_HOST)
        assert result == {"host": AGENT_HOST, "pong": True, "n": n}, result

    def example(data: Any) -> None:
        for _ in range(data.draw(st.integers(1, 6))):
            name = data.draw(st.sampled_from(sorted(fuzzers)))
            frames = unique_ids(data.draw(with_random(strategies[name])))
            if beyond_guard(frames):
                ledger.note(frames, "connection dropped by libzmq")
            else:
                ledger.note(frames, ledger.expect_server(name, frames, serving[name], name))
            fuzzers[name].send(frames)
        if data.draw(st.integers(0, 3)) == 0:
            name = data.draw(st.sampled_from(sorted(fuzzers)))
            port = int(agent.addresses[name].rsplit(":", 1)[1])
            send_tcp(port, data.draw(tcp_streams(b"DEALER", unique_ids(data.draw(strategies[name])))))
        ping(next(calls))

    run_fuzz(0, example, "agent-warmup", examples=3)
    for fuzzer in fuzzers.values():
        fuzzer.wait_answers(ledger)
    watched.mark()
    done = run_fuzz(budget, example, "agent")
    # Structured rather than random: a peer sending many big, well-formed records and notifications. (Random
    # fuzz sends small ones too, which push big ones out of the agent's list of its last 1000 records.)
    big = "b" * (MAX_SIZE // 2)
    for i in range(RETENTION_PROBES):
        name = ("rpc", "notifications")[i % 2]
        if name == "rpc":
            kind, message = MessageType.CAST, {"method": "record", "args": {"tag": f"{big}{i}"}}
        else:
            kind, message = (
                MessageType.NOTIFY,
                {"priority": "info", "event_type": "x", "payload": f"{big}{i}"},
            )
        fuzzers[name].send(
            protocol.encode(kind, AGENT_TOPICS[name], {"message": message, "context": {}}, JSON)
        )
        if i % 20 == 19:
            # Paced: a call behind every 10 on each connection, answered once they ran. A burst would be
            # queued whole (rpc_zmq_hwm counts messages, not bytes) and glibc keeps such a peak after it
            # is freed: that is not what this probe is after.
            for peer, fuzzer in fuzzers.items():
                last = protocol.encode(
                    MessageType.CALL, AGENT_TOPICS[peer], {"message": {}, "context": {}}, JSON
                )
                ledger.replies[peer].add(last[0][protocol.MSG_ID_OFFSET :])
                fuzzer.send(last)
                fuzzer.wait_answers(ledger, timeout=60)
    for fuzzer in fuzzers.values():
        fuzzer.wait_answers(ledger, timeout=60)
    # The agent exposes no drop counters over the bus: each reason's first drop is logged (then every
    # 1000th), so every reason the fuzz must have caused is in its log, for the right server.
    text = agent.log.read_text(errors="replace")
    for name, reasons in ledger.drops.items():
        for reason in reasons:
            owner = f"server {AGENT_HOST} ({AGENT_TOPICS[name]}) dropped a message"
            assert re.search(re.escape(owner) + r".*\(" + re.escape(reason) + ", ", text), (name, reason)
    print(f"\n{done}; {ledger.summary()}; {watched.check()}")
    for fuzzer in fuzzers.values():
        fuzzer.close()


if __name__ == "__main__" and sys.argv[1:2] == ["caller"]:
    sys.exit(caller_main(sys.argv[2], sys.argv[3]))
