"""The parameters of the OpenAPI document (:mod:`overdrive.server.openapi`): paging, the filters of the
list endpoints and the path ids, each with the bounds the server checks
(``server.validation.paging``, ``server.fleet.parse_filters``, ``server.campaign_view``,
``server.api.admin.audit``)."""

from __future__ import annotations

from overdrive.server.campaign_view import MEMBER_STATUSES
from overdrive.server.fleet import MAX_FILTER, SORTS
from overdrive.server.models import MEMBERSHIP_STATUSES
from overdrive.server.openapi_schemas import CAMPAIGN_STATES, IDENTIFIER, Schema
from overdrive.server.validation import MAX_INT32


def query(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PAGING = (
    query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
        "Items per page.",
    ),
    query(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": MAX_INT32, "default": 0},
        "Items to skip.",
    ),
)
_FILTER_TEXT = {"type": "string", "maxLength": MAX_FILTER}
_SORTS = [s for name in SORTS for s in (name, f"-{name}")]
#: Names for generated clients' enums (``-id`` would become ``VALUE_1``): ``ID``, ``ID_DESC`` …
_SORT_NAMES = [n for name in SORTS for n in (name.upper(), f"{name.upper()}_DESC")]

VEHICLE_FILTERS = (
    *PAGING,
    query("hardware_id", _FILTER_TEXT, "Vehicles with an image of this hardware id."),
    query("version", _FILTER_TEXT, "Vehicles with this installed version (of `hardware_id`)."),
    query("model", _FILTER_TEXT, "Vehicles of this model."),
    query("region", _FILTER_TEXT, "Vehicles in this region."),
    query("campaign", _FILTER_TEXT, "Members of the campaign with this id or id prefix."),
    query(
        "campaign_status",
        {"type": "string", "enum": list(MEMBERSHIP_STATUSES)},
        "Vehicles whose membership (of `campaign`, else of any active campaign) has this status.",
    ),
    query("search", _FILTER_TEXT, "Vehicles whose id contains this text."),
    query(
        "sort",
        {"type": "string", "enum": _SORTS, "x-enum-varnames": _SORT_NAMES, "default": "id"},
        "Order (`-` first: descending); ties by id.",
    ),
    {
        # ?attr.NAME=VALUE, as many as wanted: an exploded form object whose keys are the names.
        "name": "attributes",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "schema": {
            "type": "object",
            "propertyNames": {"pattern": r"^attr\.[A-Za-z0-9_.-]{1,64}$"},
            "additionalProperties": _FILTER_TEXT,
        },
        "description": "Attribute filters, one query parameter each: `attr.NAME=VALUE` "
        "(e.g. `?attr.color=red`; NAME: letters, digits, `_`, `.`, `-`, at most 64).",
    },
)
"""``GET /vehicles``: an empty value is the same as leaving a filter out; any other name is a 400."""

CAMPAIGN_VEHICLE_FILTERS = (
    *PAGING,
    query(
        "status",
        {"type": "string", "enum": [*MEMBER_STATUSES, "finished", "failures"]},
        "Membership status; `finished`: committed, failed or rolled back; `failures`: failed "
        "or rolled back.",
    ),
    query("hardware_id", {"type": "string"}, "Memberships of this hardware id."),
    query("model", {"type": "string"}, "Vehicles of this model."),
    query("region", {"type": "string"}, "Vehicles in this region."),
    query("from_version", {"type": "string"}, "Vehicles that had this version at start."),
    query("admitted", {"type": "boolean"}, "Admitted (or not yet admitted) vehicles only."),
    query(
        "dimension",
        {"type": "string"},
        "With `value`: the vehicles of one group as `groups` lists it (`hardware_id`, "
        "`installed_version`, `model`, `region` or an attribute name).",
    ),
    query("value", {"type": "string"}, "The group's value (`(none)`: vehicles without one)."),
)

AUDIT_FILTERS = (
    *PAGING,
    query("actor", _FILTER_TEXT, "Entries by this actor, e.g. `policy` or `ci (operator)`."),
    query("action", _FILTER_TEXT, "Entries of this action, e.g. `campaign.start`."),
    query("target", _FILTER_TEXT, "Entries whose target starts with this, e.g. `campaign:3f2a`."),
    query(
        "since",
        _FILTER_TEXT,
        "Entries at or after this ISO-8601 time (e.g. `2026-12-04T14:20:00Z`; no zone: UTC).",
    ),
    query("until", _FILTER_TEXT, "Entries before this ISO-8601 time."),
)

CAMPAIGN_STATE = query(
    "state", {"type": "string", "enum": CAMPAIGN_STATES}, "Campaigns in this state only."
)

PATH_PARAMETERS: dict[str, Schema] = {
    "vehicle_id": {"type": "string", "pattern": IDENTIFIER},
    "ecu_serial": {"type": "string", "pattern": IDENTIFIER},
    "campaign_id": {
        "type": "string",
        "minLength": 1,
        "description": "A campaign id, or a unique prefix of one (at least 4 characters).",
    },
    "token_id": {"type": "integer", "minimum": 0, "maximum": MAX_INT32},
    "name": {
        "type": "string",
        "pattern": "^(timestamp|root|[1-9][0-9]{0,8}\\.(root|snapshot|targets))\\.json$",
    },
}
