"""securesystemslib's AWSSigner (online TUF roles in AWS KMS) against moto's KMS.

Finding (moto 5.2.5): ``GetPublicKey`` is right for ECC_NIST_P256 and RSA_3072/RSA_4096, so
``AWSSigner.import_`` works. ``Sign`` ignores ``MessageType=DIGEST``, which AWSSigner always
sends: moto hashes the digest again and signs H(H(data)), so the signature never verifies over
the data (it does over H(data)). Real KMS signs the digest as given. The round-trip tests therefore
run with a small shim that makes moto's ``Sign`` honour ``DIGEST`` the way KMS documents it
(prehashed; PSS salt = digest length); ``test_moto_sign_honours_digest`` tracks the moto bug and
will start passing (XPASS) once moto implements it (getmoto/moto PR #10202), when the shim can go.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import AWSSigner, Signer, SSlibKey

# (KMS key spec, securesystemslib scheme or None for AWSSigner's default, expected scheme)
CASES = [
    ("ECC_NIST_P256", None, "ecdsa-sha2-nistp256"),
    ("RSA_3072", None, "rsassa-pss-sha256"),
    ("RSA_4096", None, "rsassa-pss-sha256"),
    ("RSA_3072", "rsa-pkcs1v15-sha256", "rsa-pkcs1v15-sha256"),
    ("RSA_4096", "rsassa-pss-sha512", "rsassa-pss-sha512"),
]
CASE_IDS = [f"{spec}-{scheme or 'default'}" for spec, scheme, _ in CASES]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


@pytest.fixture
def kms(aws_env: None) -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("kms")


def create_key(kms: Any, spec: str) -> str:
    key_id: str = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]["KeyId"]
    return key_id


def sign_digest(private_key: Any, digest: bytes, algorithm: str) -> bytes:
    """What KMS does for MessageType=DIGEST: sign the given digest without hashing it again."""
    hash_algorithm = _HASHES[algorithm[-3:]]()
    if len(digest) != hash_algorithm.digest_size:
        raise ValueError(f"Digest is invalid length for algorithm {algorithm}")
    prehashed = Prehashed(hash_algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(digest, ec.ECDSA(prehashed))
    assert isinstance(private_key, rsa.RSAPrivateKey)
    if algorithm.startswith("RSASSA_PSS_"):
        pad: padding.AsymmetricPadding = padding.PSS(
            mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH
        )
    else:
        pad = padding.PKCS1v15()
    return private_key.sign(digest, pad, prehashed)


@pytest.fixture
def kms_digest_shim(kms: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make moto's KMS Sign honour MessageType=DIGEST (moto 5.2.5 signs it as RAW)."""
    from moto.kms.responses import KmsResponse

    original = KmsResponse.sign

    def sign(self: Any) -> str:
        if self._get_param("MessageType") != "DIGEST":
            return original(self)
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        message = self._get_param("Message")
        digest = base64.b64decode(message) if isinstance(message, str) else bytes(message)
        algorithm = self._get_param("SigningAlgorithm")
        signature = sign_digest(key.private_key.private_key, digest, algorithm)
        return json.dumps(
            {
                "KeyId": key.arn,
                "Signature": base64.b64encode(signature).decode(),
                "SigningAlgorithm": algorithm,
            }
        )

    monkeypatch.setattr(KmsResponse, "sign", sign)
    return kms


@pytest.mark.parametrize(("spec", "scheme", "expected"), CASES, ids=CASE_IDS)
def test_import_reads_the_public_key(
    kms: Any, spec: str, scheme: str | None, expected: str
) -> None:
    """GetPublicKey works in moto: import_ yields the KMS key's public key and scheme."""
    key_id = create_key(kms, spec)
    uri, public_key = AWSSigner.import_(key_id, scheme) if scheme else AWSSigner.import_(key_id)
    assert uri == f"awskms:{key_id}"
    assert public_key.scheme == expected
    assert public_key.keytype == ("ecdsa" if spec.startswith("ECC") else "rsa")
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key.keyval["public"] == pem.decode()


@pytest.mark.parametrize(("spec", "scheme", "expected"), CASES, ids=CASE_IDS)
def test_sign_and_verify(
    kms_digest_shim: Any, spec: str, scheme: str | None, expected: str
) -> None:
    """import_ → from_priv_key_uri → sign → verify_signature, as Overdrive's signing uses it."""
    key_id = create_key(kms_digest_shim, spec)
    uri, public_key = AWSSigner.import_(key_id, scheme) if scheme else AWSSigner.import_(key_id)
    # The public key round-trips through metadata (JSON) before anyone verifies with it.
    public_key = SSlibKey.from_dict(public_key.keyid, json.loads(json.dumps(public_key.to_dict())))
    signer = Signer.from_priv_key_uri(uri, public_key)
    assert isinstance(signer, AWSSigner)

    signature = signer.sign(b"data")
    public_key.verify_signature(signature, b"data")
    with pytest.raises(UnverifiedSignatureError):
        public_key.verify_signature(signature, b"other data")


@pytest.mark.xfail(
    reason="moto 5.2.5 KMS Sign ignores MessageType=DIGEST (signs H(digest)); see module docstring",
    strict=False,
)
def test_moto_sign_honours_digest(kms: Any) -> None:
    """Without the shim: passes only once moto implements DIGEST (then drop the shim)."""
    key_id = create_key(kms, "ECC_NIST_P256")
    uri, public_key = AWSSigner.import_(key_id)
    signature = Signer.from_priv_key_uri(uri, public_key).sign(b"data")
    public_key.verify_signature(signature, b"data")


def test_moto_signs_the_digest_as_raw(kms: Any) -> None:
    """Pins down the moto behaviour the shim works around: the signature covers H(data)."""
    key_id = create_key(kms, "ECC_NIST_P256")
    uri, public_key = AWSSigner.import_(key_id)
    signature = Signer.from_priv_key_uri(uri, public_key).sign(b"data")
    try:
        public_key.verify_signature(signature, b"data")
    except UnverifiedSignatureError:
        public_key.verify_signature(signature, hashlib.sha256(b"data").digest())
