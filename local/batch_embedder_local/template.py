"""Read ``template.yaml`` and resolve the intrinsic functions the local stack needs.

The local stack builds its buckets, tables, secrets, functions and state machine from the
template's own resource definitions; this module turns ``!Ref``, ``!GetAtt``, ``!Sub``,
``!If``, ``!Join``, ``!Equals``, ``!Not``, ``!And``, ``!Or`` and ``!FindInMap`` into values
given the parameters and the local physical names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"

_SHORT_TAGS = {
    "Ref": "Ref",
    "GetAtt": "Fn::GetAtt",
    "Sub": "Fn::Sub",
    "If": "Fn::If",
    "Join": "Fn::Join",
    "Equals": "Fn::Equals",
    "Not": "Fn::Not",
    "And": "Fn::And",
    "Or": "Fn::Or",
    "Select": "Fn::Select",
    "Split": "Fn::Split",
    "Condition": "Condition",
}


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation's short-form tags (``!Ref`` ...)."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = _SHORT_TAGS.get(suffix, f"Fn::{suffix}")
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as plain data (intrinsics as ``{"Ref": ...}`` / ``{"Fn::...": ...}``)."""
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return data


class NoValue:
    """``AWS::NoValue``: the key is dropped."""


class Resolver:
    """Resolves intrinsic functions against parameters and local resource attributes.

    ``refs[logical_id]`` is what ``!Ref`` returns; ``attrs[logical_id][name]`` what
    ``!GetAtt logical_id.name`` returns.
    """

    def __init__(
        self,
        template: dict[str, Any],
        parameters: dict[str, str],
        refs: dict[str, str],
        attrs: dict[str, dict[str, str]],
        pseudo: dict[str, str],
    ) -> None:
        self.template = template
        self.parameters = parameters
        self.refs = refs
        self.attrs = attrs
        self.pseudo = pseudo

    def condition(self, name: str) -> bool:
        """Evaluate the named condition of the template."""
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def included(self, resource: dict[str, Any]) -> bool:
        """Whether ``resource`` exists given the parameters (its ``Condition``, if any)."""
        name = resource.get("Condition")
        return name is None or self.condition(name)

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NoValue()
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"!Ref {name}: not a parameter or a local resource")

    def _sub(self, text: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            token = match.group(1)
            if token in variables:
                return str(self.resolve(variables[token]))
            if "." in token:
                logical, attr = token.split(".", 1)
                return self.attrs[logical][attr]
            return str(self._ref(token))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic inside ``value`` (dicts and lists recursively)."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if not isinstance(v, NoValue)]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((name, arg),) = value.items()
            if name == "Ref":
                return self._ref(arg)
            if name == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self.attrs[logical][attr]
            if name == "Fn::Sub":
                if isinstance(arg, list):
                    return self._sub(arg[0], arg[1])
                return self._sub(arg, {})
            if name == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if name == "Fn::Join":
                sep, parts = arg
                resolved = self.resolve(parts)
                return sep.join(
                    str(p) for p in (resolved if isinstance(resolved, list) else [resolved])
                )
            if name == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return left == right
            if name == "Fn::Not":
                return not self.resolve(arg[0])
            if name == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if name == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if name == "Fn::FindInMap":
                table, top, second = (str(self.resolve(a)) for a in arg)
                return self.template["Mappings"][table][top][second]
            if name == "Condition":
                return self.condition(arg)
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not isinstance(v, NoValue)}


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    """Every template parameter's default, as a string (CloudFormation passes strings)."""
    return {
        name: ",".join(spec["Default"])
        if isinstance(spec.get("Default"), list)
        else str(spec.get("Default", ""))
        for name, spec in template.get("Parameters", {}).items()
    }
