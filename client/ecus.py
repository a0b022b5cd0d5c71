"""The primary's handle on each of the vehicle's other ECUs, whatever its kind.

A software set (:mod:`overdrive.client.software_set`) drives every ECU through the same steps
(report, verify, stage, install, trial, commit, rollback); this module maps them onto a
secondary's TCP protocol (:mod:`overdrive.client.secondary_link`) or an update module's
command (:mod:`overdrive.client.module`). Errors come out as two kinds: :class:`EcuUnreachable`
(try again, within the set's deadline) and :class:`EcuRefused` (this step failed for good).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from overdrive.bundle import BundleError, apply_bundle
from overdrive.client.ecu_config import EcuConfig
from overdrive.client.identity import load_key
from overdrive.client.module import ModuleError, UpdateModule
from overdrive.client.state import SlotImage
from overdrive.envelope import sign_envelope
from overdrive.errors import OverdriveError
from overdrive.tuf_layout import BundleInfo
from overdrive.uptane import ecu_report, installed_image

if TYPE_CHECKING:
    from overdrive.client.secondary_link import RepoFiles


class EcuUnreachable(OverdriveError):
    """The ECU did not answer (down, rebooting, cable pulled): the step may be retried."""


class EcuRefused(OverdriveError):
    """The ECU (or its module) refused or failed the step."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Verification:
    """What a secondary needs to verify for itself: this poll's time attestation and the two
    repositories' metadata as the primary verified it."""

    time: dict[str, Any]
    director: RepoFiles
    image_repo: RepoFiles


class Ecu(Protocol):
    config: EcuConfig

    def report(self, nonce: str, counter: int) -> dict[str, Any]: ...

    def running(self) -> SlotImage: ...

    def verify(self, set_id: str, proof: Verification) -> bool: ...

    def stage(self, set_id: str, bundle: Path) -> None: ...

    def install(self, set_id: str, bundle: Path, info: BundleInfo) -> None: ...

    def trial(self, set_id: str) -> tuple[bool, str]: ...

    def commit(self, set_id: str) -> None: ...

    def rollback(self, set_id: str) -> None: ...


class SecondaryEcu:
    """A secondary process: it verifies, stages, installs and trial-boots by itself."""

    def __init__(self, config: EcuConfig) -> None:
        from overdrive.client.secondary_link import SecondaryLink

        self.config = config
        self.link = SecondaryLink(config.address, timeout_s=config.timeout_s)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        from overdrive.client.secondary_link import SecondaryRefused, SecondaryUnreachable

        try:
            return getattr(self.link, name)(*args, **kwargs)
        except SecondaryUnreachable as e:
            raise EcuUnreachable(f"secondary {self.config.serial}: {e}") from e
        except SecondaryRefused as e:
            raise EcuRefused(e.reason, f"secondary {self.config.serial}: {e}") from e
        except OverdriveError as e:
            raise EcuRefused("secondary_error", f"secondary {self.config.serial}: {e}") from e

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("info")
        return info

    def report(self, nonce: str, counter: int) -> dict[str, Any]:
        report: dict[str, Any] = self._call("report", nonce)
        return report

    def running(self) -> SlotImage:
        status = self._call("status")
        image = (status.get("slots") or {}).get(status.get("active"))
        if not isinstance(image, dict):
            raise EcuRefused("secondary_error", f"secondary {self.config.serial}: no image")
        return SlotImage.from_dict(image)

    def verify(self, set_id: str, proof: Verification) -> bool:
        verdict = self._call(
            "verify",
            set_id,
            time=proof.time,
            director=proof.director,
            image_repo=proof.image_repo,
        )
        return bool(verdict.get("status") == "update")

    def stage(self, set_id: str, bundle: Path) -> None:
        self._call("stage", set_id, bundle)

    def install(self, set_id: str, bundle: Path, info: BundleInfo) -> None:
        self._call("install", set_id)

    def trial(self, set_id: str) -> tuple[bool, str]:
        answer = self._call("trial", set_id)
        return bool(answer.get("healthy")), str(answer.get("message", ""))

    def commit(self, set_id: str) -> None:
        self._call("commit", set_id)

    def rollback(self, set_id: str) -> None:
        self._call("rollback", set_id)


class ModuleEcu:
    """An ECU behind an update module: the primary verified its image, decodes the bundle and
    hands the module the image; its version reports are signed with its key, which the
    primary holds."""

    def __init__(self, config: EcuConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.module = UpdateModule(config, state_dir)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.module, name)(*args, **kwargs)
        except ModuleError as e:
            raise EcuRefused(e.reason, str(e)) from e

    def running(self) -> SlotImage:
        image = self._call("version")
        return SlotImage(
            self.config.hardware_id,
            image.version,
            image.sha256,
            image.length,
            image.release_counter,
        )

    def report(self, nonce: str, counter: int) -> dict[str, Any]:
        image = self.running()
        payload = ecu_report(
            ecu_serial=self.config.serial,
            hardware_id=self.config.hardware_id,
            nonce=nonce,
            counter=counter,
            image=installed_image(
                f"{image.hardware_id}/{image.version}",
                image.length,
                image.sha256,
                image.version,
                image.release_counter,
            ),
        )
        return sign_envelope(payload, load_key(self.state_dir / self.config.key_file))

    def verify(self, set_id: str, proof: Verification) -> bool:
        return True  # the primary verified for it

    def stage(self, set_id: str, bundle: Path) -> None:
        """Nothing to send: the bundle stays in the primary's cache until install."""

    def install(self, set_id: str, bundle: Path, info: BundleInfo) -> None:
        work = self.state_dir / "modules" / self.config.serial
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            image = Path(scratch) / "image"
            source = None
            if info.kind == "delta":
                source = Path(scratch) / "source"
                self._call("read", source)
            try:
                apply_bundle(bundle, image, source=source, expected=info.expected())
            except BundleError as e:
                raise EcuRefused("bad_bundle", f"ECU {self.config.serial}: {e}") from e
            self._call(
                "install",
                image,
                sha256=info.image.sha256,
                version=info.version,
                release_counter=info.release_counter,
            )

    def trial(self, set_id: str) -> tuple[bool, str]:
        healthy, message = self.module.trial()
        return healthy, message

    def commit(self, set_id: str) -> None:
        self._call("commit")

    def rollback(self, set_id: str) -> None:
        self._call("rollback")


def open_ecu(config: EcuConfig, state_dir: Path) -> SecondaryEcu | ModuleEcu:
    if config.kind == "secondary":
        return SecondaryEcu(config)
    return ModuleEcu(config, state_dir)


def bundle_info(custom: Any, path: str) -> BundleInfo:
    """The bundle a (verified) target describes."""
    info = BundleInfo.from_custom(custom, path)
    if info is None:
        raise EcuRefused("not_a_bundle", f"target {path} is not an update bundle")
    return info
