"""The create-campaign form: from posted fields to the body :func:`server.campaigns.create`
takes, with an error per field that people can fix where they typed.

The form checks what only the form knows (empty fields, how a pasted policy decodes, unknown
vehicle ids); everything else is left to the domain function, whose one-line ``ApiError``
messages are placed next to the field they are about (:func:`field_for`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

import rollout_policies as rp
from overdrive.errors import OverdriveError
from rollout_policies.documents import decode_json, decode_yaml
from server.validation import ID_PATTERN

MAX_LIST = 10_000
_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class PresetChoice:
    """A shipped policy preset as the form offers it."""

    name: str
    description: str
    summary: str


@functools.cache
def preset_choices() -> tuple[PresetChoice, ...]:
    """The presets of ``rollout_policies.PRESETS``, read once per process."""
    return tuple(
        PresetChoice(name, policy.description or "", policy.summary())
        for name, policy in rp.all_presets().items()
    )


def split_list(text: str) -> list[str]:
    """``"a, b  c"`` → ``["a", "b", "c"]``: commas and whitespace separate, blanks vanish."""
    return [item for item in _SPLIT.split(text.strip()) if item]


def _decode_policy(text: str) -> Any:
    source = "pasted policy"
    return decode_json(text, source) if text.lstrip().startswith("{") else decode_yaml(text, source)


def parse_campaign_form(
    form: MultiDict[str, str], hardware: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The API body for ``form`` and errors keyed by field (name, releases, policy, model, …)."""
    errors: dict[str, str] = {}
    body: dict[str, Any] = {}

    name = form.get("name", "").strip()
    if not name:
        errors["name"] = "Give the campaign a name."
    elif len(name) > 200:
        errors["name"] = "Keep the name to 200 characters."
    body["name"] = name

    releases = {}
    for hw in hardware:
        version = form.get(f"release-{hw}", "").strip()
        if version:
            releases[hw] = version
    if not releases:
        errors["releases"] = "Choose a release for at least one hardware id."
    body["releases"] = releases

    choice = form.get("policy", "")
    if choice in rp.PRESETS:
        body["policy"] = choice
    elif choice == "custom":
        text = form.get("policy_text", "")
        if not text.strip():
            errors["policy"] = "Paste a policy document (YAML or JSON), or choose a preset."
        else:
            try:
                document = _decode_policy(text)
                rp.parse_policy(document, source="pasted policy")
            except OverdriveError as e:
                errors["policy"] = str(e)
            else:
                body["policy"] = document
    else:
        errors["policy"] = "Choose a policy preset, or paste a custom policy."

    campaign_filter: dict[str, list[str]] = {}
    for key in ("model", "region", "vehicles"):
        values = split_list(form.get(key, ""))
        if len(values) > MAX_LIST:
            errors[key] = f"At most {MAX_LIST} values."
        elif key == "vehicles" and (bad := [v for v in values if not ID_PATTERN.match(v)]):
            errors[key] = f"Not a vehicle id: {bad[0]!r}."
        elif values:
            campaign_filter[key] = values
    body["filter"] = campaign_filter
    return body, errors


def field_for(message: str) -> str:
    """Which form field a domain error message is about (``form`` when it is about none)."""
    lowered = message.lower()
    if "'name'" in lowered:
        return "name"
    if "filter" in lowered or "installed_version" in lowered:
        return "filter"
    if "release" in lowered or "hardware id" in lowered:
        return "releases"
    if "polic" in lowered or "preset" in lowered or "stage" in lowered:
        return "policy"
    return "form"
