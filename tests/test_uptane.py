"""The shared Uptane message rules (overdrive.uptane) and the vehicle's director-vs-image match
(client.trust.check_director_target): pure functions, tested exhaustively."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api.metadata import TargetFile

from overdrive.client.errors import Refused
from overdrive.client.trust import check_director_target
from overdrive.uptane import (
    DirectorEntry,
    UptaneError,
    check_serial,
    director_targets,
    entries_for,
)

SERIAL = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
PATH = st.from_regex(r"\A[a-z]{1,6}/[0-9]\.[0-9]/(full|delta-from-1\.0)\.bundle\Z")


@st.composite
def entries(draw: Any) -> list[DirectorEntry]:
    serials = draw(st.lists(SERIAL, min_size=1, max_size=6, unique=True))
    result = []
    for serial in serials:
        path = draw(PATH)
        result.append(
            DirectorEntry(
                serial,
                draw(st.sampled_from(["ecu-a", "ecu-b"])),
                path,
                draw(st.integers(1, 1 << 40)),
                {"sha256": draw(HEX)},
                draw(st.integers(0, 1 << 31)),
                draw(st.sampled_from(["1.0", "1.1", "2.0"])),
                draw(st.one_of(st.none(), st.uuids().map(str))),
                [],
            )
        )
    # ECUs sharing a path share one target: make their image identical, as the director does
    by_path: dict[str, DirectorEntry] = {}
    same = []
    for e in result:
        first = by_path.setdefault(e.path, e)
        same.append(
            DirectorEntry(
                e.ecu_serial,
                e.hardware_id,
                e.path,
                first.length,
                first.hashes,
                first.release_counter,
                first.version,
                first.campaign_id,
                [],
            )
        )
    return same


@given(entries())
def test_director_targets_round_trip(items: list[DirectorEntry]) -> None:
    targets = director_targets(items)
    # Through JSON, as a vehicle receives them.
    again = {p: TargetFile.from_dict(t.to_dict(), p) for p, t in targets.items()}
    assert entries_for(again) == {e.ecu_serial: e for e in items}


def target(custom: Any, sha: str = "a" * 64) -> dict[str, TargetFile]:
    return {
        "x/1.0/full.bundle": TargetFile(
            10, {"sha256": sha}, "x/1.0/full.bundle", {"custom": custom}
        )
    }


GOOD = {"ecu_identifiers": {"s1": {"hardware_id": "hw"}}, "release_counter": 2, "version": "1.0"}


@pytest.mark.parametrize(
    ("custom", "sha", "words"),
    [
        ({}, "a" * 64, "names no ECU"),
        ({**GOOD, "ecu_identifiers": {}}, "a" * 64, "names no ECU"),
        (
            {**GOOD, "ecu_identifiers": {"s 1": {"hardware_id": "hw"}}},
            "a" * 64,
            "invalid ECU serial",
        ),
        ({**GOOD, "ecu_identifiers": {"s1": {}}}, "a" * 64, "has no hardware_id"),
        ({**GOOD, "release_counter": True}, "a" * 64, "release_counter"),
        ({**GOOD, "release_counter": -1}, "a" * 64, "release_counter"),
        ({**GOOD, "version": ""}, "a" * 64, "no version"),
        ({**GOOD, "campaign_id": 5}, "a" * 64, "campaign_id"),
        ({**GOOD, "maintenance_windows": {}}, "a" * 64, "maintenance_windows"),
        (GOOD, "A" * 64, "no sha256"),
        ("not an object", "a" * 64, "names no ECU"),
    ],
)
def test_malformed_director_targets_are_refused(custom: Any, sha: str, words: str) -> None:
    with pytest.raises(UptaneError, match=words):
        entries_for(target(custom, sha))


def test_an_ecu_named_by_two_targets_is_ambiguous() -> None:
    both = {
        **target(GOOD),
        "y/1.0/full.bundle": TargetFile(
            10, {"sha256": "b" * 64}, "y/1.0/full.bundle", {"custom": GOOD}
        ),
    }
    with pytest.raises(UptaneError, match="named by two director targets"):
        entries_for(both)


@pytest.mark.parametrize("serial", ["", " a", "a\n", "a/b", "é", "x" * 129, 5, None])
def test_bad_serials(serial: Any) -> None:
    with pytest.raises(UptaneError):
        check_serial(serial)


IMAGE_CUSTOM = {
    "overdrive": {
        "hardware_id": "hw",
        "version": "1.1",
        "release_counter": 2,
        "kind": "full",
        "image": {"version": "1.1", "sha256": "c" * 64, "length": 100},
    }
}


def entry(**changes: Any) -> DirectorEntry:
    base: dict[str, Any] = {
        "ecu_serial": "s1",
        "hardware_id": "hw",
        "path": "hw/1.1/full.bundle",
        "length": 10,
        "hashes": {"sha256": "a" * 64},
        "release_counter": 2,
        "version": "1.1",
    }
    return DirectorEntry(**{**base, **changes})


IMAGE = TargetFile(10, {"sha256": "a" * 64}, "hw/1.1/full.bundle", {"custom": IMAGE_CUSTOM})


@pytest.mark.parametrize(
    ("changes", "image", "reason"),
    [
        ({}, None, "not_in_repository"),
        ({"length": 11}, IMAGE, "director_mismatch"),
        ({"hashes": {"sha256": "b" * 64}}, IMAGE, "director_mismatch"),
        ({"hashes": {"sha256": "a" * 64, "sha512": "f" * 128}}, IMAGE, "director_mismatch"),
        ({"release_counter": 9}, IMAGE, "director_mismatch"),
        ({"hardware_id": "other"}, IMAGE, "wrong_hardware"),
    ],
)
def test_director_and_image_repository_must_agree(
    changes: dict[str, Any], image: TargetFile | None, reason: str
) -> None:
    with pytest.raises(Refused) as caught:
        check_director_target(entry(**changes), image, hardware_id="hw")
    assert caught.value.reason == reason


def test_an_exact_match_passes() -> None:
    check_director_target(entry(), IMAGE, hardware_id="hw")
