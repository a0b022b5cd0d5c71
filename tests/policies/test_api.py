"""The contract other packages rely on: what the server calls, and what importing costs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import overdrive.rollout_policies as rp


def test_the_server_flow() -> None:
    """The calls server/campaigns.py makes, with the same arguments."""
    stored = rp.preset("canary").to_dict()
    stored = json.loads(json.dumps(stored))  # a JSON column
    policy = rp.parse_policy(stored, source="campaign 42")
    assert rp.admission_target(policy.stages[0], 5000) == 3
    assert 0 <= rp.bucket("42", "VIN1") < rp.BUCKETS
    now = datetime(2025, 1, 1, tzinfo=UTC)
    state = rp.StageState(
        stage_index=0,
        stage_started_at=now - timedelta(hours=5),
        campaign_started_at=now - timedelta(hours=5),
        now=now,
        eligible=5000,
        admitted=3,
        succeeded=3,
        failed=0,
        rolled_back=0,
        in_progress=0,
        approved=False,
    )
    decision = rp.decide(policy, state)
    assert (decision.kind, decision.next_stage_index, decision.target) == ("advance", 1, 5)
    assert stored["maintenance_windows"] == [] and stored["stages"][0]["name"] == "pilot-0.05%"


FORBIDDEN = (
    "flask",
    "sqlalchemy",
    "yaml",
    "boto3",
    "overdrive.server",
    "overdrive.signing",
    "overdrive.client",
)


def loaded_after(program: str) -> list[str]:
    """Which FORBIDDEN modules a fresh interpreter has imported after running ``program``."""
    check = f"{program}; print(','.join(m for m in {FORBIDDEN!r} if sys.modules.get(m)))"
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {check}"], capture_output=True, text=True, check=True
    )
    last_line = result.stdout.splitlines()[-1] if result.stdout.strip() else ""
    return [name for name in last_line.split(",") if name]


def test_json_and_documents_never_import_yaml_or_the_server_stack() -> None:
    assert (
        loaded_after(
            "import rollout_policies as rp; rp.parse_policy({'stages': [{'share': '100%'}]})"
        )
        == []
    )


def test_presets_load_on_a_base_install() -> None:
    # sys.modules['yaml'] = None makes 'import yaml' fail, as on a vehicle without PyYAML.
    program = (
        "sys.modules['yaml'] = None; import rollout_policies as rp; print(len(rp.all_presets()))"
    )
    assert loaded_after(program) == []
