"""The vehicle's configuration: ``STATE_DIR/vehicle.toml``, written once at provisioning."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.errors import ConfigError
from overdrive.storage.local import atomic_write

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
    poll_interval: int = 900
    max_bytes_per_s: int = 0  # 0: no bandwidth cap
    cache_max_bytes: int = 4 << 30
    #: Requests per download turn before giving up until the next turn, and the first backoff.
    download_attempts: int = 5
    download_backoff_s: float = 1.0
    #: A download slower than 1 KiB/s averaged over this window is dropped (slow retrieval).
    download_rate_window_s: float = 10.0
    attributes: dict[str, str] = field(default_factory=dict)

    def slot_path(self, slot: str) -> Path:
        return Path(self.slot_a if slot == "A" else self.slot_b)

    def save(self, state_dir: Path) -> None:
        lines = []
        for key, value in asdict(self).items():
            if key != "attributes":
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("\n[attributes]")
        lines.extend(
            f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(self.attributes.items())
        )
        text = "\n".join(lines) + "\n"
        atomic_write(state_dir / CONFIG_FILE, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, state_dir: Path) -> VehicleConfig:
        path = state_dir / CONFIG_FILE
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path} not found: provision this vehicle with 'overdrive vehicle provision'"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{path}: {e}") from e


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
