"""Helpers for the policy tests: a compact way to build campaign states."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from overdrive.rollout_policies import StageState

from .strategies import T0


def state(*, hours: float = 0, stage_hours: float | None = None, **counts: Any) -> StageState:
    """A state ``hours`` after the campaign (and, unless ``stage_hours``, the stage) started."""
    stage_started = T0 if stage_hours is None else T0 + timedelta(hours=hours - stage_hours)
    values: dict[str, Any] = {
        "stage_index": 0,
        "eligible": 1000,
        "admitted": 10,
        "succeeded": 0,
        "failed": 0,
        "rolled_back": 0,
    }
    values.update(counts)
    return StageState(
        campaign_started_at=T0,
        stage_started_at=stage_started,
        now=T0 + timedelta(hours=hours),
        **values,
    )
