"""`zmqrpc bench` end to end: separate server processes, raw pyzmq and nats-py baselines, one JSON line per
measurement, per serializer, and the --plot PNG.

Only the shape and consistency of the figures are checked here; the figures themselves belong in benchmark
runs, not in tests, so there are no timing thresholds.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import find_binary, stop_process

# The module's fixtures each run a whole bench (up to _bench's 240 s subprocess timeout on a loaded machine),
# inside the first test that uses them: the suite's 120 s per-test timeout would cut them short.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]

TOPOLOGIES = ("static-direct", "dynamic-direct", "router-proxy", "pubsub", "combined")
PATTERNS = ("call", "cast", "fanout")
CONCURRENCIES = (1, 4)
REQUIRED = {
    "topology": str,
    "pattern": str,
    "concurrency": int,
    "payload_size": int,
    "duration_s": float,
    "messages": int,
    "msgs_per_s": float,
    "p50_us": float,
    "p99_us": float,
    "latency_kind": str,
    "baseline_raw_pyzmq_msgs_per_s": float,
    "baseline_p50_us": float,
    "ratio_to_baseline": float,
}


NATS_KEYS = (
    "baseline_nats_messages",
    "baseline_nats_msgs_per_s",
    "baseline_nats_p50_us",
    "baseline_nats_p99_us",
    "ratio_to_nats",
)


def _bench(*args: str) -> list[dict]:
    """Run ``zmqrpc bench --json --duration 0.3 <args>`` (the launcher, from this checkout); its records."""
    cmd = [sys.executable, "-m", "zmqrpc.cli", "bench", "--json", "--duration", "0.3", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        stop_process(proc, timeout=30)  # on a timeout: SIGTERM lets the bench stop the daemons it started
    assert proc.returncode == 0, stderr[-4000:]
    lines = stdout.splitlines()
    assert lines, stderr[-4000:]
    return [json.loads(line) for line in lines]  # --json: nothing but JSON lines on stdout


@pytest.fixture(scope="module")
def records() -> list[dict]:
    # One serializer and no nats peer: the peers fixture covers those, this one every topology and pattern.
    return _bench(
        "--concurrency", "1,4", "--pattern", ",".join(PATTERNS), "--topology", ",".join(TOPOLOGIES),
        "--serialization", "json", "--no-nats",
    )  # fmt: skip


@pytest.fixture(scope="module")
def plot_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench") / "bench.png"


@pytest.fixture(scope="module")
def peer_records(plot_path: Path) -> list[dict]:
    """Call and cast at 1 and 16 in flight, per serializer, beside nats-py, drawn into a PNG."""
    return _bench(
        "--concurrency", "1,16", "--pattern", "call,cast", "--topology", "static-direct",
        "--serialization", "json,msgpack", "--plot", str(plot_path),
    )  # fmt: skip


@pytest.fixture(scope="module")
def oslo_records() -> list[dict]:
    """oslo.messaging over zmqrpc (a private redis-server), call and cast; RabbitMQ is left out."""
    measured = _bench(
        "--concurrency", "2", "--pattern", "call,cast", "--topology", "static-direct",
        "--serialization", "json", "--no-nats", "--oslo", "--oslo-systems", "zmqrpc",
    )  # fmt: skip
    return [r for r in measured if "system" in r]


def test_one_line_per_measurement(records: list[dict]) -> None:
    seen = sorted((r["topology"], r["pattern"], r["concurrency"]) for r in records)
    assert seen == sorted(itertools.product(TOPOLOGIES, PATTERNS, CONCURRENCIES))


def test_required_keys_and_types(records: list[dict]) -> None:
    for record in records:
        for key, kind in REQUIRED.items():
            assert key in record, (key, record)
            # JSON writes 12.0 as 12.0 but a whole float may come back as int; both are numbers.
            expected = (int, float) if kind is float else kind
            assert isinstance(record[key], expected), (key, record)
        assert record["payload_size"] == 1024
        assert record["latency_kind"] == ("round_trip" if record["pattern"] == "call" else "client_send")


def test_figures_are_positive(records: list[dict]) -> None:
    for record in records:
        assert record["messages"] > 0, record
        assert record["msgs_per_s"] > 0, record
        assert record["baseline_raw_pyzmq_msgs_per_s"] > 0, record
        assert record["baseline_messages"] > 0, record
        assert record["p50_us"] <= record["p99_us"], record


def test_ratio_matches_rates(records: list[dict]) -> None:
    for record in records:
        expected = record["msgs_per_s"] / record["baseline_raw_pyzmq_msgs_per_s"]
        # Both rates are rounded to 0.1 msg/s and the ratio to 4 decimals.
        assert record["ratio_to_baseline"] == pytest.approx(expected, rel=1e-3, abs=1e-4), record


def test_rate_matches_count(records: list[dict]) -> None:
    for record in records:
        assert record["msgs_per_s"] == pytest.approx(record["messages"] / record["duration_s"], rel=0.01), (
            record
        )


def test_fanout_reaches_every_server(records: list[dict]) -> None:
    for record in records:
        assert record["receivers"] == (3 if record["pattern"] == "fanout" else 1), record


def test_oslo_figures_through_the_driver(oslo_records: list[dict]) -> None:
    assert sorted(r["pattern"] for r in oslo_records) == ["call", "cast"]
    for record in oslo_records:
        assert record["system"] == "oslo.messaging+zmqrpc", record
        assert record["transport"].startswith("zmq+redis://127.0.0.1:"), record
        assert record["concurrency"] == 2, record
        assert record["errors"] == 0, record
        assert record["messages"] > 0, record
        assert record["msgs_per_s"] == pytest.approx(record["messages"] / record["duration_s"], rel=0.01)
        assert 0 < record["p50_us"] <= record["p99_us"], record
        assert record["latency_kind"] == ("round_trip" if record["pattern"] == "call" else "client_send")


def test_each_figure_per_serializer(peer_records: list[dict]) -> None:
    seen = sorted((r["pattern"], r["concurrency"], r["serialization"]) for r in peer_records)
    assert seen == sorted(itertools.product(("call", "cast"), (1, 16), ("json", "msgpack")))
    for record in peer_records:
        assert record["errors"] == 0, record
        assert record["msgs_per_s"] > 0 and record["baseline_raw_pyzmq_msgs_per_s"] > 0, record


def test_nats_figures_beside_every_call(peer_records: list[dict]) -> None:
    if importlib.util.find_spec("nats") is None or find_binary("nats-server") is None:
        pytest.skip("nats-py or nats-server is not installed (the test extra has both)")
    for record in peer_records:
        if record["pattern"] != "call":
            assert all(record[key] is None for key in NATS_KEYS), record  # nats is measured for calls only
            continue
        assert record["baseline_nats_messages"] > 0, record
        assert record["baseline_nats_msgs_per_s"] > 0, record
        assert 0 < record["baseline_nats_p50_us"] <= record["baseline_nats_p99_us"], record
        assert f"{record['concurrency']} in flight" in record["baseline_nats_mode"], record
        expected = record["msgs_per_s"] / record["baseline_nats_msgs_per_s"]
        assert record["ratio_to_nats"] == pytest.approx(expected, rel=1e-3, abs=1e-4), record


def test_plot_is_drawn(peer_records: list[dict], plot_path: Path) -> None:
    from matplotlib import image

    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(plot_path)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 600, pixels.shape
    # Bars in several colours, not a blank canvas: count distinct RGB values.
    colours = {tuple(px) for px in (pixels[:, :, :3] * 255).astype(int).reshape(-1, 3)[::97]}
    assert len(colours) > 10, len(colours)


def test_bench_outside_a_checkout_says_how_to_run_it(capsys: pytest.CaptureFixture[str]) -> None:
    from zmqrpc import cli

    assert cli._run_from_checkout("bench", "benchmarks.not_there", []) == 2
    assert "python -m benchmarks" in capsys.readouterr().err
