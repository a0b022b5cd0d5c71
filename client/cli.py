"""``overdrive vehicle …``: provision a vehicle, run its update daemon, handle each boot
(``post-boot``, run by init), simulate a boot, and show its status. Runs on the base install (no
Flask, SQLAlchemy or boto3). Exit codes are documented in ``docs/vehicles.md``."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import click

from overdrive.bundle import image_sha256
from overdrive.client.api import ServerApi
from overdrive.client.boot import current_boot_id, post_boot, simulate_boot
from overdrive.client.bootchooser import BootState
from overdrive.client.bootenv import FileBootEnv
from overdrive.client.bootslot import CMDLINE, read_text, slot_from_cmdline
from overdrive.client.config import BOOT_BACKENDS, VehicleConfig
from overdrive.client.daemon import run_daemon, run_once
from overdrive.client.errors import ConfigError
from overdrive.client.events import EventQueue
from overdrive.client.identity import create_key
from overdrive.client.secondary.cli import secondary as secondary_group
from overdrive.client.state import SlotImage, StateStore, VehicleState
from overdrive.client.trust import DIRECTOR_ROOT, TRUSTED_ROOT, DirectorTrust
from overdrive.client.tuf_client import tuf_client
from overdrive.client.vehicle import KEY_FILE, Vehicle, boot_env_for
from overdrive.errors import OverdriveError
from overdrive.text import one_line

state_dir_option = click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OVERDRIVE_VEHICLE_STATE",
    help="The vehicle's state directory [env OVERDRIVE_VEHICLE_STATE].",
)


@click.group()
def vehicle() -> None:
    """Run a vehicle: provision, update daemon, post-boot commit, status."""


@vehicle.command("provision")
@state_dir_option
@click.option("--server", "server_url", required=True, help="Rollout server URL.")
@click.option("--enroll-token", required=True, help="One-time enrollment token from the operator.")
@click.option("--vehicle-id", required=True)
@click.option("--hardware-id", required=True, help="The hardware id of the A/B slots' images.")
@click.option(
    "--slot-a",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Slot A (holds the factory image).",
)
@click.option(
    "--slot-b", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Slot B."
)
@click.option(
    "--trusted-root",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The image repository's root.json this vehicle trusts.",
)
@click.option(
    "--director-root",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The director's root.json this vehicle trusts ('overdrive director init').",
)
@click.option(
    "--ecu-serial",
    default="",
    help="This primary ECU's serial [default: VEHICLE_ID-primary].",
)
@click.option(
    "--repo-url", required=True, help="Base URL of the image repository (file:// or http(s)://)."
)
@click.option("--factory-version", required=True, help="Version of the factory image in slot A.")
@click.option("--factory-release-counter", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--factory-length",
    type=click.IntRange(1),
    default=None,
    help="Bytes of the factory image in slot A [default: all of slot A]; give it when the "
    "slot is a partition larger than the image.",
)
@click.option("--boot-backend", type=click.Choice(BOOT_BACKENDS), default="file", show_default=True)
@click.option("--boot-env", default="", help="Boot env file (file/grub) or fw_env.config (uboot).")
@click.option(
    "--health-check", default="", help="Command run by post-boot at every boot; exit 0 = healthy."
)
@click.option(
    "--health-timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds the health check may take (longer: unhealthy).",
)
@click.option(
    "--trial-boots",
    type=click.IntRange(1, 9),
    default=3,
    show_default=True,
    help="Boots a new slot gets to come up healthy before the bootloader falls back.",
)
@click.option(
    "--late-fallback-boots",
    type=click.IntRange(0, 1000),
    default=3,
    show_default=True,
    help="Unhealthy boots in a row after which a committed slot falls back (0: never).",
)
@click.option(
    "--reboot-command",
    default="systemctl reboot",
    show_default=True,
    help="How post-boot (and --reboot-after-install) reboots.",
)
@click.option(
    "--reboot-after-install",
    is_flag=True,
    help="Reboot into the new slot as soon as it is installed.",
)
@click.option("--attr", "attrs", multiple=True, help="key=value attributes (model, region, …).")
@click.option("--poll-interval", type=click.IntRange(1), default=900, show_default=True)
@click.option(
    "--max-bytes-per-s", type=click.IntRange(0), default=0, help="Download bandwidth cap (0: none)."
)
@click.option(
    "--ecus",
    "ecus_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="TOML file of the vehicle's other ECUs ([[ecus]] tables: serial, hardware_id, kind = "
    '"secondary" (address) or "module" (command)); every secondary must be running.',
)
def provision(
    state_dir: Path,
    server_url: str,
    enroll_token: str,
    vehicle_id: str,
    hardware_id: str,
    slot_a: Path,
    slot_b: Path,
    trusted_root: Path,
    director_root: Path,
    ecu_serial: str,
    repo_url: str,
    factory_version: str,
    factory_release_counter: int,
    factory_length: int | None,
    boot_backend: str,
    boot_env: str,
    health_check: str,
    health_timeout: float,
    trial_boots: int,
    late_fallback_boots: int,
    reboot_command: str,
    reboot_after_install: bool,
    attrs: tuple[str, ...],
    poll_interval: int,
    max_bytes_per_s: int,
    ecus_file: Path | None,
) -> None:
    """Create the vehicle's key, register it with the server, write its config and state."""
    attributes = {}
    for item in attrs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected key=value", param_hint="--attr")
        attributes[name] = value
    size = _slot_size(slot_a)
    if not size:
        raise ConfigError(
            f"slot A {slot_a} must hold the factory image (a file or a block device; "
            "copy the factory image there first)"
        )
    if factory_length is not None and factory_length > size:
        raise ConfigError(f"--factory-length {factory_length} is more than slot A's {size} bytes")
    if (state_dir / KEY_FILE).exists():
        raise ConfigError(f"{state_dir} already holds a provisioned vehicle")
    running = "A"  # provisioning runs from the factory image, in slot A
    if boot_backend != "file":
        said = slot_from_cmdline(read_text(CMDLINE, "kernel command line"))
        if said not in (None, "A"):
            raise ConfigError(
                f"the kernel command line says this system runs slot {said}: provision from "
                "slot A, which holds the factory image"
            )
    state_dir.mkdir(parents=True, exist_ok=True)
    config = VehicleConfig(
        vehicle_id=vehicle_id,
        hardware_id=hardware_id,
        server_url=server_url,
        repo_url=repo_url,
        slot_a=str(slot_a.resolve()),
        slot_b=str(slot_b.resolve()),
        boot_backend=boot_backend,
        boot_env=boot_env,
        health_check=health_check,
        health_timeout_s=health_timeout,
        trial_boots=trial_boots,
        late_fallback_boots=late_fallback_boots,
        reboot_command=reboot_command,
        reboot_after_install=reboot_after_install,
        poll_interval=poll_interval,
        max_bytes_per_s=max_bytes_per_s,
        attributes=attributes,
        ecu_serial=ecu_serial,
        ecus=_read_ecus(ecus_file),
    )
    _check_root(director_root, "--director-root")
    _check_root(trusted_root, "--trusted-root")
    length = factory_length or size
    factory = SlotImage(
        hardware_id, factory_version, image_sha256(slot_a, length), length, factory_release_counter
    )
    signer = create_key(state_dir / KEY_FILE)
    key = signer.public_key
    body = {
        "enroll_token": enroll_token,
        "vehicle_id": vehicle_id,
        "public_key": {"keyid": key.keyid, **key.to_dict()},
        "attributes": attributes,
        "ecus": {config.serial: {"hardware_id": hardware_id, "primary": True, "kind": "primary"}},
        "images": {
            hardware_id: {
                "version": factory_version,
                "sha256": factory.sha256,
                "release_counter": factory_release_counter,
            }
        },
    }
    try:
        _register_ecus(config, state_dir, body)
        ServerApi(server_url, vehicle_id, None).register(body)
    except Exception:
        (state_dir / KEY_FILE).unlink(missing_ok=True)  # nothing half-provisioned stays behind
        shutil.rmtree(state_dir / "ecus", ignore_errors=True)
        raise
    shutil.copyfile(trusted_root, state_dir / TRUSTED_ROOT)
    shutil.copyfile(director_root, state_dir / DIRECTOR_ROOT)
    config.save(state_dir)
    StateStore(state_dir).save(
        VehicleState(slots={"A": factory, "B": None}, committed_counter=factory_release_counter)
    )
    env = boot_env_for(config, state_dir)
    if isinstance(env, FileBootEnv):
        env.init(BootState.initial(booted=running), overwrite=True)
    else:  # from the next boot on, the boot script keeps BOOTED_SLOT
        env.save(BootState.initial(booted=running))
    click.echo(
        f"provisioned {vehicle_id} ({hardware_id} {factory_version} in slot A); state in {state_dir}"
    )


def _ecu_status(ecu_config: Any, state_dir: Path) -> dict[str, Any]:
    """One other ECU as ``vehicle status`` shows it (asked now: a secondary may be down)."""
    from overdrive.client.ecus import SecondaryEcu, open_ecu

    data: dict[str, Any] = {
        "serial": ecu_config.serial,
        "hardware_id": ecu_config.hardware_id,
        "kind": ecu_config.kind,
    }
    try:
        ecu = open_ecu(ecu_config, state_dir)
        if isinstance(ecu, SecondaryEcu):
            status = ecu.link.status()
            data["status"] = status
            image = (status.get("slots") or {}).get(status.get("active")) or {}
            data["summary"] = (
                f"{status.get('state')}, running slot {status.get('active')} "
                f"({image.get('version', '?')})"
            )
        else:
            image = ecu.running()
            data["image"] = image.__dict__
            data["summary"] = f"runs {image.version} (counter {image.release_counter})"
    except OverdriveError as e:  # unreachable, refused or answering nonsense
        data["summary"] = f"not answering: {one_line(str(e), 160)}"
    return data


def _read_ecus(path: Path | None) -> list[dict[str, Any]]:
    """The ``[[ecus]]`` tables of ``--ecus`` (checked when the config is built)."""
    if path is None:
        return []
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--ecus {path}: {one_line(str(e), 160)}") from e
    unknown = sorted(set(data) - {"ecus"})
    if unknown:
        raise ConfigError(f"--ecus {path}: unknown setting {unknown[0]!r} (expected [[ecus]])")
    ecus = data.get("ecus", [])
    if not isinstance(ecus, list):
        raise ConfigError(f"--ecus {path}: ecus must be an array of tables ([[ecus]])")
    return ecus


def _register_ecus(config: VehicleConfig, state_dir: Path, body: dict[str, Any]) -> None:
    """Add the other ECUs to a registration: each one's key and factory image (a secondary
    says both itself; a module's key is made here, its image is what its module reports)."""
    from overdrive.client.ecus import EcuRefused, EcuUnreachable, ModuleEcu, SecondaryEcu

    for ecu_config in config.other_ecus:
        try:
            if ecu_config.kind == "secondary":
                secondary = SecondaryEcu(ecu_config)
                info = secondary.info()
                if (
                    info.get("serial") != ecu_config.serial
                    or info.get("hardware_id") != ecu_config.hardware_id
                ):
                    raise ConfigError(
                        f"the secondary at {ecu_config.address} is "
                        f"{info.get('serial')!r} ({info.get('hardware_id')!r}), not "
                        f"{ecu_config.serial} ({ecu_config.hardware_id})"
                    )
                public = info.get("public_key")
                image = secondary.running()
            else:
                module = ModuleEcu(ecu_config, state_dir)
                image = module.running()
                ecu_signer = create_key(state_dir / ecu_config.key_file)
                public = {"keyid": ecu_signer.public_key.keyid, **ecu_signer.public_key.to_dict()}
        except (EcuUnreachable, EcuRefused) as e:
            raise ConfigError(f"ECU {ecu_config.serial}: {e}") from e
        body["ecus"][ecu_config.serial] = {
            "hardware_id": ecu_config.hardware_id,
            "primary": False,
            "kind": ecu_config.kind,
            "public_key": public,
        }
        factory = {
            "version": image.version,
            "sha256": image.sha256,
            "release_counter": image.release_counter,
        }
        known = body["images"].setdefault(ecu_config.hardware_id, factory)
        if known != factory:
            raise ConfigError(
                f"ECU {ecu_config.serial} runs {image.version}, another {ecu_config.hardware_id} "
                f"ECU of this vehicle runs {known['version']}: give each hardware id one factory "
                "image"
            )


def _check_root(path: Path, option: str) -> None:
    """``path`` must hold TUF root metadata (which one it is, TUF checks at every refresh)."""
    from tuf.api.metadata import Metadata, Root

    try:
        Metadata[Root].from_bytes(path.read_bytes())
    except Exception as e:
        raise ConfigError(
            f"{option} {path} is not TUF root metadata: {one_line(str(e), 120)}"
        ) from e


def _slot_size(path: Path) -> int:
    """Bytes in a slot (a regular file or a block device); 0 if it is neither, or empty."""
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return 0
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


@vehicle.command("run")
@state_dir_option
@click.option(
    "--once", is_flag=True, help="One poll/update turn, then exit (for cron, tests, the demo)."
)
def run(state_dir: Path, once: bool) -> None:
    """The update daemon: poll, download, verify, install, request a trial boot; report every step.

    Without --once it never exits on its own: a failed turn is logged and retried. With --once
    the exit code says what the turn did: 0 nothing to do / updated / waiting, 3 refused or
    failed, 5 server or repository unreachable (try again later), 1 error.
    """
    car = Vehicle(state_dir)
    if once:
        raise SystemExit(run_once(car, echo=click.echo))
    run_daemon(car, echo=click.echo)  # click.echo flushes: journald sees each line at once


@vehicle.command("post-boot")
@state_dir_option
@click.option("--no-reboot", is_flag=True, help="Say a reboot is needed instead of rebooting.")
@click.option(
    "--cmdline",
    "cmdline_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(CMDLINE),
    show_default=True,
    help="Where to read the kernel command line (its overdrive.slot= says what booted).",
)
@click.option(
    "--boot-id",
    default=None,
    help="This boot's id [default: the kernel's, /proc/sys/kernel/random/boot_id].",
)
def post_boot_command(
    state_dir: Path, no_reboot: bool, cmdline_file: Path, boot_id: str | None
) -> None:
    """Handle this boot; run once per boot by init (overdrive-post-boot.service).

    Finds the slot that booted, runs the health check, and commits a trial (mark good, report
    committed) or rolls it back (mark bad, report rolled_back, reboot); records a rollback the
    bootloader already made; counts unhealthy boots of a committed slot and falls back after
    too many. A second run in the same boot changes nothing. Exit codes: 0 committed, healthy
    or nothing to do; 4 rolled back; 6 the committed slot is unhealthy (counted); 1 error.
    """
    car = Vehicle(state_dir)
    cmdline = (
        None
        if car.config.boot_backend == "file"
        else read_text(cmdline_file, "kernel command line")
    )
    result = post_boot(
        car, boot_id=boot_id or current_boot_id(), cmdline=cmdline, reboot=not no_reboot
    )
    click.echo(result.message)
    raise SystemExit(result.exit_code)


@vehicle.command("boot")
@state_dir_option
@click.option("--crash", is_flag=True, help="Simulate a boot that dies before post-boot runs.")
def boot(state_dir: Path, crash: bool) -> None:
    """SIMULATOR for tests and the demo: play the bootloader and init in one step.

    It applies the bootloader's rule to the boot environment (spending a trial's try), then
    does what post-boot does. On a real device the bootloader has already chosen the slot:
    never run this there; init runs 'overdrive vehicle post-boot'. Exit codes as post-boot's.
    """
    car = Vehicle(state_dir)
    if car.config.boot_backend != "file":
        click.echo(
            f"note: simulating the bootloader on a {car.config.boot_backend} environment; "
            "on a device, init runs 'overdrive vehicle post-boot' instead",
            err=True,
        )
    result = simulate_boot(car, crash=crash)
    click.echo(result.message)
    raise SystemExit(result.exit_code)


vehicle.add_command(tuf_client)
vehicle.add_command(secondary_group)


@vehicle.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True)
def status(state_dir: Path, as_json: bool) -> None:
    """Slots, versions, update state, last result and pending events."""
    config = VehicleConfig.load(state_dir)
    state = StateStore(state_dir).load()
    env = boot_env_for(config, state_dir).load()
    data: dict[str, Any] = {
        "vehicle_id": config.vehicle_id,
        "hardware_id": config.hardware_id,
        "state": state.state,
        "active_slot": state.active,
        "slots": {k: (v.__dict__ if v else None) for k, v in state.slots.items()},
        "boot": env.describe(),
        "assignment": (state.assignment or {}).get("payload"),
        "last_result": state.last_result,
        "last_boot": state.last_boot,
        "unhealthy_boots": state.unhealthy_boots,
        "pending_events": len(EventQueue(state_dir).pending()),
        "ecu_serial": config.serial,
        "director": {
            "verified_version": DirectorTrust(
                state_dir, config.server_url, config.vehicle_id
            ).local_version(),
            "acted_on_version": state.director_acted or None,
            "trusted_time": state.trusted_time,
        },
        "software_set": state.software_set,
        "ecus": [_ecu_status(e, state_dir) for e in config.other_ecus],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(
        f"vehicle {config.vehicle_id} ({config.hardware_id}): {state.state}, running slot {state.active}"
    )
    for name, image in state.slots.items():
        text = (
            f"{image.version} (counter {image.release_counter}, sha256 {image.sha256[:12]}…)"
            if image
            else "empty"
        )
        click.echo(f"  slot {name}: {text}")
    click.echo(f"  boot env: {env.describe()}")
    if state.last_result:
        click.echo(f"  last result: {json.dumps(state.last_result, sort_keys=True)}")
    if state.last_boot:
        click.echo(f"  last boot: {state.last_boot.get('message')}")
    if state.unhealthy_boots:
        click.echo(
            f"  unhealthy boots in a row: {state.unhealthy_boots} "
            f"(falls back at {config.late_fallback_boots or 'never'})"
        )
    director = data["director"]
    click.echo(
        f"  ECU {config.serial}; director metadata v{director['verified_version'] or '-'} "
        f"verified, trusted time {director['trusted_time'] or 'none yet'}"
    )
    if state.software_set:
        members = ", ".join(
            f"{m['serial']} {m['stage']}" for m in state.software_set.get("members", [])
        )
        click.echo(
            f"  software set {state.software_set['id']}: {state.software_set['phase']} ({members})"
        )
    for ecu in data["ecus"]:
        click.echo(f"  ECU {ecu['serial']} ({ecu['kind']}, {ecu['hardware_id']}): {ecu['summary']}")
    click.echo(f"  pending events: {data['pending_events']}")
