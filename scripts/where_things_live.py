"""The "Where things live" map of docs/architecture.md, generated from the tree.

Usage::

    python scripts/where_things_live.py                 # print the map (Markdown)
    python scripts/where_things_live.py --write FILE    # replace FILE's copy of it
    python scripts/where_things_live.py --check FILE    # exit 1 if FILE's copy differs

The map sits between ``<!-- where:start -->`` and ``<!-- where:end -->``. One line per
module, folder or file that a newcomer looks for, each with the first sentence of its own
docstring (or of the folder's ``README.md``), so the map cannot drift from the code:
``tests/infra/test_operations.py`` fails when it is stale.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- where:start -->"
END = "<!-- where:end -->"

#: (heading, folder, glob): the sections of the map, in reading order.
SECTIONS = [
    ("The workflow", "statemachine", "*.json"),
    ("One handler per step", "functions", "*/app.py"),
    ("The library (the Lambda layer)", "layers/batch_embedder/batch_embedder", "**/*.py"),
    ("The local stack (dev only, never deployed)", "local/batch_embedder_local", "**/*.py"),
    ("Tests", "tests", "*/"),
    ("Benchmarks", "benchmarks", "*.py"),
    ("Scripts", "scripts", "*.py"),
]
#: What a folder of tests holds (their conftest says it too).
TEST_TIERS = {
    "unit": "pure: no stack, no Postgres, no moto; milliseconds each",
    "local": "moto in-process and the emulator, no state machine",
    "integration": "the real state machine on the local stack, with the embedded Postgres",
    "infra": "template.yaml, the ASL, sam validate, cfn-lint, the generated tables",
}


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def describe(path: Path) -> str:
    """What ``path`` is, from its own words: a module docstring or an ASL Comment."""
    if path.suffix == ".py":
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        return first_sentence(doc) if doc else ""
    if path.suffix == ".json":
        import json

        comment = json.loads(path.read_text(encoding="utf-8")).get("Comment", "")
        return first_sentence(str(comment))
    return ""


def render(root: Path = ROOT) -> str:
    """The map as Markdown, one table per section."""
    lines: list[str] = []
    for heading, folder, pattern in SECTIONS:
        lines += [f"**{heading}** (`{folder}/`)", "", "| path | what it is |", "|---|---|"]
        base = root / folder
        if folder == "tests":
            for tier, what in TEST_TIERS.items():
                if (base / tier).is_dir():
                    lines.append(f"| `tests/{tier}/` | {what} |")
        else:
            for path in sorted(base.glob(pattern)):
                if "__pycache__" in path.parts or (
                    path.name == "__init__.py" and path.parent == base
                ):
                    continue
                rel = path.relative_to(root).as_posix()
                if path.name == "__init__.py":
                    rel = path.parent.relative_to(root).as_posix() + "/"
                what = describe(path).replace("|", "\\|")
                lines.append(f"| `{rel}` | {what} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def splice(document: str, table: str) -> str:
    """``document`` with the text between the markers replaced by ``table``.

    Raises:
        ValueError: the markers are missing.
    """
    if START not in document or END not in document:
        raise ValueError(f"the markers {START} / {END} are missing")
    head, rest = document.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the map; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's map differs")
    group.add_argument("--write", metavar="FILE", help="replace FILE's map")
    args = parser.parse_args(argv)
    table = render()
    if args.check or args.write:
        path = Path(args.check or args.write)
        current = path.read_text(encoding="utf-8")
        wanted = splice(current, table)
        if args.write:
            path.write_text(wanted, encoding="utf-8")
            return 0
        if current != wanted:
            print(f"{path}: the map is stale; run scripts/where_things_live.py --write {path}")
            return 1
        return 0
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
