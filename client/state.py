"""The vehicle's persisted update state machine (``STATE_DIR/state.json``).

``idle → downloading → downloaded → installing → installed → (reboot) trial boot → committed
(back to idle) | rolled back (back to idle)``. Every change is written atomically (temp, fsync,
rename, fsync dir) before the step it describes has effects, so after a power cut the client knows
exactly where it was and resumes or cleans up.

Invariant shared with the boot environment: a slot the bootloader may start (good, or on trial
with tries left) holds a verified image recorded here. The updater marks a slot bad before it
writes into it, and post-boot restores the invariant after any interruption.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overdrive.client.errors import ConfigError
from overdrive.storage.local import atomic_write

STATE_FILE = "state.json"
IDLE, DOWNLOADING, DOWNLOADED, INSTALLING, INSTALLED = (
    "idle",
    "downloading",
    "downloaded",
    "installing",
    "installed",
)
STATES = (IDLE, DOWNLOADING, DOWNLOADED, INSTALLING, INSTALLED)


@dataclass
class SlotImage:
    """What a slot holds: a verified, signed image (or nothing)."""

    hardware_id: str
    version: str
    sha256: str
    length: int
    release_counter: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlotImage:
        return cls(**data)


@dataclass
class VehicleState:
    state: str = IDLE
    active: str = "A"  # the slot we run from (a committed, good image)
    slots: dict[str, SlotImage | None] = field(default_factory=lambda: {"A": None, "B": None})
    #: The assignment being worked on (its signed payload and what TUF said), None when idle.
    assignment: dict[str, Any] | None = None
    manifest_counter: int = 0
    #: Highest release counter ever committed: anti-rollback survives slot changes.
    committed_counter: int = 0
    last_result: dict[str, Any] | None = None
    event_seq: int = 0
    #: What post-boot concluded about the last boot it handled (boot id, slot, outcome, message):
    #: a second run in the same boot changes nothing.
    last_boot: dict[str, Any] | None = None
    #: Boots in a row whose health check failed on the committed slot (late-failure fallback).
    unhealthy_boots: int = 0
    #: Final events decided together with this state (committed, rolled back, failed), saved in
    #: the same atomic write and then moved to the event queue: a decision and its report are
    #: never separated by a power cut.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    #: The director chain version whose target for this ECU was acted on (installed, refused
    #: or given up): the same version is not acted on twice.
    director_acted: int = 0
    #: The time the last director time attestation vouched for (ISO UTC): what expiry was last
    #: judged by, whatever the vehicle's own clock says.
    trusted_time: str | None = None
    #: What this ECU detected and has not yet reported in a version report (one line).
    attacks_detected: str = ""
    #: The software set being worked on across the vehicle's ECUs (see
    #: :mod:`overdrive.client.software_set`), None when there is none.
    software_set: dict[str, Any] | None = None
    #: Highest release counter committed per other ECU updated through a module (serial →
    #: counter): their anti-rollback, kept by the primary that verifies for them.
    ecu_committed: dict[str, int] = field(default_factory=dict)

    @property
    def inactive(self) -> str:
        return "B" if self.active == "A" else "A"

    def image(self, slot: str) -> SlotImage | None:
        return self.slots.get(slot)

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> VehicleState:
        try:
            data = json.loads(raw)
            slots = {k: SlotImage.from_dict(v) if v else None for k, v in data.pop("slots").items()}
            state = cls(slots=slots, **data)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"{where} is corrupted: {e}") from e
        if state.state not in STATES:
            raise ConfigError(f"{where}: unknown state {state.state!r}")
        return state


class StateStore:
    """Loads and atomically saves :class:`VehicleState` in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> VehicleState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(f"{self.path} not found: provision this vehicle first") from e
        return VehicleState.from_json(raw, str(self.path))

    def save(self, state: VehicleState) -> None:
        data = state.to_json()
        atomic_write(self.path, lambda f: f.write(data))
