"""The vehicle's ed25519 key: generated at provisioning, never leaves the car."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner

from overdrive.client.errors import ConfigError
from overdrive.storage.local import atomic_write


def create_key(path: Path) -> CryptoSigner:
    if path.exists():
        raise ConfigError(f"{path} already exists: this vehicle is already provisioned")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def write(f: object) -> None:
        import os

        os.fchmod(f.fileno(), 0o600)  # type: ignore[attr-defined]
        f.write(pem)  # type: ignore[attr-defined]

    atomic_write(path, write)
    return CryptoSigner(private)


def load_key(path: Path) -> CryptoSigner:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError as e:
        raise ConfigError(f"vehicle key {path} is missing: provision the vehicle first") from e
    except ValueError as e:
        raise ConfigError(f"vehicle key {path} is unreadable") from e
    return CryptoSigner(private)
