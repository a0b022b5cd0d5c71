"""The bookkeeping every operation of a secondary shares: one operation at a time, the state
saved before each effect (:mod:`.state`), the boot environment kept in line with it
(:mod:`.boot`), refusals recorded for the next version report."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from overdrive.client.bootenv import FileBootEnv
from overdrive.client.errors import Refused
from overdrive.client.identity import load_key
from overdrive.client.install import PROGRESS_FILE
from overdrive.client.secondary.boot import settled, without
from overdrive.client.secondary.config import BOOT_ENV_FILE, KEY_FILE, SecondaryConfig
from overdrive.client.secondary.state import SecondaryStore
from overdrive.client.secondary.verify import SCRATCH_PREFIX, VerifiedTarget, Verifier
from overdrive.text import one_line
from overdrive.uptane import iso

STAGED_BUNDLE = "staged.bundle"
#: Bundles being received: ``.staged-<random>`` (removed at every start).
PART_PREFIX = ".staged-"
_SET_ID = re.compile(r"^director-[1-9][0-9]{0,9}$")


class SecondaryBase:
    """A secondary's state directory and the bookkeeping its operations share (see
    :class:`overdrive.client.secondary.ecu.Secondary` for the operations)."""

    def __init__(self, state_dir: Path, *, recover: bool = True) -> None:
        """Open ``state_dir``; ``recover`` (what a start does) settles what a crash left.
        Read-only users (``status``) pass False: a running server's files are its own."""
        self.state_dir = state_dir
        self.config = SecondaryConfig.load(state_dir)
        self.store = SecondaryStore(state_dir)
        self.state = self.store.load()
        self.boot_env = FileBootEnv(state_dir / BOOT_ENV_FILE)
        self.verifier = Verifier(state_dir, self.config)
        self.lock = threading.RLock()
        self._signer: CryptoSigner | None = None
        if recover:
            self.recover()

    @property
    def signer(self) -> CryptoSigner:
        if self._signer is None:
            self._signer = load_key(self.state_dir / KEY_FILE)
        return self._signer

    def public_key(self) -> dict[str, Any]:
        key = self.signer.public_key
        return {"keyid": key.keyid, **key.to_dict()}

    # ------------------------------------------------------------------ bookkeeping

    def recover(self) -> None:
        """After a start (or a crash): drop half-received bundles and the scratch directories
        of verifications, settle the boot env."""
        with self._locked():
            for part in self.state_dir.glob(f"{PART_PREFIX}*"):
                part.unlink(missing_ok=True)
            for scratch in self.state_dir.glob(f"{SCRATCH_PREFIX}*"):
                shutil.rmtree(scratch, ignore_errors=True)
            self._settle_boot_env()

    def _save(self) -> None:
        self.store.save(self.state)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One operation at a time; if it fails other than by a refusal (a disk error, say),
        the state is what was last saved, not what was half-changed in memory."""
        with self.lock:
            try:
                yield
            except Refused:
                raise
            except BaseException:
                with suppress(Exception):
                    self.state = self.store.load()
                raise

    def _settle_boot_env(self) -> None:
        """Make the boot env say what the state says (see :func:`.boot.settled`)."""
        env = self.boot_env.load()
        new = settled(env, self.state)
        if new != env:
            self.boot_env.save(new)

    def _unbootable(self, slot: str, booted: str | None = None) -> None:
        """Before a slot's image is forgotten (see :func:`.boot.without`)."""
        env = self.boot_env.load()
        new = without(env, slot, booted)
        if new != env:
            self.boot_env.save(new)

    def _refuse(self, e: Refused, *, attack: bool = True) -> Refused:
        """Record a refusal (and, for what was sent to it, an attack to report); return it."""
        self.state.last_result = result("refused", e.reason, str(e))
        if attack:
            seen = self.state.attacks_detected
            text = f"{e.reason}: {e}"
            self.state.attacks_detected = one_line(f"{seen}; {text}" if seen else text, 500)
        self._save()
        return e

    def _current(self, set_id: str) -> VerifiedTarget:
        check_set_id(set_id)
        s = self.state
        if s.set_id != set_id or s.target is None:
            raise Refused("unknown_set", f"this ECU verified no target for set {set_id}")
        return VerifiedTarget.from_dict(s.target)

    def _discard_files(self) -> None:
        (self.state_dir / STAGED_BUNDLE).unlink(missing_ok=True)
        (self.state_dir / PROGRESS_FILE).unlink(missing_ok=True)


def check_set_id(set_id: Any) -> None:
    if not isinstance(set_id, str) or not _SET_ID.fullmatch(set_id):
        raise Refused("bad_request", "set_id must be director-N")


def result(status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "status": status,
        "reason": reason,
        "message": one_line(message),
        "at": iso(datetime.now(UTC)),
    }
