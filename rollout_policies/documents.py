"""Read policy documents from files and text: JSON always, YAML when PyYAML is installed.

PyYAML is imported only when a YAML document is actually parsed, so JSON policies (and the
presets, which ship a JSON twin) work on a vehicle's base install. The YAML reader differs from
``yaml.safe_load`` in two ways that matter for policies: a duplicated field is an error (the last
one would otherwise win silently), and ``22:00`` stays the text ``"22:00"`` instead of YAML 1.1's
base-60 number 1320. JSON objects are checked for duplicate fields too.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any

from overdrive.rollout_policies.errors import PolicyFileError
from overdrive.rollout_policies.model import Policy
from overdrive.rollout_policies.parse import parse_policy

MAX_DOCUMENT_BYTES = 1 << 20
YAML_SUFFIXES = (".yaml", ".yml")
POLICY_SUFFIXES = (".json", *YAML_SUFFIXES)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; errors name the file as it was given."""
    return parse_policy(read_document(path), source=str(path))


def read_document(path: str | Path) -> Any:
    """Decode a policy file (``.json`` as JSON, anything else as YAML) without validating it."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as e:
        raise PolicyFileError(f"{source}: cannot read: {e.strerror or e}") from e
    if len(data) > MAX_DOCUMENT_BYTES:
        raise PolicyFileError(f"{source}: larger than 1 MiB; that is not a policy document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyFileError(f"{source}: not UTF-8 text (byte {e.start})") from e
    json_format = Path(path).suffix.lower() == ".json"
    return decode_json(text, source) if json_format else decode_yaml(text, source)


def decode_json(text: str, source: str) -> Any:
    """Decode JSON text, rejecting duplicate fields."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise PolicyFileError(
            f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except _DuplicateField as e:
        raise PolicyFileError(f"{source}: field {e.args[0]!r} appears twice in one mapping") from e


def yaml_available() -> bool:
    """Can YAML documents be read here (is PyYAML importable)?"""
    try:
        importlib.import_module("yaml")
    except ImportError:
        return False
    return True


def decode_yaml(text: str, source: str) -> Any:
    """Decode YAML text (one document) with the policy loader; needs PyYAML."""
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError as e:
        raise PolicyFileError(
            f"{source}: reading YAML needs PyYAML, which is not installed "
            "(pip install 'overdrive[server]'), or write the policy as JSON"
        ) from e
    loader = _loader_class(yaml)
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass: plain data only
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "not valid YAML"
        raise PolicyFileError(f"{source}: invalid YAML{where}: {problem}") from e
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not valid YAML"
        raise PolicyFileError(f"{source}: invalid YAML: {first}") from e


class _DuplicateField(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateField(key)
        result[key] = value
    return result


@functools.cache
def _loader_class(yaml: Any) -> Any:
    """A ``yaml.SafeLoader`` subclass: no base-60 numbers, no duplicate fields (built once)."""

    class PolicyLoader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def int_or_text(loader: Any, node: Any) -> Any:
        if ":" in loader.construct_scalar(node):
            return loader.construct_scalar(node)
        return loader.construct_yaml_int(node)

    def float_or_text(loader: Any, node: Any) -> Any:
        if ":" in loader.construct_scalar(node):
            return loader.construct_scalar(node)
        return loader.construct_yaml_float(node)

    def unique_mapping(loader: Any, node: Any) -> Any:
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"field {key!r} appears twice in one mapping", mark
                )
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    PolicyLoader.add_constructor("tag:yaml.org,2002:int", int_or_text)
    PolicyLoader.add_constructor("tag:yaml.org,2002:float", float_or_text)
    PolicyLoader.add_constructor("tag:yaml.org,2002:map", unique_mapping)
    return PolicyLoader
