"""Rollout policies: the policy format, the shipped presets and the pure decision engine.

A policy (YAML or JSON) lists stages, each admitting a larger share of a campaign's eligible
fleet and judged on soak time, sample size, success and failure rates before the next may start.
The engine is pure: :func:`decide` turns a policy plus a campaign's counts and times into a
:class:`Decision`; :func:`bucket` and :func:`admission_target` say which vehicles each stage
admits. No I/O, no clock, no database: the server applies decisions, ``overdrive simulate``
replays them over synthetic fleets. Imports only ``overdrive`` and (lazily, for YAML) PyYAML.
"""

from overdrive.maintenance import MaintenanceWindow, in_maintenance_window
from overdrive.rollout_policies.cohort import (
    BUCKETS,
    admission_order,
    admission_target,
    bucket,
    cutoff,
    in_cohort,
)
from overdrive.rollout_policies.documents import load_policy, read_document
from overdrive.rollout_policies.engine import (
    Decision,
    Gate,
    Kind,
    StageState,
    clock,
    decide,
    required_sample,
)
from overdrive.rollout_policies.errors import (
    InvalidPolicy,
    InvalidState,
    PolicyError,
    PolicyFileError,
    UnknownPreset,
)
from overdrive.rollout_policies.groups import (
    HARDWARE_ID,
    OVERALL,
    GroupCounts,
    GroupVerdict,
    Judgement,
    judge,
)
from overdrive.rollout_policies.model import Action, Policy, Stage
from overdrive.rollout_policies.parse import parse_policy
from overdrive.rollout_policies.presets import PRESETS, all_presets, preset
from overdrive.rollout_policies.units import Ratio, Share

__all__ = [
    "BUCKETS",
    "HARDWARE_ID",
    "OVERALL",
    "PRESETS",
    "Action",
    "Decision",
    "Gate",
    "GroupCounts",
    "GroupVerdict",
    "InvalidPolicy",
    "InvalidState",
    "Judgement",
    "Kind",
    "MaintenanceWindow",
    "Policy",
    "PolicyError",
    "PolicyFileError",
    "Ratio",
    "Share",
    "Stage",
    "StageState",
    "UnknownPreset",
    "admission_order",
    "admission_target",
    "all_presets",
    "bucket",
    "clock",
    "cutoff",
    "decide",
    "in_cohort",
    "in_maintenance_window",
    "judge",
    "load_policy",
    "parse_policy",
    "preset",
    "read_document",
    "required_sample",
]
