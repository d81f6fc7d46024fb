"""Filters that give the roles ``zmqrpc plan``'s figures, from the one copy of the arithmetic.

``zmqrpc_plan`` loads ``zmqrpc/plan.py`` of the checkout this role lives in (pure Python, no zmq or redis),
or the installed ``zmqrpc.plan`` when the role was copied elsewhere, so the roles and the command can never
disagree.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

_PLAN_FILE = Path(__file__).resolve().parents[3] / "zmqrpc" / "plan.py"


def _module() -> Any:
    if _PLAN_FILE.is_file():
        spec = importlib.util.spec_from_file_location("_zmqrpc_plan", _PLAN_FILE)
        if spec is None or spec.loader is None:
            raise AnsibleFilterError(f"zmqrpc_plan: cannot load {_PLAN_FILE}")
        module = sys.modules.get(spec.name)
        if module is None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
        return module
    try:
        from zmqrpc import plan
    except ImportError as exc:
        raise AnsibleFilterError(
            f"zmqrpc_plan: neither {_PLAN_FILE} nor an installed zmqrpc package on the controller"
        ) from exc
    return plan


def zmqrpc_plan(nodes: Any, topology: str, **kwargs: Any) -> dict[str, Any]:
    """``{{ nodes | zmqrpc_plan(topology, services_per_node=1, proxies=3, ...) }}``: the plan as a dict."""
    module = _module()
    options = {k: v for k, v in kwargs.items() if v is not None}
    for name in ("services_per_node", "proxies", "callers", "clients", "port_range"):
        if name in options:
            options[name] = int(options[name])
    if options.get("proxies") == 0:
        del options["proxies"]
    try:
        return module.plan(int(nodes), str(topology), **options).as_dict()
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"zmqrpc_plan: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"zmqrpc_plan": zmqrpc_plan}
