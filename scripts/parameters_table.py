"""Print the Markdown table of template.yaml's parameters, or check a file's copy of it.

    python scripts/parameters_table.py                  # print the table
    python scripts/parameters_table.py --check FILE     # exit 1 if FILE's table differs

The table in FILE sits between the lines ``<!-- parameters:start -->`` and
``<!-- parameters:end -->``. Columns: the parameter, the environment variable(s) of the
functions it sets (from Globals; "-" when only the template uses it), its default, its
allowed values or range, its description.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "local"))

from batch_embedder_local.template import TEMPLATE_PATH, load_template  # noqa: E402

START = "<!-- parameters:start -->"
END = "<!-- parameters:end -->"


def _refs(value: Any) -> set[str]:
    """Every ``Ref`` (and ``FindInMap`` key ``Ref``) inside ``value``."""
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value)) if value else set()
    if isinstance(value, dict):
        if set(value) == {"Ref"} and isinstance(value["Ref"], str):
            return {value["Ref"]}
        return set().union(*(_refs(v) for v in value.values())) if value else set()
    return set()


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _allowed(spec: dict[str, Any]) -> str:
    if "AllowedValues" in spec:
        return ", ".join(f"`{v}`" for v in spec["AllowedValues"])
    low, high = spec.get("MinValue"), spec.get("MaxValue")
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    if spec.get("Type") == "CommaDelimitedList":
        return "comma list"
    if "AllowedPattern" in spec:
        return "see description"
    return "any"


def table(template: dict[str, Any]) -> str:
    """The Markdown table of ``template``'s parameters, in template order."""
    env = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    variables: dict[str, Any] = env.get("Variables", {})
    env_of: dict[str, list[str]] = {}
    for var, value in variables.items():
        for ref in sorted(_refs(value)):
            env_of.setdefault(ref, []).append(var)
    lines = [
        "| Parameter | Environment variable | Default | Allowed | Description |",
        "|---|---|---|---|---|",
    ]
    for name, spec in template.get("Parameters", {}).items():
        default = spec.get("Default", "")
        default_text = f"`{default}`" if str(default) != "" else "(empty)"
        envs = ", ".join(f"`{v}`" for v in env_of.get(name, [])) or "-"
        lines.append(
            f"| `{name}` | {envs} | {_cell(default_text)} | {_cell(_allowed(spec))} "
            f"| {_cell(spec.get('Description', ''))} |"
        )
    return "\n".join(lines) + "\n"


def embedded(text: str) -> str | None:
    """The table between the markers of ``text`` (None when a marker is missing)."""
    if START not in text or END not in text:
        return None
    inside = text.split(START, 1)[1].split(END, 1)[0]
    return inside.strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the table, or with ``--check FILE`` compare FILE's table with it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's table differs")
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    args = parser.parse_args(argv)
    expected = table(load_template(args.template))
    if args.check is None:
        sys.stdout.write(expected)
        return 0
    found = embedded(args.check.read_text(encoding="utf-8"))
    if found is None:
        print(f"{args.check}: no {START} ... {END} markers", file=sys.stderr)
        return 1
    if found != expected:
        print(
            f"{args.check}: the parameter table is out of date; regenerate it with "
            "python scripts/parameters_table.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
