"""Update modules: how the primary updates an ECU it reaches over a bus (a microcontroller it
flashes over CAN, say), through a command an integrator provides.

The contract (docs/vehicles.md, "Update modules"): the primary runs ``COMMAND VERB [ARG]``
with the environment below, and nothing else talks to the ECU.

=========================  ==================================================================
``version``                print one JSON line ``{"version", "sha256", "length",
                           "release_counter"}``: the image the ECU runs now
``read OUT``               write the image the ECU runs to the file ``OUT`` (the source of a
                           delta; a module that cannot answers exit 2 and gets full images)
``install IMAGE``          write the verified image file ``IMAGE`` to the ECU's inactive
                           bank, not yet running it (``OVERDRIVE_IMAGE_SHA256``,
                           ``OVERDRIVE_IMAGE_VERSION``, ``OVERDRIVE_IMAGE_RELEASE_COUNTER`` say
                           what it is)
``trial``                  start the new image on trial and check it: exit 0 healthy, 1 not
``commit``                 keep the image on trial for good
``rollback``               go back to the image the ECU ran before this set (also after a
                           failed or interrupted ``install`` or ``trial``)
=========================  ==================================================================

Environment: ``OVERDRIVE_ECU_SERIAL``, ``OVERDRIVE_HARDWARE_ID``, ``OVERDRIVE_MODULE_DIR`` (a
directory of its own on the primary, kept across updates). Exit codes: 0 done, 1 failed (the
ECU is still on an image it can run), 2 unsupported. Every verb must be idempotent: after a
power cut the primary runs the same verb again. A command that outlives the ECU's
``timeout_s`` is killed and the step has failed. Only the last line of stderr is kept (one
line, in events and status).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from overdrive.client.ecu_config import EcuConfig
from overdrive.errors import OverdriveError
from overdrive.text import one_line

#: Bytes of a module's stdout or stderr that are read (the rest is discarded).
MAX_OUTPUT = 64 * 1024
UNSUPPORTED = 2


class ModuleError(OverdriveError):
    """An update-module command failed, timed out or answered nonsense."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModuleImage:
    """What a module says its ECU runs."""

    version: str
    sha256: str
    length: int
    release_counter: int


class UpdateModule:
    """Runs one ECU's update-module command."""

    def __init__(self, ecu: EcuConfig, state_dir: Path) -> None:
        self.ecu = ecu
        self.directory = state_dir / "modules" / ecu.serial
        self.argv = shlex.split(ecu.command)

    def _run(self, verb: str, *args: str, env: dict[str, str] | None = None) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "OVERDRIVE_ECU_SERIAL": self.ecu.serial,
            "OVERDRIVE_HARDWARE_ID": self.ecu.hardware_id,
            "OVERDRIVE_MODULE_DIR": str(self.directory),
            **(env or {}),
        }
        try:
            done = subprocess.run(
                [*self.argv, verb, *args],
                env=environment,
                capture_output=True,
                timeout=self.ecu.timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ModuleError(
                "module_timeout",
                f"update module of ECU {self.ecu.serial}: '{verb}' ran over {self.ecu.timeout_s:g} s",
            ) from e
        except OSError as e:
            raise ModuleError(
                "module_failed", f"update module of ECU {self.ecu.serial} cannot run: {e.strerror}"
            ) from e
        if done.returncode != 0:
            said = done.stderr[-MAX_OUTPUT:].decode(errors="replace").strip().splitlines()
            detail = one_line(said[-1], 200) if said else f"exit status {done.returncode}"
            reason = "module_unsupported" if done.returncode == UNSUPPORTED else "module_failed"
            raise ModuleError(
                reason, f"update module of ECU {self.ecu.serial}: '{verb}' failed: {detail}"
            )
        return done.stdout[:MAX_OUTPUT].decode(errors="replace")

    def version(self) -> ModuleImage:
        """The image the ECU runs, as its module reports it."""
        out = self._run("version").strip().splitlines()
        try:
            data = json.loads(out[-1]) if out else {}
            if not isinstance(data, dict):
                raise TypeError("not an object")
            image = ModuleImage(
                str(data["version"]),
                str(data["sha256"]),
                int(data["length"]),
                int(data.get("release_counter", 0)),
            )
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ModuleError(
                "module_failed",
                f"update module of ECU {self.ecu.serial}: 'version' did not print "
                '{"version", "sha256", "length", "release_counter"}',
            ) from e
        if len(image.sha256) != 64 or not image.version or image.length < 0:
            raise ModuleError(
                "module_failed", f"update module of ECU {self.ecu.serial}: bad 'version' answer"
            )
        return image

    def read(self, out: Path) -> None:
        self._run("read", str(out))

    def install(self, image: Path, *, sha256: str, version: str, release_counter: int) -> None:
        self._run(
            "install",
            str(image),
            env={
                "OVERDRIVE_IMAGE_SHA256": sha256,
                "OVERDRIVE_IMAGE_VERSION": version,
                "OVERDRIVE_IMAGE_RELEASE_COUNTER": str(release_counter),
            },
        )

    def trial(self) -> tuple[bool, str]:
        """(healthy, what it said)."""
        try:
            self._run("trial")
        except ModuleError as e:  # unhealthy, crashed or hung: the trial failed either way
            return False, str(e)
        return True, "healthy"

    def commit(self) -> None:
        self._run("commit")

    def rollback(self) -> None:
        self._run("rollback")
