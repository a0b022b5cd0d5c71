"""Developer tool: regenerate each preset's JSON twin from its YAML.

``python -m rollout_policies.preset_twins`` (needs PyYAML). The twins let presets load without
PyYAML; ``tests/policies/test_presets.py`` fails when one has drifted from its YAML.
"""

from __future__ import annotations

import json
from pathlib import Path

from overdrive.rollout_policies.documents import decode_yaml
from overdrive.rollout_policies.presets import PRESETS, preset_file


def json_twin(name: str) -> str:
    """The JSON twin's expected text: the YAML document, decoded and written as JSON."""
    document = decode_yaml(preset_file(name, "yaml").read_text("utf-8"), f"preset {name!r}")
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name in PRESETS:
        path = Path(__file__).with_name("presets") / f"{name}.json"
        path.write_text(json_twin(name), encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
