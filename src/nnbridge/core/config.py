"""Configuration validation against the workflow's JSON schema, with one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import NNBridgeError


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in ``default:`` values while it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _where(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping raises (PyYAML keeps the
    last one, so the first is dropped without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


def check_yaml(path: str | Path) -> None:
    """A YAML file that does not parse, refused in one line naming the line and column (snakemake's
    own message names neither); so is a key given twice in one mapping (YAML parsers keep the last
    one and drop the first without a word)."""
    path = Path(path)
    try:
        yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise NNBridgeError(f"{path}: key {dup.key!r} given twice (lines {dup.first} and {dup.again}); the second "
                            "would silently replace the first: merge them into one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            context += f" that starts at line {start.line + 1}"
        raise NNBridgeError(f"{path}: YAML syntax error at {where}: {problem}"
                            + (f" ({context})" if context else "") + "; fix the line (indent with spaces, "
                            "close brackets and quotes)") from None


def validate_config(config: dict[str, Any], schema_path: Path, config_name: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled in) or raise a one-line NNBridgeError."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_class = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(validator_class(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        message = error.message
        if error.validator == "contains" and "const" in (error.validator_value or {}):
            message = f"{error.instance} must include {error.validator_value['const']!r}"
        if error.validator == "additionalProperties" and isinstance(error.schema, dict):
            allowed = sorted(error.schema.get("properties", {}))
            if allowed:
                message += f" (allowed keys: {', '.join(allowed)})"
        raise NNBridgeError(
            f"{config_name}: invalid value at {_where(error)}: {message}; "
            f"see config/README.md and {schema_path}"
        )
    return config
