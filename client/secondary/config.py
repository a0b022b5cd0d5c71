"""A secondary's configuration: ``STATE_DIR/secondary.toml``, written once by ``init``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from overdrive.client.config import read_settings, toml_value
from overdrive.client.errors import ConfigError
from overdrive.errors import OverdriveError
from overdrive.storage.local import atomic_write
from overdrive.tuf_layout import check_segment
from overdrive.uptane import check_serial

CONFIG_FILE = "secondary.toml"
KEY_FILE = "ecu.key"
PUBLIC_KEY_FILE = "ecu.pub.json"
BOOT_ENV_FILE = "bootenv.json"
VERIFICATIONS = ("full", "partial")


@dataclass(frozen=True)
class SecondaryConfig:
    serial: str
    hardware_id: str
    slot_a: str
    slot_b: str
    #: "full": both repositories through TUF; "partial": the director's targets signature and
    #: the image's length and sha256 (for ECUs too small for full verification).
    verification: str = "full"
    #: Run at the trial boot with OVERDRIVE_SLOT and OVERDRIVE_VERSION; exit 0 = healthy.
    health_check: str = ""
    health_timeout_s: float = 30.0
    #: The vehicle whose director metadata this ECU accepts; "" = the first vehicle id it
    #: verifies is remembered (``state.json``) and required from then on.
    vehicle_id: str = ""
    #: Seconds a connection may stay silent (between two reads) before it is dropped.
    idle_timeout_s: float = 10.0
    #: Connections served at once; more get a one-line "busy" answer.
    max_connections: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = {"str": str, "float": float, "int": int}[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{CONFIG_FILE}: {f.name} must be a {kind.__name__}")
        try:
            check_serial(self.serial)
            check_segment("hardware id", self.hardware_id)
        except OverdriveError as e:
            raise ConfigError(f"{CONFIG_FILE}: {e}") from e
        if self.verification not in VERIFICATIONS:
            raise ConfigError(f"{CONFIG_FILE}: verification must be full or partial")
        if not self.slot_a or not self.slot_b or self.slot_a == self.slot_b:
            raise ConfigError(f"{CONFIG_FILE}: slot_a and slot_b must be two different files")
        if not (self.health_timeout_s > 0 and self.idle_timeout_s > 0):
            raise ConfigError(f"{CONFIG_FILE}: timeouts must be positive numbers of seconds")
        if not 1 <= self.max_connections <= 256:
            raise ConfigError(f"{CONFIG_FILE}: max_connections must be between 1 and 256")

    def slot_path(self, slot: str) -> Path:
        return Path(self.slot_a if slot == "A" else self.slot_b)

    def save(self, state_dir: Path) -> None:
        text = "".join(f"{k} = {toml_value(v)}\n" for k, v in asdict(self).items())
        atomic_write(state_dir / CONFIG_FILE, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, state_dir: Path) -> SecondaryConfig:
        path = state_dir / CONFIG_FILE
        data = read_settings(
            path,
            {f.name for f in fields(cls)},
            "set up this ECU with 'overdrive vehicle secondary init'",
        )
        try:
            return cls(**data)
        except TypeError as e:  # a required setting is missing
            raise ConfigError(f"{path}: {e}") from e
