"""A secondary's persisted state (``STATE_DIR/state.json``): its slots, counters, and the one
software set it is working on.

A set goes ``verified → staged → installing → installed → trial → committed | rolled_back``.
Like the primary's (:mod:`overdrive.client.state`), every change is written atomically before
the step it describes has effects, so after a crash (kill -9, power cut) the secondary knows
where it was: the primary repeats the step and gets the same outcome, or nothing happens.

Invariant shared with the boot environment (``STATE_DIR/bootenv.json``): a slot the bootloader
may start (good, or on trial with tries left) holds the verified image recorded here; a slot
about to be written is recorded empty (and marked bad) first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overdrive.client.errors import ConfigError
from overdrive.client.state import SlotImage
from overdrive.storage.local import atomic_write

STATE_FILE = "state.json"
VERIFIED, STAGED, INSTALLING, INSTALLED, TRIAL, COMMITTED, ROLLED_BACK = (
    "verified",
    "staged",
    "installing",
    "installed",
    "trial",
    "committed",
    "rolled_back",
)
STAGES = (VERIFIED, STAGED, INSTALLING, INSTALLED, TRIAL, COMMITTED, ROLLED_BACK)
#: Stages in which the inactive slot holds (or is being given) the set's image.
WRITTEN = (INSTALLING, INSTALLED)
#: Stages after which the set is over (a new set may start).
FINISHED = (COMMITTED, ROLLED_BACK)


@dataclass
class SecondaryState:
    active: str = "A"  # the committed slot
    slots: dict[str, SlotImage | None] = field(default_factory=lambda: {"A": None, "B": None})
    #: Highest release counter committed (anti-rollback, whatever the slots hold).
    committed_counter: int = 0
    #: Counter of the version reports, strictly increasing (persisted before each report).
    report_counter: int = 0
    #: The nonce of the latest report: a time attestation must echo it.
    last_nonce: str | None = None
    #: What this ECU refused since its last report (one line).
    attacks_detected: str = ""
    #: The vehicle its director metadata is for (configured, or the first one verified).
    vehicle_id: str = ""
    #: Highest director targets version verified (partial verification's anti-replay).
    director_version: int = 0
    #: The time of the last time attestation that verified (ISO UTC).
    trusted_time: str | None = None
    #: The software set being worked on, its stage, and the target verified for it.
    set_id: str | None = None
    stage: str | None = None
    target: dict[str, Any] | None = None
    #: The slot and committed counter before this set's commit (what a rollback returns to).
    previous: dict[str, Any] | None = None
    #: The trial: its slot and the health check's verdict (None while it runs).
    trial: dict[str, Any] | None = None
    last_result: dict[str, Any] | None = None

    @property
    def inactive(self) -> str:
        return "B" if self.active == "A" else "A"

    @property
    def running(self) -> str:
        """The slot this ECU runs: the trial slot during a trial, else the committed one."""
        if self.stage == TRIAL and self.trial is not None:
            return str(self.trial["slot"])
        return self.active

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows of the state."""
        return {
            "state": self.stage or "idle",
            "set_id": self.set_id,
            "active": self.active,
            "running": self.running,
            "slots": {k: asdict(v) if v else None for k, v in self.slots.items()},
            "committed_counter": self.committed_counter,
            "trial": self.trial,
            "report_counter": self.report_counter,
            "attacks_detected": self.attacks_detected,
            "trusted_time": self.trusted_time,
            "last_result": self.last_result,
        }

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SecondaryState:
        try:
            data = json.loads(raw)
            slots = {k: SlotImage.from_dict(v) if v else None for k, v in data.pop("slots").items()}
            state = cls(slots=slots, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ConfigError(f"{where} is corrupted: {e}") from e
        if state.stage is not None and state.stage not in STAGES:
            raise ConfigError(f"{where}: unknown stage {state.stage!r}")
        if state.active not in state.slots or set(state.slots) != {"A", "B"}:
            raise ConfigError(f"{where}: slots must be A and B")
        return state


class SecondaryStore:
    """Loads and atomically saves :class:`SecondaryState`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> SecondaryState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(
                f"{self.path} not found: set up this ECU with 'overdrive vehicle secondary init'"
            ) from e
        return SecondaryState.from_json(raw, str(self.path))

    def save(self, state: SecondaryState) -> None:
        data = state.to_json()
        atomic_write(self.path, lambda f: f.write(data))
