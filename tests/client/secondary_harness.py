"""Test helpers for secondary ECUs: set one up (``overdrive vehicle secondary init``), run it as
a real ``serve`` process on a loopback port, and play the primary that feeds it.

The primary here holds the director's online keys (:class:`tests.security.harness.
StolenDirectorKeys`, which builds a vehicle's chain exactly as the server does), so one helper
serves both the honest primary (its own ngclient verifies the chain and the published image
repository first, and :func:`~overdrive.client.secondary_link.repo_files` reads what it
stored) and the compromised one (it sends whatever bytes it likes).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from overdrive.client.secondary_link import RepoFiles, SecondaryLink, repo_files
from overdrive.client.trust import make_updater
from overdrive.tuf_layout import target_storage_key
from overdrive.uptane import DirectorEntry
from tests.conftest import Cli
from tests.repo_fixtures import Published
from tests.security.harness import StolenDirectorKeys, entry, image_targets, stolen_keys

VEHICLE = "car-1"
SERIAL = "car-1-body"
HARDWARE = "ecu-a"
FULL_10 = "ecu-a/1.0/full.bundle"
FULL_11 = "ecu-a/1.1/full.bundle"
DELTA_11 = "ecu-a/1.1/delta-from-1.0.bundle"
FULL_B10 = "ecu-b/1.0/full.bundle"
#: Bounded waits for a process to start and stop.
START_S = 10.0


@dataclass
class SecondaryDir:
    state_dir: Path
    slot_a: Path
    slot_b: Path

    def status(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "state.json").read_bytes()))

    def nothing_written(self) -> bool:
        """Slot B untouched (empty) and nothing staged."""
        return self.slot_b.read_bytes() == b"" and not (self.state_dir / "staged.bundle").exists()


def init_secondary(
    cli: Cli,
    published: Published,
    tmp_path: Path,
    *,
    name: str = "secondary",
    verification: str = "full",
    factory: str = "ecu-a/1.0",
    counter: int = 1,
    extra: tuple[str, ...] = (),
) -> SecondaryDir:
    """``overdrive vehicle secondary init`` of an ``ecu-a`` ECU running ``factory``."""
    base = tmp_path / name
    sec = SecondaryDir(base / "state", base / "slot-a.img", base / "slot-b.img")
    image = published.images[factory]
    roots = ["--director-root", str(published.director_root)]
    if verification == "full":
        roots += ["--image-root", str(published.storage / "metadata" / "1.root.json")]
    result = cli(
        "vehicle", "secondary", "init",
        "--state-dir", sec.state_dir,
        "--serial", SERIAL,
        "--hardware-id", HARDWARE,
        *roots,
        "--verification", verification,
        "--slot-a", sec.slot_a,
        "--slot-b", sec.slot_b,
        "--factory-image", image["path"],
        "--factory-version", image["version"],
        "--factory-release-counter", str(counter),
        "--idle-timeout", "1",
        *extra,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return sec


@dataclass
class Served:
    """A running ``overdrive vehicle secondary serve`` process and a link to it."""

    proc: subprocess.Popen[bytes]
    address: str
    stdout: Path
    stderr: Path

    def link(self, timeout_s: float = 10.0) -> SecondaryLink:
        return SecondaryLink(self.address, timeout_s=timeout_s)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host, int(port)


@contextmanager
def serving(state_dir: Path, logs: Path) -> Iterator[Served]:
    """Run the secondary as a real process on a free loopback port; SIGTERM it at the end
    (it must exit 0, with no traceback)."""
    logs.mkdir(parents=True, exist_ok=True)
    out = logs / f"serve-{secrets.token_hex(3)}.out"
    err = out.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overdrive.cli", "vehicle", "secondary", "serve",
             "--state-dir", str(state_dir), "--listen", "127.0.0.1:0"],
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
    try:
        served = Served(proc, _wait_listening(proc, out, err), out, err)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(START_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("the secondary did not stop on SIGTERM") from None
            assert proc.returncode == 0, err.read_text()
            assert "Traceback" not in err.read_text(), err.read_text()
            assert out.read_text().splitlines()[-1].endswith("stopped")


def _wait_listening(proc: subprocess.Popen[bytes], out: Path, err: Path) -> str:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        text = out.read_text()
        if "listening on " in text:
            return text.split("listening on ", 1)[1].split()[0]
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {err.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the secondary did not start listening in time")


def kill_9(served: Served) -> None:
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(START_S)


@dataclass
class Primary:
    """What a primary sends its secondary: director chains for ``VEHICLE`` (signed with the
    director's keys), the published image repository's metadata, time attestations."""

    published: Published
    workdir: Path
    stolen: StolenDirectorKeys = field(init=False)
    targets: dict[str, TargetFile] = field(init=False)

    def __post_init__(self) -> None:
        self.stolen = stolen_keys(self.published)
        self.targets = image_targets(self.published)

    def entry(self, image: str, **changes: Any) -> DirectorEntry:
        """An honest director's entry for the secondary: ``image``, with ``changes``."""
        return entry(self.targets, VEHICLE, image, **{"ecu_serial": SERIAL, **changes})

    def chain(self, entries: list[DirectorEntry], version: int, **kw: Any) -> dict[str, bytes]:
        return self.stolen.chain(kw.pop("vehicle_id", VEHICLE), entries, version, **kw)

    def honest(self, entries: list[DirectorEntry], version: int) -> RepoFiles:
        """The director chain as a primary holds it after its own ngclient verified it."""
        served = self.workdir / "director-served"
        served.mkdir(parents=True, exist_ok=True)
        (served / "1.root.json").write_bytes(self.published.director_root.read_bytes())
        for name, body in self.chain(entries, version).items():
            (served / name).write_bytes(body)
        return self._refreshed("director", served, self.published.director_root)

    def forged(self, chain: dict[str, bytes], version: int) -> RepoFiles:
        """Whatever bytes a compromised primary sends, as they are."""
        return RepoFiles(
            [],
            chain["timestamp.json"],
            chain[f"{version}.snapshot.json"],
            chain[f"{version}.targets.json"],
        )

    def image_repo(self) -> RepoFiles:
        """The published image repository's metadata as a primary holds it."""
        root = self.published.storage / "metadata" / "1.root.json"
        return self._refreshed("tuf", self.published.storage / "metadata", root)

    def _refreshed(self, name: str, metadata: Path, root: Path) -> RepoFiles:
        directory = self.workdir / name
        bootstrap = None
        if not (directory / "root.json").exists():
            directory.mkdir(parents=True)
            bootstrap = root.read_bytes()
        make_updater(directory, metadata.as_uri() + "/", None, None, bootstrap=bootstrap).refresh()
        return repo_files(directory, [])

    def time(self, link: SecondaryLink, **kw: Any) -> dict[str, Any]:
        """Ask for a report (its nonce), and the director's time attestation echoing it."""
        nonce = secrets.token_hex(16)
        link.report(nonce)
        return self.stolen.time(nonce, kw.pop("when", datetime.now(UTC)), **kw)

    def bundle(self, image: str) -> Path:
        """A bundle of the image repository, as the primary's cache holds it."""
        target = self.targets[image]
        return self.published.storage / target_storage_key(image, target.hashes["sha256"])

    def verify(
        self,
        link: SecondaryLink,
        entries: list[DirectorEntry],
        version: int,
        *,
        partial: bool = False,
    ) -> dict[str, Any]:
        """An honest primary's ``verify`` of chain ``version`` listing ``entries``."""
        return link.verify(
            f"director-{version}",
            time=self.time(link),
            director=self.honest(entries, version),
            image_repo=None if partial else self.image_repo(),
        )


def image_of(published: Published, key: str) -> bytes:
    return Path(published.images[key]["path"]).read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
