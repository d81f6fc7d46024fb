"""The package's shape: README's layout names every module, and every module opens with its concept."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MODULES = sorted(
    path.relative_to(ROOT) for folder in ("zmqrpc", "benchmarks") for path in (ROOT / folder).rglob("*.py")
)


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Layout\n", 1)[1].split("```", 2)[1]


def test_readme_layout_names_every_module_and_nothing_else() -> None:
    layout = _layout()
    named = set(re.findall(r"[\w]+\.py\b", layout))
    present = {path.name for path in MODULES if path.name != "__init__.py"}
    assert present - named == set(), "modules missing from README's layout"
    scripts = {path.name for path in (ROOT / "scripts").glob("*.py")}
    assert named - present - scripts == set(), "README's layout names modules that do not exist"
    for folder in re.findall(r"^(\w+)/ ", layout, re.M):
        assert (ROOT / folder).is_dir(), f"README's layout names {folder}/, which does not exist"


@pytest.mark.parametrize("path", MODULES, ids=str)
def test_every_module_opens_with_its_concept(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / path).read_text()))
    assert docstring, f"{path} has no module docstring"
    first = docstring.splitlines()[0]
    assert first.endswith(".") and len(first) <= 110, f"{path}: the first line is one sentence: {first!r}"


def test_header_offsets_name_the_header_fields() -> None:
    from zmqrpc import protocol

    header = protocol.HEADER.pack(protocol.MAGIC, 1, 2, 3, 4, bytes(range(16)))
    assert header[: protocol.VERSION_OFFSET] == protocol.MAGIC
    fields = (
        protocol.VERSION_OFFSET,
        protocol.TYPE_OFFSET,
        protocol.SERIALIZER_OFFSET,
        protocol.FLAGS_OFFSET,
    )
    assert [header[offset] for offset in fields] == [1, 2, 3, 4]
    assert header[protocol.MSG_ID_OFFSET :] == bytes(range(16))
