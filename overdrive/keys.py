"""Signing keys: generation, key files on disk, and loading signers (for the image repository's
roles and the director's alike).

A key named ``NAME`` in a key directory is two files: ``NAME`` (the private key, PKCS#8 PEM,
encrypted with a passphrase unless generated with ``--insecure-no-passphrase``, mode 0600) and
``NAME.pub`` (the public key, SubjectPublicKeyInfo PEM, mode 0644). Signers are securesystemslib
signers: a ``CryptoSigner`` for key files, or any signer securesystemslib loads from a private key
URI (such as ``awskms:…`` for an online role held in AWS KMS), whose URI is recorded in the root
metadata.

An encrypted key's passphrase is looked up, per key, in this order (:class:`PassphraseSources`):

1. the environment variable ``OVERDRIVE_PASSPHRASE_<NAME>`` (``NAME`` upper-cased, every other
   character than a letter or digit as ``_``: key ``ts-2026`` reads
   ``OVERDRIVE_PASSPHRASE_TS_2026``);
2. the file ``<NAME>.pass`` in ``--passphrase-file-dir DIR`` (``OVERDRIVE_PASSPHRASES_DIR``), which
   must not be readable by group or others; one trailing newline is not part of the passphrase;
3. the environment variable named by ``--passphrase-env VAR``, for every key;
4. a prompt, when standard input is a terminal.

So root, targets and timestamp keys with different passphrases work from cron or CI. A variable
or file that is there but empty is an error, never an empty passphrase. A private key file (or
passphrase file) that group or others can read is refused unless
``--allow-insecure-key-permissions`` (``OVERDRIVE_ALLOW_INSECURE_KEY_PERMISSIONS=1``) is given.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from overdrive.errors import OverdriveError
from overdrive.passphrase import passphrase_variable
from overdrive.storage.local import atomic_write

KEY_TYPES = ("ed25519", "ecdsa-p256")
#: Field of a key in root metadata that records where its private half lives (KMS keys).
URI_FIELD = "x-overdrive-private-key-uri"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Suffix of the per-key passphrase files in ``--passphrase-file-dir``.
PASSPHRASE_FILE_SUFFIX = ".pass"
#: Environment variables behind ``--passphrase-file-dir`` and ``--allow-insecure-key-permissions``
#: (plural, so that no key's own ``OVERDRIVE_PASSPHRASE_<NAME>`` can be mistaken for it).
PASSPHRASE_DIR_ENV = "OVERDRIVE_PASSPHRASES_DIR"
INSECURE_PERMISSIONS_ENV = "OVERDRIVE_ALLOW_INSECURE_KEY_PERMISSIONS"
INSECURE_PERMISSIONS_HINT = (
    f"pass --allow-insecure-key-permissions or set {INSECURE_PERMISSIONS_ENV}=1 to use it anyway"
)

PassphraseSource = Callable[[str], bytes]


class KeyError_(OverdriveError):
    """A key is missing, unreadable, locked with another passphrase, or not one of a role's keys."""


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid key file name."""
    if not _NAME.fullmatch(name) or name.endswith(".pub"):
        raise KeyError_(f"invalid key name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return name


def generate_key(
    name: str, directory: Path, key_type: str = "ed25519", passphrase: bytes | None = None
) -> SSlibKey:
    """Create the key pair ``directory/name`` and ``directory/name.pub``; refuse to overwrite."""
    check_key_name(name)
    if key_type == "ed25519":
        private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
            ed25519.Ed25519PrivateKey.generate()
        )
    elif key_type == "ecdsa-p256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeyError_(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")
    priv_path, pub_path = check_new_key(name, directory)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(parents=True, exist_ok=True)

    def write_private(f: object) -> None:
        os.fchmod(f.fileno(), 0o600)  # type: ignore[attr-defined]
        f.write(pem)  # type: ignore[attr-defined]

    def write_public(f: object) -> None:
        os.fchmod(f.fileno(), 0o644)  # type: ignore[attr-defined]
        f.write(pub_pem)  # type: ignore[attr-defined]

    atomic_write(priv_path, write_private)
    atomic_write(pub_path, write_public)
    return public_key_from_pem(pub_pem, str(pub_path))


def check_new_key(name: str, directory: Path) -> tuple[Path, Path]:
    """The paths of a new key pair ``name`` in ``directory``; refuses an invalid name or a key
    that exists. ``keys generate`` calls it before asking for a passphrase, not after."""
    check_key_name(name)
    priv_path, pub_path = directory / name, directory / f"{name}.pub"
    for path in (priv_path, pub_path):
        if path.exists():
            raise KeyError_(f"{path} already exists; refusing to overwrite a key")
    return priv_path, pub_path


def public_key_from_pem(pem: bytes, where: str) -> SSlibKey:
    """The TUF key (with its default key id) for a PEM public key."""
    try:
        public = serialization.load_pem_public_key(pem)
        return SSlibKey.from_crypto(public)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{where} is not a supported public key (ed25519 or ecdsa-p256)") from e


def env_passphrase(var: str) -> PassphraseSource:
    """A passphrase source that reads environment variable ``var`` (for every key)."""

    def source(key_name: str) -> bytes:
        value = os.environ.get(var)
        if value is None:
            raise KeyError_(f"key {key_name!r} is encrypted and ${var} is not set")
        if not value:
            raise KeyError_(f"${var} is empty: key {key_name!r} needs its passphrase")
        return value.encode()

    return source


def prompt_passphrase(key_name: str) -> bytes:
    """Ask on the terminal; refuse when there is none (CI, cron)."""
    if not sys.stdin.isatty():
        raise KeyError_(
            f"key {key_name!r} is encrypted: give its passphrase with "
            f"${passphrase_variable(key_name)} or --passphrase-env VAR"
        )
    import click

    return str(click.prompt(f"Passphrase for key {key_name!r}", hide_input=True)).encode()


def check_private_permissions(path: Path, what: str, *, allow_insecure: bool) -> None:
    """Refuse a secret file (private key, passphrase file) that group or others may access:
    anyone who can read it can sign as that key. POSIX only (Windows has no mode bits)."""
    if allow_insecure or os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise KeyError_(f"cannot read {what} {path}: {e.strerror or e}") from e
    if mode & 0o077:
        who = " and ".join(
            name for name, bits in (("group", 0o070), ("others", 0o007)) if mode & bits
        )
        raise KeyError_(
            f"{what} {path} is accessible by {who} (mode {mode:04o}): run `chmod 600 {path}`, "
            f"or {INSECURE_PERMISSIONS_HINT}"
        )


@dataclass(frozen=True)
class Passphrase:
    """A passphrase and where it came from (for error messages; never the value itself)."""

    value: bytes
    origin: str


@dataclass(frozen=True)
class PassphraseSources:
    """Where to find each key's passphrase, in the documented lookup order (see the module
    docstring): ``OVERDRIVE_PASSPHRASE_<NAME>``, ``DIR/<NAME>.pass``, ``$VAR`` for every key,
    then a prompt on a terminal. Callable like any :data:`PassphraseSource`."""

    env_var: str | None = None
    file_dir: Path | None = None
    allow_insecure_permissions: bool = False
    interactive: bool | None = None  # None: when standard input is a terminal

    def __call__(self, key_name: str) -> bytes:
        return self.lookup(key_name).value

    def lookup(self, key_name: str, *, confirm: bool = False) -> Passphrase:
        """Key ``key_name``'s passphrase from the first source that has one; ``confirm`` asks
        twice at a prompt (for a new key). Empty or missing everywhere is a :class:`KeyError_`."""
        found = self.configured(key_name)
        if found is not None:
            return found
        if self.interactive if self.interactive is not None else sys.stdin.isatty():
            import click

            text = click.prompt(
                f"Passphrase for key {key_name!r}", hide_input=True, confirmation_prompt=confirm
            )
            if not text:
                raise KeyError_(f"empty passphrase for key {key_name!r}: refusing it")
            return Passphrase(str(text).encode(), "the prompt")
        raise KeyError_(
            f"no passphrase for key {key_name!r} (and no terminal to ask on): {self.hint(key_name)}"
        )

    def configured(self, key_name: str) -> Passphrase | None:
        """The passphrase from a variable or file, if one is configured (no prompting)."""
        var = passphrase_variable(key_name)
        value = os.environ.get(var)
        if value is not None:
            return Passphrase(non_empty(value, f"${var}", key_name), f"${var}")
        if self.file_dir is not None:
            path = self.file_dir / f"{key_name}{PASSPHRASE_FILE_SUFFIX}"
            if path.is_file():
                return Passphrase(self.read_file(path, key_name), str(path))
        if self.env_var:
            value = os.environ.get(self.env_var)
            if value is None:
                raise KeyError_(
                    f"key {key_name!r} is encrypted and ${self.env_var} is not set (nor ${var})"
                )
            return Passphrase(non_empty(value, f"${self.env_var}", key_name), f"${self.env_var}")
        return None

    def read_file(self, path: Path, key_name: str) -> bytes:
        """A passphrase file's content, without one trailing newline; refused when group or
        others may read it (it is as secret as the key)."""
        check_private_permissions(
            path, "passphrase file", allow_insecure=self.allow_insecure_permissions
        )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise KeyError_(f"cannot read passphrase file {path}: {reason}") from e
        line = text.removesuffix("\n").removesuffix("\r")  # as `echo secret > FILE` writes it
        return non_empty(line, str(path), key_name)

    def hint(self, key_name: str) -> str:
        """How to give key ``key_name``'s passphrase, for an error message."""
        where = f"{self.file_dir}/" if self.file_dir else "--passphrase-file-dir DIR with "
        return (
            f"set ${passphrase_variable(key_name)}, put it in {where}{key_name}"
            f"{PASSPHRASE_FILE_SUFFIX}, or use --passphrase-env VAR"
        )


def non_empty(value: str, origin: str, key_name: str) -> bytes:
    """``value`` encoded, or a clear error: an empty passphrase is a configuration mistake (a CI
    secret that is not set expands to nothing), never a passphrase."""
    if not value:
        raise KeyError_(f"{origin} is empty: key {key_name!r} needs its passphrase")
    return value.encode()


@dataclass
class KeyDirectory:
    """The keys a release engineer holds: a directory of ``NAME``/``NAME.pub`` files."""

    path: Path
    passphrase: PassphraseSource = prompt_passphrase
    #: Use private key files that group or others can read (CI checkouts); see module docs.
    allow_insecure_permissions: bool = False
    _public: dict[str, tuple[str, SSlibKey]] | None = field(default=None, repr=False)
    _signers: dict[str, Signer] = field(default_factory=dict, repr=False)

    def public_keys(self) -> dict[str, tuple[str, SSlibKey]]:
        """Key id → (name, public key) for every ``*.pub`` in the directory."""
        if self._public is None:
            if not self.path.is_dir():
                raise KeyError_(f"key directory {self.path} does not exist")
            found: dict[str, tuple[str, SSlibKey]] = {}
            for pub in sorted(self.path.glob("*.pub")):
                key = public_key_from_pem(pub.read_bytes(), str(pub))
                found[key.keyid] = (pub.name[: -len(".pub")], key)
            self._public = found
        return self._public

    def resolve(self, spec: str) -> SSlibKey:
        """A key named on the command line: a key name in this directory, or a KMS key URI."""
        if spec.startswith("awskms:"):
            return import_kms_key(spec)
        check_key_name(spec)
        pub = self.path / f"{spec}.pub"
        if not pub.is_file():
            raise KeyError_(
                f"no public key {pub} (generate it with 'overdrive keys generate {spec}')"
            )
        return public_key_from_pem(pub.read_bytes(), str(pub))

    def name_of(self, keyid: str) -> str | None:
        entry = self.public_keys().get(keyid)
        return entry[0] if entry else None

    def signer(self, key: Key) -> Signer | None:
        """A signer for ``key`` if this engineer holds it (key file or KMS URI), else None."""
        if key.keyid in self._signers:
            return self._signers[key.keyid]
        uri = key.unrecognized_fields.get(URI_FIELD)
        signer: Signer | None = None
        if isinstance(uri, str):
            signer = load_uri_signer(uri, key)
        else:
            name = self.name_of(key.keyid) if self.path.is_dir() else None
            if name is not None:
                signer = self._load_file_signer(name, key)
        if signer is not None:
            self._signers[key.keyid] = signer
        return signer

    def _load_file_signer(self, name: str, key: Key) -> Signer | None:
        priv = self.path / name
        if not priv.is_file():
            return None  # a colleague's public key: known by name, not held
        check_private_permissions(
            priv, "private key", allow_insecure=self.allow_insecure_permissions
        )
        try:
            pem = priv.read_bytes()
        except OSError as e:
            raise KeyError_(f"cannot read private key {priv}: {e.strerror or e}") from e
        try:
            private = serialization.load_pem_private_key(pem, None)
        except TypeError:  # encrypted: needs the passphrase
            private = self._decrypt(priv, name, pem)
        except ValueError as e:
            raise KeyError_(f"{priv} is not a PKCS#8 PEM private key") from e
        assert isinstance(key, SSlibKey)
        try:
            return CryptoSigner(private, key)
        except Exception as e:  # KeyMismatchError, ValueError
            raise KeyError_(f"private key {priv} does not match {name}.pub") from e

    def _decrypt(self, priv: Path, name: str, pem: bytes) -> PrivateKeyTypes:
        """Decrypt an encrypted key file with its passphrase; a wrong one names its source."""
        if isinstance(self.passphrase, PassphraseSources):
            found = self.passphrase.lookup(name)
            secret, origin = found.value, f" (from {found.origin})"
        else:
            secret, origin = self.passphrase(name), ""
        if not secret:  # never hand cryptography an empty password: it raises TypeError
            raise KeyError_(f"empty passphrase for key {name!r}{origin}")
        try:
            return serialization.load_pem_private_key(pem, secret)
        except (ValueError, TypeError) as e:
            raise KeyError_(f"wrong passphrase for key {name!r}{origin}") from e


def import_kms_key(uri: str) -> SSlibKey:
    """Fetch the public half of an AWS KMS key and remember its URI for later signing."""
    try:
        from securesystemslib.signer import AWSSigner

        key_uri, key = AWSSigner.import_(uri.split(":", 1)[1])
    except Exception as e:
        raise KeyError_(f"cannot import KMS key {uri}: {e}") from e
    key.unrecognized_fields[URI_FIELD] = key_uri
    assert isinstance(key, SSlibKey)
    return key


def load_uri_signer(uri: str, key: Key) -> Signer:
    try:
        return Signer.from_priv_key_uri(uri, key)
    except Exception as e:
        raise KeyError_(f"cannot load signer {uri}: {e}") from e
