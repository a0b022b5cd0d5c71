"""The release engineers' commands: ``overdrive keys``, ``overdrive repo``, ``overdrive release``.

Options that name the repository and the key directory also read ``OVERDRIVE_STORAGE`` and
``OVERDRIVE_KEYS``, so a shell (or CI job) can set them once. Commands that sign take the
passphrase options of :func:`passphrase_options` (lookup order: :mod:`overdrive.keys`).

A change that needs several people's signatures (key rotation, threshold change, release add,
release yank) is published when the keys at hand meet every threshold, and
otherwise staged with a ``staged: …`` line saying who must sign with ``repo sign``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from tuf.api.metadata import Metadata, Root

from overdrive.bundle.cli import parse_size
from overdrive.durations import parse_duration
from overdrive.keys import (
    INSECURE_PERMISSIONS_ENV,
    KEY_TYPES,
    PASSPHRASE_DIR_ENV,
    KeyDirectory,
    PassphraseSources,
    check_new_key,
    generate_key,
)
from overdrive.releases import withdrawal_reason
from overdrive.signing.errors import KeyError_, RepositoryError
from overdrive.signing.release import BuildOptions, ReleaseResult, add_release
from overdrive.signing.repository import ImageRepository, Outcome, now, parse_expiry, wipe
from overdrive.storage import Storage, open_storage
from overdrive.tuf_layout import BundleInfo, LayoutError, Yank

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
PASSPHRASE_OPTIONS = (
    click.option(
        "--passphrase-env",
        metavar="VAR",
        help="Read the passphrase of every key without its own (OVERDRIVE_PASSPHRASE_<NAME> "
        "or <NAME>.pass) from environment variable VAR instead of prompting.",
    ),
    click.option(
        "--passphrase-file-dir",
        envvar=PASSPHRASE_DIR_ENV,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Directory of per-key passphrase files NAME.pass (mode 0600) "
        f"[env {PASSPHRASE_DIR_ENV}].",
    ),
    click.option(
        "--allow-insecure-key-permissions",
        is_flag=True,
        envvar=INSECURE_PERMISSIONS_ENV,
        help="Use private key and passphrase files that group or others can read (CI "
        f"checkouts) [env {INSECURE_PERMISSIONS_ENV}=1].",
    ),
)


def passphrase_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the passphrase options to ``command``, handed to it as one ``passphrases`` argument
    (a :class:`PassphraseSources`): a passphrase per key from ``OVERDRIVE_PASSPHRASE_<NAME>``,
    then ``--passphrase-file-dir``, then ``--passphrase-env`` for all, then a prompt."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        passphrase_env: str | None,
        passphrase_file_dir: Path | None,
        allow_insecure_key_permissions: bool,
        **kwargs: Any,
    ) -> None:
        kwargs["passphrases"] = PassphraseSources(
            passphrase_env, passphrase_file_dir, allow_insecure_key_permissions
        )
        command(*args, **kwargs)

    for option in reversed(PASSPHRASE_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def key_directory(path: Path, passphrases: PassphraseSources | None = None) -> KeyDirectory:
    """The key directory ``path``, unlocking its keys through ``passphrases``."""
    sources = passphrases or PassphraseSources()
    return KeyDirectory(
        path, sources, allow_insecure_permissions=sources.allow_insecure_permissions
    )


def load_repo(
    storage_url: str, keys_dir: Path | None, passphrases: PassphraseSources | None = None
) -> ImageRepository:
    keys = key_directory(keys_dir or Path("/nonexistent-overdrive-keys"), passphrases)
    return ImageRepository.load(open_storage(storage_url), keys)


stage_only_option = click.option(
    "--stage-only",
    is_flag=True,
    help="Stage the change for others to sign even if the keys at hand could publish it "
    "(it is staged anyway when they are short of the threshold).",
)


def group() -> str:
    """The command group at work: ``director`` for the director's root (whose commands are
    these same ones, see :mod:`overdrive.signing.director_cli`), else ``repo``."""
    ctx = click.get_current_context(silent=True)
    parent = ctx.parent if ctx is not None else None
    return "director" if parent is not None and parent.info_name == "director" else "repo"


def sign_command(role: str) -> str:
    """The command a colleague runs to add their signature to staged ``role`` metadata."""
    return f"`overdrive {group()} sign --role {role} --keys DIR`"


def echo_staged(outcome: Outcome) -> None:
    """Say that a change was staged, what it still lacks, and how each signer completes it."""
    if not outcome.waiting:
        click.echo(
            f"staged: every threshold is met; publish with `overdrive {group()} publish` "
            "(with the online snapshot and timestamp keys)"
        )
        return
    for role in dict.fromkeys(s.role for s in outcome.waiting):
        short = [s for s in outcome.waiting if s.role == role]
        counts = ", ".join(
            f"{s.signed} of {s.threshold} signatures"
            + ("" if s.label == role else f" {s.label.removeprefix(role).strip()}")
            for s in short
        )
        click.echo(
            f"staged: {role} has {counts}; sign with {sign_command(role)}, "
            f"then `overdrive {group()} publish`"
        )
    for shortfall in outcome.waiting:
        click.echo(f"  waiting for {shortfall.message}")


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
    help="Where to write NAME (mode 0600) and NAME.pub (mode 0644).",
)
@passphrase_options
@click.option(
    "--insecure-no-passphrase",
    is_flag=True,
    help="Write the private key unencrypted. For tests and demos only.",
)
def keys_generate(
    name: str,
    key_type: str,
    directory: Path,
    passphrases: PassphraseSources,
    insecure_no_passphrase: bool,
) -> None:
    """Create the key pair NAME (private, PKCS#8 PEM) and NAME.pub.

    The passphrase comes from $OVERDRIVE_PASSPHRASE_<NAME>, NAME.pass in --passphrase-file-dir,
    --passphrase-env VAR, or (on a terminal) a prompt, in that order.
    """
    if insecure_no_passphrase and passphrases.env_var:
        raise click.UsageError("--insecure-no-passphrase and --passphrase-env exclude each other")
    check_new_key(name, directory)  # before asking for a passphrase, not after
    passphrase: bytes | None
    if insecure_no_passphrase:
        passphrase = None
        click.echo(
            f"WARNING: {name} is NOT encrypted (--insecure-no-passphrase): "
            "never use it for a real fleet",
            err=True,
        )
    else:
        passphrase = passphrases.lookup(name, confirm=True).value
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
@click.option(
    "--stage-only",
    is_flag=True,
    help="Stage the change for others to sign even if the keys at hand could publish it.",
)
@passphrase_options
def keys_rotate(
    role: str,
    storage_url: str,
    keys_dir: Path,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    threshold: int | None,
    stage_only: bool,
    passphrases: PassphraseSources,
) -> None:
    """Change a role's keys or threshold: a new root version signed by the old and the new root
    keys (and, for targets, a new targets version meeting its old and new threshold).

    Published when the keys at hand meet every threshold; otherwise staged, and each other
    signer runs 'overdrive repo sign' with their own --keys, then 'overdrive repo publish'.
    """
    if not add and not remove and threshold is None:
        raise click.UsageError("nothing to do: give --add, --remove or --threshold")
    repo = load_repo(storage_url, keys_dir, passphrases)
    staged = repo.load_staged()
    if staged:
        raise RepositoryError(
            f"a change is already staged ({', '.join(staged.roles())}): publish or discard it first"
        )
    new_root = rotated_root(repo, role, add, remove, threshold)
    signed = new_root.signed
    targets = None
    if role == "targets" and not repo.verification(repo.targets, "targets", signed).verified:
        targets = repo.bump(repo.targets, "targets")  # must meet the old and the new threshold
    outcome = repo.propose(root=new_root, targets=targets, stage_only=stage_only)
    r = signed.roles[role]
    if outcome.staged:
        also = f" and targets v{targets.signed.version}" if targets is not None else ""
        click.echo(
            f"staged root v{signed.version}{also} ({role}: {len(r.keyids)} key(s), "
            f"threshold {r.threshold})"
        )
        echo_staged(outcome)
        return
    click.echo(
        f"published root v{signed.version}: {role} has {len(r.keyids)} key(s), "
        f"threshold {r.threshold}"
    )


def rotated_root(
    repo: ImageRepository,
    role: str,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    threshold: int | None,
) -> Metadata[Root]:
    """The next root version with ``role``'s keys and threshold changed (unsigned)."""
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
    return new_root


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
@passphrase_options
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
    passphrases: PassphraseSources,
) -> None:
    """Create and publish a new image repository (root, targets, snapshot, timestamp)."""
    storage = open_storage(storage_url)
    storage.check()
    keydir = key_directory(keys_dir, passphrases)
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
@passphrase_options
def repo_refresh(
    storage_url: str, keys_dir: Path, within: str | None, passphrases: PassphraseSources
) -> None:
    """Re-sign timestamp (and snapshot when needed) with the online keys."""
    period = parse_duration(within) if within else None
    repo_ = load_repo(storage_url, keys_dir, passphrases)
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
        for line in status["staged_changes"]:
            click.echo(f"  {line}")
        for line in status["staged_waiting"]:
            click.echo(f"  waiting for {line}")
        if not status["staged_waiting"]:
            click.echo("  every threshold is met: run `overdrive repo publish`")
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
        "staged": staged.roles(),
        "staged_changes": repo_.describe_staged(staged),
        "staged_waiting": [s.message for s in repo_.shortfalls(staged.root, staged.targets)],
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
    from overdrive.signing.verify import VerificationFailed, verify_repository

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
@click.option(
    "--role",
    type=click.Choice(["root", "targets"]),
    help="Which staged metadata to sign (default: every staged role your keys can sign).",
)
@storage_option
@keys_option
@passphrase_options
def repo_sign(
    role: str | None, storage_url: str, keys_dir: Path, passphrases: PassphraseSources
) -> None:
    """Add your signature(s) to staged metadata, with the keys in your own --keys directory."""
    repo_ = load_repo(storage_url, keys_dir, passphrases)
    staged = repo_.load_staged()
    if not staged:
        raise RepositoryError("nothing is staged: there is nothing to sign")
    if role is not None and staged.get(role) is None:
        raise RepositoryError(
            f"no staged {role} metadata to sign (staged: {', '.join(staged.roles())})"
        )
    repo_.check_fresh(staged)
    roles = [role] if role else staged.roles()
    new_root = staged.root.signed if staged.root is not None else repo_.root.signed
    for line in repo_.describe_staged(staged):
        click.echo(f"staged {line}")
    total = 0
    for name in roles:
        md = staged.get(name)
        assert md is not None
        before = set(md.signatures)
        count = repo_.sign_role(md, name, new_root)
        total += count
        if count:
            merge_concurrent_signatures(repo_, md, name)
            repo_.stage(md, name)
            added = len(set(md.signatures) - before)
            click.echo(
                f"signed staged {name} v{md.signed.version} with {count} key(s) ({added} new)"
            )
    waiting = repo_.shortfalls(staged.root, staged.targets)
    if total == 0:
        still = "; ".join(s.message for s in waiting) or "nobody"
        raise KeyError_(
            f"none of the keys in {keys_dir} can sign the staged {' or '.join(roles)} "
            f"(waiting for: {still})"
        )
    for shortfall in waiting:
        click.echo(f"  still waiting for {shortfall.message}")
    if not waiting:
        click.echo(f"threshold met for every staged role: run `overdrive {group()} publish`")


def merge_concurrent_signatures(repo_: ImageRepository, md: Metadata[Any], role: str) -> None:
    """Keep the signatures a colleague added to the same staged metadata since we read it."""
    latest = repo_.load_staged().get(role)
    if latest is not None and latest.signed_bytes == md.signed_bytes:
        for keyid, signature in latest.signatures.items():
            md.signatures.setdefault(keyid, signature)


@repo.command("publish")
@storage_option
@keys_option
@passphrase_options
def repo_publish(storage_url: str, keys_dir: Path, passphrases: PassphraseSources) -> None:
    """Publish staged metadata once every role's threshold is met (needs the online keys)."""
    repo_ = load_repo(storage_url, keys_dir, passphrases)
    staged = repo_.load_staged()
    if not staged:
        raise RepositoryError("nothing is staged")
    repo_.check_fresh(staged)
    repo_.publish(root=staged.root, targets=staged.targets)
    repo_.clear_staging()
    click.echo(
        f"published: root v{repo_.root.signed.version}, targets v{repo_.targets.signed.version}, "
        f"snapshot v{repo_.snapshot.signed.version}, timestamp v{repo_.timestamp.signed.version}"
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
@stage_only_option
@click.option("--chunk-size", default="4MiB", show_default=True, help="Bundle chunk size.")
@click.option(
    "--level", type=click.IntRange(1, 22), default=19, show_default=True, help="zstd level."
)
@click.option("--jobs", type=click.IntRange(min=1), help="Encoder threads (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (implies --quiet).")
@passphrase_options
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
    as_json: bool,
    passphrases: PassphraseSources,
) -> None:
    """Sign IMAGE as release VERSION of HARDWARE_ID and publish its bundles.

    When the targets keys at hand are short of the threshold, the release is staged instead:
    each other signer runs 'overdrive repo sign', then 'overdrive repo publish'.
    """
    options = BuildOptions(parse_size(chunk_size), level, jobs, progress=not (quiet or as_json))
    repo_ = load_repo(storage_url, keys_dir, passphrases)
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
    if as_json:
        click.echo(json.dumps(release_json(result), indent=2, sort_keys=True))
        return
    if result.already:
        click.echo(f"{hardware_id} {version} is already published with this image; nothing to do")
        return
    verb = "staged" if result.staged else "published"
    click.echo(f"{verb} {hardware_id} {version} (release counter {result.release_counter})")
    for path, info, size in result.bundles:
        ratio = size / info.image.length if info.image.length else 0.0
        click.echo(f"  {path}  {info.kind}  {human(size)}  ({ratio:.1%} of the image)")
    if result.staged:
        echo_staged(Outcome(staged=True, waiting=result.waiting))


def release_json(result: ReleaseResult) -> dict[str, Any]:
    """``release add --json``: what was published or staged, and what a staged one lacks."""
    state = "already-published" if result.already else "staged" if result.staged else "published"
    return {
        "hardware_id": result.hardware_id,
        "version": result.version,
        "release_counter": result.release_counter,
        "state": state,
        "bundles": [
            {
                "path": path,
                "kind": info.kind,
                "length": size,
                "source_version": info.source.version if info.source else None,
                "image_length": info.image.length,
                "image_sha256": info.image.sha256,
            }
            for path, info, size in result.bundles
        ],
        "waiting": [s.message for s in result.waiting],
    }


@release.command("yank")
@click.argument("hardware_id")
@click.argument("version")
@click.option("--reason", required=True, help="Why it is withdrawn (one line; vehicles report it).")
@storage_option
@keys_option
@stage_only_option
@passphrase_options
def release_yank(
    hardware_id: str,
    version: str,
    reason: str,
    storage_url: str,
    keys_dir: Path,
    stage_only: bool,
    passphrases: PassphraseSources,
) -> None:
    """Withdraw release VERSION of HARDWARE_ID: servers stop offering it, vehicles refuse it.

    Staged instead of published when the targets keys at hand are short of the threshold.
    """
    from overdrive.signing.yank import yank_release

    repo_ = load_repo(storage_url, keys_dir, passphrases)
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
        echo_staged(Outcome(staged=True, waiting=result.waiting))
    else:
        click.echo(
            f"published targets v{repo_.targets.signed.version}, "
            f"timestamp v{repo_.timestamp.signed.version}"
        )
