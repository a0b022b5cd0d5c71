"""Multi-ECU vehicles in ``overdrive simulate``: the fleet file, and one vehicle's software set.

A car is several ECUs (a primary, secondaries, update modules), each of a hardware id, and a
campaign's release is a *software set*: one image per hardware id, installed all or nothing per
vehicle. The vehicle is updated only if every ECU of its set succeeds; when one fails (install,
trial boot, health check), every ECU of the vehicle rolls back, and the vehicle's one rollback
names the ECU that caused it, so the campaign judges the failure against that ECU's hardware id
(``details.caused_by`` of the final events on the server).

The fleet file (``--fleet-file``, YAML or JSON, read like a policy file) lists vehicle models::

    models:
      - name: sedan
        share: 70%
        ecus:                         # in install order
          - tcu-4                     # a hardware id alone: its image never fails
          - {hardware_id: ivi-2, fail_rate: 30%}
      - {name: van, share: 30%, ecus: [tcu-4]}

Everything here is pure: :func:`parse_models` validates the decoded document (the command reads
the file) and :func:`set_failure` is the all-or-nothing rule for one vehicle's set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from overdrive.rollout_policies.simulate_model import (
    MAX_ECUS,
    MAX_MODELS,
    Ecu,
    SimulationError,
    VehicleModel,
)
from overdrive.rollout_policies.simulate_parse import exact_fraction, short_decimal

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}")
"""Model names and hardware ids: the syntax ``--fleet`` takes for values."""
_DOCUMENT_KEYS = ("models",)
_MODEL_KEYS = ("name", "share", "ecus")
_ECU_KEYS = ("hardware_id", "fail_rate")


def set_failure(draws: Sequence[float], rates: Sequence[float]) -> int:
    """The ECU that rolls back a vehicle's software set: the index of the first ECU (in install
    order) whose draw falls below its failure rate, or ``-1`` when every ECU succeeds and the
    vehicle is updated. The set stops at its first failure, so that ECU is the one named."""
    for index, (draw, rate) in enumerate(zip(draws, rates, strict=True)):
        if draw < rate:
            return index
    return -1


def parse_models(document: Any, source: str) -> tuple[VehicleModel, ...]:
    """The vehicle models of a decoded fleet file; a mistake raises :class:`SimulationError`
    naming ``source`` and the field (``models[1].ecus[0].fail_rate``), on one line."""
    where = f"--fleet-file {source}"
    if not isinstance(document, dict):
        raise SimulationError(f"{where}: expected a mapping with 'models', got {_kind(document)}")
    _known_keys(document, _DOCUMENT_KEYS, where)
    entries = document.get("models")
    if not isinstance(entries, list) or not entries:
        raise SimulationError(f"{where}: models: expected a non-empty list of vehicle models")
    if len(entries) > MAX_MODELS:
        raise SimulationError(f"{where}: models: at most {MAX_MODELS}, got {len(entries)}")
    models = tuple(
        _model(entry, f"{where}: models[{index}]") for index, entry in enumerate(entries)
    )
    names = [model.name for model in models]
    for name in names:
        if names.count(name) > 1:
            raise SimulationError(f"{where}: models: model {name!r} is given twice")
    total = sum((model.share for model in models), Fraction(0))
    if total != 1:
        shares = ", ".join(f"{m.name}={short_decimal(m.share)}" for m in models)
        raise SimulationError(
            f"{where}: models: shares must sum to 1, they sum to {short_decimal(total)} ({shares})"
        )
    return models


def _model(entry: Any, where: str) -> VehicleModel:
    if not isinstance(entry, dict):
        raise SimulationError(
            f"{where}: expected a mapping with name, share and ecus, got {_kind(entry)}"
        )
    _known_keys(entry, _MODEL_KEYS, where)
    for key in _MODEL_KEYS:
        if key not in entry:
            raise SimulationError(f"{where}.{key}: required")
    name = _name(entry["name"], f"{where}.name", "a model name")
    model = f" (model {name!r})"
    share = _fraction(entry["share"])
    if share is None or not 0 < share <= 1:
        raise SimulationError(
            f"{where}.share{model}: expected a fraction above 0 and at most 1 (0.7 or 70%), "
            f"got {_shown(entry['share'])}"
        )
    ecus = entry["ecus"]
    if not isinstance(ecus, list) or not 1 <= len(ecus) <= MAX_ECUS:
        raise SimulationError(
            f"{where}.ecus{model}: expected a list of 1 to {MAX_ECUS} ECUs (hardware ids, or "
            "mappings with hardware_id and fail_rate), in install order"
        )
    parsed = tuple(_ecu(ecu, f"{where}.ecus[{index}]", model) for index, ecu in enumerate(ecus))
    seen: set[str] = set()
    for ecu in parsed:
        if ecu.hardware_id in seen:
            raise SimulationError(
                f"{where}.ecus{model}: hardware id {ecu.hardware_id!r} is given twice (a "
                "software set has one image per hardware id)"
            )
        seen.add(ecu.hardware_id)
    return VehicleModel(name, share, parsed)


def _ecu(entry: Any, where: str, model: str) -> Ecu:
    if isinstance(entry, str):
        return Ecu(_name(entry, f"{where}{model}", "a hardware id"))
    if not isinstance(entry, dict):
        raise SimulationError(
            f"{where}{model}: expected a hardware id or a mapping with hardware_id and "
            f"fail_rate, got {_kind(entry)}"
        )
    _known_keys(entry, _ECU_KEYS, f"{where}{model}")
    if "hardware_id" not in entry:
        raise SimulationError(f"{where}.hardware_id{model}: required")
    hardware_id = _name(entry["hardware_id"], f"{where}.hardware_id{model}", "a hardware id")
    rate = _fraction(entry.get("fail_rate", 0))
    if rate is None or not 0 <= rate <= 1:
        raise SimulationError(
            f"{where}.fail_rate{model}: expected a fraction from 0 to 1 (0.3 or 30%), "
            f"got {_shown(entry.get('fail_rate'))}"
        )
    return Ecu(hardware_id, float(rate))


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SimulationError(
            f"{where}: expected {what} (letters, digits and . _ : / + -, starting with a letter "
            f"or digit), got {_shown(value)}"
        )
    return value


def _fraction(value: Any) -> Fraction | None:
    """``0.3``, ``30%``, ``1`` (a YAML/JSON number or text) exactly; ``None`` if not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        return exact_fraction(str(value).strip())
    return None


def _known_keys(mapping: dict[Any, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise SimulationError(
                f"{where}: unknown field {_shown(key)} (expected {', '.join(known)})"
            )


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return _shown(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
