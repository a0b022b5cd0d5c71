"""A software set: every ECU of the vehicle the director lists, updated all or nothing.

When a verified director chain names ECUs besides the primary, the vehicle works on them as one
set, persisted in ``state.json`` (``software_set``) before each step has effects, so a power cut
at any step of any ECU resumes where it stopped (every ECU operation is idempotent per set id):

1. ``download``: every bundle into the primary's cache (the primary verified each target: the
   director's entry equals the image repository's target; each secondary then verifies the
   same metadata itself when the set begins);
2. ``stage``: each secondary receives its bundle and checks it against the target *it* verified;
   nothing is installed anywhere until every ECU has its verified bundle;
3. ``install``: in ``install_order`` (the director's rank; the primary writes its inactive slot in
   its place in that order);
4. ``trial``: in the same order each secondary and module starts its new image on trial and
   checks it; the primary goes last, because its trial is a reboot of the updater itself;
5. ``commit`` once every ECU reported a healthy trial (the primary's is post-boot's verdict),
   else ``rollback`` of every ECU the set touched.

Any failure (a refusal, an install or trial that fails, a secondary that does not answer within
``set_deadline_s``) rolls the whole set back, and the vehicle reports one final event per
hardware id of the set, each naming the ECU that caused it (``details.caused_by``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from overdrive.client.download import DownloadError, DownloadInterrupted
from overdrive.client.ecus import (
    EcuRefused,
    EcuUnreachable,
    Verification,
    bundle_info,
    open_ecu,
)
from overdrive.client.errors import Refused, RepositoryUnreachable
from overdrive.client.events import event_id, now_iso
from overdrive.client.state import IDLE, INSTALLED, VehicleState
from overdrive.client.trust import check_director_target, check_not_withdrawn, check_target
from overdrive.fetcher import LocalOrHttpFetcher
from overdrive.text import one_line
from overdrive.uptane import DirectorEntry

if TYPE_CHECKING:
    from overdrive.client.vehicle import CycleResult, Vehicle

PHASES = ("download", "stage", "install", "trial", "primary_trial", "commit", "rollback")
#: Member stages, in the order a member goes through them.
STAGES = ("verified", "downloaded", "staged", "installed", "trial_ok", "committed", "rolled_back")
#: Largest root metadata file fetched for a secondary.
MAX_ROOT_BYTES = 512 * 1024
#: Seconds before the daemon comes back to a set that waits for an ECU.
RETRY_S = 30
#: Failures of the primary whose final event the primary's own code already sent.
_PRIMARY_REPORTED = frozenset({"trial_failed", "install_failed"})


class SetFailed(Exception):
    """One member failed a step for good (internal: turns into the set's rollback)."""

    def __init__(self, serial: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.serial, self.reason = serial, reason


@dataclass
class SoftwareSets:
    """Begins and advances the vehicle's software set (see the module docstring)."""

    car: Vehicle

    # ------------------------------------------------------------------ beginning

    def lists_others(self, entries: dict[str, DirectorEntry]) -> bool:
        """Whether the director's entries name any of this vehicle's other ECUs (an entry for
        a serial the vehicle does not have is ignored, as the primary ignores it alone)."""
        return any(self.car.config.ecu(serial) is not None for serial in entries)

    def begin(
        self,
        state: VehicleState,
        entries: dict[str, DirectorEntry],
        moment: datetime,
        attestation: dict[str, Any] | None,
        version: int,
        running: str,
        reported: set[str],
        next_poll: int,
    ) -> CycleResult:
        """Verify every ECU's entry (on the primary, then on each secondary) and start the set."""
        from overdrive.client.vehicle import CycleResult, _in_window, _payload

        car = self.car
        set_id = f"director-{version}"
        members: list[dict[str, Any]] = []
        missing = [e.serial for e in car.config.other_ecus if e.serial not in reported]
        if any(serial in entries for serial in missing):
            return CycleResult(
                "waiting",
                f"ECU {missing[0]} did not answer this poll: the software set waits for it",
                RETRY_S,
            )
        entries = {s: e for s, e in entries.items() if s == car.config.serial or car.config.ecu(s)}
        try:
            updater = car.trust.refresh(moment)
            for serial, entry in sorted(entries.items(), key=lambda kv: kv[1].install_order):
                payload = _payload(entry, car.director.local_version() or 0)
                if serial == car.config.serial:
                    try:
                        own = car.verify_own(state, entry, moment, running, updater)
                    except Refused as e:
                        raise SetFailed(serial, e.reason, str(e)) from e
                    if own is not None:
                        members.append(self._member(serial, "primary", entry, own))
                    continue
                ecu_config = car.config.ecu(serial)
                assert ecu_config is not None
                verified = self._verify_other(state, ecu_config, entry, payload, updater)
                if verified is not None:
                    members.append(self._member(serial, ecu_config.kind, entry, verified))
            for member in members:
                if member["kind"] != "secondary":
                    continue
                ecu = self._ecu(member)
                try:
                    wants = ecu.verify(set_id, self._proof(ecu, attestation))
                except EcuRefused as e:
                    raise SetFailed(member["serial"], e.reason, str(e)) from e
                member["stage"] = "verified" if wants else "skip"
            members = [m for m in members if m["stage"] != "skip"]
        except EcuUnreachable as e:
            return CycleResult("waiting", str(e), RETRY_S)
        except RepositoryUnreachable as e:
            return CycleResult("offline", str(e), next_poll)
        except SetFailed as e:
            state.director_acted = version
            state.attacks_detected = one_line(f"{e.reason}: {e}", 500)
            self._finish(state, members or self._members_for_report(entries), e, kind="failed")
            return CycleResult("refused", f"{e.reason}: {e}", next_poll)
        if members and not _in_window(members[0]["verified"]["payload"]["maintenance_windows"]):
            return CycleResult("waiting", "outside the maintenance window", next_poll)
        state.director_acted = version
        if not members:
            car.store.save(state)
            return CycleResult("nothing", "nothing to do", next_poll)
        state.software_set = {
            "id": set_id,
            "phase": "download",
            "members": members,
            "failure": None,
            "waiting_since": None,
        }
        car.store.save(state)
        for member in members:
            car.events.add(
                "downloading",
                event_id=event_id({"payload": member["verified"]["payload"]}, "downloading"),
                campaign_id=member["verified"]["payload"].get("campaign_id"),
                hardware_id=member["hardware_id"],
                version=member["verified"]["payload"].get("version"),
                ecu_serial=member["serial"],
            )
        return self.advance(state)

    def _member(
        self, serial: str, kind: str, entry: DirectorEntry, verified: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "serial": serial,
            "kind": kind,
            "hardware_id": entry.hardware_id,
            "order": entry.install_order,
            "stage": "verified",
            "verified": verified,
        }

    def _members_for_report(self, entries: dict[str, DirectorEntry]) -> list[dict[str, Any]]:
        """Members built from bare entries, so a refusal is reported per hardware id."""
        from overdrive.client.vehicle import _payload

        version = self.car.director.local_version() or 0
        return [
            {
                "serial": s,
                "kind": "primary" if s == self.car.config.serial else "other",
                "hardware_id": e.hardware_id,
                "order": e.install_order,
                "stage": "verified",
                "verified": {"payload": _payload(e, version)},
            }
            for s, e in entries.items()
        ]

    def _verify_other(
        self,
        state: VehicleState,
        ecu_config: Any,
        entry: DirectorEntry,
        payload: dict[str, Any],
        updater: Any,
    ) -> dict[str, Any] | None:
        """The primary's own full verification of another ECU's entry (the secondary repeats it
        for itself); None when that ECU already runs the image."""
        car = self.car
        target = updater.get_targetinfo(entry.path)
        try:
            check_director_target(entry, target, hardware_id=ecu_config.hardware_id)
            assert target is not None
            info = bundle_info(target.custom, target.path)
            check_not_withdrawn(target, info)
            if ecu_config.kind == "module":
                ecu = open_ecu(ecu_config, car.state_dir)
                active = ecu.running()
                if active.sha256 == info.image.sha256:
                    return None
                check_target(
                    target,
                    hardware_id=ecu_config.hardware_id,
                    active=active,
                    committed_counter=state.ecu_committed.get(ecu_config.serial, 0),
                )
        except (Refused, EcuRefused) as e:
            raise SetFailed(entry.ecu_serial, e.reason, str(e)) from e
        return {
            "payload": payload,
            "custom": target.custom,
            "url": car.trust.bundle_url(target),
            "length": target.length,
            "sha256": target.hashes["sha256"],
            "info": {
                "kind": info.kind,
                "version": info.version,
                "release_counter": info.release_counter,
                "image_sha256": info.image.sha256,
            },
        }

    def _proof(self, ecu: Any, attestation: dict[str, Any] | None) -> Verification:
        """This poll's time attestation and both repositories' verified metadata, with the
        root files the secondary needs to get from its trusted roots to the current ones."""
        from overdrive.client.secondary_link import repo_files

        car = self.car
        try:
            info = ecu.info()
            director_roots = roots_after(
                car.director.metadata_url,
                int(info["director_root_version"]),
                car.director.trusted_root().version,
                car.config.request_deadline_s,
            )
            image_roots = (
                []  # a partially verifying secondary does not use the image repository
                if info.get("verification") == "partial"
                else roots_after(
                    car.trust.repo_url + "metadata/",
                    int(info["image_root_version"]),
                    car.trust.root_version(),
                    car.config.request_deadline_s,
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EcuRefused("secondary_error", f"secondary's info is malformed: {e}") from e
        except Exception as e:  # the repositories' root files could not be fetched now
            if isinstance(e, EcuUnreachable | EcuRefused):
                raise
            raise RepositoryUnreachable(one_line(f"cannot fetch root metadata: {e}")) from e
        return Verification(
            attestation or {},
            repo_files(car.director.metadata_dir, director_roots),
            repo_files(car.trust.metadata_dir, image_roots),
        )

    # ------------------------------------------------------------------ advancing

    def advance(self, state: VehicleState) -> CycleResult:
        """Carry the set on from its persisted phase as far as it can go now."""
        from overdrive.client.vehicle import CycleResult

        s = state.software_set
        assert s is not None
        for _ in range(len(PHASES) * 2):
            phase = s["phase"]
            try:
                if phase == "rollback":
                    return self._rollback(state)
                if phase == "commit":
                    return self._commit(state)
                if phase == "primary_trial":
                    waiting = self._primary_trial(state)
                    if waiting is not None:
                        return waiting
                    continue
                getattr(self, f"_{phase}")(state)
                s["phase"] = PHASES[PHASES.index(phase) + 1]
                s["waiting_since"] = None
                self.car.store.save(state)
            except EcuUnreachable as e:
                if not self._past_deadline(state):
                    return CycleResult("waiting", f"{e} (the software set waits)", RETRY_S)
                serial = s.get("current") or "?"
                self._fail(state, SetFailed(serial, "ecu_unreachable", str(e)))
            except DownloadInterrupted as e:
                return CycleResult("interrupted", str(e), 60)
            except SetFailed as e:
                self._fail(state, e)
        return CycleResult("waiting", "software set in progress", RETRY_S)

    def _past_deadline(self, state: VehicleState) -> bool:
        s = state.software_set
        assert s is not None
        now = time.time()
        if s.get("waiting_since") is None:
            s["waiting_since"] = now
            self.car.store.save(state)
        return bool(now - s["waiting_since"] > self.car.config.set_deadline_s)

    def _fail(self, state: VehicleState, e: SetFailed) -> None:
        s = state.software_set
        assert s is not None
        s["failure"] = {"serial": e.serial, "reason": e.reason, "message": one_line(str(e), 400)}
        s["phase"] = "rollback"
        self.car.store.save(state)

    def _members(self, state: VehicleState) -> list[dict[str, Any]]:
        s = state.software_set
        assert s is not None
        return sorted(s["members"], key=lambda m: m["order"])

    def _ecu(self, member: dict[str, Any]) -> Any:
        config = self.car.config.ecu(member["serial"])
        if config is None:
            raise SetFailed(member["serial"], "unknown_ecu", f"ECU {member['serial']} is gone")
        return open_ecu(config, self.car.state_dir)

    def _step(self, state: VehicleState, member: dict[str, Any], stage: str) -> None:
        member["stage"] = stage
        self.car.store.save(state)

    def _current(self, state: VehicleState, member: dict[str, Any]) -> None:
        assert state.software_set is not None
        state.software_set["current"] = member["serial"]

    def _bundle(self, member: dict[str, Any]) -> Any:
        v = member["verified"]
        try:
            return self.car.cache.fetch(
                v["url"],
                sha256=v["sha256"],
                name=v["payload"]["target"]["path"],
                length=v["length"],
                options=self.car.download_options(),
            )
        except DownloadInterrupted:
            raise
        except DownloadError as e:
            raise SetFailed(member["serial"], "download_failed", str(e)) from e

    def _download(self, state: VehicleState) -> None:
        for member in self._members(state):
            if member["stage"] == "verified":
                self._current(state, member)
                self._bundle(member)
                self._step(state, member, "downloaded")

    def _stage(self, state: VehicleState) -> None:
        assert state.software_set is not None
        set_id = state.software_set["id"]
        for member in self._members(state):
            if member["stage"] != "downloaded":
                continue
            self._current(state, member)
            if member["kind"] == "secondary":
                try:
                    self._ecu(member).stage(set_id, self._bundle(member))
                except EcuRefused as e:
                    raise SetFailed(member["serial"], e.reason, str(e)) from e
            self._step(state, member, "staged")

    def _install(self, state: VehicleState) -> None:
        assert state.software_set is not None
        set_id = state.software_set["id"]
        for member in self._members(state):
            if member["stage"] != "staged":
                continue
            self._current(state, member)
            v = member["verified"]
            if member["kind"] == "primary":
                self._install_primary(state, member)
            else:
                try:
                    self._ecu(member).install(
                        set_id,
                        self._bundle(member),
                        bundle_info(v["custom"], v["payload"]["target"]["path"]),
                    )
                except EcuRefused as e:
                    raise SetFailed(member["serial"], e.reason, str(e)) from e
            member["was_installed"] = True
            self._step(state, member, "installed")

    def _install_primary(self, state: VehicleState, member: dict[str, Any]) -> None:
        from overdrive.client.state import DOWNLOADING

        car = self.car
        if state.state == IDLE:
            state.assignment = member["verified"]
            state.state = DOWNLOADING
            car.store.save(state)
        if state.state != INSTALLED:
            result = car.continue_update(state, trial=False)
            if state.state != INSTALLED:  # it gave up (and reported why)
                member["stage"] = "rolled_back"
                raise SetFailed(member["serial"], "install_failed", result.detail)

    def _trial(self, state: VehicleState) -> None:
        assert state.software_set is not None
        set_id = state.software_set["id"]
        for member in self._members(state):
            if member["stage"] != "installed" or member["kind"] == "primary":
                continue
            self._current(state, member)
            healthy, message = self._ecu(member).trial(set_id)
            if not healthy:
                raise SetFailed(
                    member["serial"], "trial_failed", f"ECU {member['serial']}: {message}"
                )
            self._step(state, member, "trial_ok")

    def _primary_trial(self, state: VehicleState) -> CycleResult | None:
        """None when the primary's trial is decided (or there is none); else what to wait for."""
        from overdrive.client.vehicle import CycleResult

        car = self.car
        s = state.software_set
        assert s is not None
        own = [m for m in s["members"] if m["kind"] == "primary" and m["stage"] == "installed"]
        if not own:
            s["phase"] = "commit"
            car.store.save(state)
            return None
        member = own[0]
        if state.state == INSTALLED:
            car.request_trial(state)
            detail = "software set installed and tried on every other ECU"
            if car.config.reboot_after_install:
                car.reboot()
                return CycleResult("updated", f"{detail}; rebooting to try it", RETRY_S)
            return CycleResult("waiting", f"{detail}; reboot to try it", car.config.poll_interval)
        image = state.image(state.active)
        if image is not None and image.sha256 == member["verified"]["info"]["image_sha256"]:
            self._step(state, member, "trial_ok")
            s["phase"] = "commit"
        else:  # post-boot rolled the primary back (and reported it)
            member["stage"] = "rolled_back"
            message = (state.last_result or {}).get("message") or "its trial boot failed"
            s["failure"] = {
                "serial": member["serial"],
                "reason": "trial_failed",
                "message": one_line(f"ECU {member['serial']}: {message}", 400),
            }
            s["phase"] = "rollback"
        car.store.save(state)
        return None

    def _commit(self, state: VehicleState) -> CycleResult:
        from overdrive.client.vehicle import CycleResult

        s = state.software_set
        assert s is not None
        for member in self._members(state):
            if member["stage"] == "trial_ok" and member["kind"] != "primary":
                self._current(state, member)
                try:
                    self._ecu(member).commit(s["id"])
                except (
                    EcuUnreachable,
                    EcuRefused,
                ) as e:  # a healthy trial is committed, however late
                    return CycleResult("waiting", f"{e} (committing the software set)", RETRY_S)
                state.ecu_committed[member["serial"]] = member["verified"]["info"][
                    "release_counter"
                ]
                self._step(state, member, "committed")
        others = [m for m in s["members"] if m["kind"] != "primary"]
        self._finish(state, others, None, kind="committed")
        return CycleResult("updated", "software set committed on every ECU", RETRY_S)

    def _rollback(self, state: VehicleState) -> CycleResult:
        from overdrive.client.vehicle import CycleResult

        s = state.software_set
        assert s is not None
        for member in reversed(self._members(state)):
            if member["stage"] not in ("staged", "installed", "trial_ok"):
                continue
            if member["kind"] == "primary":
                self.car.undo_install(state)
            else:
                try:
                    self._ecu(member).rollback(s["id"])
                except (EcuUnreachable, EcuRefused) as e:
                    if member["stage"] != "staged":  # its slot was written: it must go back
                        return CycleResult(
                            "waiting", f"{e} (rolling the software set back)", RETRY_S
                        )
                    # only a staged bundle there: nothing to undo; its next set replaces it
            self._step(state, member, "rolled_back")
        failure = s["failure"] or {"serial": "?", "reason": "failed", "message": "failed"}
        error = SetFailed(failure["serial"], failure["reason"], failure["message"])
        touched = any(m.get("was_installed") for m in s["members"])
        kind = "rolled_back" if touched or failure["reason"] == "trial_failed" else "failed"
        self._finish(state, s["members"], error, kind=kind)
        return CycleResult("failed", f"software set rolled back: {failure['message']}", RETRY_S)

    # ------------------------------------------------------------------ the end

    def _finish(
        self,
        state: VehicleState,
        members: list[dict[str, Any]],
        error: SetFailed | None,
        *,
        kind: str,
    ) -> None:
        """Report the set's outcome (one final event per hardware id), and forget the set."""
        car = self.car
        culprit = None
        if error is not None:
            hardware = next(
                (m["hardware_id"] for m in members if m["serial"] == error.serial), None
            ) or self._hardware_of(error.serial)
            culprit = {"ecu_serial": error.serial, "hardware_id": hardware}
        seen: set[str] = set()
        for member in members:
            hw = member["hardware_id"]
            if hw in seen:
                continue
            seen.add(hw)
            if member["kind"] == "primary" and (
                error is None
                or (error.serial == member["serial"] and error.reason in _PRIMARY_REPORTED)
            ):
                continue  # post-boot (or the abandoned install) already reported the primary
            payload = member["verified"]["payload"]
            event: dict[str, Any] = {
                "id": event_id({"payload": payload}, kind),
                "type": kind,
                "at": now_iso(),
                "hardware_id": hw,
                "details": {
                    "version": payload.get("version"),
                    "ecu_serial": member["serial"],
                    "software_set": True,
                },
            }
            if payload.get("campaign_id"):
                event["campaign_id"] = payload["campaign_id"]
            if error is not None:
                event["reason"] = one_line(f"{error.reason}: {error}", 400)
                event["details"]["caused_by"] = culprit
            state.outbox.append(event)
        state.software_set = None
        status = "committed" if error is None else kind
        state.last_result = {
            "status": status,
            "reason": error.reason if error else "software_set",
            "message": one_line(str(error) if error else "software set committed", 400),
            "at": now_iso(),
            "caused_by": culprit,
        }
        car.save_with_outbox(state)
        car.flush_events()

    def _hardware_of(self, serial: str) -> str:
        if serial == self.car.config.serial:
            return self.car.config.hardware_id
        ecu = self.car.config.ecu(serial)
        return ecu.hardware_id if ecu else "unknown"


def roots_after(base_url: str, have: int, current: int, deadline_s: float) -> list[bytes]:
    """``N.root.json`` for N in (have, current], from a repository's metadata URL."""
    fetcher = LocalOrHttpFetcher(user_agent="overdrive-vehicle", deadline_s=deadline_s)
    return [
        fetcher.download_bytes(f"{base_url}{n}.root.json", MAX_ROOT_BYTES)
        for n in range(have + 1, current + 1)
    ]
