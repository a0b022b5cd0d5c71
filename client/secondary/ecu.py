"""The secondary's operations, independent of the network: what ``serve`` answers, and what a
test or a power-cut harness can call in-process.

Every operation names its software set (``director-N``) and is idempotent for it: a repeat
after a crash or a lost answer does the same thing or nothing. State is saved before each
effect (:mod:`.state`), and :meth:`Secondary.recover` (run at every start) brings the boot
environment back in line with it, so a kill -9 at any point leaves:

* a half-written slot recorded empty and marked bad (never offered to the bootloader);
* ``rollback`` able to return to the image that ran before the set (even after ``commit``);
* ``commit`` of a healthy trial landing whenever it is repeated.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from overdrive.client.bootenv import BootEnvError
from overdrive.client.errors import Refused
from overdrive.client.health import run_health_check
from overdrive.client.install import install_bundle
from overdrive.client.secondary.base import (
    PART_PREFIX,
    STAGED_BUNDLE,
    SecondaryBase,
    check_set_id,
    result,
)
from overdrive.client.secondary.boot import on_trial
from overdrive.client.secondary.bundle import Reader, bundle_info, file_sha256, receive
from overdrive.client.secondary.state import (
    COMMITTED,
    INSTALLED,
    INSTALLING,
    ROLLED_BACK,
    STAGED,
    TRIAL,
    VERIFIED,
    WRITTEN,
)
from overdrive.client.secondary.verify import VerifiedTarget, trusted_root_version
from overdrive.client.secondary_link import RepoFiles
from overdrive.client.state import SlotImage
from overdrive.client.trust import DIRECTOR_ROOT, TRUSTED_ROOT
from overdrive.envelope import sign_envelope
from overdrive.storage.local import fsync_dir
from overdrive.text import one_line
from overdrive.uptane import ecu_report, installed_image, iso

_NONCE = re.compile(r"^[\x21-\x7e]{1,128}$")
#: Refusals that are something this ECU was sent, not something it was asked out of turn:
#: they go into the next version report's ``attacks_detected``.
_ATTACKS = frozenset(
    [
        "wrong_length",
        "hash_mismatch",
        "slow_retrieval",
        "not_as_signed",
        "bad_bundle",
        "source_mismatch",
        "wrong_hardware",
        "not_a_bundle",
    ]
)


class Secondary(SecondaryBase):
    """One secondary ECU's state directory, and the operations on it (thread-safe)."""

    # ------------------------------------------------------------------ read-only

    def info(self) -> dict[str, Any]:
        return {
            "serial": self.config.serial,
            "hardware_id": self.config.hardware_id,
            "verification": self.config.verification,
            "public_key": self.public_key(),
            "director_root_version": trusted_root_version(
                self.state_dir, "director", DIRECTOR_ROOT
            ),
            # 0: no image repository root (partial verification never reads that repository)
            "image_root_version": trusted_root_version(self.state_dir, "tuf", TRUSTED_ROOT),
        }

    def status(self) -> dict[str, Any]:
        """What ``status`` shows: the state as last saved (consistent, whatever runs now)."""
        s = self.store.load()
        try:
            boot = self.boot_env.load().describe()
        except BootEnvError as e:
            boot = one_line(str(e))
        target = VerifiedTarget.from_dict(s.target).answer() if s.target else None
        return {
            "serial": self.config.serial,
            "hardware_id": self.config.hardware_id,
            "verification": self.config.verification,
            **s.describe(),
            "target": target,
            "boot": boot,
            "vehicle_id": self.config.vehicle_id or s.vehicle_id or None,
        }

    # ------------------------------------------------------------------ report

    def report(self, nonce: str) -> dict[str, Any]:
        """The signed ECU version report echoing ``nonce`` (which a time attestation must
        echo from now on), with a fresh counter and what was refused since the last one."""
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise Refused("bad_request", "nonce must be 1-128 printable ASCII characters")
        with self._locked():
            s = self.state
            attacks = s.attacks_detected
            s.report_counter += 1
            s.last_nonce = nonce
            s.attacks_detected = ""
            self._save()  # a counter is never reused, even across a crash
            image = s.slots[s.active]
            assert image is not None  # the committed slot always holds an image
            payload = ecu_report(
                ecu_serial=self.config.serial,
                hardware_id=self.config.hardware_id,
                nonce=nonce,
                counter=s.report_counter,
                image=installed_image(
                    f"{image.hardware_id}/{image.version}",
                    image.length,
                    image.sha256,
                    image.version,
                    image.release_counter,
                ),
                attacks_detected=attacks,
            )
        return sign_envelope(payload, self.signer)

    # ------------------------------------------------------------------ verify

    def verify(
        self, set_id: str, time: Any, director: RepoFiles, image_repo: RepoFiles | None
    ) -> dict[str, Any]:
        """Verify the set's metadata for this ECU (see :mod:`.verify`)."""
        check_set_id(set_id)
        with self._locked():
            s = self.state
            if s.set_id == set_id and s.target is not None:
                return VerifiedTarget.from_dict(s.target).answer()  # a repeat
            if s.stage == TRIAL:
                raise self._refuse(
                    Refused("busy", f"set {s.set_id} is on trial: commit or roll it back first"),
                    attack=False,
                )
            try:
                outcome = self.verifier.verify(s, time, director, image_repo)
                if set_id != f"director-{outcome.director_version}":
                    raise Refused(
                        "wrong_set",
                        f"set {set_id} is not the director's targets version "
                        f"{outcome.director_version} this ECU verified",
                    )
            except Refused as e:
                raise self._refuse(e) from None
            s.trusted_time = iso(outcome.moment)
            s.director_version = max(s.director_version, outcome.director_version)
            if not self.config.vehicle_id:
                s.vehicle_id = outcome.vehicle_id
            if outcome.target is None:
                self._save()
                return {"status": "none"}
            if s.stage in WRITTEN:  # an unfinished set that never ran: its image goes
                s.slots[s.inactive] = None
            s.set_id, s.stage, s.target = set_id, VERIFIED, outcome.target.to_dict()
            s.trial = s.previous = None
            self._save()
            self._settle_boot_env()
            self._discard_files()
            return outcome.target.answer()

    # ------------------------------------------------------------------ stage

    def begin_stage(self, set_id: str, length: int) -> int | None:
        """How many bytes to receive for the set's bundle; None when it is staged already."""
        with self._locked():
            target = self._current(set_id)
            stage = self.state.stage
            if stage == ROLLED_BACK:
                raise Refused("rolled_back", f"set {set_id} was rolled back")
            if stage != VERIFIED:
                return None
            if length != target.length:
                raise self._refuse(
                    Refused(
                        "wrong_length",
                        f"the bundle offered is {length} bytes; the verified target "
                        f"{target.path} is {target.length}",
                    )
                )
            return target.length

    def receive_stage(self, set_id: str, read: Reader) -> dict[str, Any]:
        """Receive exactly the verified target's length through ``read`` into
        ``STATE_DIR/staged.bundle``, checking its sha256; never a byte more."""
        with self._locked():
            target = self._current(set_id)
            if self.state.stage != VERIFIED:
                return {"staged": True}
        part = self.state_dir / f"{PART_PREFIX}{secrets.token_hex(8)}"
        try:
            digest = receive(part, read, target.length)
            if digest != target.sha256:
                raise Refused(
                    "hash_mismatch",
                    f"the bundle received has sha256 {digest[:16]}…, the verified target "
                    f"{target.path} {target.sha256[:16]}…",
                )
            with self._locked():
                if self.state.set_id != set_id or self.state.stage != VERIFIED:
                    return {"staged": True}  # another connection staged it meanwhile
                os.replace(part, self.state_dir / STAGED_BUNDLE)
                fsync_dir(self.state_dir)
                self.state.stage = STAGED
                self._save()
            return {"staged": True, "sha256": digest}
        except Refused as e:
            with self._locked():
                raise self._refuse(e, attack=e.reason in _ATTACKS) from None
        finally:
            part.unlink(missing_ok=True)

    def stage_file(self, set_id: str, bundle: Path) -> dict[str, Any]:
        """Stage a local file (in-process use: tests, harnesses)."""
        if self.begin_stage(set_id, bundle.stat().st_size) is None:
            return {"staged": True}
        with bundle.open("rb") as f:
            return self.receive_stage(set_id, f.read)

    # ------------------------------------------------------------------ install

    def install(self, set_id: str) -> None:
        """Write the staged bundle into the inactive slot (resumable, verified chunk by chunk)."""
        with self._locked():
            target = self._current(set_id)
            s = self.state
            if s.stage in (INSTALLED, TRIAL, COMMITTED):
                return
            if s.stage == ROLLED_BACK:
                raise Refused("rolled_back", f"set {set_id} was rolled back")
            if s.stage == VERIFIED:
                raise Refused("not_staged", f"set {set_id}: stage the bundle first")
            new = s.inactive
            if s.stage == STAGED:
                self._unbootable(new)  # before its image is forgotten, and overwritten
                s.slots[new] = None
                s.stage = INSTALLING
                self._save()
            self._settle_boot_env()
            staged = self.state_dir / STAGED_BUNDLE
            if file_sha256(staged) != target.sha256:
                s.stage = VERIFIED
                self._save()
                staged.unlink(missing_ok=True)
                raise Refused("not_staged", "the staged bundle is gone or damaged: stage again")
            try:
                info = bundle_info(target, staged, self.config.hardware_id)
                install_bundle(
                    staged,
                    info,
                    target_slot=self.config.slot_path(new),
                    active_slot=self.config.slot_path(s.active),
                    state_dir=self.state_dir,
                )
            except Refused as e:
                raise self._refuse(e, attack=e.reason in _ATTACKS) from None
            s.slots[new] = SlotImage(
                info.hardware_id,
                info.version,
                info.image.sha256,
                info.image.length,
                info.release_counter,
            )
            s.stage = INSTALLED
            self._save()
            staged.unlink(missing_ok=True)

    # ------------------------------------------------------------------ trial, commit, rollback

    def trial(self, set_id: str) -> dict[str, Any]:
        """The simulated trial boot: the new slot runs on trial and its health check says
        whether it is healthy. It does not commit by itself."""
        with self._locked():
            self._current(set_id)
            s = self.state
            if s.stage == COMMITTED:
                return {"healthy": True, "message": "committed"}
            if s.stage == ROLLED_BACK:
                raise Refused("rolled_back", f"set {set_id} was rolled back")
            if s.stage not in (INSTALLED, TRIAL):
                raise Refused("not_installed", f"set {set_id}: install it first")
            if s.stage == TRIAL and s.trial is not None and s.trial.get("healthy") is not None:
                return {"healthy": s.trial["healthy"], "message": s.trial["message"]}
            if s.stage == INSTALLED or s.trial is None:
                s.stage = TRIAL
                s.trial = {"slot": s.inactive, "healthy": None, "message": ""}
                self._save()
            slot = str(s.trial["slot"])
            env = self.boot_env.load()
            if env.booted != slot:
                self.boot_env.save(on_trial(env, slot))
            image = s.slots[slot]
            assert image is not None
            health = run_health_check(
                self.config.health_check,
                {
                    **os.environ,
                    "OVERDRIVE_SLOT": slot,
                    "OVERDRIVE_SLOT_PATH": str(self.config.slot_path(slot)),
                    "OVERDRIVE_VERSION": image.version,
                    "OVERDRIVE_TRIAL": "1",
                    "OVERDRIVE_ECU_SERIAL": self.config.serial,
                    "OVERDRIVE_STATE_DIR": str(self.state_dir),
                },
                self.config.health_timeout_s,
            )
            s.trial = {"slot": slot, "healthy": health.healthy, "message": health.detail}
            self._save()
            return {"healthy": health.healthy, "message": health.detail}

    def commit(self, set_id: str) -> None:
        """Make a healthy trial the committed image."""
        with self._locked():
            self._current(set_id)
            s = self.state
            if s.stage == COMMITTED:
                self._settle_boot_env()
                return
            if s.stage != TRIAL or s.trial is None:
                raise Refused("not_on_trial", f"set {set_id} is {s.stage}, not on trial")
            if s.trial.get("healthy") is not True:
                raise Refused("unhealthy", f"set {set_id}: the trial was not healthy")
            new = str(s.trial["slot"])
            image = s.slots[new]
            assert image is not None
            s.previous = {"slot": s.active, "committed_counter": s.committed_counter}
            s.active = new
            s.committed_counter = max(s.committed_counter, image.release_counter)
            s.stage = COMMITTED
            s.last_result = result("committed", "committed", f"committed {image.version}")
            self._save()
            self._settle_boot_env()

    def rollback(self, set_id: str) -> None:
        """Back to the image this ECU ran before the set, from any stage (nothing to do for a
        set it holds nothing of)."""
        check_set_id(set_id)
        with self._locked():
            s = self.state
            if s.set_id != set_id or s.target is None:
                return
            if s.stage != ROLLED_BACK:
                if s.stage == COMMITTED and s.previous is not None:
                    back = str(s.previous["slot"])
                    self._unbootable(s.active, booted=back)
                    s.slots[s.active] = None
                    s.active = back
                    s.committed_counter = int(s.previous["committed_counter"])
                elif s.stage in (*WRITTEN, TRIAL):
                    self._unbootable(s.inactive, booted=s.active)
                    s.slots[s.inactive] = None
                s.stage, s.trial = ROLLED_BACK, None
                s.last_result = result("rolled_back", "rolled_back", f"set {set_id} rolled back")
                self._save()
            self._settle_boot_env()
            self._discard_files()
