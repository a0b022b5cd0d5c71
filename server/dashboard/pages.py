"""What the dashboard's views share: paging, the verified release index (and which of its
releases are the latest or withdrawn), the time of a refresh, a list page's status code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import request, url_for

from overdrive.releases import Release, ReleaseIndex
from overdrive.server.context import context
from overdrive.server.dashboard import forms
from overdrive.server.dashboard.formatting import when
from overdrive.server.errors import ApiError

log = logging.getLogger("overdrive.dashboard")


@dataclass(frozen=True)
class Pager:
    """Page ``page`` of ``total`` items, ``size`` per page; links keep the other query args."""

    page: int
    size: int
    total: int
    #: The query args its links keep (default: the request's); a list page passes its checked
    #: filters, so that a value it ignored is not carried from page to page.
    args: dict[str, str] | None = None

    @classmethod
    def from_request(cls, size: int, total: int, args: dict[str, str] | None = None) -> Pager:
        try:
            page = int(request.args.get("page", "1"))
        except ValueError:
            page = 1  # a bad page number is not worth an error: show the first page
        last = cls(1, size, total).pages
        return cls(min(max(page, 1), last), size, total, args)

    @property
    def pages(self) -> int:
        return max((self.total + self.size - 1) // self.size, 1)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def first(self) -> int:
        return self.offset + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.offset + self.size, self.total)

    def url(self, page: int) -> str:
        kept = request.args.items() if self.args is None else self.args.items()
        args: dict[str, Any] = {k: v for k, v in kept if k != "page"}
        args.update(request.view_args or {}, page=page)
        return url_for(str(request.endpoint), **args)


def release_index() -> tuple[ReleaseIndex | None, str | None]:
    """The verified release index, or why it cannot be read (pages still render without it)."""
    try:
        return context().releases.index(), None
    except ApiError as e:
        return None, str(e)
    except Exception as e:  # a repository that fails verification must not break the pages
        log.warning("dashboard: release index unavailable: %s", e)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"The image repository could not be verified: {first}"


def newest_first(versions: dict[str, Release]) -> list[tuple[str, Release]]:
    """A hardware id's releases, highest release counter first."""
    return sorted(versions.items(), key=lambda kv: -kv[1].full.info.release_counter)


def latest_versions(index: ReleaseIndex | None) -> dict[str, str]:
    """Hardware id → its newest version (highest release counter) that was not withdrawn."""
    if index is None:
        return {}
    latest = {}
    for hw, versions in index.releases.items():
        offered = [version for version, r in newest_first(versions) if r.yanked is None]
        if offered:
            latest[hw] = offered[0]
    return latest


def withdrawn_versions(index: ReleaseIndex | None) -> dict[tuple[str, str], str]:
    """(hardware id, version) → why that release was withdrawn, for every withdrawn one."""
    if index is None:
        return {}
    return {
        (hw, version): release.yanked
        for hw, versions in index.releases.items()
        for version, release in versions.items()
        if release.yanked is not None
    }


def now() -> datetime:
    return datetime.now(UTC)


def list_status(query: forms.ListQuery) -> int:
    """A list page answers 400 when part of its query was ignored (the page says why)."""
    return 400 if query.errors else 200


def updated_stamp() -> str:
    """When a refresh was read, as the pages print it: ``14:20:05 UTC``."""
    return when(now(), seconds=True)[11:]


def tile_links(campaign_id: str, tiles: dict[str, dict[str, str]]) -> dict[str, str]:
    """Count name → the address of the campaign's vehicle list behind that count."""
    links = {}
    for name, filters in tiles.items():
        args: dict[str, Any] = {"campaign_id": campaign_id, **filters}
        links[name] = url_for(".campaign_vehicles", **args)
    return links
