"""The director: signs each assignment with its online key.

Vehicles trust the director's public keys only through the image repository (the TUF target
``director/keys.json``, signed by the offline targets keys), so a stolen director key can be
rotated out by the release engineers, and the director alone can only choose among genuinely
signed images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner, SSlibKey

from overdrive.envelope import sign_envelope
from overdrive.errors import OverdriveError
from overdrive.passphrase import passphrase_variable


class DirectorKeyError(OverdriveError):
    """The director key cannot be loaded."""


class Director:
    def __init__(self, signer: CryptoSigner) -> None:
        self.signer = signer

    @property
    def public_key(self) -> SSlibKey:
        return self.signer.public_key

    @classmethod
    def from_file(cls, path: Path, passphrase_env: str | None = None) -> Director:
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise DirectorKeyError(f"cannot read director key {path}: {e.strerror}") from e
        # --director-passphrase-env VAR, else the key's own OVERDRIVE_PASSPHRASE_<NAME>.
        variable = passphrase_env or passphrase_variable(path.name)
        secret = os.environ.get(variable)
        if secret == "":
            raise DirectorKeyError(
                f"${variable} is empty: director key {path} needs its passphrase"
            )
        passphrase = secret.encode() if secret else None
        try:
            private = serialization.load_pem_private_key(pem, passphrase)
        except TypeError as e:
            raise DirectorKeyError(
                f"director key {path} is encrypted: set ${passphrase_variable(path.name)} "
                "(or --director-passphrase-env VAR) to its passphrase"
            ) from e
        except ValueError as e:
            raise DirectorKeyError(f"director key {path}: wrong passphrase or not a PEM key") from e
        try:
            return cls(CryptoSigner(private))
        except Exception as e:
            raise DirectorKeyError(f"director key {path} is not ed25519 or ecdsa-p256") from e

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        return sign_envelope(payload, self.signer)
