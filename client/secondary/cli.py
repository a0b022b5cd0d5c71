"""``overdrive vehicle secondary …``: set up a secondary ECU, serve the primary, show status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from overdrive.bundle import image_sha256
from overdrive.client.bootchooser import BootState
from overdrive.client.bootenv import FileBootEnv
from overdrive.client.errors import ConfigError
from overdrive.client.identity import create_key
from overdrive.client.secondary.config import (
    BOOT_ENV_FILE,
    CONFIG_FILE,
    KEY_FILE,
    PUBLIC_KEY_FILE,
    VERIFICATIONS,
    SecondaryConfig,
)
from overdrive.client.secondary.state import STATE_FILE, SecondaryState, SecondaryStore
from overdrive.client.state import SlotImage
from overdrive.client.trust import DIRECTOR_ROOT, TRUSTED_ROOT
from overdrive.storage.local import atomic_write
from overdrive.text import one_line

state_dir_option = click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OVERDRIVE_SECONDARY_STATE",
    help="The secondary's state directory [env OVERDRIVE_SECONDARY_STATE].",
)
_FILE = click.Path(dir_okay=False, path_type=Path)
_EXISTING = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.group("secondary")
def secondary() -> None:
    """A secondary ECU: its own keys, roots, slots; verifies for itself, serves the primary."""


@secondary.command("init")
@state_dir_option
@click.option("--serial", required=True, help="This ECU's serial.")
@click.option("--hardware-id", required=True, help="The hardware id of its images.")
@click.option("--director-root", required=True, type=_EXISTING, help="Director root.json.")
@click.option(
    "--image-root",
    type=_EXISTING,
    default=None,
    help="The image repository's root.json (required for full verification).",
)
@click.option("--verification", type=click.Choice(VERIFICATIONS), default="full", show_default=True)
@click.option("--slot-a", required=True, type=_FILE, help="Slot A (the factory image goes here).")
@click.option("--slot-b", required=True, type=_FILE, help="Slot B.")
@click.option("--factory-image", required=True, type=_EXISTING, help="The factory image.")
@click.option("--factory-version", required=True)
@click.option("--factory-release-counter", type=click.IntRange(0), default=0, show_default=True)
@click.option("--vehicle-id", default="", help="Accept director metadata for this vehicle only "
              "[default: the first vehicle verified].")  # fmt: skip
@click.option("--health-check", default="", help="Run at a trial boot; exit 0 = healthy.")
@click.option("--health-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a connection may stay silent before it is dropped.",
)
def init(
    state_dir: Path,
    serial: str,
    hardware_id: str,
    director_root: Path,
    image_root: Path | None,
    verification: str,
    slot_a: Path,
    slot_b: Path,
    factory_image: Path,
    factory_version: str,
    factory_release_counter: int,
    vehicle_id: str,
    health_check: str,
    health_timeout: float,
    idle_timeout: float,
) -> None:
    """Create the ECU's key, configuration and state; write the factory image into slot A.

    Prints the public key (also in STATE_DIR/ecu.pub.json) for the primary's registration.
    """
    if verification == "full" and image_root is None:
        raise ConfigError("--image-root is required for full verification")
    if (state_dir / KEY_FILE).exists() or (state_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{state_dir} already holds a secondary ECU")
    config = SecondaryConfig(
        serial=serial,
        hardware_id=hardware_id,
        slot_a=str(slot_a.resolve()),
        slot_b=str(slot_b.resolve()),
        verification=verification,
        health_check=health_check,
        health_timeout_s=health_timeout,
        vehicle_id=vehicle_id,
        idle_timeout_s=idle_timeout,
    )
    _check_root(director_root, "--director-root")
    if image_root is not None:
        _check_root(image_root, "--image-root")
    length = factory_image.stat().st_size
    if not length:
        raise ConfigError(f"--factory-image {factory_image} is empty")
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        text = _create(
            state_dir,
            config,
            director_root,
            image_root,
            factory_image,
            (factory_version, factory_release_counter, length),
        )
    except BaseException:  # nothing half set up stays behind (the slots are the ECU's own)
        made = (KEY_FILE, PUBLIC_KEY_FILE, DIRECTOR_ROOT, TRUSTED_ROOT, STATE_FILE, BOOT_ENV_FILE)
        for name in (*made, CONFIG_FILE):
            (state_dir / name).unlink(missing_ok=True)
        raise
    click.echo(text)


def _create(
    state_dir: Path,
    config: SecondaryConfig,
    director_root: Path,
    image_root: Path | None,
    factory_image: Path,
    factory: tuple[str, int, int],
) -> str:
    """Key, factory image (version, release counter, length) in slot A, roots, boot env,
    state, and the config last; returns the public key's JSON."""
    version, counter, length = factory
    slot_a, slot_b = Path(config.slot_a), Path(config.slot_b)
    signer = create_key(state_dir / KEY_FILE)
    key = signer.public_key
    public = {"keyid": key.keyid, **key.to_dict()}
    if factory_image.resolve() != slot_a.resolve():
        with factory_image.open("rb") as source:
            atomic_write(slot_a, lambda f: shutil.copyfileobj(source, f, 1 << 20))
    if not slot_b.exists():
        slot_b.parent.mkdir(parents=True, exist_ok=True)
        slot_b.write_bytes(b"")
    image = SlotImage(config.hardware_id, version, image_sha256(slot_a, length), length, counter)
    shutil.copyfile(director_root, state_dir / DIRECTOR_ROOT)
    if image_root is not None:
        shutil.copyfile(image_root, state_dir / TRUSTED_ROOT)
    FileBootEnv(state_dir / BOOT_ENV_FILE).init(BootState.initial(booted="A"), overwrite=True)
    SecondaryStore(state_dir).save(
        SecondaryState(slots={"A": image, "B": None}, committed_counter=counter)
    )
    text = json.dumps(public, sort_keys=True)
    atomic_write(state_dir / PUBLIC_KEY_FILE, lambda f: f.write(text.encode() + b"\n"))
    config.save(state_dir)  # last: a state dir with a config is a complete one
    return text


def _check_root(path: Path, option: str) -> None:
    from tuf.api.metadata import Metadata, Root

    try:
        md = Metadata[Root].from_bytes(path.read_bytes())
        if not isinstance(md.signed, Root):
            raise ValueError("not root metadata")
    except Exception as e:
        raise ConfigError(f"{option} {path} is not TUF root metadata: {one_line(e, 120)}") from e


@secondary.command("serve")
@state_dir_option
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="host:port to serve the primary on (port 0: any free port, printed at start).",
)
def serve_command(state_dir: Path, listen: str) -> None:
    """Serve the primary until SIGTERM: report, verify, stage, install, trial, commit,
    rollback, status (one JSON line per request; see docs/vehicles.md)."""
    from overdrive.client.secondary.server import serve

    serve(state_dir, listen, echo=click.echo, log=lambda line: click.echo(line, err=True))


@secondary.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True)
def status(state_dir: Path, as_json: bool) -> None:
    """Slots, the set under way and its stage, counters (read from the state directory)."""
    from overdrive.client.secondary.ecu import Secondary

    data: dict[str, Any] = Secondary(state_dir, recover=False).status()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(
        f"secondary {data['serial']} ({data['hardware_id']}, {data['verification']} "
        f"verification): {data['state']}, committed slot {data['active']}, "
        f"running slot {data['running']}"
    )
    for name, image in data["slots"].items():
        text = (
            f"{image['version']} (counter {image['release_counter']}, "
            f"sha256 {image['sha256'][:12]}…)"
            if image
            else "empty"
        )
        click.echo(f"  slot {name}: {text}")
    if data["set_id"]:
        target = data["target"] or {}
        click.echo(f"  set {data['set_id']}: {target.get('path')} ({target.get('version')})")
    click.echo(f"  boot env: {data['boot']}")
    if data["last_result"]:
        click.echo(f"  last result: {json.dumps(data['last_result'], sort_keys=True)}")
    click.echo(
        f"  reports: {data['report_counter']}; committed release counter "
        f"{data['committed_counter']}; trusted time {data['trusted_time'] or 'none yet'}"
    )
