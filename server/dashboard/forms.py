"""The dashboard's input: the create-campaign form (from posted fields to the body
:func:`overdrive.server.campaigns.create` takes, with an error per field that people can fix where they
typed), and the filters and sorting of the list pages (:class:`ListQuery`: a bad value is left
out with a message saying why, never an error page).

The form checks what only the form knows (empty fields, how a pasted policy decodes, unknown
vehicle ids); everything else is left to the domain function, whose one-line ``ApiError``
messages are placed next to the field they are about (:func:`field_for`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from werkzeug.datastructures import MultiDict

import overdrive.rollout_policies as rp
from overdrive.errors import OverdriveError
from overdrive.rollout_policies.documents import decode_json, decode_yaml
from overdrive.server.campaign_view import MEMBER_STATUSES
from overdrive.server.validation import ID_PATTERN

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


# ------------------------------------------------------------------------------ list filters

#: Longest filter value a list page takes (model and region columns hold 128 characters).
MAX_FILTER = 128
#: How a rejected value is quoted in a message (hostile text is escaped by the template).
_QUOTE = 40
_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?\s*(?:Z|UTC|\+00:?00)?$",
    re.IGNORECASE,
)


def quoted(value: str) -> str:
    """``'value'`` for a message, cut at :data:`_QUOTE` characters."""
    return repr(value if len(value) <= _QUOTE else value[: _QUOTE - 1] + "…")


@dataclass(frozen=True)
class ListQuery:
    """A list page's checked query: the filters that apply, the sort, and why any part of
    the request was ignored (each message says what was wrong and what is shown instead)."""

    filters: dict[str, str]
    sort: str
    descending: bool
    errors: tuple[str, ...] = ()
    bounds: dict[str, datetime] = field(default_factory=dict)
    #: The page's default sort and direction (links leave them out).
    default: tuple[str, bool] = ("", False)

    def args(self, **changes: str | None) -> dict[str, str]:
        """The query args for a link to this list with ``changes`` (``None`` drops an arg)."""
        args = dict(self.filters)
        if (self.sort, self.descending) != self.default:
            args.update(sort=self.sort, dir="desc" if self.descending else "asc")
        for key, value in changes.items():
            if value is None:
                args.pop(key, None)
            else:
                args[key] = value
        return args

    def sorted_by(self, sort: str, descending: bool = False) -> dict[str, str]:
        """Args to sort by ``sort``: ascending, or flipped when it is already the sort."""
        flip = not self.descending if sort == self.sort else descending
        return self.args(sort=sort, dir="desc" if flip else "asc", page=None)


def parse_list(
    args: Mapping[str, str],
    *,
    text: tuple[str, ...] = (),
    choices: Mapping[str, tuple[str, ...]] | None = None,
    sorts: tuple[str, ...],
    default_sort: str,
    descending: tuple[str, ...] = (),
    labels: Mapping[str, str] | None = None,
) -> ListQuery:
    """Check the ``text`` and ``choices`` filters and the sort of a list page's request.

    A bad value never fails the page: it is left out and named in ``errors``. ``descending``
    lists the sorts whose natural direction is newest or largest first.
    """
    errors: list[str] = []
    filters: dict[str, str] = {}
    labels = labels or {}
    for name in text:
        value = args.get(name, "").strip()
        if value and (problem := _text_problem(value)):
            errors.append(f"The {labels.get(name, name)} filter {problem}; it was ignored.")
        elif value:
            filters[name] = value
    for name, allowed in (choices or {}).items():
        value = args.get(name, "").strip()
        if value and value not in allowed:
            errors.append(
                f"There is no {labels.get(name, name)} {quoted(value)}: choose one of "
                f"{', '.join(allowed)}. Showing every {labels.get(name, name)}."
            )
        elif value:
            filters[name] = value
    sort = args.get("sort", "").strip() or default_sort
    if sort not in sorts:
        errors.append(
            f"Cannot sort by {quoted(sort)}: choose one of {', '.join(sorts)}. "
            f"Sorted by {default_sort} instead."
        )
        sort = default_sort
    direction = args.get("dir", "").strip()
    if direction and direction not in ("asc", "desc"):
        errors.append(f"The sort direction must be asc or desc, not {quoted(direction)}.")
        direction = ""
    desc = direction == "desc" if direction else sort in descending
    default = (default_sort, default_sort in descending)
    return ListQuery(filters, sort, desc, tuple(errors), default=default)


def _text_problem(value: str) -> str | None:
    if len(value) > MAX_FILTER:
        return f"is too long (at most {MAX_FILTER} characters)"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains control characters"
    return None


def with_errors(query: ListQuery, *errors: str, drop: tuple[str, ...] = ()) -> ListQuery:
    """``query`` with more messages and without the filters in ``drop``."""
    filters = {k: v for k, v in query.filters.items() if k not in drop}
    return replace(query, filters=filters, errors=(*query.errors, *errors))


def parse_utc(text: str, *, end: bool = False) -> datetime:
    """``2026-12-04``, ``2026-12-04 14:20`` or ``2026-12-04T14:20:05`` (``Z``/``UTC`` allowed)
    as a UTC time. With ``end``, the end of what was written: the next day, minute or second,
    so "to 2026-12-04" takes in the whole day. A ``ValueError`` says what is accepted."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(f"{quoted(text)} is not a UTC time like 2026-12-04 or 2026-12-04 14:20")
    day, hour, minute, second = match.groups()
    try:
        moment = datetime.fromisoformat(day).replace(tzinfo=UTC)
        if hour is not None:
            moment = moment.replace(hour=int(hour), minute=int(minute), second=int(second or 0))
    except ValueError as e:
        raise ValueError(f"{quoted(text)} is not a valid date or time ({e})") from e
    if end and hour is None:
        moment += timedelta(days=1)
    elif end:
        moment += timedelta(minutes=1) if second is None else timedelta(seconds=1)
    return moment


def parse_bounds(query: ListQuery, args: Mapping[str, str]) -> ListQuery:
    """``from`` and ``to`` (UTC) of an audit-log request into ``query.bounds``."""
    errors: list[str] = []
    bounds: dict[str, datetime] = {}
    filters = dict(query.filters)
    for name in ("from", "to"):
        value = args.get(name, "").strip()
        if not value:
            continue
        try:
            bounds[name] = parse_utc(value, end=name == "to")
        except ValueError as e:
            errors.append(f"The {name!r} time: {e}; it was ignored.")
        else:
            filters[name] = value
    if "from" in bounds and "to" in bounds and bounds["from"] >= bounds["to"]:
        errors.append("The 'from' time is after the 'to' time; both were ignored.")
        bounds = {}
        filters = {k: v for k, v in filters.items() if k not in ("from", "to")}
    return replace(query, filters=filters, bounds=bounds, errors=(*query.errors, *errors))


#: The status filters of a campaign's vehicle list: a membership status, or a group of them.
MEMBER_STATUS_CHOICES = (*MEMBER_STATUSES, "in_progress", "finished", "failures")
MEMBER_SORTS = (
    "updated",
    "vehicle",
    "hardware_id",
    "version",
    "from_version",
    "model",
    "region",
    "status",
)
MEMBER_LABELS = {
    "hardware_id": "hardware id",
    "from_version": "from-version",
    "dimension": "group dimension",
    "value": "group value",
}
#: A vehicle's status in its active campaigns (``none``: it is in none).
VEHICLE_STATUSES = (*MEMBER_STATUSES, "none")
VEHICLE_SORTS = ("id", "hardware_id", "version", "model", "region", "state", "last_seen")
VEHICLE_LABELS = {"q": "vehicle id", "hw": "hardware id", "status": "campaign status"}


def parse_member_args(args: Mapping[str, str], dimensions: Collection[str]) -> ListQuery:
    """A campaign vehicle list's filters (status, admitted, hardware id, model, region,
    from-version, a group as ``dimension`` + ``value``) and sort; ``dimensions`` are those the
    campaign is judged by (``campaign`` means every vehicle)."""
    query = parse_list(
        args,
        text=("hardware_id", "model", "region", "from_version", "dimension", "value"),
        choices={"status": MEMBER_STATUS_CHOICES, "admitted": ("true", "false")},
        sorts=MEMBER_SORTS,
        default_sort="updated",
        descending=("updated",),
        labels=MEMBER_LABELS,
    )
    dimension, value = query.filters.get("dimension"), query.filters.get("value")
    group = ("dimension", "value")
    if dimension is None and value is None:
        return query
    if dimension is None:
        return with_errors(
            query,
            "A group value needs its dimension (dimension=region&value=EU, for instance); "
            "it was ignored.",
            drop=group,
        )
    if value is None:
        return with_errors(
            query, f"The group {quoted(dimension)} needs a value; it was ignored.", drop=group
        )
    if dimension not in dimensions:
        known = ", ".join(sorted(dimensions)) or "none until it starts"
        return with_errors(
            query,
            f"This campaign is not judged by {quoted(dimension)} (its groups: {known}); "
            "showing every group.",
            drop=group,
        )
    return with_errors(query, drop=group) if dimension == "campaign" else query


def parse_vehicle_args(args: Mapping[str, str]) -> ListQuery:
    """The fleet list's filters (id search, installed image, model, region, reported state,
    status in an active campaign) and sort."""
    query = parse_list(
        args,
        text=("q", "hw", "version", "model", "region", "state"),
        choices={"status": VEHICLE_STATUSES},
        sorts=VEHICLE_SORTS,
        default_sort="id",
        descending=("last_seen",),
        labels=VEHICLE_LABELS,
    )
    if "version" in query.filters and "hw" not in query.filters:
        return with_errors(
            query,
            "Choose a hardware id to filter by version; the version was ignored.",
            drop=("version",),
        )
    return query


def parse_audit_args(args: Mapping[str, str]) -> ListQuery:
    """The audit log's filters: actor (part of it), action, target (part of it), one
    campaign's id, and a UTC time range ``from``–``to``; newest first unless ``dir=asc``."""
    query = parse_list(
        args,
        text=("actor", "action", "target", "campaign"),
        sorts=("at",),
        default_sort="at",
        descending=("at",),
    )
    return parse_bounds(query, args)
