"""The release engineers' commands: ``overdrive keys``, ``overdrive repo``, ``overdrive release``.

Options that name the repository and the key directory also read ``OVERDRIVE_STORAGE`` and
``OVERDRIVE_KEYS``, so a shell (or CI job) can set them once.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from overdrive.bundle.cli import parse_size
from overdrive.durations import parse_duration
from overdrive.releases import withdrawal_reason
from overdrive.storage import Storage, open_storage
from overdrive.tuf_layout import BundleInfo, LayoutError, Yank
from signing.errors import KeyError_, RepositoryError
from signing.keys import KEY_TYPES, KeyDirectory, env_passphrase, generate_key, prompt_passphrase
from signing.release import BuildOptions, add_release
from signing.repository import ImageRepository, now, parse_expiry, wipe

storage_option = click.option(
    "--storage",
    "storage_url",
    envvar="OVERDRIVE_STORAGE",
    required=True,
    help="Repository storage: s3://bucket/prefix or a directory [env OVERDRIVE_STORAGE].",
)
keys_option = click.option(
    "--keys",
    "keys_dir",
    envvar="OVERDRIVE_KEYS",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding your key files [env OVERDRIVE_KEYS].",
)
passphrase_option = click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Read key passphrases from this environment variable instead of prompting.",
)


def key_directory(path: Path, passphrase_env: str | None) -> KeyDirectory:
    source = env_passphrase(passphrase_env) if passphrase_env else prompt_passphrase
    return KeyDirectory(path, source)


def load_repo(
    storage_url: str, keys_dir: Path | None, passphrase_env: str | None = None
) -> ImageRepository:
    keys = key_directory(keys_dir or Path("/nonexistent-overdrive-keys"), passphrase_env)
    return ImageRepository.load(open_storage(storage_url), keys)


# ----------------------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """Generate and rotate signing keys."""


@keys.command("generate")
@click.argument("name")
@click.option(
    "--type", "key_type", type=click.Choice(KEY_TYPES), default="ed25519", show_default=True
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write NAME and NAME.pub.",
)
@passphrase_option
@click.option(
    "--insecure-no-passphrase",
    is_flag=True,
    help="Write the private key unencrypted. For tests and demos only.",
)
def keys_generate(
    name: str,
    key_type: str,
    directory: Path,
    passphrase_env: str | None,
    insecure_no_passphrase: bool,
) -> None:
    """Create the key pair NAME (private, PKCS#8 PEM) and NAME.pub."""
    if insecure_no_passphrase and passphrase_env:
        raise click.UsageError("--insecure-no-passphrase and --passphrase-env exclude each other")
    passphrase: bytes | None
    if insecure_no_passphrase:
        passphrase = None
        click.echo(
            f"WARNING: {name} is NOT encrypted (--insecure-no-passphrase): "
            "never use it for a real fleet",
            err=True,
        )
    elif passphrase_env:
        passphrase = env_passphrase(passphrase_env)(name)
        if not passphrase:
            raise KeyError_(f"${passphrase_env} is empty: refusing an empty passphrase")
    else:
        if not sys.stdin.isatty():
            raise KeyError_(
                "no passphrase: use --passphrase-env VAR (or --insecure-no-passphrase for tests)"
            )
        passphrase = str(
            click.prompt(f"Passphrase for {name}", hide_input=True, confirmation_prompt=True)
        ).encode()
    key = generate_key(name, directory, key_type, passphrase)
    click.echo(f"{directory / name}  {key_type}  keyid {key.keyid}")


@keys.command("rotate")
@click.option(
    "--role",
    type=click.Choice(["root", "targets", "snapshot", "timestamp"]),
    required=True,
)
@storage_option
@keys_option
@click.option("--add", "add", multiple=True, help="Key to add: a key name in --keys or awskms:ID.")
@click.option("--remove", "remove", multiple=True, help="Key to remove: its name or key id.")
@click.option("--threshold", type=click.IntRange(min=1), help="New threshold for the role.")
@click.option("--stage-only", is_flag=True, help="Stage the new root for others to sign.")
@passphrase_option
def keys_rotate(
    role: str,
    storage_url: str,
    keys_dir: Path,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    threshold: int | None,
    stage_only: bool,
    passphrase_env: str | None,
) -> None:
    """Change a role's keys: a new root version signed by the old and the new root keys."""
    if not add and not remove and threshold is None:
        raise click.UsageError("nothing to do: give --add, --remove or --threshold")
    repo = load_repo(storage_url, keys_dir, passphrase_env)
    if repo.load_staged().root is not None:
        raise RepositoryError("a root change is already staged: publish or discard it first")
    new_root = repo.bump(repo.root, "root")
    signed = new_root.signed
    for spec in add:
        key = repo.keys.resolve(spec)
        if key.keyid in signed.roles[role].keyids:
            raise KeyError_(f"{spec} is already a {role} key")
        signed.add_key(key, role)
    for spec in remove:
        keyid = find_keyid(repo, signed.roles[role].keyids, spec)
        signed.revoke_key(keyid, role)
    if threshold is not None:
        signed.roles[role].threshold = threshold
    count = len(signed.roles[role].keyids)
    if signed.roles[role].threshold > count:
        raise RepositoryError(
            f"{role} would have {count} key(s) but threshold {signed.roles[role].threshold}"
        )
    repo.sign(new_root, "root", repo.root.signed)
    repo.sign(new_root, "root", signed)
    missing = repo.root_missing(new_root)
    if stage_only or missing:
        repo.stage(new_root, "root")
        click.echo(f"staged root v{signed.version} ({role} keys changed)")
        for line in missing:
            click.echo(f"  waiting for {line}")
        click.echo(
            "collect signatures with 'overdrive repo sign --role root', then 'overdrive repo publish'"
        )
        return
    repo.publish(root=new_root)
    click.echo(
        f"published root v{signed.version}: {role} has {count} key(s), threshold {signed.roles[role].threshold}"
    )


def find_keyid(repo: ImageRepository, keyids: list[str], spec: str) -> str:
    """A key named by its file name in --keys, or by (a prefix of at least 8 of) its key id."""
    for keyid in keyids:
        if repo.keys.path.is_dir() and repo.keys.name_of(keyid) == spec:
            return keyid
    matches = [k for k in keyids if len(spec) >= 8 and k.startswith(spec)]
    if len(matches) == 1:
        return matches[0]
    raise KeyError_(
        f"{spec!r} is not one of the role's keys ({', '.join(map(repo.key_label, keyids))})"
    )


# ----------------------------------------------------------------------------- repo


@click.group()
def repo() -> None:
    """Create, sign, publish, inspect and verify the TUF image repository."""


def key_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@repo.command("init")
@storage_option
@keys_option
@click.option("--root-keys", default="root", show_default=True, help="Comma-separated key names.")
@click.option("--root-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--targets-keys", default="targets", show_default=True)
@click.option("--targets-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--snapshot-key", default="snapshot", show_default=True, help="Key name or awskms:ID."
)
@click.option(
    "--timestamp-key", default="timestamp", show_default=True, help="Key name or awskms:ID."
)
@click.option(
    "--expires",
    default="",
    help="Validity per role, e.g. root=365d,targets=90d,snapshot=7d,timestamp=1d (the defaults).",
)
@click.option("--force", is_flag=True, help="Replace an existing repository's metadata.")
@passphrase_option
def repo_init(
    storage_url: str,
    keys_dir: Path,
    root_keys: str,
    root_threshold: int,
    targets_keys: str,
    targets_threshold: int,
    snapshot_key: str,
    timestamp_key: str,
    expires: str,
    force: bool,
    passphrase_env: str | None,
) -> None:
    """Create and publish a new image repository (root, targets, snapshot, timestamp)."""
    storage = open_storage(storage_url)
    storage.check()
    keydir = key_directory(keys_dir, passphrase_env)
    expiry = parse_expiry(expires)
    names = {
        "root": key_list(root_keys),
        "targets": key_list(targets_keys),
        "snapshot": key_list(snapshot_key),
        "timestamp": key_list(timestamp_key),
    }
    role_keys = {role: [keydir.resolve(n) for n in items] for role, items in names.items()}
    thresholds = {"root": root_threshold, "targets": targets_threshold}
    if ImageRepository.is_initialised(storage):
        if not force:
            raise RepositoryError(
                f"{storage.url} already holds a repository (use --force to replace its metadata)"
            )
        # Validate everything (keys, thresholds, signatures) in memory before wiping.
        ImageRepository.create(_DryRun(storage), keydir, role_keys, thresholds, expiry)
        wipe(storage)
    repo_ = ImageRepository.create(storage, keydir, role_keys, thresholds, expiry)
    click.echo(f"initialised TUF repository at {storage.url}")
    for role in ("root", "targets", "snapshot", "timestamp"):
        r = repo_.root.signed.roles[role]
        click.echo(f"  {role:<9} threshold {r.threshold} of {len(r.keyids)} key(s)")
    click.echo(f"vehicles trust {storage.public_url('metadata/1.root.json')}")


class _DryRun(Storage):
    """Storage that accepts writes and forgets them: to validate an init before wiping."""

    def __init__(self, real: Storage) -> None:
        self.url = real.url

    def put_bytes(self, key: str, data: bytes, **_: Any) -> None:
        pass

    def put_stream(self, key: str, stream: Any, **_: Any) -> None:
        pass

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Any:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return False

    def size(self, key: str) -> int:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        return []

    def delete(self, key: str) -> None:
        pass

    def public_url(self, key: str) -> str:
        return key


@repo.command("refresh")
@storage_option
@keys_option
@click.option(
    "--if-expiring-within",
    "within",
    help="Only re-sign what expires within this period (e.g. 12h); for cron.",
)
@passphrase_option
def repo_refresh(
    storage_url: str, keys_dir: Path, within: str | None, passphrase_env: str | None
) -> None:
    """Re-sign timestamp (and snapshot when needed) with the online keys."""
    period = parse_duration(within) if within else None
    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    done = repo_.refresh(period)
    if not done:
        click.echo(
            f"nothing expires within {within}: timestamp valid until {iso(repo_.timestamp.signed.expires)}"
        )
        return
    for role in done:
        md = repo_.snapshot if role == "snapshot" else repo_.timestamp
        click.echo(f"re-signed {role} v{md.signed.version}, valid until {iso(md.signed.expires)}")


def iso(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


@repo.command("status")
@storage_option
@click.option(
    "--keys",
    "keys_dir",
    envvar="OVERDRIVE_KEYS",
    type=click.Path(path_type=Path),
    help="Name keys by their files here.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def repo_status(storage_url: str, keys_dir: Path | None, as_json: bool) -> None:
    """Roles, versions, keys, thresholds, expiry and releases per hardware id."""
    repo_ = load_repo(storage_url, keys_dir)
    status = repository_status(repo_)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    click.echo(f"repository {repo_.storage.url}")
    click.echo(f"{'role':<10}{'version':>8}  {'expires':<22}{'threshold':<10} keys")
    for role, info in status["roles"].items():
        flag = (
            "  EXPIRED" if info["expired"] else ("  expires soon" if info["expires_soon"] else "")
        )
        keys_text = ", ".join(k["label"] for k in info["keys"])
        click.echo(
            f"{role:<10}{info['version']:>8}  {info['expires']:<22}"
            f"{info['threshold']}/{len(info['keys'])}{'':<7} {keys_text}{flag}"
        )
    if status["staged"]:
        click.echo(f"staged, waiting for signatures: {', '.join(status['staged'])}")
    if not status["hardware"]:
        click.echo("no releases yet")
    for hw, versions in sorted(status["hardware"].items()):
        click.echo(f"{hw}:")
        for v in versions:
            bundles = ", ".join(
                f"{b['kind']}{' from ' + b['source_version'] if b['source_version'] else ''} "
                f"{human(b['length'])}"
                for b in v["bundles"]
            )
            click.echo(f"  {v['version']:<12} counter {v['release_counter']:<4} {bundles}")
            if v["yanked"]:
                since = f" since {v['yanked']['at']}" if v["yanked"]["at"] else ""
                click.echo(f"  {'':<12} WITHDRAWN{since}: {v['yanked']['reason']}")


def repository_status(repo_: ImageRepository) -> dict[str, Any]:
    stamp = now()
    roles: dict[str, Any] = {}
    for role, md in (
        ("root", repo_.root),
        ("targets", repo_.targets),
        ("snapshot", repo_.snapshot),
        ("timestamp", repo_.timestamp),
    ):
        r = repo_.root.signed.roles[role]
        remaining = md.signed.expires - stamp
        roles[role] = {
            "version": md.signed.version,
            "expires": iso(md.signed.expires),
            "expired": remaining <= timedelta(0),
            "expires_soon": remaining < repo_.expiry[role] / 4,
            "threshold": r.threshold,
            "keys": [{"keyid": k, "label": repo_.key_label(k)} for k in r.keyids],
        }
    hardware: dict[str, dict[str, Any]] = {}
    for path, target in sorted(repo_.targets.signed.targets.items()):
        info = BundleInfo.from_custom(target.custom, path)
        if info is None:
            continue
        entry = hardware.setdefault(info.hardware_id, {}).setdefault(
            info.version,
            {
                "version": info.version,
                "release_counter": info.release_counter,
                "bundles": [],
                "yanked": None,
            },
        )
        yanked = withdrawal_of(target.custom, path)
        entry["yanked"] = entry["yanked"] or yanked
        entry["bundles"].append(
            {
                "path": path,
                "kind": info.kind,
                "length": target.length,
                "sha256": target.hashes["sha256"],
                "source_version": info.source.version if info.source else None,
                "image_length": info.image.length,
                "yanked": yanked,
            }
        )
    staged = repo_.load_staged()
    return {
        "storage": repo_.storage.url,
        "roles": roles,
        "staged": [r for r, md in (("root", staged.root), ("targets", staged.targets)) if md],
        "hardware": {
            hw: sorted(versions.values(), key=lambda v: v["release_counter"])
            for hw, versions in hardware.items()
        },
    }


def withdrawal_of(custom: Any, path: str) -> dict[str, str | None] | None:
    """A target's withdrawal for ``repo status``: ``{reason, at}``, or ``None``. A malformed
    marker shows as a withdrawal (vehicles refuse such a target) with what is wrong with it."""
    try:
        yank = Yank.from_custom(custom, path)
    except LayoutError:
        return {"reason": withdrawal_reason(custom, path), "at": None}
    return dict(yank.to_custom()) if yank is not None else None


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@repo.command("verify")
@storage_option
@click.option(
    "--root",
    "root_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The trusted root.json a vehicle ships with.",
)
def repo_verify(storage_url: str, root_file: Path) -> None:
    """Verify the published repository exactly as a vehicle would, downloading every target."""
    from signing.verify import VerificationFailed, verify_repository

    try:
        trusted = root_file.read_bytes()
    except OSError as e:
        raise RepositoryError(f"cannot read trusted root {root_file}: {e.strerror}") from e
    storage = open_storage(storage_url)
    try:
        report = verify_repository(
            storage, trusted, on_target=lambda p, n: click.echo(f"  ok  {p} ({human(n)})")
        )
    except VerificationFailed as e:
        click.echo(f"FAIL: {e}", err=True)
        sys.exit(1)
    versions = ", ".join(f"{r} v{v}" for r, v in report.versions.items())
    click.echo(f"PASS: {versions}; {len(report.targets)} target(s) verified")


@repo.command("sign")
@click.option("--role", type=click.Choice(["root", "targets"]), required=True)
@storage_option
@keys_option
@passphrase_option
def repo_sign(role: str, storage_url: str, keys_dir: Path, passphrase_env: str | None) -> None:
    """Add your signature(s) to staged metadata."""
    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    staged = repo_.load_staged()
    md = staged.root if role == "root" else staged.targets
    if md is None:
        raise RepositoryError(f"no staged {role} metadata to sign")
    root = staged.root.signed if staged.root is not None else repo_.root.signed
    before = set(md.signatures)
    count = (
        repo_.sign(md, role, root)
        if role == "targets"
        else (
            repo_.sign(md, "root", repo_.root.signed) + repo_.sign(md, "root", md.signed)  # type: ignore[arg-type]
        )
    )
    if count == 0:
        raise KeyError_(f"none of the keys in {keys_dir} is a {role} key")
    repo_.stage(md, role)
    added = set(md.signatures) - before
    click.echo(f"signed staged {role} v{md.signed.version} with {count} key(s) ({len(added)} new)")
    missing = (
        repo_.root_missing(md)  # type: ignore[arg-type]
        if role == "root"
        else [
            repo_.missing_message("targets", r)
            for r in [repo_.verification(md, "targets", root)]
            if not r.verified
        ]
    )
    for line in missing:
        click.echo(f"  still waiting for {line}")
    if not missing:
        click.echo("threshold met: run 'overdrive repo publish'")


@repo.command("publish")
@storage_option
@keys_option
@passphrase_option
def repo_publish(storage_url: str, keys_dir: Path, passphrase_env: str | None) -> None:
    """Publish staged metadata once every role's threshold is met."""
    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    staged = repo_.load_staged()
    if not staged:
        raise RepositoryError("nothing is staged")
    if staged.root is not None and staged.root.signed.version != repo_.root.signed.version + 1:
        raise RepositoryError(
            f"staged root v{staged.root.signed.version} is stale: root is now v{repo_.root.signed.version}; discard and redo it"
        )
    if (
        staged.targets is not None
        and staged.targets.signed.version != repo_.targets.signed.version + 1
    ):
        raise RepositoryError(
            f"staged targets v{staged.targets.signed.version} is stale: targets is now v{repo_.targets.signed.version}; discard and redo it"
        )
    repo_.publish(root=staged.root, targets=staged.targets)
    repo_.clear_staging()
    click.echo(
        f"published: root v{repo_.root.signed.version}, targets v{repo_.targets.signed.version}, "
        f"snapshot v{repo_.snapshot.signed.version}, timestamp v{repo_.timestamp.signed.version}"
    )


@repo.command("set-director-keys")
@storage_option
@keys_option
@click.argument(
    "public_keys", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--stage-only", is_flag=True, help="Stage the targets change for more signatures.")
@passphrase_option
def repo_set_director_keys(
    storage_url: str,
    keys_dir: Path,
    public_keys: tuple[Path, ...],
    stage_only: bool,
    passphrase_env: str | None,
) -> None:
    """Publish the director's public keys (KEY.pub …) as the TUF target director/keys.json."""
    from signing.director_keys import set_director_keys

    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    keyids = set_director_keys(repo_, list(public_keys), stage_only=stage_only)
    verb = "staged" if stage_only else "published"
    click.echo(
        f"{verb} director/keys.json with {len(keyids)} key(s): {', '.join(k[:12] for k in keyids)}"
    )


@repo.command("discard")
@storage_option
def repo_discard(storage_url: str) -> None:
    """Throw away staged metadata (the published repository is untouched)."""
    repo_ = load_repo(storage_url, None)
    if not repo_.load_staged():
        raise RepositoryError("nothing is staged")
    repo_.clear_staging()
    click.echo("discarded staged metadata")


# ----------------------------------------------------------------------------- release


@click.group()
def release() -> None:
    """Register a build as signed update bundles, or withdraw a release."""


@release.command("add")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--hardware-id", required=True, help="Which ECU/board the image is for.")
@click.option(
    "--version", "version", required=True, help="The image's version (unique per hardware id)."
)
@storage_option
@keys_option
@click.option("--delta-from", multiple=True, help="Also build a delta from this earlier version.")
@click.option(
    "--delta-from-recent",
    type=click.IntRange(min=0),
    default=0,
    help="Deltas from the last N versions.",
)
@click.option("--stage-only", is_flag=True, help="Stage the targets change for more signatures.")
@click.option("--chunk-size", default="4MiB", show_default=True, help="Bundle chunk size.")
@click.option(
    "--level", type=click.IntRange(1, 22), default=19, show_default=True, help="zstd level."
)
@click.option("--jobs", type=click.IntRange(min=1), help="Encoder threads (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@passphrase_option
def release_add(
    image: Path,
    hardware_id: str,
    version: str,
    storage_url: str,
    keys_dir: Path,
    delta_from: tuple[str, ...],
    delta_from_recent: int,
    stage_only: bool,
    chunk_size: str,
    level: int,
    jobs: int | None,
    quiet: bool,
    passphrase_env: str | None,
) -> None:
    """Sign IMAGE as release VERSION of HARDWARE_ID and publish its bundles."""
    options = BuildOptions(parse_size(chunk_size), level, jobs, progress=not quiet)
    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    result = add_release(
        repo_,
        image,
        hardware_id=hardware_id,
        version=version,
        delta_from=list(delta_from),
        delta_from_recent=delta_from_recent,
        stage_only=stage_only,
        options=options,
    )
    if result.already:
        click.echo(f"{hardware_id} {version} is already published with this image; nothing to do")
        return
    verb = "staged" if result.staged else "published"
    click.echo(f"{verb} {hardware_id} {version} (release counter {result.release_counter})")
    for path, info, size in result.bundles:
        ratio = size / info.image.length if info.image.length else 0.0
        click.echo(f"  {path}  {info.kind}  {human(size)}  ({ratio:.1%} of the image)")
    if result.staged:
        click.echo(
            "collect signatures with 'overdrive repo sign --role targets', then 'overdrive repo publish'"
        )


@release.command("yank")
@click.argument("hardware_id")
@click.argument("version")
@click.option("--reason", required=True, help="Why it is withdrawn (one line; vehicles report it).")
@storage_option
@keys_option
@click.option("--stage-only", is_flag=True, help="Stage the targets change for more signatures.")
@passphrase_option
def release_yank(
    hardware_id: str,
    version: str,
    reason: str,
    storage_url: str,
    keys_dir: Path,
    stage_only: bool,
    passphrase_env: str | None,
) -> None:
    """Withdraw release VERSION of HARDWARE_ID: servers stop offering it, vehicles refuse it."""
    from signing.yank import yank_release

    repo_ = load_repo(storage_url, keys_dir, passphrase_env)
    result = yank_release(repo_, hardware_id, version, reason, stage_only=stage_only)
    if result.already:
        click.echo(
            f"{hardware_id} {version} is already withdrawn (since {result.yank.at}: "
            f"{result.yank.reason}); nothing to do"
        )
        return
    verb = "staged the withdrawal of" if result.staged else "withdrew"
    click.echo(f"{verb} {hardware_id} {version}: {result.yank.reason}")
    for path in result.paths:
        click.echo(f"  {path}")
    if result.staged:
        click.echo(
            "collect signatures with 'overdrive repo sign --role targets', then 'overdrive repo publish'"
        )
    else:
        click.echo(
            f"published targets v{repo_.targets.signed.version}, "
            f"timestamp v{repo_.timestamp.signed.version}"
        )
