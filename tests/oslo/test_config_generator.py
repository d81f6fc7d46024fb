"""``oslo-config-generator --namespace zmqrpc``: a sample with every option and its help that loads back.

The options are found the way the generator finds them, through the ``oslo.config.opts`` entry point.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from oslo_config import cfg

GENERATOR = Path(sys.executable).with_name("oslo-config-generator")
OPTION_LINE = re.compile(r"^#(?P<name>[a-z_][a-z0-9_]*) =(?: (?P<value>.*))?$")


def namespace_options() -> list[tuple[str, list[cfg.Opt]]]:
    (ep,) = [ep for ep in entry_points(group="oslo.config.opts") if ep.name == "zmqrpc"]
    return [(group, list(opts)) for group, opts in ep.load()()]


def sections(text: str) -> dict[str, list[str]]:
    """Lines of the sample by [section]."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        match = re.match(r"^\[(.+)\]$", line)
        if match:
            current = match.group(1)
            found.setdefault(current, [])
        elif current:
            found[current].append(line)
    return found


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not GENERATOR.exists():
        pytest.skip(f"{GENERATOR} not found (oslo.config's console script)")
    out = tmp_path_factory.mktemp("generator") / "zmqrpc.conf.sample"
    subprocess.run(
        [str(GENERATOR), "--namespace", "zmqrpc", "--output-file", str(out)], check=True, timeout=60
    )
    return out


def test_sample_lists_every_option_with_its_help(sample: Path) -> None:
    by_section = sections(sample.read_text())
    for group, opts in namespace_options():
        assert group in by_section, f"[{group}] missing from the sample"
        lines = by_section[group]
        body = " ".join(line.lstrip("# ").strip() for line in lines)
        names = {m.group("name") for m in map(OPTION_LINE.match, lines) if m}
        for opt in opts:
            assert opt.name in names, f"[{group}] {opt.name} missing from the sample"
            first_words = " ".join(opt.help.split()[:6])
            assert first_words in body, f"[{group}] {opt.name}: help {first_words!r} missing"
    assert "zmq_fallback_transport_url" in " ".join(by_section["oslo_messaging_zmq"])


def test_sample_loads_back_with_every_value_uncommented(sample: Path, tmp_path: Path) -> None:
    options = namespace_options()
    known = {group: {opt.name for opt in opts} for group, opts in options}
    uncommented, current, count = [], "", 0
    for line in sample.read_text().splitlines():
        header = re.match(r"^\[(.+)\]$", line)
        if header:
            current = header.group(1)
        match = OPTION_LINE.match(line)
        if match and match.group("name") in known.get(current, ()) and match.group("value") != "<None>":
            line = f"{match.group('name')} = {match.group('value') or ''}"
            count += 1
        uncommented.append(line)
    everything = [opt for _, opts in options for opt in opts]
    no_default = [opt for opt in everything if opt.default is None and opt.sample_default is None]
    assert count == len(everything) - len(no_default)  # options without a default stay commented out
    config = tmp_path / "zmqrpc.conf"
    config.write_text("\n".join(uncommented) + "\n")

    conf = cfg.ConfigOpts()
    for group, opts in options:
        conf.register_opts(opts, group=None if group == "DEFAULT" else group)
    conf(args=[], default_config_files=[str(config)])
    for group, opts in options:
        values = conf if group == "DEFAULT" else conf[group]
        for opt in opts:
            expected = opt.sample_default if opt.sample_default is not None else opt.default
            value = values[opt.dest]
            if opt.sample_default is not None:
                assert str(value) == str(expected), f"[{group}] {opt.name}"
            else:
                assert value == expected, f"[{group}] {opt.name}: {value!r} != {expected!r}"
