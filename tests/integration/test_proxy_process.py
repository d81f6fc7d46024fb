"""The proxy as a real process on a real Redis, spoken to with raw pyzmq sockets.

A fake "server" is a DEALER with routing id ``srv-1`` on the proxy backend, a fake "client" a DEALER with
routing id ``cli-1`` on the frontend. Every frame they send and check follows the routing rules of
zmqrpc/protocol.py, so these tests pin the proxy's wire behaviour independently of client.py/server.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from tests.servers import RedisServer, free_port, wait_until
from zmqrpc import protocol
from zmqrpc.matchmaker import RedisMatchMaker

pytestmark = pytest.mark.integration

MAX_SIZE = 4096  # rpc_zmq_max_message_size in the test config: small, so "oversized" is cheap to send
JSON = protocol.get_serializer("json")
BIN = Path(sys.executable).parent
STATS_RE = re.compile(r"zmqrpc (?:proxy|local publisher) stats: (\{.*\})$", re.MULTILINE)


def write_conf(path: Path, url: str, **zmq_opts: object) -> Path:
    opts = {
        "use_pub_sub": "true",
        "rpc_zmq_max_message_size": MAX_SIZE,
        "zmq_target_expire": 30,
        "zmq_target_update": 10,
        **zmq_opts,
    }
    lines = ["[DEFAULT]", f"transport_url = {url}", "[oslo_messaging_zmq]"]
    lines += [f"{k} = {v}" for k, v in opts.items()]
    lines += ["[zmq_proxy_opts]", "host = 127.0.0.1"]
    path.write_text("\n".join(lines) + "\n")
    return path


class ProxyProc:
    """A ``zmqrpc-proxy`` process; its log (stderr, or --log-file) is read for stats and addresses."""

    def __init__(self, workdir: Path, conf: Path, *args: str, log_file: bool = False) -> None:
        self.log = workdir / f"proxy-{os.getpid()}-{time.monotonic_ns()}.log"
        self.stderr_path = self.log.with_suffix(".stderr")
        argv = [str(BIN / "zmqrpc-proxy"), "--config-file", str(conf), *args]
        if log_file:
            argv += ["--log-file", str(self.log)]
        out = self.stderr_path if log_file else self.log
        with open(out, "wb") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{self.text()}")
            return re.search(pattern, self.text(), re.MULTILINE)

        return wait_until(found, timeout, f"{pattern!r} in the proxy log")

    def stats_lines(self) -> list[dict]:
        return [json.loads(m.group(1)) for m in STATS_RE.finditer(self.text())]

    def stats(self) -> dict:
        """Ask for a stats dump (SIGUSR1) and return it."""
        before = len(self.stats_lines())
        self.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: len(self.stats_lines()) > before, 5.0, "a stats line after SIGUSR1")
        return self.stats_lines()[-1]

    def terminate(self, timeout: float = 5.0) -> int:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        assert time.monotonic() - started < timeout
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def procs() -> Iterator[list[ProxyProc]]:
    started: list[ProxyProc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Central:
    """A running central proxy and its addresses, as read back from Redis."""

    def __init__(self, proc: ProxyProc, redis: RedisServer) -> None:
        self.proc = proc
        self.mm = RedisMatchMaker([redis.address])

        def registered() -> dict[str, str] | None:
            hosts = {t: self.mm.get_hosts(t) for t in TOPICS}
            return {t: h[0] for t, h in hosts.items()} if all(hosts.values()) else None

        self.addresses = wait_until(registered, 10.0, "the proxy's registrations in Redis")
        self.frontend = self.addresses[protocol.PROXY_FRONTENDS]
        self.backend = self.addresses[protocol.PROXY_BACKENDS]
        self.publisher = self.addresses[protocol.PROXY_PUBLISHERS]


TOPICS = (protocol.PROXY_FRONTENDS, protocol.PROXY_BACKENDS, protocol.PROXY_PUBLISHERS)


@pytest.fixture
def start_central(
    redis_server: RedisServer, tmp_path: Path, procs: list[ProxyProc]
) -> Callable[..., Central]:
    def start(*args: str, log_file: bool = False) -> Central:
        conf = write_conf(tmp_path / "proxy.conf", redis_server.url)
        proc = ProxyProc(
            tmp_path, conf, "--frontend-port", "0", "--backend-port", "0", *args, log_file=log_file
        )
        procs.append(proc)
        return Central(proc, redis_server)

    return start


def dealer(ctx: zmq.Context, ident: bytes, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{address}")
    return sock


def subscriber(ctx: zmq.Context, address: str, *topics: str) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, protocol.subscription(topic))
    sock.connect(f"tcp://{address}")
    return sock


def recv(sock: zmq.Socket, timeout: float = 3.0) -> list[bytes] | None:
    if sock.poll(int(timeout * 1000)):
        return sock.recv_multipart()
    return None


def drain(sock: zmq.Socket, quiet: float = 0.3) -> list[list[bytes]]:
    got = []
    while (frames := recv(sock, quiet)) is not None:
        got.append(frames)
    return got


def call_frames(
    route: bytes, topic: str = "echo", msg_id: bytes | None = None, **body: object
) -> list[bytes]:
    message = {"message": {"method": "echo", "args": body}, "context": {}}
    return protocol.encode(protocol.MessageType.CALL, topic, message, JSON, msg_id=msg_id, route=route)


def msg_id(frames: list[bytes]) -> bytes:
    return protocol.HEADER.unpack(frames[0])[5]


def route_to_server(cli: zmq.Socket, srv: zmq.Socket, timeout: float = 10.0) -> list[bytes]:
    """Send CALLs to srv-1 until one arrives (the backend learns srv-1's id when its connection is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = call_frames(b"srv-1", n=1)
        cli.send_multipart(sent)
        got = recv(srv, 0.3)
        if got is not None:
            assert msg_id(got) == msg_id(sent)
            return got
        answer = recv(cli, 0.1)
        assert answer is None or protocol.decode(answer, MAX_SIZE).type is protocol.MessageType.UNROUTABLE
    raise AssertionError("srv-1 never became routable through the proxy")


def round_trip(cli: zmq.Socket, srv: zmq.Socket, **body: object) -> None:
    """cli-1 -> proxy -> srv-1 -> proxy -> cli-1, checking the route swaps on the way."""
    sent = call_frames(b"srv-1", **body)
    cli.send_multipart(sent)
    got = recv(srv)
    assert got is not None, "the call did not reach srv-1"
    request = protocol.decode(got, MAX_SIZE)
    assert request.route == b"cli-1"  # the proxy replaced the destination with the sender's id
    assert request.msg_id == msg_id(sent)
    assert request.topic == "echo"
    assert request.body["message"]["args"] == body
    reply = protocol.encode(
        protocol.MessageType.REPLY, "", {"result": body}, JSON, msg_id=request.msg_id, route=b"cli-1"
    )
    srv.send_multipart(reply)
    back = recv(cli)
    assert back is not None, "the reply did not come back to cli-1"
    decoded = protocol.decode(back, MAX_SIZE)
    assert decoded.type is protocol.MessageType.REPLY
    assert decoded.route == b"srv-1"
    assert decoded.msg_id == request.msg_id
    assert decoded.body == {"result": body}


def test_routes_calls_replies_and_reports_unknown_ids(start_central, ctx) -> None:
    central = start_central(log_file=True)
    assert central.frontend.startswith("127.0.0.1:") and central.backend.startswith("127.0.0.1:")
    startup = central.proc.wait_for(
        r"zmqrpc proxy on 127\.0\.0\.1: frontend tcp://\*:(\d+), backend "
        r"tcp://\*:(\d+), publisher tcp://\*:(\d+) \(use_pub_sub = true\)"
    )
    # The startup line and the matchmaker agree on the real (random) ports.
    assert [f"127.0.0.1:{p}" for p in startup.groups()] == [central.addresses[t] for t in TOPICS]
    assert central.proc.stderr_path.read_text() == ""  # --log-file: nothing on stderr

    srv = dealer(ctx, b"srv-1", central.backend)
    cli = dealer(ctx, b"cli-1", central.frontend)
    route_to_server(cli, srv)
    for i in range(3):
        round_trip(cli, srv, i=i)

    # An unknown destination comes back as UNROUTABLE, with the same message id and the unknown route.
    sent = call_frames(b"ghost", n=9)
    cli.send_multipart(sent)
    notice = recv(cli)
    assert notice is not None, "no UNROUTABLE notice for an unknown id"
    decoded = protocol.decode(notice, MAX_SIZE)
    assert decoded.type is protocol.MessageType.UNROUTABLE
    assert decoded.msg_id == msg_id(sent)
    assert decoded.route == b"ghost"
    assert recv(srv, 0.3) is None

    # A reply to a client that is gone is counted, not delivered anywhere.
    srv.send_multipart(protocol.encode(protocol.MessageType.REPLY, "", {}, JSON, route=b"gone-client"))
    stats = wait_until(
        lambda: (s := central.proc.stats())["unroutable_backend"] == 1 and s, 5.0, "unroutable_backend == 1"
    )
    assert stats["forwarded_frontend_to_backend"] >= 4
    assert stats["forwarded_backend_to_frontend"] == 3
    assert stats["unroutable_frontend"] >= 1
    assert stats["dropped_total"] == 0


def test_publish_matches_topics_exactly(start_central, ctx) -> None:
    central = start_central()
    sub_foo = subscriber(ctx, central.publisher, "foo")
    sub_foobar = subscriber(ctx, central.publisher, "foobar")
    cli = dealer(ctx, b"cli-1", central.frontend)

    def publish(topic: str) -> bytes:
        frames = protocol.encode(
            protocol.MessageType.FANOUT,
            topic,
            {"message": {"method": "m"}, "context": {}},
            JSON,
            route=protocol.publish_route(topic),
        )
        cli.send_multipart(frames)
        return msg_id(frames)

    # Subscriptions travel to the PUB asynchronously: publish until each subscriber has one.
    for sub, topic in ((sub_foo, "foo"), (sub_foobar, "foobar")):
        wait_until(lambda s=sub, t=topic: publish(t) and recv(s, 0.2), 10.0, f"subscription to {topic}")
    drain(sub_foo)
    drain(sub_foobar)

    id_foo, id_foobar, id_foo_host = publish("foo"), publish("foobar"), publish("foo.host1")
    got_foo, got_foobar = drain(sub_foo), drain(sub_foobar)
    assert [msg_id(f[1:]) for f in got_foo] == [id_foo]  # not foobar, not foo.host1
    assert [msg_id(f[1:]) for f in got_foobar] == [id_foobar]
    first, header, sender, topic, body = got_foo[0]
    assert first == protocol.subscription("foo")
    assert sender == b"cli-1"
    assert topic == b"foo"
    assert protocol.decode([header, b"", topic, body], MAX_SIZE).type is protocol.MessageType.FANOUT
    assert id_foo_host  # published, but nobody subscribed to foo.host1
    stats = central.proc.stats()
    assert stats["published"] >= 5
    assert stats["dropped_total"] == 0


def test_garbage_is_dropped_and_counted_and_forwarding_continues(start_central, ctx) -> None:
    central = start_central()
    srv = dealer(ctx, b"srv-1", central.backend)
    cli = dealer(ctx, b"cli-1", central.frontend)
    route_to_server(cli, srv)
    round_trip(cli, srv, before=True)
    base = central.proc.stats()

    # 1. Random frames on both sides (seeded, so a failure reproduces).
    rng = random.Random(1234)
    random_msgs = [
        [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.choice([1, 2, 3, 4, 5, 6, 9]))]
        for _ in range(40)
    ]
    for i, frames in enumerate(random_msgs):
        (cli if i % 2 else srv).send_multipart(frames)
    wait_until(
        lambda: central.proc.stats()["dropped_total"] == base["dropped_total"] + len(random_msgs),
        10.0,
        "all random messages counted as dropped",
    )

    # 2. Well-chosen bad envelopes, each with a known reason.
    good = call_frames(b"srv-1", x=1)
    header = good[0]
    bad = {
        "bad frame count": [
            (cli, [b"only-one-frame"]),
            (cli, [*good, b"extra"]),
            (srv, good[:3]),
        ],
        "bad header": [
            (cli, [header[:10], b"srv-1", b"echo", good[3]]),  # truncated header
            (srv, [header[:21], b"cli-1", b"", b""]),
        ],
        "bad magic": [(cli, [b"XX" + header[2:], b"srv-1", b"echo", good[3]])],
        "empty route": [(cli, [header, b"", b"echo", good[3]]), (srv, [header, b"", b"", b""])],
        "oversized": [
            (cli, [header, b"srv-1", b"echo", b"x" * (MAX_SIZE + 100)]),
            (srv, [header, b"cli-1", b"", b"y" * (2 * MAX_SIZE)]),
        ],
        "bad publish topic": [(cli, [header, protocol.PUBLISH, b"foo", good[3]])],
    }
    before = central.proc.stats()
    for cases in bad.values():
        for sock, frames in cases:
            sock.send_multipart(frames)
    expected_total = before["dropped_total"] + sum(len(c) for c in bad.values())
    after = wait_until(
        lambda: (s := central.proc.stats())["dropped_total"] == expected_total and s,
        10.0,
        "the bad envelopes counted",
    )
    for reason, cases in bad.items():
        assert after["dropped"].get(reason, 0) - before["dropped"].get(reason, 0) == len(cases), reason

    # Nothing of it was forwarded, and the proxy still forwards.
    assert drain(srv, 0.3) == [] and drain(cli, 0.1) == []
    for key in ("forwarded_frontend_to_backend", "forwarded_backend_to_frontend", "published"):
        assert after[key] == base[key], key
    round_trip(cli, srv, after=True)
    final = central.proc.stats()
    assert final["forwarded_frontend_to_backend"] == base["forwarded_frontend_to_backend"] + 1
    assert final["forwarded_backend_to_frontend"] == base["forwarded_backend_to_frontend"] + 1
    assert central.proc.proc.poll() is None


def test_sigterm_exits_zero_unregisters_and_logs_stats(start_central, ctx, redis_server) -> None:
    central = start_central()
    srv = dealer(ctx, b"srv-1", central.backend)
    cli = dealer(ctx, b"cli-1", central.frontend)
    route_to_server(cli, srv)
    round_trip(cli, srv, last=True)

    assert central.proc.terminate(timeout=5.0) == 0
    assert all(central.mm.get_hosts(t) == [] for t in TOPICS), "registrations left in Redis"
    with redis_server.client() as r:
        assert r.keys("zmqrpc:topic:zmqrpc-proxy.*") == []
    log = central.proc.text()
    assert "SIGTERM received, stopping" in log
    final = central.proc.stats_lines()[-1]  # logged at exit without being asked
    assert final["forwarded_backend_to_frontend"] == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("discovery", ["matchmaker", "subscribe_on", "shared service config"])
def test_local_publisher_republishes_central_fanout(
    discovery, redis_server, tmp_path, procs, ctx, start_central
) -> None:
    if discovery in ("matchmaker", "shared service config"):
        # Started before any central proxy exists: it must notice the central one when it registers.
        port, extra = "0", {}
        if discovery == "shared service config":
            # The node's services file says subscribe_on = localhost:<local port>: it must not subscribe
            # to itself, but fall back to the matchmaker.
            port = str(free_port())
            extra = {"subscribe_on": f"localhost:{port}"}
        conf = write_conf(tmp_path / "local.conf", redis_server.url, **extra)
        local = ProxyProc(
            tmp_path, conf, "--local-publisher", "--publisher-port", port, "--host", "localhost"
        )
        procs.append(local)
        local.wait_for("zmqrpc local publisher on localhost: publisher tcp://")
        central = start_central()
    else:
        central = start_central()
        # subscribe_on wins over the matchmaker, which here is a Redis nobody listens on.
        conf = write_conf(
            tmp_path / "local.conf", f"zmq+redis://127.0.0.1:{free_port()}", subscribe_on=central.publisher
        )
        local = ProxyProc(tmp_path, conf, "--local-publisher", "--publisher-port", "0")
        procs.append(local)
    line = local.wait_for(r"zmqrpc local publisher on \S+: publisher tcp://\*:(\d+), subscribing to (.*)$")
    assert ("subscribe_on" in line.group(2)) == (discovery == "subscribe_on")
    if discovery == "shared service config":
        assert "ignoring subscribe_on localhost:" in local.text()
    local_address = f"127.0.0.1:{line.group(1)}"
    local.wait_for(f"subscribed to central publisher {re.escape(central.publisher)}")

    sub_foo = subscriber(ctx, local_address, "foo")
    sub_foobar = subscriber(ctx, local_address, "foobar")
    cli = dealer(ctx, b"cli-1", central.frontend)

    def publish(topic: str) -> bytes:
        frames = protocol.encode(
            protocol.MessageType.FANOUT,
            topic,
            {"message": {}, "context": {}},
            JSON,
            route=protocol.publish_route(topic),
        )
        cli.send_multipart(frames)
        return msg_id(frames)

    for sub, topic in ((sub_foo, "foo"), (sub_foobar, "foobar")):
        wait_until(
            lambda s=sub, t=topic: publish(t) and recv(s, 0.2), 15.0, f"{topic} via the local publisher"
        )
    drain(sub_foo)
    drain(sub_foobar)
    id_foo, id_foobar = publish("foo"), publish("foobar")
    got_foo, got_foobar = drain(sub_foo), drain(sub_foobar)
    assert [msg_id(f[1:]) for f in got_foo] == [id_foo]
    assert [msg_id(f[1:]) for f in got_foobar] == [id_foobar]
    assert got_foo[0][0] == protocol.subscription("foo") and got_foo[0][2] == b"cli-1"

    stats = local.stats()
    assert stats["upstreams"] == [central.publisher]
    assert stats["republished"] >= 4
    assert stats["subscription_changes"] >= 2
    assert local.terminate() == 0
    assert central.proc.terminate() == 0
