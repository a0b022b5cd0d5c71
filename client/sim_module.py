"""A simulated update module (see :mod:`overdrive.client.module`), for tests and the demo.

``python -m overdrive.client.sim_module VERB [ARG]`` keeps a simulated microcontroller in
``$OVERDRIVE_MODULE_DIR``: two banks (``bank-A.img``, ``bank-B.img``) and ``ecu.json``
(which bank runs, which is on trial, what each holds). ``init IMAGE VERSION [COUNTER]`` puts
a factory image in bank A. A trial of a version listed in ``fail-trial`` (one version per line,
in the module directory) is unhealthy: how tests and the demo make a module fail.
Every verb is idempotent and writes ``ecu.json`` atomically, as a real module must.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from overdrive.storage.local import atomic_write


def _dir() -> Path:
    value = os.environ.get("OVERDRIVE_MODULE_DIR")
    if not value:
        raise SystemExit("sim_module: OVERDRIVE_MODULE_DIR is not set")
    return Path(value)


def _load(d: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((d / "ecu.json").read_text())
        return data
    except FileNotFoundError:
        raise SystemExit("sim_module: no image yet (run 'init' first)") from None


def _save(d: Path, data: dict[str, Any]) -> None:
    raw = json.dumps(data, indent=2, sort_keys=True).encode()
    atomic_write(d / "ecu.json", lambda f: f.write(raw))


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _other(bank: str) -> str:
    return "B" if bank == "A" else "A"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: sim_module VERB [ARG]", file=sys.stderr)
        return 2
    verb, args = argv[0], argv[1:]
    d = _dir()
    d.mkdir(parents=True, exist_ok=True)
    if verb == "init":
        image, version = Path(args[0]), args[1]
        counter = int(args[2]) if len(args) > 2 else 0
        shutil.copyfile(image, d / "bank-A.img")
        sha, length = _sha256(d / "bank-A.img")
        bank = {"version": version, "sha256": sha, "length": length, "release_counter": counter}
        _save(d, {"running": "A", "trial": None, "banks": {"A": bank, "B": None}})
        return 0
    data = _load(d)
    running = data["running"]
    if verb == "version":
        print(json.dumps(data["banks"][running]))
        return 0
    if verb == "read":
        shutil.copyfile(d / f"bank-{running}.img", args[0])
        return 0
    if verb == "install":
        target = _other(running) if data["trial"] is None else data["trial"]
        if data["trial"] is not None and running == data["trial"]:
            print("a trial is running: commit or roll back first", file=sys.stderr)
            return 1
        data["banks"][target] = None
        _save(d, data)  # the bank being written holds nothing runnable
        shutil.copyfile(args[0], d / f"bank-{target}.img")
        sha, length = _sha256(d / f"bank-{target}.img")
        if sha != os.environ.get("OVERDRIVE_IMAGE_SHA256"):
            print(f"image written to bank {target} does not match its hash", file=sys.stderr)
            return 1
        data["banks"][target] = {
            "version": os.environ.get("OVERDRIVE_IMAGE_VERSION", "?"),
            "sha256": sha,
            "length": length,
            "release_counter": int(os.environ.get("OVERDRIVE_IMAGE_RELEASE_COUNTER", "0")),
        }
        data["trial"] = target
        _save(d, data)
        return 0
    if verb == "trial":
        target = data["trial"]
        if target is None or data["banks"][target] is None:
            print("nothing installed to try", file=sys.stderr)
            return 1
        data["previous"] = data.get("previous") or running
        data["running"] = target
        _save(d, data)
        fails = d / "fail-trial"
        version = data["banks"][target]["version"]
        if fails.exists() and version in fails.read_text().split():
            print(f"health check of {version} failed", file=sys.stderr)
            return 1
        return 0
    if verb == "commit":
        if data["trial"] is not None and data["running"] == data["trial"]:
            data["trial"], data["previous"] = None, None
            _save(d, data)
        return 0
    if verb == "rollback":
        if data["trial"] is not None:
            if data["running"] == data["trial"]:
                data["running"] = data.get("previous") or _other(data["trial"])
            data["banks"][data["trial"]] = None
            data["trial"], data["previous"] = None, None
            _save(d, data)
        return 0
    print(f"sim_module: unknown verb {verb!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
