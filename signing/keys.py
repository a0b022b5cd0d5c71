"""Signing keys: generation, key files on disk, and loading signers.

A key named ``NAME`` in a key directory is two files: ``NAME`` (the private key, PKCS#8 PEM,
encrypted with a passphrase unless generated with ``--insecure-no-passphrase``) and ``NAME.pub``
(the public key, SubjectPublicKeyInfo PEM). Signers are securesystemslib signers: a
``CryptoSigner`` for key files, or any signer securesystemslib loads from a private key URI (such
as ``awskms:…`` for an online role held in AWS KMS), whose URI is recorded in the root metadata.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from overdrive.storage.local import atomic_write
from signing.errors import KeyError_

KEY_TYPES = ("ed25519", "ecdsa-p256")
#: Field of a key in root metadata that records where its private half lives (KMS keys).
URI_FIELD = "x-overdrive-private-key-uri"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

PassphraseSource = Callable[[str], bytes]


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
    priv_path, pub_path = directory / name, directory / f"{name}.pub"
    for path in (priv_path, pub_path):
        if path.exists():
            raise KeyError_(f"{path} already exists; refusing to overwrite a key")
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

    atomic_write(priv_path, write_private)
    atomic_write(pub_path, lambda f: f.write(pub_pem))
    return public_key_from_pem(pub_pem, str(pub_path))


def public_key_from_pem(pem: bytes, where: str) -> SSlibKey:
    """The TUF key (with its default key id) for a PEM public key."""
    try:
        public = serialization.load_pem_public_key(pem)
        return SSlibKey.from_crypto(public)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{where} is not a supported public key (ed25519 or ecdsa-p256)") from e


def env_passphrase(var: str) -> PassphraseSource:
    """A passphrase source that reads environment variable ``var``."""

    def source(key_name: str) -> bytes:
        value = os.environ.get(var)
        if value is None:
            raise KeyError_(f"key {key_name!r} is encrypted and ${var} is not set")
        return value.encode()

    return source


def prompt_passphrase(key_name: str) -> bytes:
    """Ask on the terminal; refuse when there is none (CI, cron)."""
    if not sys.stdin.isatty():
        raise KeyError_(
            f"key {key_name!r} is encrypted: give its passphrase with --passphrase-env VAR"
        )
    import click

    return str(click.prompt(f"Passphrase for key {key_name!r}", hide_input=True)).encode()


@dataclass
class KeyDirectory:
    """The keys a release engineer holds: a directory of ``NAME``/``NAME.pub`` files."""

    path: Path
    passphrase: PassphraseSource = prompt_passphrase
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
        try:
            pem = priv.read_bytes()
        except FileNotFoundError:
            return None  # a colleague's public key: known by name, not held
        try:
            private = serialization.load_pem_private_key(pem, None)
        except TypeError:  # encrypted: needs the passphrase
            secret = self.passphrase(name)
            try:
                private = serialization.load_pem_private_key(pem, secret)
            except ValueError as e:
                raise KeyError_(f"wrong passphrase for key {name!r}") from e
        except ValueError as e:
            raise KeyError_(f"{priv} is not a PKCS#8 PEM private key") from e
        assert isinstance(key, SSlibKey)
        try:
            return CryptoSigner(private, key)
        except Exception as e:  # KeyMismatchError, ValueError
            raise KeyError_(f"private key {priv} does not match {name}.pub") from e


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
