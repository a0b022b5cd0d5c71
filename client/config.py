"""The vehicle's configuration: ``STATE_DIR/vehicle.toml``, written once at provisioning."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overdrive.client.errors import ConfigError
from overdrive.storage.local import atomic_write

if TYPE_CHECKING:
    from overdrive.client.ecu_config import EcuConfig

CONFIG_FILE = "vehicle.toml"
BOOT_BACKENDS = ("file", "uboot", "grub")


@dataclass
class VehicleConfig:
    vehicle_id: str
    hardware_id: str
    server_url: str
    repo_url: str  # base URL of the image repository: metadata/ and targets/ below it
    slot_a: str
    slot_b: str
    boot_backend: str = "file"
    #: Backend option: the env file (file backend, GRUB) or fw_env.config (U-Boot); "" = default.
    boot_env: str = ""
    health_check: str = ""
    #: Seconds the health check may take; longer counts as unhealthy.
    health_timeout_s: float = 300.0
    #: Boots a newly installed slot gets to come up healthy before the bootloader falls back.
    trial_boots: int = 3
    #: A committed slot whose health check fails this many boots in a row falls back to the
    #: other slot when that still holds a good image; 0 never falls back.
    late_fallback_boots: int = 3
    #: How post-boot (after a rollback) and the daemon (with reboot_after_install) reboot.
    reboot_command: str = "systemctl reboot"
    #: Reboot into the new slot as soon as it is installed (else: at the next ignition cycle).
    reboot_after_install: bool = False
    #: Overall deadline of one request to the server or the image repository (headers and
    #: body), and of a bundle request's headers (at most 30 s; the body's pace is judged by
    #: the minimum rate instead).
    request_deadline_s: float = 120.0
    poll_interval: int = 900
    max_bytes_per_s: int = 0  # 0: no bandwidth cap
    cache_max_bytes: int = 4 << 30
    #: Requests per download turn before giving up until the next turn, and the first backoff.
    download_attempts: int = 5
    download_backoff_s: float = 1.0
    #: A download slower than 1 KiB/s averaged over this window is dropped (slow retrieval).
    download_rate_window_s: float = 10.0
    attributes: dict[str, str] = field(default_factory=dict)
    #: This (primary) ECU's serial in the director's targets and in version reports; empty:
    #: ``<vehicle_id>-primary``.
    ecu_serial: str = ""
    #: The vehicle's other ECUs (``[[ecus]]`` tables, see :mod:`overdrive.client.ecu_config`).
    ecus: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds a software set may wait for an ECU that does not answer (a secondary that is
    #: down) before the whole set is rolled back.
    set_deadline_s: float = 600.0
    #: ``ecus`` parsed (set from it after loading).
    other_ecus: list[EcuConfig] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        """Check what an integrator may have edited by hand: one clear line per mistake."""
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            kind = _KINDS[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"vehicle.toml: {f.name} must be {_KIND_NAMES[kind]}")
        if self.boot_backend not in BOOT_BACKENDS:
            raise ConfigError(
                f"vehicle.toml: boot_backend must be one of {', '.join(BOOT_BACKENDS)}"
            )
        limits = {
            "trial_boots": (1, 9),  # 9: what the GRUB script can count down from
            "late_fallback_boots": (0, 1000),
            "poll_interval": (1, 86_400),
            "download_attempts": (1, 1000),
        }
        for name, (lo, hi) in limits.items():
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"vehicle.toml: {name} must be between {lo} and {hi}")
        for name in (
            "health_timeout_s",
            "request_deadline_s",
            "download_rate_window_s",
            "set_deadline_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"vehicle.toml: {name} must be a positive number of seconds")
        if self.ecu_serial and not _valid_serial(self.ecu_serial):
            raise ConfigError(
                "vehicle.toml: ecu_serial must be letters, digits and . _ : - (at most 128)"
            )
        if self.max_bytes_per_s < 0 or self.cache_max_bytes < 0 or self.download_backoff_s < 0:
            raise ConfigError(
                "vehicle.toml: max_bytes_per_s, cache_max_bytes and download_backoff_s "
                "must not be negative"
            )

        from overdrive.client.ecu_config import parse_ecus

        self.other_ecus = parse_ecus(self.ecus, self.serial)

    @property
    def serial(self) -> str:
        return self.ecu_serial or f"{self.vehicle_id}-primary"

    def ecu(self, serial: str) -> EcuConfig | None:
        """The configured ECU (not the primary) with ``serial``, if any."""
        return next((e for e in self.other_ecus if e.serial == serial), None)

    def slot_path(self, slot: str) -> Path:
        return Path(self.slot_a if slot == "A" else self.slot_b)

    def save(self, state_dir: Path) -> None:
        lines = []
        for key, value in asdict(self).items():
            if key not in ("attributes", "ecus", "other_ecus"):
                lines.append(f"{key} = {toml_value(value)}")
        lines.append("\n[attributes]")
        lines.extend(
            f"{json.dumps(k)} = {toml_value(v)}" for k, v in sorted(self.attributes.items())
        )
        for ecu in self.other_ecus:
            lines.append("\n[[ecus]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in ecu.to_dict().items())
        text = "\n".join(lines) + "\n"
        atomic_write(state_dir / CONFIG_FILE, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, state_dir: Path) -> VehicleConfig:
        path = state_dir / CONFIG_FILE
        data = read_settings(
            path,
            {f.name for f in fields(cls) if f.init},
            "provision this vehicle with 'overdrive vehicle provision'",
        )
        try:
            return cls(**data)
        except TypeError as e:  # a required setting is missing
            raise ConfigError(f"{path}: {e}") from e


def read_settings(path: Path, known: set[str], missing: str) -> dict[str, Any]:
    """The settings of the TOML file ``path``, all of them ``known`` (``missing``: what to do
    when there is no such file); :class:`ConfigError` in one line otherwise."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path} not found: {missing}") from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not readable TOML: {e}") from e
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
    return data


def _valid_serial(value: str) -> bool:
    from overdrive.uptane import UptaneError, check_serial

    try:
        check_serial(value)
    except UptaneError:
        return False
    return True


_KINDS: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "dict[str, str]": dict,
    "list[dict[str, Any]]": list,
}
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table",
    list: "an array of tables",
}


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (booleans, numbers, else a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
