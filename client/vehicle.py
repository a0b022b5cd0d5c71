"""One vehicle: its configuration, state, keys, boot environment and the update steps.

:meth:`Vehicle.cycle` is one turn of the daemon: send queued events, resume whatever a crash
interrupted, otherwise poll and — for a verified assignment — download, install into the inactive
slot and request a trial boot. :meth:`Vehicle.boot` stands in for the bootloader and init: it
picks the slot, runs the health check, and commits or rolls back. Every step is persisted before
its effects (see :mod:`client.state`) and reported as an event (see :mod:`client.events`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client import bootchooser as bc
from client.api import ServerApi
from client.bootenv import BootEnv, open_boot_env
from client.config import VehicleConfig
from client.download import (
    BundleCache,
    DownloadError,
    DownloadInterrupted,
    DownloadOptions,
    HashMismatch,
)
from client.errors import Refused, RepositoryUnreachable, ServerError
from client.events import EventQueue, now_iso
from client.identity import load_key
from client.install import clear_progress, install_bundle
from client.state import (
    DOWNLOADED,
    DOWNLOADING,
    IDLE,
    INSTALLED,
    INSTALLING,
    SlotImage,
    StateStore,
    VehicleState,
)
from client.trust import Trust, check_assignment, check_target
from overdrive.envelope import MANIFEST
from overdrive.tuf_layout import BundleInfo

KEY_FILE = "vehicle.key"
HEALTH_TIMEOUT = 300
#: Downloads whose bytes did not match the signed hash before the assignment is given up.
MAX_CORRUPT_DOWNLOADS = 3


@dataclass
class CycleResult:
    """What one daemon turn did, and when to come back."""

    action: str  # "nothing", "updated", "refused", "offline", "waiting", "interrupted", "failed"
    detail: str
    next_poll: int


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
        self.trust = Trust(state_dir, self.config.repo_url)
        self.boot_env = boot_env_for(self.config, state_dir)
        self.cache = BundleCache(state_dir / "cache", self.config.cache_max_bytes)
        self._api: ServerApi | None = None

    @property
    def api(self) -> ServerApi:
        if self._api is None:
            self._api = ServerApi(
                self.config.server_url, self.config.vehicle_id, load_key(self.state_dir / KEY_FILE)
            )
        return self._api

    # ------------------------------------------------------------------ events

    def report(
        self, state: VehicleState, kind: str, reason: str | None = None, **details: Any
    ) -> None:
        """Queue an event about the current assignment; its id is derived from the assignment
        and the step, so the same step reported again after a crash is stored once."""
        assignment = state.assignment or {}
        payload = assignment.get("payload", {})
        basis = f"{payload.get('campaign_id')}|{payload.get('nonce')}|{kind}"
        event_id = hashlib.sha256(basis.encode()).hexdigest()[:32] if payload else None
        self.events.add(
            kind,
            event_id=event_id,
            campaign_id=payload.get("campaign_id"),
            hardware_id=payload.get("hardware_id") or self.config.hardware_id,
            reason=reason,
            version=payload.get("version"),
            **details,
        )

    def flush_events(self) -> bool:
        """Send queued events; False when the server is unreachable (they stay queued)."""
        try:
            self.events.flush(self.api.send_events)
            return True
        except ServerError:
            return False

    # ------------------------------------------------------------------ the daemon turn

    def cycle(self) -> CycleResult:
        state = self.store.load()
        self.flush_events()
        if state.state in (DOWNLOADING, DOWNLOADED, INSTALLING):
            return self._continue(state)
        if state.state == INSTALLED:
            self._request_trial(state)
            return CycleResult(
                "waiting", "installed: waiting for the trial boot", self.config.poll_interval
            )
        return self._poll(state)

    def _manifest(self, state: VehicleState, nonce: str) -> dict[str, Any]:
        active = state.image(state.active)
        images = {}
        if active is not None:
            images[active.hardware_id] = {
                "version": active.version,
                "sha256": active.sha256,
                "release_counter": active.release_counter,
            }
        return {
            "_type": MANIFEST,
            "vehicle_id": self.config.vehicle_id,
            "counter": state.manifest_counter,
            "timestamp": now_iso(),
            "nonce": nonce,
            "images": images,
            "slot": state.active,
            "state": state.state,
            "last_result": state.last_result,
        }

    def _poll(self, state: VehicleState) -> CycleResult:
        nonce = secrets.token_hex(16)
        state.manifest_counter += 1
        self.store.save(state)  # a counter is never reused, even across a crash
        try:
            answer = self.api.poll(self._manifest(state, nonce))
        except ServerError as e:
            return CycleResult("offline", str(e), self.config.poll_interval)
        next_poll = int(answer.get("next_poll_seconds") or self.config.poll_interval)
        assignments = [a for a in answer.get("assignments", []) if _for(a, self.config.hardware_id)]
        if not assignments:
            return CycleResult("nothing", "nothing to do", next_poll)
        try:
            verified = self._verify(state, assignments[0], nonce)
        except RepositoryUnreachable as e:
            return CycleResult("offline", str(e), next_poll)
        except Refused as e:
            # Name the campaign only for an assignment whose signature checked out: a forged one
            # must not take the vehicle out of a real campaign.
            state.assignment = {"payload": e.payload} if e.payload else None
            self.report(state, "failed", f"{e.reason}: {e}")
            state.assignment = None
            state.last_result = {
                "status": "refused",
                "reason": e.reason,
                "message": str(e),
                "at": now_iso(),
            }
            self.store.save(state)
            self.flush_events()
            return CycleResult("refused", f"{e.reason}: {e}", next_poll)
        if not _in_window(verified["payload"].get("maintenance_windows") or []):
            return CycleResult("waiting", "outside the maintenance window", next_poll)
        state.assignment = verified
        state.state = DOWNLOADING
        self.store.save(state)
        self.report(state, "downloading")
        return self._continue(state)

    def _verify(self, state: VehicleState, envelope: Any, nonce: str) -> dict[str, Any]:
        updater = self.trust.refresh()
        keys, threshold = self.trust.director_keys(updater)
        payload = check_assignment(
            envelope,
            director_keys=keys,
            threshold=threshold,
            vehicle_id=self.config.vehicle_id,
            nonce=nonce,
            hardware_id=self.config.hardware_id,
        )
        target = updater.get_targetinfo(payload["target"]["path"])
        try:
            info = check_target(
                payload,
                target,
                hardware_id=self.config.hardware_id,
                active=state.image(state.active),
                committed_counter=state.committed_counter,
            )
        except Refused as e:
            e.payload = payload
            raise
        assert target is not None
        return {
            "payload": payload,
            "custom": target.custom,
            "url": self.trust.bundle_url(target),
            "length": target.length,
            "sha256": target.hashes["sha256"],
            "target_slot": state.inactive,
            "info": {
                "kind": info.kind,
                "version": info.version,
                "release_counter": info.release_counter,
            },
        }

    # ------------------------------------------------------------------ the update steps

    def _continue(self, state: VehicleState) -> CycleResult:
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
                options=DownloadOptions(
                    max_bytes_per_s=self.config.max_bytes_per_s or None,
                    attempts=self.config.download_attempts,
                    backoff_s=self.config.download_backoff_s,
                    rate_window_s=self.config.download_rate_window_s,
                ),
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
        if state.state == DOWNLOADED:
            state.state = INSTALLING
            self.store.save(state)
            self.report(state, "installing")
        target_slot = a["target_slot"]
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
        self._request_trial(state)
        self.report(state, "installed", slot=target_slot)
        self.flush_events()
        return CycleResult(
            "updated",
            f"installed {info.version} into slot {target_slot}; reboot to try it",
            self.config.poll_interval,
        )

    def _request_trial(self, state: VehicleState) -> None:
        """Ask the bootloader to try the new slot once (idempotent: safe to repeat after a crash)."""
        assert state.assignment is not None
        target = state.assignment["target_slot"]
        env = self.boot_env.load()
        if bc.trial_slot(env) != target or (
            env.slot(target).tries_left == 0 and env.order[0] != target
        ):
            self.boot_env.save(bc.mark_try_once(env, target))

    def _abandon(self, state: VehicleState, reason: str, message: str) -> CycleResult:
        """Give up on the assignment: report it, clean up, stay on the active slot."""
        self.report(state, "failed", f"{reason}: {message}")
        target = (state.assignment or {}).get("target_slot")
        if target and state.state == INSTALLING:
            state.slots[target] = None  # half-written: never boot it
        state.state, state.assignment = IDLE, None
        state.last_result = {
            "status": "failed",
            "reason": reason,
            "message": message,
            "at": now_iso(),
        }
        clear_progress(self.state_dir)
        self.store.save(state)
        self.flush_events()
        return CycleResult("failed", f"{reason}: {message}", self.config.poll_interval)

    # ------------------------------------------------------------------ boot (simulated)

    def boot(self, *, crash: bool = False) -> str:
        """Boot like the bootloader + init would: choose the slot, spend a try, health-check,
        then commit the trial slot or roll back to the previous good one. ``crash`` simulates a
        boot that dies before the health check (a boot loop)."""
        env = self.boot_env.load()
        slot, env = bc.choose_boot(env)
        self.boot_env.save(env)
        if crash:
            return f"booted slot {slot} and crashed before the health check"
        state = self.store.load()
        pending = (
            state.assignment["target_slot"]
            if state.state == INSTALLED and state.assignment
            else None
        )
        if pending is not None and slot == pending:
            healthy, why = self._health_check(slot)
            if healthy:
                return self._commit(state, env, slot)
            return self._rollback(state, slot, f"health check failed: {why}")
        if (
            pending is not None
            and bc.trial_slot(env) == pending
            and env.slot(pending).tries_left == 0
        ):
            return self._rollback(
                state, pending, "boot attempts exhausted: the new slot never came up healthy"
            )
        if slot != state.active and state.image(slot) is not None and env.slot(slot).good:
            state.active = slot  # a commit whose state write was cut: the bootloader knows better
            self.store.save(state)
        self.boot_env.save(bc.mark_good(self.boot_env.load(), slot))
        return f"booted slot {slot} ({_describe(state.image(slot))})"

    def _health_check(self, slot: str) -> tuple[bool, str]:
        command = self.config.health_check
        if not command:
            return True, "no health check configured"
        image = self.store.load().image(slot)
        env = {
            **os.environ,
            "OVERDRIVE_SLOT": slot,
            "OVERDRIVE_SLOT_PATH": str(self.config.slot_path(slot)),
            "OVERDRIVE_VERSION": image.version if image else "",
        }
        try:
            result = subprocess.run(
                shlex.split(command),
                env=env,
                capture_output=True,
                text=True,
                timeout=HEALTH_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"{command!r} could not run: {e}"
        detail = (result.stdout + result.stderr).strip().splitlines()
        return result.returncode == 0, (detail[-1] if detail else f"exit code {result.returncode}")

    def _commit(self, state: VehicleState, env: bc.BootState, slot: str) -> str:
        self.boot_env.save(bc.mark_good(env, slot))  # first: the bootloader must keep this slot
        image = state.image(slot)
        assert image is not None
        self.report(state, "booted", slot=slot)
        self.report(state, "committed", slot=slot)
        state.active, state.state, state.assignment = slot, IDLE, None
        state.committed_counter = max(state.committed_counter, image.release_counter)
        state.last_result = {"status": "committed", "version": image.version, "at": now_iso()}
        self.store.save(state)
        self.flush_events()
        return f"committed {image.version} in slot {slot}"

    def _rollback(self, state: VehicleState, bad_slot: str, reason: str) -> str:
        image = state.image(bad_slot)
        self.report(state, "rolled_back", reason, slot=bad_slot)
        state.slots[bad_slot] = None
        state.state, state.assignment = IDLE, None
        state.last_result = {
            "status": "rolled_back",
            "version": image.version if image else None,
            "reason": reason,
            "at": now_iso(),
        }
        self.store.save(state)
        env = bc.mark_bad(self.boot_env.load(), bad_slot)
        slot, env = bc.choose_boot(env)  # "reboot" into the previous good slot
        self.boot_env.save(bc.mark_good(env, slot))
        self.flush_events()
        return f"rolled back to slot {slot}: {reason}"


def _for(envelope: Any, hardware_id: str) -> bool:
    signed = envelope.get("signed") if isinstance(envelope, dict) else None
    return isinstance(signed, dict) and signed.get("hardware_id") in (hardware_id, None)


def _in_window(windows: list[dict[str, Any]], now: datetime | None = None) -> bool:
    from overdrive.maintenance import in_windows

    return in_windows(windows, (now or datetime.now(UTC)).astimezone())


def _describe(image: SlotImage | None) -> str:
    return f"{image.hardware_id} {image.version}" if image else "no verified image"
