"""Campaigns: create, start, pause, resume, abort, approve, status, and the periodic evaluator.

State machine: ``draft → running ⇄ paused → completed | aborted``. Every transition is a
compare-and-set on the campaign's ``version`` column (``UPDATE … WHERE id = :id AND version =
:seen``), so two workers evaluating at once cannot both advance a stage; the loser sees zero rows
updated and leaves it. Vehicles are admitted in a fixed order — by their cohort bucket (a hash of
campaign and vehicle id), then id — up to the stage's share, so admission is exact and monotonic.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

import overdrive.rollout_policies as rp
from overdrive.errors import OverdriveError
from overdrive.server.audit import record
from overdrive.server.context import ServerContext
from overdrive.server.errors import BadRequest, Conflict, NotFoundError
from overdrive.server.models import (
    ABORTED,
    ACTIVE_STATES,
    DRAFT,
    PAUSED,
    RUNNING,
    Campaign,
    CampaignRelease,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.text import one_line, text_problem

SUCCEEDED = ("committed",)
FAILED = ("failed", "rolled_back")
#: Ids per IN (...) list: PostgreSQL takes at most 65,535 bind parameters per statement.
_ID_BATCH = 10_000
#: Hardware ids one campaign may update (one software set: a vehicle has at most this many ECUs).
MAX_RELEASES = 64
FILTER_KEYS = ("model", "region", "hardware_id", "vehicles", "exclude", "installed_version")


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# ------------------------------------------------------------------------------ policies


def resolve_policy(spec: Any) -> tuple[str, dict[str, Any]]:
    """A preset name or a policy document → (name, normalised policy dict)."""
    try:
        if isinstance(spec, str):
            return spec, rp.preset(spec).to_dict()
        if isinstance(spec, dict):
            return str(spec.get("name", "custom")), rp.parse_policy(spec, source="policy").to_dict()
    except OverdriveError as e:
        raise BadRequest(str(e)) from e
    raise BadRequest("field 'policy' must be a preset name or a policy object")


def policy_of(campaign: Campaign) -> rp.Policy:
    return rp.parse_policy(campaign.policy, source=f"campaign {campaign.id}")


# ------------------------------------------------------------------------------ create


def normalise_filter(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("field 'filter' must be an object")
    result: dict[str, list[str]] = {}
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise BadRequest(f"filter {key!r} must be a non-empty string or list of strings")
        for text in (key, *values):
            problem = text_problem(text)
            if problem or len(text) > 200:
                raise BadRequest(
                    f"filter {one_line(key, 40)!r}: names and values must be one line of at "
                    f"most 200 characters{f', not {problem}' if problem else ''}"
                )
        if key == "installed_version" and not all(".." in v or v for v in values):
            raise BadRequest("filter 'installed_version' takes versions or a range FROM..TO")
        result[key] = values
    return result


def create(ctx: ServerContext, session: Session, body: dict[str, Any]) -> Campaign:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise BadRequest("field 'name' must be a non-empty string (max 200)")
    problem = text_problem(name)
    if problem:
        raise BadRequest(f"field 'name' must be one line of text, not {problem}")
    releases = body.get("releases")
    if not isinstance(releases, dict) or not releases:
        raise BadRequest("field 'releases' must be an object of hardware id → version")
    if len(releases) > MAX_RELEASES:
        raise BadRequest(f"field 'releases' may name at most {MAX_RELEASES} hardware ids")
    if "policy" not in body:
        raise BadRequest("missing field 'policy'")
    order = install_order(body.get("install_order"), releases)
    policy_name, policy = resolve_policy(body["policy"])
    campaign_filter = normalise_filter(body.get("filter"))
    index = ctx.releases.index(force=True)
    campaign = Campaign(
        id=str(uuid.uuid4()),
        name=name.strip(),
        state=DRAFT,
        policy_name=policy_name,
        policy=policy,
        filter=campaign_filter,
        created_at=utcnow(),
        created_by=_actor(),
    )
    session.add(campaign)
    session.flush()
    for hw, version in releases.items():
        if not isinstance(version, str):
            raise BadRequest(f"release for {hw!r} must be a version string")
        try:
            release = index.get(hw, version)
        except OverdriveError as e:
            raise BadRequest(str(e)) from e
        info = release.full.info
        session.add(
            CampaignRelease(
                campaign_id=campaign.id,
                hardware_id=hw,
                version=version,
                release_counter=info.release_counter,
                image_sha256=info.image.sha256,
                image_length=info.image.length,
                install_order=order[hw],
            )
        )
    record(
        session,
        "campaign.create",
        f"campaign:{campaign.id}",
        name=campaign.name,
        releases=releases,
        install_order=sorted(order, key=order.__getitem__),
        policy=policy_name,
        filter=campaign_filter,
    )
    return campaign


def install_order(raw: Any, releases: dict[str, Any]) -> dict[str, int]:
    """Hardware id → its rank in the campaign's software set (0 installs and trial-boots first):
    ``install_order`` lists every hardware id of ``releases`` once (default: their order)."""
    if raw is None:
        return {hw: rank for rank, hw in enumerate(releases)}
    if not isinstance(raw, list) or not all(isinstance(hw, str) for hw in raw):
        raise BadRequest("field 'install_order' must be a list of hardware ids")
    if len(set(raw)) != len(raw) or set(raw) != set(releases):
        raise BadRequest(
            "field 'install_order' must list each hardware id of 'releases' exactly once "
            f"({', '.join(one_line(hw, 64) for hw in releases)})"
        )
    return {hw: rank for rank, hw in enumerate(raw)}


def _actor() -> str:
    from flask import g, has_request_context

    return str(g.get("actor", "cli")) if has_request_context() else "cli"


MIN_PREFIX = 4
_PREFIX = re.compile(r"[0-9a-f-]{4,36}")


def get(session: Session, campaign_id: str, *, lock: bool = False) -> Campaign:
    """The campaign with this id, or with this unique id prefix (at least 4 characters: the
    demo and the CLI print short ids)."""
    campaign = session.get(Campaign, campaign_id, with_for_update=lock)
    if campaign is None and _PREFIX.fullmatch(campaign_id):
        matches = list(
            session.scalars(select(Campaign.id).where(Campaign.id.like(f"{campaign_id}%")).limit(2))
        )
        if len(matches) > 1:
            raise Conflict(
                f"campaign id prefix {campaign_id!r} matches several campaigns; give more"
            )
        if matches:
            campaign = session.get(Campaign, matches[0], with_for_update=lock)
    if campaign is None:
        raise NotFoundError(f"no campaign {one_line(campaign_id, 80)}")
    return campaign


# ------------------------------------------------------------------------------ transitions


def transition(
    session: Session, campaign: Campaign, *, expect: tuple[str, ...], **values: Any
) -> None:
    """Compare-and-set: apply ``values`` only if nobody changed the campaign since we read it."""
    if campaign.state not in expect:
        raise Conflict(
            f"campaign {campaign.id} is {campaign.state}; this needs it to be {' or '.join(expect)}"
        )
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.version == campaign.version)
        .values(version=campaign.version + 1, **values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"campaign {campaign.id} was changed concurrently; retry")
    session.refresh(campaign)


def eligible_vehicles(
    ctx: ServerContext, session: Session, campaign: Campaign
) -> list[tuple[str, str]]:
    """(vehicle id, hardware id) pairs the campaign's filter selects, below each release."""
    return [(vehicle, hw) for vehicle, hw, _version in eligible_memberships(ctx, session, campaign)]


def eligible_memberships(
    ctx: ServerContext, session: Session, campaign: Campaign
) -> list[tuple[str, str, str]]:
    """(vehicle id, hardware id, installed version) the campaign's filter selects."""
    f = campaign.filter
    pairs: list[tuple[str, str, str]] = []
    releases = session.scalars(
        select(CampaignRelease).where(CampaignRelease.campaign_id == campaign.id)
    )
    for release in releases:
        if "hardware_id" in f and release.hardware_id not in f["hardware_id"]:
            continue
        # One row per ECU of this hardware id that is behind the release (a vehicle may have
        # several): the vehicle is eligible once, from the version of the ECU furthest behind.
        query = (
            select(
                InstalledImage.vehicle_id, InstalledImage.version, InstalledImage.release_counter
            )
            .join(Vehicle, Vehicle.id == InstalledImage.vehicle_id)
            .where(
                InstalledImage.hardware_id == release.hardware_id,
                InstalledImage.release_counter < release.release_counter,
            )
        )
        if "model" in f:
            query = query.where(Vehicle.model.in_(f["model"]))
        if "region" in f:
            query = query.where(Vehicle.region.in_(f["region"]))
        if "vehicles" in f:
            query = query.where(Vehicle.id.in_(f["vehicles"]))
        if "exclude" in f:
            query = query.where(Vehicle.id.not_in(f["exclude"]))
        if "installed_version" in f:
            query = query.where(
                InstalledImage.version.in_(
                    _versions(ctx, release.hardware_id, f["installed_version"])
                )
            )
        attribute_filters = {k: v for k, v in f.items() if k not in FILTER_KEYS}
        installed: dict[str, str] = {}
        lowest: dict[str, int] = {}
        for vehicle, version, counter in session.execute(query):
            if vehicle not in lowest or (counter, version) < (lowest[vehicle], installed[vehicle]):
                installed[vehicle], lowest[vehicle] = version, counter
        ids = list(installed)
        if attribute_filters:
            vehicles = {
                v.id: v
                for start_at in range(0, len(ids), _ID_BATCH)
                for v in session.scalars(
                    select(Vehicle).where(Vehicle.id.in_(ids[start_at : start_at + _ID_BATCH]))
                )
            }
            ids = [
                i
                for i in ids
                if all(
                    str(vehicles[i].attributes.get(k)) in vals
                    for k, vals in attribute_filters.items()
                )
            ]
        pairs.extend((vehicle_id, release.hardware_id, installed[vehicle_id]) for vehicle_id in ids)
    return pairs


def _versions(ctx: ServerContext, hardware_id: str, specs: list[str]) -> list[str]:
    """Expand ``FROM..TO`` ranges (by release counter in the signed repository) to versions."""
    known = ctx.releases.index().releases.get(hardware_id, {})
    by_counter = sorted(known.values(), key=lambda r: r.full.info.release_counter)
    versions: list[str] = []
    for spec in specs:
        if ".." not in spec:
            versions.append(spec)
            continue
        low, high = spec.split("..", 1)
        counters = {r.full.info.version: r.full.info.release_counter for r in by_counter}
        lo = counters.get(low, 0) if low else 0
        hi = counters.get(high, 1 << 62) if high else 1 << 62
        if (low and low not in counters) or (high and high not in counters):
            raise BadRequest(
                f"installed_version range {spec!r} names a version not in the repository"
            )
        versions.extend(v for v, c in counters.items() if lo <= c <= hi)
    return versions


def start(ctx: ServerContext, session: Session, campaign_id: str) -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    if campaign.state != DRAFT:
        raise Conflict(f"campaign {campaign.id} is {campaign.state}; only a draft can start")
    pairs = eligible_memberships(ctx, session, campaign)
    hardware = {hw for _v, hw, _version in pairs}
    clashes: dict[str, int] = {}
    vehicle_ids = sorted({v for v, _hw, _version in pairs})
    for start_at in range(0, len(vehicle_ids), _ID_BATCH):  # bind parameters are limited
        rows = session.execute(
            select(Membership.campaign_id, func.count())
            .where(
                Membership.active.is_(True),
                Membership.hardware_id.in_(hardware),
                Membership.vehicle_id.in_(vehicle_ids[start_at : start_at + _ID_BATCH]),
            )
            .group_by(Membership.campaign_id)
        ).all()
        for cid, count in rows:
            clashes[cid] = clashes.get(cid, 0) + count
    if clashes:
        detail = ", ".join(f"{count} in campaign {cid}" for cid, count in sorted(clashes.items()))
        raise Conflict(
            f"vehicles already in a running or paused campaign for the same hardware id ({detail}); "
            "finish or abort it first"
        )
    stamp = utcnow()
    if pairs:
        session.execute(
            insert(Membership),
            [
                {
                    "campaign_id": campaign.id,
                    "vehicle_id": vehicle_id,
                    "hardware_id": hw,
                    "bucket": rp.bucket(campaign.id, vehicle_id),
                    "admitted": False,
                    "status": "pending",
                    "active": True,
                    "updated_at": stamp,
                    "from_version": version,
                }
                for vehicle_id, hw, version in pairs
            ],
        )
    transition(
        session,
        campaign,
        expect=(DRAFT,),
        state=RUNNING,
        started_at=stamp,
        stage_started_at=stamp,
        stage_index=0,
        eligible_count=len(pairs),
    )
    admit(session, campaign)
    record(session, "campaign.start", f"campaign:{campaign.id}", eligible=len(pairs))
    return campaign


def admit(session: Session, campaign: Campaign) -> int:
    """Admit vehicles in (bucket, id) order up to the current stage's share; return how many
    memberships were admitted.

    The share is of memberships (a vehicle has one per hardware id the campaign updates on it),
    but a vehicle is admitted whole: its memberships are one software set, installed together
    or not at all, so they are never split across stages. The last vehicle admitted may take
    the stage past its share by the rest of its memberships."""
    policy = policy_of(campaign)
    target = rp.admission_target(policy.stages[campaign.stage_index], campaign.eligible_count)
    admitted = (
        session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.campaign_id == campaign.id, Membership.admitted.is_(True))
        )
        or 0
    )
    missing = target - admitted
    if missing <= 0:
        return 0
    chosen = (
        select(Membership.vehicle_id)
        .where(Membership.campaign_id == campaign.id, Membership.admitted.is_(False))
        .order_by(Membership.bucket, Membership.vehicle_id, Membership.hardware_id)
        .limit(missing)
    )
    # A vehicle's memberships share its bucket, so they are next to each other in this order.
    vehicles = list(dict.fromkeys(session.scalars(chosen)))
    admitted_now = 0
    for start_at in range(0, len(vehicles), _ID_BATCH):
        result = session.execute(
            update(Membership)
            .where(
                Membership.campaign_id == campaign.id,
                Membership.vehicle_id.in_(vehicles[start_at : start_at + _ID_BATCH]),
                Membership.admitted.is_(False),
            )
            .values(admitted=True, admitted_stage=campaign.stage_index)
        )
        admitted_now += result.rowcount  # type: ignore[attr-defined]
    return admitted_now


def deactivate(session: Session, campaign: Campaign) -> None:
    session.execute(
        update(Membership).where(Membership.campaign_id == campaign.id).values(active=None)
    )


def pause(session: Session, campaign_id: str, reason: str = "paused by operator") -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    transition(session, campaign, expect=(RUNNING,), state=PAUSED, reason=reason)
    record(session, "campaign.pause", f"campaign:{campaign.id}", reason=reason)
    return campaign


def resume(session: Session, campaign_id: str) -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    transition(
        session, campaign, expect=(PAUSED,), state=RUNNING, reason=None, stage_started_at=utcnow()
    )
    record(session, "campaign.resume", f"campaign:{campaign.id}")
    return campaign


def abort(session: Session, campaign_id: str, reason: str = "aborted by operator") -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    transition(
        session,
        campaign,
        expect=(DRAFT, RUNNING, PAUSED),
        state=ABORTED,
        reason=reason,
        finished_at=utcnow(),
    )
    deactivate(session, campaign)
    record(session, "campaign.abort", f"campaign:{campaign.id}", reason=reason)
    return campaign


def delete_draft(session: Session, campaign_id: str) -> str:
    """Delete a campaign that never started (its id); started ones are kept for the record."""
    campaign = get(session, campaign_id, lock=True)
    if campaign.state != DRAFT:
        raise Conflict(
            f"campaign {campaign.id} is {campaign.state}; only a draft can be deleted "
            "(abort a started one)"
        )
    session.execute(delete(CampaignRelease).where(CampaignRelease.campaign_id == campaign.id))
    session.delete(campaign)
    record(session, "campaign.delete", f"campaign:{campaign.id}", name=campaign.name)
    return campaign.id


def approve(session: Session, campaign_id: str) -> Campaign:
    campaign = get(session, campaign_id, lock=True)
    transition(session, campaign, expect=(RUNNING, PAUSED), approved_stage=campaign.stage_index + 1)
    record(session, "campaign.approve", f"campaign:{campaign.id}", stage=campaign.stage_index + 1)
    return campaign


# ------------------------------------------------------------------------------ counts


def counts(session: Session, campaign_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Membership.status, Membership.admitted, func.count())
        .where(Membership.campaign_id == campaign_id)
        .group_by(Membership.status, Membership.admitted)
    ).all()
    result: dict[str, int] = {"eligible": 0, "admitted": 0}
    for status, admitted, count in rows:
        result["eligible"] += count
        if admitted:
            result["admitted"] += count
            result[status] = result.get(status, 0) + count
    return result


def tick(ctx: ServerContext, now: datetime | None = None) -> dict[str, str]:
    """Evaluate every running campaign (:func:`overdrive.server.evaluator.tick`)."""
    from overdrive.server.evaluator import tick as evaluate_all

    return evaluate_all(ctx, now)


# ------------------------------------------------------------------------------ reading


def active_campaign_rows(ctx: ServerContext) -> list[dict[str, Any]]:
    with ctx.session() as session:
        campaigns = session.scalars(select(Campaign).where(Campaign.state.in_(ACTIVE_STATES)))
        return [
            {
                "id": c.id,
                "state": c.state,
                "stage_index": c.stage_index,
                "counts": counts(session, c.id),
            }
            for c in campaigns
        ]
