"""Run oslo.messaging's functional suite (``oslo_messaging/tests/functional/test_functional.py``, from the
installed wheel) against zmqrpc, in every documented topology, on one real redis-server.

    python -m tests.oslo_functional.runner [--topology NAME ...] [--test-timeout S] [-k SUBSTRING]

* One ``redis-server`` on a port picked here serves the whole run; it is flushed between topologies.
* Per topology, the real ``zmqrpc proxy`` processes it needs are started (and stopped after it).
* Every test runs in its own pytest process, wrapped in ``timeout -s KILL``: the suite monkey-patches
  eventlet, and a test blocked in a non-green call ignores SIGINT. A test killed that way is reported as
  HUNG (a failure), naming it; after ``--max-hangs`` hangs in a row the rest of the topology is not run
  (and counts as failed), so a broken core cannot eat the CI budget.
* The topology goes in ``RPC_TRANSPORT_URL``'s query. ``NOTIFY_TRANSPORT_URL`` carries no query: the
  suite checks every query parameter of that URL against ``[oslo_messaging_kafka]``'s options and fails
  on any other; the notification transports get the same options from oslo.config's environment source
  (``OS_OSLO_MESSAGING_ZMQ__<OPTION>``) instead.
* Tests that need a broker's own features are skipped by name (:data:`SKIPS`, also listed in the
  README). A test the suite skips by itself but that is not listed counts as a failure, so the list stays
  complete; every other test must pass.

Exit status: 0 when every test that ran passed, 1 otherwise, 2 on a set-up error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from tests.integration.test_proxy_topologies import _start_proxies
from tests.procs import ProxyProcess
from tests.servers import RedisServer, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
SUITE = "oslo_messaging/tests/functional/test_functional.py"

# Node ids (Class::test) the runner does not run, with the reason (the README lists the same).
SKIPS: dict[str, str] = {
    "CallTestCase::test_mandatory_call": (
        "RabbitMQ's mandatory flag: TransportOptions(at_least_once=True) must raise MessageUndeliverable "
        "when no queue is bound; the suite itself runs it for rabbit:// URLs only"
    ),
    "CallTestCase::test_monitor_long_call": (
        "the suite itself runs it for rabbit:// and amqp:// URLs only; zmqrpc's call monitoring is "
        "tested by tests/oslo/test_topologies.py::test_call_monitoring_keeps_a_long_call_alive"
    ),
}

# Every topology: loopback only, and the fast matchmaker timers the other tests use (registrations
# refresh every second; a stopping listener drains for rpc_zmq_cache_refresh + 1 s).
COMMON: dict[str, object] = {
    "rpc_zmq_host": "127.0.0.1",
    "rpc_zmq_bind_address": "127.0.0.1",
    "zmq_target_update": 1,
    "zmq_target_expire": 5,
    "rpc_zmq_cache_refresh": 0.3,
}


@dataclass
class Topology:
    options: dict[str, object]
    proxies: int = 0  # central proxies (zmqrpc proxy)
    publish: bool = False  # the proxies publish (use_pub_sub)
    local_publisher: bool = False  # plus a local publisher that servers subscribe to (subscribe_on)


TOPOLOGIES: dict[str, Topology] = {
    "static-direct": Topology({}),
    "dynamic-direct": Topology({"use_dynamic_connections": True, "zmq_linger": 1}),
    "router-proxy": Topology({"use_router_proxy": True}, proxies=2),
    "pubsub": Topology({"use_router_proxy": True, "use_pub_sub": True}, proxies=2, publish=True),
    "local-publisher": Topology(
        {"use_router_proxy": True, "use_pub_sub": True}, proxies=2, publish=True, local_publisher=True
    ),
    "combined": Topology(
        {"use_router_proxy": False, "use_pub_sub": True, "use_dynamic_connections": True, "zmq_linger": 1},
        proxies=2,
        publish=True,
    ),
}


@dataclass
class Result:
    topology: str
    test: str
    outcome: str  # PASS, FAIL, HUNG, CRASH, SKIP (listed), UNEXPECTED-SKIP, NOT-RUN
    seconds: float = 0.0
    detail: str = ""
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("PASS", "SKIP")


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def suite_root() -> Path:
    """The site-packages directory holding oslo_messaging (found without importing it: importing
    oslo_messaging.tests monkey-patches this process)."""
    spec = importlib.util.find_spec("oslo_messaging")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("oslo.messaging is not installed (pip install 'zmqrpc[oslo,test]')")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    if not (root / SUITE).exists():
        raise SystemExit(f"{SUITE} is not in the installed oslo.messaging wheel ({root})")
    return root


def _pytest_argv(ini: Path, site: Path) -> list[str]:
    # An empty ini file and rootdir site-packages: nothing of this repository's pytest settings applies.
    return [
        sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(site), "-p", "no:cacheprovider",
        "-p", "no:timeout", "-p", "tests.oslo_functional.hang_dump", "-W", "ignore::DeprecationWarning",
    ]  # fmt: skip


def collect(ini: Path, site: Path) -> list[str]:
    """The suite's tests as ``Class::test``."""
    out = subprocess.run(
        [*_pytest_argv(ini, site), "--collect-only", "-q", str(site / SUITE)],
        cwd=ini.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    tests = [line.split("::", 1)[1] for line in out.stdout.splitlines() if line.startswith(SUITE + "::")]
    if not tests:
        raise SystemExit(f"collected no tests from {SUITE}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return tests


def _junit_outcome(path: Path) -> tuple[str, str] | None:
    try:
        case = ET.parse(path).getroot().find(".//testcase")
    except (OSError, ET.ParseError):
        return None
    if case is None:
        return None
    for tag, outcome in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "UNEXPECTED-SKIP")):
        node = case.find(tag)
        if node is not None:  # the traceback's last line says what failed
            lines = [line.strip() for line in (node.text or "").splitlines() if line.strip()]
            return outcome, (lines[-1] if lines else node.get("message") or "")[:300]
    return "PASS", ""


def _kill_group(pgid: int) -> None:
    """SIGKILL what the test left in its process group (servers it spawned, an oslo_metrics process)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_test(
    test: str, topology: str, env: dict[str, str], ini: Path, site: Path, logs: Path, limit: float
) -> Result:
    name = test.replace("::", ".")
    log = logs / f"{topology}.{name}.log"
    junit = logs / f"{topology}.{name}.xml"
    argv = ["timeout", "-s", "KILL", str(int(limit)), *_pytest_argv(ini, site)]
    argv += ["-q", "-rA", f"--junitxml={junit}", f"{site / SUITE}::{test}"]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ini.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            code = proc.wait()
        finally:
            _kill_group(proc.pid)
    seconds = time.monotonic() - started
    outcome = _junit_outcome(junit)
    if code in (124, 137, -9) and outcome is None:
        return Result(
            topology, test, "HUNG", seconds, f"killed by timeout -s KILL after {int(limit)} s", str(log)
        )
    if outcome is None:
        return Result(topology, test, "CRASH", seconds, f"pytest exited {code} without a result", str(log))
    return Result(topology, test, outcome[0], seconds, outcome[1], str(log))


def _wait_listening(port: int, timeout: float = 15.0) -> bool:
    def connects() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return bool(wait_for(connects, timeout=timeout))


def start_topology(
    name: str, topo: Topology, redis: RedisServer, tmp: Path
) -> tuple[list[ProxyProcess], dict]:
    """The proxies ``topo`` needs (registered in the matchmaker) and its [oslo_messaging_zmq] options."""
    options = {**COMMON, **topo.options}
    proxies: list[ProxyProcess] = []
    try:
        if topo.proxies:
            proxies += _start_proxies(tmp, redis, topo.proxies, topo.publish)
        if topo.local_publisher:
            port = free_port()
            proxies.append(
                ProxyProcess(
                    tmp, redis.url, use_pub_sub=True, local_publisher=True, publisher_port=port
                ).start()
            )
            if not _wait_listening(port):
                raise RuntimeError(f"{name}: the local publisher does not listen on 127.0.0.1:{port}")
            options["subscribe_on"] = f"127.0.0.1:{port}"
    except BaseException:
        for proxy in proxies:
            proxy.stop()
        raise
    return proxies, options


def suite_env(redis: RedisServer, options: dict[str, object]) -> tuple[dict[str, str], str]:
    base = f"zmq+redis://127.0.0.1:{redis.port}/"
    rpc_url = base + "?" + urlencode({k: _text(v) for k, v in options.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_OSLO_MESSAGING_ZMQ__")}
    env.update(
        RPC_TRANSPORT_URL=rpc_url,
        NOTIFY_TRANSPORT_URL=base,
        PYTHONPATH=str(ROOT),
        PYTHONWARNINGS="ignore",
        # MetricsTestCase starts "python3 -m oslo_metrics": this venv's python3, which has it.
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    for key, value in options.items():
        env[f"OS_OSLO_MESSAGING_ZMQ__{key.upper()}"] = _text(value)
    return env, rpc_url


_METRICS_LOCK = threading.Lock()


def run_topology(
    name: str, tests: list[str], args: argparse.Namespace, ini: Path, site: Path, logs: Path, tmp: Path
) -> tuple[list[Result], float]:
    """Every test in one topology, on a redis-server and proxies of its own."""
    began = time.monotonic()
    results: list[Result] = []
    redis = RedisServer()
    current: list[ProxyProcess] = []
    try:
        topo_dir = tmp / name
        topo_dir.mkdir()
        try:
            current, options = start_topology(name, TOPOLOGIES[name], redis, topo_dir)
        except Exception as exc:
            print(f"[{name}] set-up failed: {exc}", flush=True)
            return [Result(name, t, "NOT-RUN", detail=f"topology set-up failed: {exc}") for t in tests], 0.0
        env, rpc_url = suite_env(redis, options)
        print(f"[{name}] RPC_TRANSPORT_URL={rpc_url}", flush=True)
        hangs = 0
        for test in tests:
            if test in SKIPS:
                result = Result(name, test, "SKIP", detail=SKIPS[test])
            elif args.max_hangs and hangs >= args.max_hangs:
                result = Result(name, test, "NOT-RUN", detail=f"not run: {hangs} hangs in a row before it")
            else:
                # MetricsTestCase uses a fixed port and socket path: one topology at a time runs it.
                with _METRICS_LOCK if "Metrics" in test else contextlib.nullcontext():
                    result = run_test(test, name, env, ini, site, logs, args.test_timeout)
                hangs = hangs + 1 if result.outcome == "HUNG" else 0
            results.append(result)
            print(f"[{name}] {result.outcome:<8} {result.seconds:6.1f}s  {test}"
                  + (f"  ({result.detail})" if result.detail and result.outcome != "SKIP" else ""),
                  flush=True)  # fmt: skip
    finally:
        for proxy in current:
            proxy.stop()
        redis.cleanup()
    return results, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", action="append", choices=list(TOPOLOGIES), help="default: all")
    parser.add_argument("-k", dest="only", action="append", help="run tests whose Class::test contains this")
    parser.add_argument(
        "--test-timeout", type=float, default=float(os.environ.get("OSLO_FUNCTIONAL_TIMEOUT", 60))
    )
    parser.add_argument(
        "--max-hangs", type=int, default=3, help="hangs in a row that end a topology (0: never)"
    )
    parser.add_argument(
        "--log-dir", type=Path, help="keep each test's output here (default: a temporary dir)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--parallel", type=int, default=3, help="topologies run at once (default 3)")
    args = parser.parse_args(argv)

    if shutil.which("timeout") is None:
        print("oslo-functional: coreutils timeout is needed", file=sys.stderr)
        return 2
    site = suite_root()
    tmp = Path(tempfile.mkdtemp(prefix="zmqrpc-oslo-functional-"))
    logs = args.log_dir or tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ini = tmp / "pytest.ini"
    # A test still running well before its kill dumps every OS thread's stack (faulthandler's watchdog is a
    # C thread: it works while the eventlet hub is blocked) and every greenlet's (hang_dump) into its log.
    ini.write_text(f"[pytest]\nfaulthandler_timeout = {max(1, int(args.test_timeout * 0.8))}\n")
    os.environ["OSLO_FUNCTIONAL_DUMP_AFTER"] = str(max(1, int(args.test_timeout * 0.7)))
    tests = collect(ini, site)
    if args.only:
        tests = [t for t in tests if any(k in t for k in args.only)]
    topologies = args.topology or list(TOPOLOGIES)
    print(f"oslo-functional: {len(tests)} tests of {site / SUITE}, topologies {', '.join(topologies)}; "
          f"per-test timeout {int(args.test_timeout)} s; logs in {logs}", flush=True)  # fmt: skip

    run = Run()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Topologies run side by side, each on a redis-server of its own: the tests mostly wait (servers
    # draining on stop), so the machine's cores are not the limit, the wall clock is.
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        outcomes = pool.map(lambda name: run_topology(name, tests, args, ini, site, logs, tmp), topologies)
        for name, (results, seconds) in zip(topologies, outcomes, strict=True):
            run.results += results
            run.durations[name] = seconds
    return report(run, topologies, args.json)


def report(run: Run, topologies: list[str], json_path: Path | None) -> int:
    print("\n=== oslo.messaging functional suite on zmqrpc")
    print(f"{'topology':<16} {'pass':>5} {'fail':>5} {'hung':>5} {'skip':>5} {'not run':>8} {'time':>7}")
    for name in topologies:
        mine = [r for r in run.results if r.topology == name]

        def count(*outcomes: str, rows: list[Result] = mine) -> int:
            return sum(r.outcome in outcomes for r in rows)

        print(
            f"{name:<16} {count('PASS'):>5} {count('FAIL', 'CRASH', 'UNEXPECTED-SKIP'):>5} "
            f"{count('HUNG'):>5} {count('SKIP'):>5} {count('NOT-RUN'):>8} {run.durations.get(name, 0):6.0f}s"
        )
    skipped = sorted({r.test for r in run.results if r.outcome == "SKIP"})
    for test in skipped:
        print(f"skipped by name: {test}: {SKIPS[test]}")
    bad = [r for r in run.results if not r.ok]
    for r in bad:
        print(f"\n--- {r.outcome} [{r.topology}] {r.test}: {r.detail}")
        if r.log and os.path.exists(r.log):
            lines = Path(r.log).read_text(errors="replace").splitlines()
            print("\n".join(line for line in lines[-25:]))
    if json_path is not None:
        json_path.write_text(
            json.dumps({"results": [asdict(r) for r in run.results], "durations": run.durations})
        )
    print(f"\noslo-functional: {'FAILED' if bad else 'ok'}: {len(bad)} of {len(run.results)} not passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
