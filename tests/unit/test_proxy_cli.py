"""The proxy command line: flags, their precedence over [zmq_proxy_opts], and how it fails.

Parsing is checked in-process; start-up, failures and signals with real ``zmqrpc-proxy`` processes (using the
in-process dummy matchmaker, so no Redis is needed here; tests/integration/test_proxy_process.py uses Redis).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zmqrpc import cli, protocol
from zmqrpc.config import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROUTER_PROXY_CONF = FIXTURES / "guide-router-proxy-proxy.conf"  # [zmq_proxy_opt] host = host-1, no pub/sub
PUBSUB_PROXY_CONF = FIXTURES / "guide-pubsub-proxy.conf"  # the same with use_pub_sub = true
BIN = Path(sys.executable).parent
DOCUMENTED_FLAGS = {
    "--config-file",
    "--log-file",
    "--host",
    "--frontend-port",
    "--backend-port",
    "--publisher-port",
    "--local-publisher",
    "--debug",
}
STARTUP_RE = r"zmqrpc proxy on (\S+): frontend tcp://\*:(\d+), backend tcp://\*:(\d+), (.*)$"


def options(*argv: str) -> cli.ProxyOptions:
    return cli.proxy_options(cli.build_proxy_parser().parse_args(list(argv)))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- flags and precedence (in-process) ------------------------------------------------------------


def test_exactly_the_documented_flags() -> None:
    for parser in (cli.build_proxy_parser(), _proxy_subparser()):
        flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
        assert flags == DOCUMENTED_FLAGS


def _proxy_subparser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["proxy"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--transport-url", "zmq://"],  # not a proxy flag
        ["--front", "1"],  # abbreviations are not the documented flags
        ["--frontend-port", "-1"],
        ["--backend-port", "65536"],
        ["--publisher-port", "http"],
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_proxy_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err or "unrecognized arguments" in err
    if argv[0].endswith("-port"):
        assert f"argument {argv[0]}" in err and "0-65535" in err


def test_guide_router_proxy_file_with_deprecated_group() -> None:
    opts = options("--config-file", str(ROUTER_PROXY_CONF))
    assert opts.host == "host-1"  # from [zmq_proxy_opt], the guide's spelling
    assert (opts.frontend_port, opts.backend_port, opts.publisher_port) == (0, 0, 0)
    assert not opts.local_publisher and not opts.debug and opts.log_file is None
    assert opts.publish is False
    assert opts.publish_reason == "use_pub_sub = false and no --publisher-port"
    assert opts.settings.redis_hosts == (("host-1", 6379),)  # [DEFAULT] transport_url of the file


def test_guide_pubsub_proxy_file_publishes_because_of_use_pub_sub() -> None:
    opts = options("--config-file", str(PUBSUB_PROXY_CONF))
    assert opts.publish is True
    assert opts.publish_reason == "use_pub_sub = true"
    assert opts.host == "host-1"


def test_flags_override_the_guide_file() -> None:
    opts = options(
        "--config-file",
        str(ROUTER_PROXY_CONF),
        "--log-file",
        "/var/log/oslo/zeromq-router-proxy.log",
        "--host",
        "node-123",
        "--frontend-port",
        "50001",
        "--backend-port",
        "50002",
        "--publisher-port",
        "50003",
        "--debug",
    )
    assert opts.host == "node-123"
    assert (opts.frontend_port, opts.backend_port, opts.publisher_port) == (50001, 50002, 50003)
    assert opts.publish is True and opts.publish_reason == "--publisher-port given"
    assert opts.debug is True
    assert opts.log_file == "/var/log/oslo/zeromq-router-proxy.log"


def test_publisher_port_zero_on_the_command_line_still_publishes() -> None:
    opts = options("--config-file", str(ROUTER_PROXY_CONF), "--publisher-port", "0")
    assert opts.publish is True and opts.publisher_port == 0


@pytest.mark.parametrize("group", ["zmq_proxy_opts", "zmq_proxy_opt"])
def test_proxy_section_values_and_flag_precedence(tmp_path: Path, group: str) -> None:
    conf = write(
        tmp_path / "proxy.conf",
        "[DEFAULT]\ntransport_url = zmq+redis://mm:6379\n"
        f"[{group}]\nhost = cfg-host\nfrontend_port = 40001\nbackend_port = 40002\n"
        "publisher_port = 40003\nlocal_publisher = true\n",
    )
    opts = options("--config-file", str(conf))
    assert opts.host == "cfg-host"
    assert (opts.frontend_port, opts.backend_port, opts.publisher_port) == (40001, 40002, 40003)
    assert opts.local_publisher is True
    assert opts.publish is True and "publisher_port" in opts.publish_reason  # a configured port publishes

    opts = options("--config-file", str(conf), "--host", "flag-host", "--backend-port", "0")
    assert opts.host == "flag-host"
    assert (opts.frontend_port, opts.backend_port) == (40001, 0)  # flag wins, 0 = random


def test_later_config_files_win(tmp_path: Path) -> None:
    second = write(tmp_path / "override.conf", "[zmq_proxy_opts]\nhost = second\nfrontend_port = 1234\n")
    opts = options("--config-file", str(PUBSUB_PROXY_CONF), "--config-file", str(second))
    assert opts.host == "second" and opts.frontend_port == 1234
    assert opts.publish is True  # use_pub_sub from the first file still applies


def test_invalid_option_values_raise_config_error_naming_them(tmp_path: Path) -> None:
    conf = write(tmp_path / "bad.conf", "[zmq_proxy_opts]\nfrontend_port = 70000\n")
    with pytest.raises(ConfigError, match="frontend_port"):
        options("--config-file", str(conf))


# --- real processes -------------------------------------------------------------------------------


def dummy_conf(tmp_path: Path, extra: str = "") -> Path:
    return write(
        tmp_path / "dummy.conf",
        "[DEFAULT]\ntransport_url = zmq://\n[oslo_messaging_zmq]\nrpc_zmq_matchmaker = dummy\n"
        f"[zmq_proxy_opts]\nhost = 127.0.0.1\n{extra}",
    )


class Running:
    """A proxy process with stderr captured to a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text(), re.MULTILINE)
            if match:
                return match
            assert self.proc.poll() is None, f"proxy exited with {self.proc.returncode}:\n{self.text()}"
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never appeared in:\n{self.text()}")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(5)


def run(argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def proxy_cmd(entry: str = "zmqrpc-proxy") -> list[str]:
    if entry == "zmqrpc proxy":
        return [sys.executable, "-m", "zmqrpc.cli", "proxy"]
    return [str(BIN / entry)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_missing_config_file_exits_non_zero_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    result = run([*proxy_cmd(), "--config-file", str(missing)])
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(missing) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[zmq_proxy_opts]\nfrontend_port = abc\n", "frontend_port"),
        ("[oslo_messaging_zmq]\nuse_pub_sub = maybe\n", "use_pub_sub"),
        ("[DEFAULT]\ntransport_url = amqp://guest@rabbit//\n", "unsupported scheme 'amqp'"),
        ("this is not an ini file\n", "bad.conf"),
    ],
)
def test_bad_config_exits_non_zero_with_one_clear_line(tmp_path: Path, content: str, named: str) -> None:
    conf = write(tmp_path / "bad.conf", content)
    result = run([*proxy_cmd(), "--config-file", str(conf)])
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("which", ["frontend", "backend", "publisher"])
def test_port_in_use_exits_non_zero_naming_the_port(tmp_path: Path, which: str) -> None:
    ctx = zmq.Context()
    holder = ctx.socket(zmq.ROUTER)
    try:
        port = holder.bind_to_random_port("tcp://*")
        result = run([*proxy_cmd(), "--config-file", str(dummy_conf(tmp_path)), f"--{which}-port", str(port)])
    finally:
        holder.close(linger=0)
        ctx.term()
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"{which} socket to port {port}" in lines[0] and f"--{which}-port" in lines[0]
    assert "in use" in lines[0].lower()


def test_unwritable_log_file_exits_non_zero_naming_it(tmp_path: Path) -> None:
    log = tmp_path / "no-such-dir" / "proxy.log"
    result = run([*proxy_cmd(), "--config-file", str(dummy_conf(tmp_path)), "--log-file", str(log)])
    assert result.returncode == 2
    assert "--log-file" in result.stderr and str(log) in result.stderr


@pytest.mark.parametrize("entry", ["zmqrpc-proxy", "oslo-messaging-zmq-proxy", "zmqrpc proxy"])
def test_every_entry_point_starts_logs_its_addresses_and_stops_on_sigterm(
    tmp_path: Path, running: list[Running], entry: str
) -> None:
    proxy = Running([*proxy_cmd(entry), "--config-file", str(dummy_conf(tmp_path))], tmp_path / "p.log")
    running.append(proxy)
    line = proxy.wait_for(STARTUP_RE)
    assert line.group(1) == "127.0.0.1"
    assert int(line.group(2)) > 0 and int(line.group(3)) > 0  # real ports, not 0
    assert line.group(4).startswith("no publisher (use_pub_sub = false and no --publisher-port)")
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(5) == 0
    assert "SIGTERM received, stopping" in proxy.text()


def test_sigint_is_a_clean_stop_too(tmp_path: Path, running: list[Running]) -> None:
    proxy = Running(
        [*proxy_cmd(), "--config-file", str(dummy_conf(tmp_path)), "--publisher-port", "0"],
        tmp_path / "p.log",
    )
    running.append(proxy)
    line = proxy.wait_for(STARTUP_RE)
    assert re.match(r"publisher tcp://\*:\d+ \(--publisher-port given\)", line.group(4))
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.proc.wait(5) == 0
    assert "KeyboardInterrupt" not in proxy.text()


def _send_to_unknown(frontend_port: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"cli-debug")
    try:
        sock.connect(f"tcp://127.0.0.1:{frontend_port}")
        header = protocol.encode(protocol.MessageType.CAST, "t", {}, protocol.get_serializer("json"))[0]
        sock.send_multipart([header, b"nobody", b"t", b"{}"])
        assert sock.poll(5000), "no UNROUTABLE notice"
        assert sock.recv_multipart()[1] == b"nobody"
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("debug", [True, False])
def test_debug_logs_each_dispatched_message_and_only_then(
    tmp_path: Path, running: list[Running], debug: bool
) -> None:
    argv = [*proxy_cmd(), "--config-file", str(dummy_conf(tmp_path))] + (["--debug"] if debug else [])
    proxy = Running(argv, tmp_path / "p.log")
    running.append(proxy)
    frontend_port = int(proxy.wait_for(STARTUP_RE).group(2))
    _send_to_unknown(frontend_port)
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(5) == 0
    per_message = re.search(
        r"DEBUG zmqrpc\.proxy: frontend b'cli-debug' -> unknown server b'nobody'", proxy.text()
    )
    assert bool(per_message) == debug, proxy.text()
    assert '"unroutable_frontend": 1' in proxy.text()  # the stats line at exit
