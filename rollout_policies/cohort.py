"""Cohorts: which vehicles a stage admits, deterministically and monotonically.

Every (campaign, vehicle) pair hashes to a bucket in ``[0, 10000)``::

    bucket = int.from_bytes(sha256(b"overdrive-cohort-v1\\0" + len(c).to_bytes(4, "big") + c + v)[:8], "big") % 10000

with ``c`` and ``v`` the UTF-8 campaign and vehicle ids (the length prefix keeps ``("ab", "c")``
and ``("a", "bc")`` apart). The hash is cryptographic so nobody can choose ids that land early,
and it depends on the campaign so the same cars are not always the canaries.

Two ways to turn a stage's share into admitted vehicles:

- **Exact (what the server does):** order the eligible vehicles by ``(bucket, vehicle_id)`` and
  admit the first :func:`admission_target` of them. The count is exactly the share (percentages
  round up, so a non-empty fleet always gets at least one canary), and because targets never
  decrease from stage to stage, every stage's set contains the previous one.
- **By cutoff (stateless):** admit a vehicle when ``bucket < cutoff(stage, eligible)``. Nothing
  needs to be stored, but the admitted count is only statistically near the share (binomial
  around it). A percentage's cutoff does not depend on the fleet size (1% is buckets 0–99), so a
  vehicle once in stays in even as the fleet grows; a count's cutoff shrinks as the fleet grows,
  which is one reason the server persists admission instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from overdrive.rollout_policies.model import Stage
from overdrive.rollout_policies.units import PPM

BUCKETS = 10_000
_DOMAIN = b"overdrive-cohort-v1\0"


def bucket(campaign_id: str, vehicle_id: str) -> int:
    """The vehicle's cohort bucket in this campaign, in ``[0, 10000)``."""
    campaign = campaign_id.encode()
    digest = hashlib.sha256(
        _DOMAIN + len(campaign).to_bytes(4, "big") + campaign + vehicle_id.encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def admission_target(stage: Stage, eligible: int) -> int:
    """How many of ``eligible`` vehicles are admitted by the end of ``stage`` (exact variant).

    ``ceil(percent × eligible)`` for a percentage, ``min(count, eligible)`` for a count, and
    never less than an earlier stage of the same policy admitted (``stage.reach``).
    """
    return stage.cumulative.of(max(eligible, 0))


def cutoff(stage: Stage, eligible: int) -> int:
    """The bucket cutoff for ``stage``: vehicles with ``bucket < cutoff`` are admitted.

    A percentage maps to ``ceil(percent × 10000)`` buckets (exact for up to two decimals); a count
    to ``ceil(count × 10000 / eligible)`` buckets, so a positive share opens at least one bucket
    and never more than one bucket beyond the share.
    """
    share = stage.cumulative
    by_percent = -(-share.ppm * BUCKETS // PPM)
    by_count = -(-share.count * BUCKETS // eligible) if eligible > 0 and share.count else 0
    return min(BUCKETS, max(by_percent, by_count))


def in_cohort(campaign_id: str, vehicle_id: str, cutoff: int) -> bool:
    """Is the vehicle admitted by a stage with this bucket ``cutoff``?"""
    return bucket(campaign_id, vehicle_id) < cutoff


def admission_order(campaign_id: str, vehicle_ids: Iterable[str]) -> list[str]:
    """Vehicle ids in the order the exact variant admits them: by ``(bucket, vehicle_id)``.

    The first ``admission_target(stage, len(ids))`` of this list are the stage's cohort.
    """
    return sorted(vehicle_ids, key=lambda vehicle_id: (bucket(campaign_id, vehicle_id), vehicle_id))
