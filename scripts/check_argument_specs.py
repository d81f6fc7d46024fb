#!/usr/bin/env python3
"""Check that every role's meta/argument_specs.yml agrees with its defaults/main.yml.

For each role under roles/ (entry point `main`):
  - every variable in defaults/main.yml is documented as an option, with the same default;
  - every option that is not required has a default in defaults/main.yml;
  - every option has a type and a description, and a default that is one of its choices;
  - every public variable carries the role's name as prefix.
Exits 1 and lists each disagreement, so CI fails when they drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def same(a, b) -> bool:
    """Equal, allowing YAML's int/str ambiguity for scalars ("0" vs 0)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b or str(a) == str(b)


def check_role(role: Path) -> list[str]:
    errors: list[str] = []
    name = role.name
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    if not specs_file.exists():
        return [f"{name}: meta/argument_specs.yml is missing"]
    defaults = yaml.safe_load(defaults_file.read_text()) or {} if defaults_file.exists() else {}
    specs = yaml.safe_load(specs_file.read_text())
    try:
        options = specs["argument_specs"]["main"]["options"]
    except (KeyError, TypeError):
        return [f"{name}: argument_specs.yml has no argument_specs.main.options"]

    for var, value in defaults.items():
        if not var.startswith(f"{name}_"):
            errors.append(f"{name}: default {var} lacks the role prefix '{name}_'")
        if var not in options:
            errors.append(f"{name}: default {var} is not documented in argument_specs.yml")
            continue
        spec = options[var]
        if spec.get("required"):
            errors.append(f"{name}: {var} is required in argument_specs.yml but has a default")
        elif "default" not in spec:
            errors.append(
                f"{name}: {var} has no default in argument_specs.yml (defaults/main.yml: {value!r})"
            )
        elif not same(spec["default"], value):
            errors.append(
                f"{name}: {var} default differs: argument_specs {spec['default']!r}, defaults {value!r}"
            )

    for var, spec in options.items():
        if not var.startswith(f"{name}_"):
            errors.append(f"{name}: option {var} lacks the role prefix '{name}_'")
        if "type" not in spec:
            errors.append(f"{name}: option {var} has no type")
        if not spec.get("description"):
            errors.append(f"{name}: option {var} has no description")
        if not spec.get("required") and var not in defaults:
            errors.append(f"{name}: option {var} is optional but missing from defaults/main.yml")
        if (
            "choices" in spec
            and "default" in spec
            and not any(same(spec["default"], c) for c in spec["choices"])
        ):
            errors.append(f"{name}: option {var} default {spec['default']!r} is not one of {spec['choices']}")
    return errors


def main() -> int:
    roles = sorted(path for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())
    errors = [error for role in roles for error in check_role(role)]
    for error in errors:
        print(f"argument_specs: {error}", file=sys.stderr)
    print(f"argument_specs: {len(roles)} roles checked, {len(errors)} disagreement(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
