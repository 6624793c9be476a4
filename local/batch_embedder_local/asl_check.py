"""Checks cfn-lint does not make on ``statemachine/*.asl.json`` (it never reads that file).

- ``StartAt`` and every ``Next`` / ``Default`` / ``Catch[].Next`` (also inside Choice rules
  and nested Parallel/Map branches) name a state that exists;
- every state is reachable from ``StartAt``; non-terminal states have a way on;
- every ``${Name}`` in the file has a ``DefinitionSubstitutions`` entry in template.yaml, and
  every substitution is used;
- every Lambda Task has a ``Retry`` and a ``Catch``;
- every Choice rule on a path that may be missing is guarded by ``IsPresent`` first
  (moto takes ``Default`` where AWS raises ``States.Runtime``).

Run: ``python -m batch_embedder_local.asl_check`` (exit 1 with one line per problem).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .template import ROOT, load_template


def _targets(state: dict[str, Any]) -> list[str]:
    found = [state["Next"]] if "Next" in state else []
    if "Default" in state:
        found.append(state["Default"])
    found += [c["Next"] for c in state.get("Catch", [])]
    found += [rule["Next"] for rule in state.get("Choices", []) if "Next" in rule]
    return found


def check_states(machine: dict[str, Any], where: str = "") -> list[str]:
    """Problems of one state machine (or branch): targets, reachability, Retry/Catch."""
    problems: list[str] = []
    states: dict[str, Any] = machine.get("States", {})
    start = machine.get("StartAt")
    if start not in states:
        problems.append(f"{where}StartAt {start!r} is not a state")
    for name, state in states.items():
        for target in _targets(state):
            if target not in states:
                problems.append(f"{where}{name}: target {target!r} is not a state")
        kind = state.get("Type")
        terminal = kind in {"Succeed", "Fail"} or state.get("End") is True
        if not terminal and kind != "Choice" and "Next" not in state:
            problems.append(f"{where}{name}: neither Next nor End")
        if kind == "Task" and "lambda" in str(state.get("Resource", "")):
            if not state.get("Retry"):
                problems.append(f"{where}{name}: Lambda Task without Retry")
            if not state.get("Catch"):
                problems.append(f"{where}{name}: Lambda Task without Catch")
        for branch in state.get("Branches", []):
            problems += check_states(branch, f"{where}{name}/")
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                problems += check_states(state[key], f"{where}{name}/")
    seen: set[str] = set()
    todo = [start] if start in states else []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [t for t in _targets(states[name]) if t in states]
    for name in states:
        if name not in seen:
            problems.append(f"{where}{name}: unreachable from StartAt")
    return problems


def check_choice_guards(machine: dict[str, Any]) -> list[str]:
    """Choice states must test ``IsPresent`` on a variable before comparing it."""
    problems: list[str] = []
    for name, state in machine.get("States", {}).items():
        if state.get("Type") != "Choice":
            continue
        guarded: set[str] = set()
        for rule in state.get("Choices", []):
            text = json.dumps(rule)
            guarded |= set(re.findall(r'"Variable": "([^"]+)", "IsPresent"', text))
            for var in re.findall(r'"Variable": "([^"]+)", "(?:String|Numeric|Boolean)', text):
                if var not in guarded:
                    problems.append(f"{name}: {var} compared before an IsPresent test")
    return problems


def check_file(asl_path: Path, substitutions: set[str]) -> list[str]:
    """Every problem of one ASL file given the template's substitution names."""
    text = asl_path.read_text(encoding="utf-8")
    machine = json.loads(text)
    problems = check_states(machine) + check_choice_guards(machine)
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text))
    problems += [
        f"${{{n}}} has no DefinitionSubstitutions entry" for n in sorted(used - substitutions)
    ]
    problems += [f"substitution {n} is never used" for n in sorted(substitutions - used)]
    return problems


def check_template(template_path: Path | None = None) -> list[str]:
    """Check every state machine of template.yaml against its ASL file."""
    template = load_template(template_path) if template_path else load_template()
    problems: list[str] = []
    for logical, res in template["Resources"].items():
        if res["Type"] != "AWS::Serverless::StateMachine":
            continue
        props = res["Properties"]
        subs = set(props.get("DefinitionSubstitutions", {}))
        problems += [f"{logical}: {p}" for p in check_file(ROOT / props["DefinitionUri"], subs)]
    return problems


def main() -> int:
    """Print problems; exit 1 if any."""
    problems = check_template()
    for p in problems:
        print(p)
    print(f"ASL check: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
