"""What no message may do to a server, what an ack promises, and that a retry really retries.

Each test re-runs a failure found by trying the bus as a new user would, with real server processes, a real
client and a real redis-server: hostile bodies that used to leak a worker slot each, a reply cache without a
byte bound, acked casts lost with a SIGKILLed server, resends that gave up while retries remained, and an
unreachable Sentinel's error that dumped redis-py objects.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.integration.test_direct import NAMES, Bus
from tests.procs import ServerProcess
from tests.servers import free_port, wait_for
from zmqrpc import protocol
from zmqrpc.config import load_settings
from zmqrpc.errors import MatchmakerError, NoRouteError
from zmqrpc.matchmaker import create_matchmaker
from zmqrpc.protocol import Flags, MessageType

pytestmark = pytest.mark.integration

ACKS = {
    "rpc_use_acks": True,
    "rpc_ack_timeout_base": 0.5,
    "rpc_ack_timeout_multiplier": 1.5,
    "rpc_retry_attempts": 10,
    "rpc_zmq_cache_refresh": 0.5,
}
MiB = 1024 * 1024


class RawPeer:
    """A bare DEALER that sends hand-made frames to a server, as a hostile or buggy peer would."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.connect(f"tcp://{address}")

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def receive(self, timeout: float = 5.0) -> protocol.Envelope:
        assert self.sock.poll(int(timeout * 1000)), "no answer from the server"
        return protocol.decode(self.sock.recv_multipart(), 1 << 24)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ledger_server(bus: Bus, ledger: Path, **options: object) -> ServerProcess:
    overrides = {**bus.options(), "rpc_zmq_host": NAMES[0], "rpc_zmq_bind_address": NAMES[0], **options}
    server = ServerProcess(bus.url, ["ledger"], NAMES[0], str(ledger), **overrides).start()
    bus.servers.append(server)
    return server


def _recorded(ledger: Path) -> Counter:
    return Counter(int(line) for line in ledger.read_text().split()) if ledger.exists() else Counter()


def test_a_hundred_hostile_messages_leave_the_server_serving(redis_server) -> None:
    """100 calls nesting 1,000 deep used to end in RecursionError each and leak a worker slot; ints past
    64 bits (a uuid.int) raised OverflowError on a msgpack server. Now the first are counted drops, the
    second round-trip, and every valid call in between is answered."""
    bus = Bus(redis_server.url, "static")
    try:
        server = bus.server(
            NAMES[0], topics=["hostile"], rpc_thread_pool_size=4, rpc_zmq_serialization="msgpack"
        )
        client = bus.client(rpc_zmq_serialization="msgpack")
        with RawPeer(server.address) as raw:
            body = {"message": {"method": "echo", "args": {"value": None}}, "context": {}}
            frames = protocol.encode(MessageType.CALL, "hostile", body, protocol.SERIALIZERS["msgpack"])
            packed = msgpack.packb(body)
            assert packed.count(b"\xc0") == 1
            frames[3] = packed.replace(b"\xc0", b"\x91" * 1000 + b"\xc0")  # the value: a list 1,000 deep
            for n in range(100):
                raw.send(protocol.readdress(frames, msg_id=protocol.new_msg_id()))
                if n % 10 == 9:
                    assert client.call("hostile", "whoami", timeout=5) == NAMES[0]
            big = [client.call("hostile", "big", timeout=5) for _ in range(100)]
            assert big == [2**64] * 100
            assert wait_for(
                lambda: client.call("hostile", "drops", timeout=5).get("too deep") == 100, timeout=10
            )
            assert client.call("hostile", "whoami", timeout=5) == NAMES[0]
    finally:
        bus.close()


def test_the_reply_cache_stays_under_its_byte_limit(redis_server) -> None:
    """300 acked calls with 1 MB replies used to keep all 300 replies (RSS +306 MB) for rpc_message_ttl."""
    bus = Bus(redis_server.url, "static")
    try:
        limit = 8 * MiB
        bus.server(NAMES[0], topics=["big"], rpc_reply_cache_bytes=limit, **ACKS)
        client = bus.client(**ACKS)
        rss_before = client.call("big", "rss", timeout=5)
        payload = "x" * 1_000_000
        for _ in range(300):
            assert client.call("big", "echo", {"data": payload}, timeout=10)["args"] == {"data": payload}
        cache = client.call("big", "reply_cache", timeout=5)
        grown = client.call("big", "rss", timeout=5) - rss_before
        print(f"reply cache after 300 x 1 MB acked calls: {cache}, server RSS +{grown / MiB:.1f} MiB")
        assert cache["reply_bytes"] <= limit
        assert cache["evicted"] >= 290  # each reply is ~1 MB: about 8 fit
        assert cache["ids"] >= 300  # the ids stay: a late resend is recognised, not run again
        assert grown < 64 * MiB, f"server RSS grew by {grown / MiB:.0f} MiB"
    finally:
        bus.close()


def test_a_resend_after_its_reply_was_evicted_gets_an_error_not_a_second_run(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    try:
        server = bus.server(NAMES[0], topics=["once"], rpc_reply_cache_bytes=0, **ACKS)
        client = bus.client()
        with RawPeer(server.address) as raw:
            body = {"message": {"method": "record", "args": {"tag": 7}}, "context": {}}
            serializer = protocol.SERIALIZERS["json"]
            frames = protocol.encode(MessageType.CALL, "once", body, serializer, flags=Flags.WANTS_ACK)
            for attempt in ("first", "resend"):
                raw.send(frames)
                answers = {env.type: env for env in (raw.receive(), raw.receive())}
                assert set(answers) == {MessageType.ACK, MessageType.REPLY}, attempt
                reply = answers[MessageType.REPLY].body
                if attempt == "first":
                    assert reply == {"result": None}
                else:
                    assert reply["failure"]["type"] == "zmqrpc.errors.ReplyEvicted"
                    assert "not run again" in reply["failure"]["message"]
            assert client.call("once", "seen", timeout=5) == [7]
    finally:
        bus.close()


def test_no_acked_cast_is_lost_across_three_sigkills(redis_server, tmp_path: Path) -> None:
    """The server used to ack a cast on receipt, so a SIGKILL lost every cast waiting in its workers
    (20 per kill with a 50 ms handler). Now a cast is acked once its handler returned."""
    bus = Bus(redis_server.url, "static")
    ledger = tmp_path / "ledger"
    options = {**ACKS, "rpc_thread_pool_size": 4}
    try:
        server = _ledger_server(bus, ledger, **options)
        client = bus.client(**options)
        total, kills = 240, 0
        for tag in range(total):
            client.cast("ledger", "record", {"tag": tag, "seconds": 0.05})
            if tag in (60, 120, 180):
                wait_for(lambda at=tag: len(_recorded(ledger)) >= at - 40, timeout=20)
                server.kill()  # SIGKILL: casts queued in its workers die with it, unacked
                kills += 1
                server = _ledger_server(bus, ledger, **options)  # a new port: the old route is dead
            time.sleep(0.01)
        wait_for(lambda: len(_recorded(ledger)) == total, timeout=60)
        recorded = _recorded(ledger)
        lost = sorted(set(range(total)) - set(recorded))
        reruns = sum(n - 1 for n in recorded.values())
        print(
            f"3 SIGKILLs under {total} acked casts: {len(lost)} lost, {reruns} ran twice, "
            f"{client.resent} resent, {client.undelivered} undelivered"
        )
        assert kills == 3
        assert lost == [], f"{len(lost)} acked-or-pending casts lost: {lost[:10]}"
        assert client.undelivered == 0
        # At least once: a cast whose handler ran but whose ack died with the server runs again.
        assert reruns <= 3 * options["rpc_thread_pool_size"], recorded.most_common(5)
    finally:
        bus.close()


def test_resends_wait_for_a_server_that_comes_back_on_another_port(redis_server, tmp_path: Path) -> None:
    """A resend used to read only the client's cached routes: once the dead address was dropped they were
    empty until the next refresh, and casts were reported undelivered ("no server left") while retries
    remained. The cache refreshes every 10 s here (the default), so only a forced lookup finds the new
    server in time."""
    bus = Bus(redis_server.url, "static")
    ledger = tmp_path / "ledger"
    options = {**ACKS, "rpc_retry_attempts": 8, "rpc_zmq_cache_refresh": 10.0}
    try:
        server = _ledger_server(bus, ledger, **options)
        client = bus.client(**options)
        for tag in range(50):
            client.cast("ledger", "record", {"tag": tag})
        assert wait_for(lambda: len(_recorded(ledger)) == 50, timeout=20)
        server.kill()
        for tag in range(50, 250):  # while no server is up: its registration outlives it, then expires
            client.cast("ledger", "record", {"tag": tag})
            time.sleep(0.005)
        time.sleep(1.5)
        _ledger_server(bus, ledger, **options)
        wait_for(lambda: len(_recorded(ledger)) >= 250, timeout=60)
        print(
            f"server back on another port: {len(_recorded(ledger))} of 250 casts recorded, "
            f"{client.resent} resent, {client.undelivered} undelivered"
        )
        assert sorted(set(_recorded(ledger))) == list(range(250))
        assert client.undelivered == 0
    finally:
        bus.close()


def test_with_acks_a_call_waits_for_a_server_that_is_restarting(redis_server, tmp_path: Path) -> None:
    """A server stopped cleanly unregisters. A call made while it is away used to fail at once with
    NoRouteError, even with acks (a key rotation under load lost calls that way); with acks it now waits
    for the server to register again, within its timeout. Without acks it still fails at once."""
    bus = Bus(redis_server.url, "static")
    ledger = tmp_path / "ledger"
    try:
        server = _ledger_server(bus, ledger, **ACKS)
        client = bus.client(**ACKS)
        client.call("ledger", "record", {"tag": 0}, timeout=10)
        server.stop()  # SIGTERM: it unregisters before it exits
        time.sleep(1.0)  # past rpc_zmq_cache_refresh: the client's cache no longer holds the old address
        with pytest.raises(NoRouteError):
            bus.client().call("ledger", "record", {"tag": -1}, timeout=10)
        restart = threading.Timer(1.5, _ledger_server, (bus, ledger), ACKS)
        restart.start()
        started = time.monotonic()
        client.call("ledger", "record", {"tag": 1}, timeout=30)
        waited = time.monotonic() - started
        restart.join()
        print(f"a call made while its server restarted was answered after {waited:.1f} s")
        assert waited >= 1.5, "the call was answered before the server came back"
        assert _recorded(ledger) == Counter({0: 1, 1: 1})
        with pytest.raises(NoRouteError, match="nobody-serves-this"):
            client.call("nobody-serves-this", "record", {"tag": 2}, timeout=1)
    finally:
        bus.close()


def test_an_unreachable_sentinel_is_reported_in_one_line() -> None:
    """redis-py's MasterNotFoundError carries a dump of every Sentinel's client: about 1.5 KB."""
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    matchmaker = create_matchmaker(load_settings(url=f"zmq+sentinel://{hosts}/zmqrpc-group"))
    try:
        with pytest.raises(MatchmakerError) as info:
            matchmaker.get_hosts("compute")
    finally:
        matchmaker.close()
    message = str(info.value)
    assert "\n" not in message
    assert "<redis." not in message
    assert "zmqrpc-group" in message
    assert hosts in message
    assert "compute" in message
    assert len(message) < 400, message
