"""The policies shipped with Overdrive: ``canary``, ``linear``, ``exponential``, ``immediate``,
``manual``.

Each preset is a commented YAML file in ``rollout_policies/presets/`` (the source of truth, and a
template operators can copy) with a JSON twin holding the same document. Presets are read from
the YAML when PyYAML is installed and from the JSON twin otherwise, so they load on a vehicle's
base install too. A test fails if a twin drifts from its YAML; regenerate the twins with
``python -m rollout_policies.preset_twins``.
"""

from __future__ import annotations

import difflib
from importlib import resources
from importlib.resources.abc import Traversable

from overdrive.rollout_policies.documents import decode_json, decode_yaml, yaml_available
from overdrive.rollout_policies.errors import UnknownPreset
from overdrive.rollout_policies.model import Policy
from overdrive.rollout_policies.parse import parse_policy

PRESETS = ("canary", "linear", "exponential", "immediate", "manual")
"""Preset names, in the order ``overdrive policy list`` shows them."""


def preset(name: str) -> Policy:
    """The preset called ``name``; :class:`UnknownPreset` (with a suggestion) otherwise."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownPreset(f"unknown preset {name!r} (presets: {', '.join(PRESETS)}){hint}")
    source = f"preset {name!r}"
    if yaml_available():
        document = decode_yaml(preset_file(name, "yaml").read_text("utf-8"), source)
    else:
        document = decode_json(preset_file(name, "json").read_text("utf-8"), source)
    return parse_policy(document, source=source)


def all_presets() -> dict[str, Policy]:
    """Every preset by name, in :data:`PRESETS` order."""
    return {name: preset(name) for name in PRESETS}


def preset_file(name: str, suffix: str) -> Traversable:
    """The packaged ``presets/NAME.SUFFIX`` (``yaml`` or ``json``)."""
    return resources.files("overdrive.rollout_policies").joinpath("presets", f"{name}.{suffix}")
