"""Each module's DOCUMENTATION (shared fragments included) describes exactly its argument_spec."""

from __future__ import annotations

import importlib
from pathlib import Path
from unittest import mock

import pytest
import yaml
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring
from module_harness import LIBRARY

FRAGMENTS = LIBRARY.parent / "plugins" / "doc_fragments"
MODULES = sorted(p.stem for p in LIBRARY.glob("*.py"))
COMPARED = ("type", "default", "choices", "elements", "required")


class _Spec(Exception):
    """Carries the keyword arguments a module gave AnsibleModule."""


def argument_spec(name: str) -> dict:
    """The module's argument_spec, as it builds it (AnsibleModule is stopped before it parses anything)."""
    module = importlib.import_module(name)

    def capture(**kwargs):
        raise _Spec(kwargs)

    with mock.patch.object(module, "AnsibleModule", capture), pytest.raises(_Spec) as caught:
        module.run_module()
    return caught.value.args[0]["argument_spec"]


def documentation(name: str) -> tuple[dict, str, dict]:
    """DOCUMENTATION with its fragments, EXAMPLES as text and RETURN, the way ansible-doc reads them."""
    fragment_loader.add_directory(str(FRAGMENTS))
    doc, examples, returns, _ = get_docstring(str(LIBRARY / f"{name}.py"), fragment_loader, is_module=True)
    return doc, examples, returns


def test_every_module_is_checked() -> None:
    assert MODULES == ["redis_sentinel_monitor", "zmqrpc_matchmaker", "zmqrpc_ping"]
    assert Path(FRAGMENTS, "zmqrpc_node.py").is_file()


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_argument_spec(name: str) -> None:
    spec = argument_spec(name)
    docs = documentation(name)[0]["options"]
    assert sorted(docs) == sorted(spec), f"{name}: documented options differ from argument_spec"
    for option, arg in spec.items():
        for key in COMPARED:
            expected = arg.get(key, False if key == "required" else None)
            documented = docs[option].get(key, False if key == "required" else None)
            if key == "type":  # an option without a type is a str, in the docs and in the spec
                expected, documented = expected or "str", documented or "str"
            assert documented == expected, f"{name}: option {option}: {key} documented {documented!r}"
        assert docs[option].get("description"), f"{name}: option {option} has no description"


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_are_documented(name: str) -> None:
    doc, examples, returns = documentation(name)
    assert doc["module"] == name
    tasks = yaml.safe_load(examples)
    assert any(name in task for task in tasks), f"{name}: no example uses the module"
    assert all(task.get("name") for task in tasks), f"{name}: every example task has a name"
    assert returns and all(v.get("description") for v in returns.values()), f"{name}: RETURN"
