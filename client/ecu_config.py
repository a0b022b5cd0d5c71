"""The vehicle's other ECUs, as ``vehicle.toml`` lists them (``[[ecus]]`` tables).

The primary (the ECU that runs ``overdrive vehicle run``) is the vehicle itself; every other
ECU it updates is one of:

* ``secondary``: a separate process or host running ``overdrive vehicle secondary serve``,
  reached over TCP at ``address`` (``host:port``); it verifies for itself, keeps its own slots
  and signs its own version reports;
* ``module``: an ECU the primary reaches over a bus, updated by running the update-module
  ``command`` (see :mod:`overdrive.client.module`); the primary verifies for it and holds its
  signing key (``key``, a file in the state directory, default ``ecus/SERIAL.key``).

``timeout_s`` bounds one operation on that ECU (a secondary that does not answer within it, or
a module command that runs longer, has failed that step).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

from overdrive.client.errors import ConfigError
from overdrive.uptane import UptaneError, check_serial

KINDS = ("secondary", "module")
_FIELDS = ("serial", "hardware_id", "kind", "address", "command", "key", "timeout_s")


@dataclass(frozen=True)
class EcuConfig:
    """One ECU of the vehicle besides the primary."""

    serial: str
    hardware_id: str
    kind: str
    address: str = ""
    command: str = ""
    key: str = ""
    timeout_s: float = 60.0

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> EcuConfig:
        """Parse one ``[[ecus]]`` table; :class:`ConfigError` naming what is wrong."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}")
        for name in ("serial", "hardware_id", "kind"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise ConfigError(f"{where}: {name} is required (a string)")
        for name in ("address", "command", "key"):
            if not isinstance(raw.get(name, ""), str):
                raise ConfigError(f"{where}: {name} must be a string")
        timeout = raw.get("timeout_s", 60.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"{where}: timeout_s must be a positive number of seconds")
        ecu = cls(**{**raw, "timeout_s": float(timeout)})
        ecu.check(where)
        return ecu

    def check(self, where: str) -> None:
        try:
            check_serial(self.serial)
            check_serial(self.hardware_id, "hardware id")
        except UptaneError as e:
            raise ConfigError(f"{where}: {e}") from e
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if self.kind == "secondary":
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f'{where}: a secondary needs address = "host:port"')
        else:
            if not self.command.strip():
                raise ConfigError(f'{where}: a module needs command = "…"')
            try:
                shlex.split(self.command)
            except ValueError as e:
                raise ConfigError(f"{where}: command: {e}") from e

    @property
    def key_file(self) -> str:
        """A module's signing key, relative to the state directory."""
        return self.key or f"ecus/{self.serial}.key"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v != "" or k in ("serial", "hardware_id")}


def parse_ecus(raw: Any, primary_serial: str) -> list[EcuConfig]:
    """All ``[[ecus]]`` tables; serials unique and none equal to the primary's."""
    if not isinstance(raw, list):
        raise ConfigError("vehicle.toml: ecus must be an array of tables ([[ecus]])")
    ecus = [EcuConfig.from_dict(item, f"vehicle.toml: ecus[{i}]") for i, item in enumerate(raw)]
    seen = {primary_serial}
    for ecu in ecus:
        if ecu.serial in seen:
            raise ConfigError(f"vehicle.toml: ECU serial {ecu.serial} appears twice")
        seen.add(ecu.serial)
    return ecus
