"""The shipped presets: each loads and validates, with and without PyYAML, and the JSON twins
match their YAML sources."""

from __future__ import annotations

import json
import sys

import pytest

from overdrive.rollout_policies import PRESETS, UnknownPreset, all_presets, parse_policy, preset
from overdrive.rollout_policies.preset_twins import json_twin
from overdrive.rollout_policies.presets import preset_file


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_validates_and_round_trips(name: str) -> None:
    policy = preset(name)
    assert policy.name == name
    assert policy.description
    assert policy.full_coverage
    assert parse_policy(json.loads(json.dumps(policy.to_dict()))) == policy


@pytest.mark.parametrize("name", PRESETS)
def test_json_twin_matches_yaml(name: str) -> None:
    twin = preset_file(name, "json").read_text("utf-8")
    assert twin == json_twin(name), (
        f"presets/{name}.json is stale: run .venv/bin/python -m rollout_policies.preset_twins"
    )


def test_presets_load_without_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    with_yaml = all_presets()
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert all_presets() == with_yaml


def test_preset_shapes() -> None:
    shares = {name: [str(s.share) for s in p.stages] for name, p in all_presets().items()}
    assert shares["canary"] == [
        *("0.05%", "0.1%", "0.2%", "0.4%", "0.8%", "1.6%", "3.2%", "6.4%", "12.5%"),
        *("25%", "50%", "100%"),
    ]
    assert shares["linear"] == [f"{10 * i}%" for i in range(1, 11)]
    assert shares["exponential"] == ["1%", "2%", "4%", "8%", "16%", "32%", "64%", "100%"]
    assert shares["immediate"] == ["100%"]
    assert all(stage.manual_approval for stage in preset("manual").stages)
    assert preset("canary").stages[0].on_breach == "abort"


def test_unknown_preset_suggests() -> None:
    with pytest.raises(
        UnknownPreset,
        match=r"unknown preset 'canry' \(presets: canary, .*\); did you mean 'canary'\?",
    ):
        preset("canry")
