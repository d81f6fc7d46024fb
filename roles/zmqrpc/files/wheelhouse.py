#!/usr/bin/env python3
"""zmqrpc's wheelhouse, built on the controller for the nodes (role zmqrpc, zmqrpc_install_from=wheelhouse).

  wheelhouse.py fingerprint SOURCE TARGETS_JSON      print {"hash", "source", "python"}
  wheelhouse.py build SOURCE TARGETS_JSON ARCHIVE    pip wheel SOURCE (+ what nodes need) into ARCHIVE

TARGETS_JSON lists the nodes' environment markers (python_full_version, platform_machine, ...). `pip wheel`
resolves dependencies for the controller's own interpreter only, so a dependency whose marker is false here
but true on a node (``async-timeout; python_full_version < "3.11.3"`` on Debian 12's 3.11.2) would be
missing from the wheelhouse and the node's `pip install --no-index` would fail. The build closes the set:
it adds every requirement whose marker holds for one of the nodes, until nothing is missing. A pip wheel is
included too: the nodes bootstrap their virtualenv's pip from it (`python pip-*.whl/pip install`), so they
need neither an index nor the distribution's python3-venv. The archive is written atomically, so concurrent
runs never see half of one; archives older than a day beyond the newest KEEP are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

PACKAGE = "zmqrpc"
KEEP = 5
# Bump when what an archive holds changes (2: a pip wheel for the nodes' bootstrap).
RECIPE = 2


def fingerprint(source: Path, targets: list[dict]) -> str:
    """Digest of what decides the wheelhouse's content: the package's files and the nodes' markers."""
    files = [source / "pyproject.toml", source / "README.md"]
    files += [p for p in (source / PACKAGE).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    digest = hashlib.sha256(f"recipe {RECIPE}\0".encode())
    for path in sorted(p for p in files if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(sorted(targets, key=json.dumps), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def wheel_name(path: Path) -> str:
    return canonicalize_name(path.name.split("-", 1)[0])


def requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(archive.read(metadata).decode("utf-8"))
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def missing_for(wheels: list[Path], targets: list[dict]) -> set[str]:
    """Requirements some node needs (its markers hold there) that no wheel of the set provides."""
    have = {wheel_name(w) for w in wheels}
    missing = set()
    for wheel in wheels:
        for req in requirements(wheel):
            if canonicalize_name(req.name) in have or req.marker is None:
                continue
            if any(req.marker.evaluate({**env, "extra": ""}) for env in targets):
                req.marker = None
                missing.add(str(req))
    return missing


def pip_wheel(out: Path, *args: str) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(out)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"wheelhouse: pip wheel {' '.join(args)} failed:\n{result.stderr.strip()}")


def build(source: Path, targets: list[dict], archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: `pip wheel SOURCE` builds in the source tree (build/, *.egg-info), so
    # two runs at once (molecule scenarios side by side) would trip over each other; the second one
    # then finds the archive the first one wrote.
    with open(archive.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            _build(source, targets, archive)


def _build(source: Path, targets: list[dict], archive: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="build.", dir=archive.parent))
    try:
        out = work / "wheels"
        pip_wheel(out, str(source), "pip")
        for _ in range(10):
            missing = missing_for(sorted(out.glob("*.whl")), targets)
            if not missing:
                break
            pip_wheel(out, *sorted(missing))
        else:
            sys.exit(f"wheelhouse: still missing after 10 rounds: {sorted(missing)}")
        partial = work / "wheelhouse.tar"
        with tarfile.open(partial, "w") as tar:
            for wheel in sorted(out.glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
        os.replace(partial, archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune(archive)


def prune(archive: Path) -> None:
    """Remove old archives of the cache: beyond the newest KEEP, those unused for a day."""
    others = sorted(
        archive.parent.glob("zmqrpc-wheelhouse-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in others[KEEP:]:
        if old != archive and time.time() - old.stat().st_mtime > 86400:
            old.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("fingerprint", "build") or (argv[0] == "build") != (len(argv) == 4):
        sys.exit(__doc__)
    source = Path(argv[1]).resolve()
    targets = json.loads(argv[2])
    if not (source / "pyproject.toml").is_file() or not (source / PACKAGE).is_dir():
        sys.exit(f"wheelhouse: {source} is not a zmqrpc checkout (no pyproject.toml and {PACKAGE}/)")
    if argv[0] == "fingerprint":
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
        print(json.dumps({"hash": fingerprint(source, targets), "source": str(source), "python": python}))
    else:
        build(source, targets, Path(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
