"""One vehicle: its configuration, state, keys, boot environment and the update steps.

:meth:`Vehicle.cycle` is one turn of the daemon: deliver queued events, resume whatever a crash
interrupted, otherwise poll and — for a verified assignment — download, install into the slot
that is not running and request a trial boot. What happens at boot (commit, roll back) is
:mod:`overdrive.client.boot`'s. Every step is persisted before its effects (see :mod:`overdrive.client.state`) and
reported as an event (see :mod:`overdrive.client.events`); final outcomes go through the state's outbox,
so a decision and its report are saved together.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overdrive.client import bootchooser as bc
from overdrive.client.api import ServerApi
from overdrive.client.bootenv import BootEnv, open_boot_env
from overdrive.client.bootslot import CMDLINE, find_booted, read_text
from overdrive.client.config import VehicleConfig
from overdrive.client.download import (
    BundleCache,
    DownloadError,
    DownloadInterrupted,
    DownloadOptions,
    HashMismatch,
)
from overdrive.client.ecus import EcuRefused, EcuUnreachable, open_ecu
from overdrive.client.errors import Refused, RepositoryUnreachable, ServerError
from overdrive.client.events import EventQueue, event_id, now_iso
from overdrive.client.identity import load_key
from overdrive.client.install import clear_progress, install_bundle
from overdrive.client.postboot import final_event
from overdrive.client.reboot import request_reboot
from overdrive.client.software_set import SoftwareSets
from overdrive.client.state import (
    DOWNLOADED,
    DOWNLOADING,
    IDLE,
    INSTALLED,
    INSTALLING,
    SlotImage,
    StateStore,
    VehicleState,
)
from overdrive.client.trust import DirectorTrust, Trust, check_director_target, check_target
from overdrive.envelope import sign_envelope
from overdrive.text import one_line
from overdrive.tuf_layout import BundleInfo
from overdrive.uptane import VEHICLE_MANIFEST, DirectorEntry, ecu_report, installed_image

KEY_FILE = "vehicle.key"
#: Downloads whose bytes did not match the signed hash before the assignment is given up.
MAX_CORRUPT_DOWNLOADS = 3

#: What a daemon turn did → the exit code of ``vehicle run --once`` (see docs/vehicles.md).
ACTION_EXIT_CODES = {
    "nothing": 0,
    "updated": 0,
    "waiting": 0,
    "refused": 3,
    "failed": 3,
    "offline": 5,
    "interrupted": 5,
    "server_error": 5,
}


@dataclass
class CycleResult:
    """What one daemon turn did, and when to come back."""

    action: str  # a key of ACTION_EXIT_CODES
    detail: str
    next_poll: int
    #: The daemon reboots once it has said so (reboot_after_install).
    reboot: bool = False

    def __post_init__(self) -> None:
        self.detail = one_line(self.detail)  # it may quote a mirror or a server


def boot_env_for(config: VehicleConfig, state_dir: Path) -> BootEnv:
    if config.boot_backend == "file":
        return open_boot_env("file", path=config.boot_env or str(state_dir / "bootenv.json"))
    if config.boot_backend == "uboot":
        return open_boot_env("uboot", config=config.boot_env or None)
    return open_boot_env("grub", env_file=config.boot_env or "/boot/grub/grubenv")


class Vehicle:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.config = VehicleConfig.load(state_dir)
        self.store = StateStore(state_dir)
        self.events = EventQueue(state_dir)
        self.trust = Trust(state_dir, self.config.repo_url, self.config.request_deadline_s)
        self.director = DirectorTrust(
            state_dir,
            self.config.server_url,
            self.config.vehicle_id,
            self.config.request_deadline_s,
        )
        self.boot_env = boot_env_for(self.config, state_dir)
        self.cache = BundleCache(state_dir / "cache", self.config.cache_max_bytes)
        self._api: ServerApi | None = None
        self.sets = SoftwareSets(self)
        #: Serials of the other ECUs whose version reports the last manifest carried.
        self.reported: set[str] = set()

    @property
    def api(self) -> ServerApi:
        if self._api is None:
            self._api = ServerApi(
                self.config.server_url,
                self.config.vehicle_id,
                load_key(self.state_dir / KEY_FILE),
                deadline_s=self.config.request_deadline_s,
            )
        return self._api

    # ------------------------------------------------------------------ events

    def report(
        self, state: VehicleState, kind: str, reason: str | None = None, **details: Any
    ) -> None:
        """Queue a progress event about the current assignment (stored once per step)."""
        payload = (state.assignment or {}).get("payload", {})
        self.events.add(
            kind,
            event_id=event_id(state.assignment, kind) if payload else None,
            campaign_id=payload.get("campaign_id"),
            hardware_id=payload.get("hardware_id") or self.config.hardware_id,
            reason=reason,
            version=payload.get("version"),
            **details,
        )

    def save_with_outbox(self, state: VehicleState) -> None:
        """Save ``state`` (with the final events decided with it), then queue those events."""
        self.store.save(state)
        if state.outbox:
            for event in state.outbox:
                self.events.put(event)
            state.outbox = []
            self.store.save(state)

    def flush_events(self) -> bool:
        """Send queued events; False when the server is unreachable (they stay queued)."""
        try:
            self.events.flush(self.api.send_events)
            return True
        except ServerError:
            return False

    # ------------------------------------------------------------------ the running slot

    def running_slot(self, env: bc.BootState) -> str:
        """The slot this system runs from (kernel command line, else the bootloader's record)."""
        cmdline = None if self.config.boot_backend == "file" else read_text(CMDLINE, "cmdline")
        return find_booted(cmdline, env, where=self.boot_env.describe()).slot

    def reboot(self) -> None:
        request_reboot(self.config.reboot_command)

    # ------------------------------------------------------------------ the daemon turn

    def cycle(self) -> CycleResult:
        state = self.store.load()
        if state.outbox:  # final events a power cut left there
            self.save_with_outbox(state)
        self.flush_events()
        if state.software_set is not None:
            return self.sets.advance(state)
        if state.state in (DOWNLOADING, DOWNLOADED, INSTALLING):
            return self._continue(state)
        if state.state == INSTALLED:
            self._request_trial(state)
            return CycleResult(
                "waiting", "installed: waiting for the trial boot", self.config.poll_interval
            )
        return self._poll(state)

    def _manifest(self, state: VehicleState, nonce: str) -> dict[str, Any]:
        """The vehicle version manifest: this ECU's version report (signed by its key, echoing
        ``nonce``, counted by the manifest counter), and the vehicle's update state."""
        active = state.image(state.active)
        if active is None:  # never after provisioning: slot A holds the factory image
            image = installed_image(None, 0, "0" * 64, "none", 0)
        else:
            image = installed_image(
                f"{active.hardware_id}/{active.version}",
                active.length,
                active.sha256,
                active.version,
                active.release_counter,
            )
        report = ecu_report(
            ecu_serial=self.config.serial,
            hardware_id=self.config.hardware_id,
            nonce=nonce,
            counter=state.manifest_counter,
            image=image,
            attacks_detected=state.attacks_detected,
        )
        reports = {self.config.serial: sign_envelope(report, self.api_signer())}
        self.reported = set()
        for ecu_config in self.config.other_ecus:
            try:  # a secondary that does not answer now is reported at a later poll
                reports[ecu_config.serial] = open_ecu(ecu_config, self.state_dir).report(
                    nonce, state.manifest_counter
                )
            except (EcuUnreachable, EcuRefused):
                continue
            self.reported.add(ecu_config.serial)
        return {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": self.config.vehicle_id,
            "primary_ecu_serial": self.config.serial,
            "counter": state.manifest_counter,
            "timestamp": now_iso(),
            "nonce": nonce,
            "ecu_version_reports": reports,
            "slot": state.active,
            "state": state.state,
            "last_result": state.last_result,
        }

    def api_signer(self) -> Any:
        signer = self.api.signer
        assert signer is not None
        return signer

    def _poll(self, state: VehicleState) -> CycleResult:
        nonce = secrets.token_hex(16)
        state.manifest_counter += 1
        self.store.save(state)  # a counter is never reused, even across a crash
        interval = self.config.poll_interval
        try:
            answer = self.api.poll(self._manifest(state, nonce))
        except ServerError as e:
            action = "offline" if "cannot reach" in str(e) else "server_error"
            return CycleResult(action, str(e), interval)
        if state.attacks_detected:  # reported in that manifest's version report
            state.attacks_detected = ""
            self.store.save(state)
        next_poll = answer.next_poll or interval
        version = answer.director_version
        if version is None or version == state.director_acted:
            return CycleResult("nothing", "nothing to do", next_poll)
        running = self.running_slot(self.boot_env.load())
        if running != state.active:
            return CycleResult(
                "failed",
                f"running slot {running}, but the committed image is in slot {state.active}: "
                "not updating until post-boot has handled this boot",
                next_poll,
            )
        try:
            moment = self._trusted_time(state, answer.time, nonce)
            entries = self.director.refresh(moment)
            if self.sets.lists_others(entries):
                return self.sets.begin(
                    state, entries, moment, answer.time, version, running, self.reported, next_poll
                )
            entry = entries.get(self.config.serial)
            verified = None if entry is None else self.verify_own(state, entry, moment, running)
        except RepositoryUnreachable as e:
            return CycleResult("offline", str(e), next_poll)
        except Refused as e:
            return self._refused(state, e, version, nonce, next_poll)
        if verified is None:
            state.director_acted = version
            self.store.save(state)
            return CycleResult("nothing", "nothing to do", next_poll)
        if not _in_window(verified["payload"].get("maintenance_windows") or []):
            return CycleResult("waiting", "outside the maintenance window", next_poll)
        state.director_acted = version
        state.assignment = verified
        state.state = DOWNLOADING
        self.store.save(state)
        self.report(state, "downloading")
        return self._continue(state)

    def _refused(
        self, state: VehicleState, e: Refused, version: int, nonce: str, next_poll: int
    ) -> CycleResult:
        """Report a refusal, and remember it as a detected attack (for the next version report).

        The campaign is named, and the director version marked as acted on, only for a director
        target whose signature checked out: a forged poll answer or time (the answer itself is
        not signed) must neither take the vehicle out of a real campaign nor make it skip the
        genuine metadata of the version it named."""
        state.assignment = {"payload": e.payload} if e.payload else None
        state.outbox.append(
            final_event(
                state,
                "failed",
                now_iso(),
                self.config.hardware_id,
                f"{e.reason}: {e}",
                salt="" if e.payload else nonce,
            )
        )
        state.assignment = None
        state.last_result = _result("refused", e.reason, str(e))
        state.attacks_detected = one_line(f"{e.reason}: {e}", 500)
        if e.payload:
            state.director_acted = e.payload.get("director_version") or version
        self.save_with_outbox(state)
        self.flush_events()
        return CycleResult("refused", f"{e.reason}: {e}", next_poll)

    def _trusted_time(self, state: VehicleState, attestation: Any, nonce: str) -> datetime:
        moment = self.director.check_time(attestation, nonce)
        state.trusted_time = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.store.save(state)
        return moment

    def verify_own(
        self,
        state: VehicleState,
        entry: DirectorEntry,
        moment: datetime,
        running: str,
        updater: Any = None,
    ) -> dict[str, Any] | None:
        """Full verification of what the director says this ECU should run (see
        :mod:`overdrive.client.trust`); None when this ECU already runs it."""
        payload = _payload(entry, self.director.local_version() or 0)
        active = state.image(state.active)
        updater = updater or self.trust.refresh(moment)
        target = updater.get_targetinfo(entry.path)
        try:
            check_director_target(entry, target, hardware_id=self.config.hardware_id)
            assert target is not None
            if active is not None and _image_of(target) == active.sha256:
                return None  # already running it (the director has not seen our report yet)
            info = check_target(
                target,
                hardware_id=self.config.hardware_id,
                active=active,
                committed_counter=state.committed_counter,
            )
        except Refused as e:
            e.payload = payload
            raise
        payload["kind"] = info.kind
        return {
            "payload": payload,
            "custom": target.custom,
            "url": self.trust.bundle_url(target),
            "length": target.length,
            "sha256": target.hashes["sha256"],
            # never the running slot, whatever the boot environment says about the others
            "target_slot": bc.other_slot(self.boot_env.load(), running),
            "info": {
                "kind": info.kind,
                "version": info.version,
                "release_counter": info.release_counter,
                "image_sha256": info.image.sha256,
            },
        }

    # ------------------------------------------------------------------ the update steps

    def download_options(self) -> DownloadOptions:
        return DownloadOptions(
            max_bytes_per_s=self.config.max_bytes_per_s or None,
            attempts=self.config.download_attempts,
            backoff_s=self.config.download_backoff_s,
            rate_window_s=self.config.download_rate_window_s,
            header_deadline_s=min(30.0, self.config.request_deadline_s),
        )

    def continue_update(self, state: VehicleState, *, trial: bool = True) -> CycleResult:
        """Download and install this ECU's assignment; then (``trial``) ask for its trial boot."""
        return self._continue(state, trial=trial)

    def _continue(self, state: VehicleState, *, trial: bool = True) -> CycleResult:
        assert state.assignment is not None
        a = state.assignment
        info = BundleInfo.from_custom(a["custom"], a["payload"]["target"]["path"])
        assert info is not None
        try:
            bundle = self.cache.fetch(
                a["url"],
                sha256=a["sha256"],
                name=a["payload"]["target"]["path"],
                length=a["length"],
                options=self.download_options(),
            )
        except DownloadInterrupted as e:
            return CycleResult("interrupted", str(e), 60)
        except HashMismatch as e:
            # One corrupted transfer is not a bad release: retry a few times before giving up.
            a["corrupt_downloads"] = a.get("corrupt_downloads", 0) + 1
            if a["corrupt_downloads"] < MAX_CORRUPT_DOWNLOADS:
                self.store.save(state)
                return CycleResult("interrupted", f"{e} (will download again)", 60)
            return self._abandon(state, "download_failed", str(e))
        except DownloadError as e:
            return self._abandon(state, "download_failed", str(e))
        if state.state == DOWNLOADING:
            state.state = DOWNLOADED
            self.store.save(state)
            self.report(state, "downloaded")
        target_slot = a["target_slot"]
        env = self.boot_env.load()
        running = self.running_slot(env)
        if running == target_slot or running != state.active:
            return self._abandon(
                state,
                "boot_mismatch",
                f"slot {target_slot} was to be written, but this system runs slot {running} "
                f"(committed: slot {state.active}); never writing into the running slot",
            )
        if state.state == DOWNLOADED:
            # The bootloader must never start a slot we are about to overwrite.
            self.boot_env.save(bc.mark_bad(env, target_slot))
            state.slots[target_slot] = None
            state.state = INSTALLING
            self.store.save(state)
            self.report(state, "installing")
        try:
            install_bundle(
                bundle,
                info,
                target_slot=self.config.slot_path(target_slot),
                active_slot=self.config.slot_path(state.active),
                state_dir=self.state_dir,
            )
        except Refused as e:
            return self._abandon(state, e.reason, str(e))
        state.slots[target_slot] = SlotImage(
            info.hardware_id,
            info.version,
            info.image.sha256,
            info.image.length,
            info.release_counter,
        )
        state.state = INSTALLED
        self.store.save(state)
        detail = f"installed {info.version} into slot {target_slot}"
        if not trial:  # a software set asks for the trial once every other ECU passed its own
            self.report(state, "installed", slot=target_slot)
            return CycleResult("updated", detail, self.config.poll_interval)
        self._request_trial(state)
        self.report(state, "installed", slot=target_slot)
        self.flush_events()
        if self.config.reboot_after_install:
            self.reboot()
            return CycleResult(
                "updated", f"{detail}; rebooting to try it", self.config.poll_interval
            )
        return CycleResult("updated", f"{detail}; reboot to try it", self.config.poll_interval)

    def request_trial(self, state: VehicleState) -> None:
        self._request_trial(state)

    def undo_install(self, state: VehicleState) -> None:
        """Take back this ECU's part of a software set that is rolled back: the slot it wrote
        (or was writing) is marked bad and forgotten, the committed slot stays."""
        target = (state.assignment or {}).get("target_slot")
        if target and state.state in (INSTALLING, INSTALLED):
            self.boot_env.save(bc.mark_bad(self.boot_env.load(), target))
            state.slots[target] = None
        state.state, state.assignment = IDLE, None
        clear_progress(self.state_dir)
        self.store.save(state)

    def _request_trial(self, state: VehicleState) -> None:
        """Ask the bootloader to try the new slot (idempotent: safe to repeat after a crash).

        A trial that is already set up — including one whose tries the bootloader has spent —
        is left alone: only post-boot may decide that a trial failed.
        """
        assert state.assignment is not None
        target = state.assignment["target_slot"]
        env = self.boot_env.load()
        if bc.trial_slot(env) != target:
            self.boot_env.save(bc.mark_trial(env, target, tries=self.config.trial_boots))

    def _abandon(self, state: VehicleState, reason: str, message: str) -> CycleResult:
        """Give up on the assignment: report it, clean up, stay on the active slot."""
        state.outbox.append(
            final_event(state, "failed", now_iso(), self.config.hardware_id, f"{reason}: {message}")
        )
        target = (state.assignment or {}).get("target_slot")
        if target and state.state == INSTALLING:
            state.slots[target] = None  # half-written: never boot it
        state.state, state.assignment = IDLE, None
        state.last_result = _result("failed", reason, message)
        clear_progress(self.state_dir)
        self.save_with_outbox(state)
        self.flush_events()
        return CycleResult("failed", f"{reason}: {message}", self.config.poll_interval)

    # ------------------------------------------------------------------ boot (simulated)

    def boot(self, *, crash: bool = False) -> str:
        """The simulated bootloader + init (see :func:`overdrive.client.boot.simulate_boot`)."""
        from overdrive.client.boot import simulate_boot

        return simulate_boot(self, crash=crash).message


def _result(status: str, reason: str, message: str) -> dict[str, Any]:
    return {"status": status, "reason": reason, "message": one_line(message), "at": now_iso()}


def _payload(entry: DirectorEntry, director_version: int) -> dict[str, Any]:
    """What the vehicle keeps of a director target while it works on it (and reports about)."""
    return {
        "campaign_id": entry.campaign_id,
        "hardware_id": entry.hardware_id,
        "ecu_serial": entry.ecu_serial,
        "version": entry.version,
        "release_counter": entry.release_counter,
        "target": {"path": entry.path, "sha256": entry.sha256, "length": entry.length},
        "maintenance_windows": entry.maintenance_windows,
        "director_version": director_version,
        # identifies this assignment in event ids (see events.event_id)
        "nonce": f"director-{director_version}-{entry.sha256[:16]}",
    }


def _image_of(target: Any) -> str | None:
    """The sha256 of the image a bundle target produces, if it says."""
    try:
        info = BundleInfo.from_custom(target.custom, target.path)
    except Exception:
        return None
    return info.image.sha256 if info is not None else None


def _in_window(windows: list[dict[str, Any]], now: datetime | None = None) -> bool:
    from overdrive.maintenance import in_windows

    return in_windows(windows, (now or datetime.now(UTC)).astimezone())
