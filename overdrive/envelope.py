"""Signed JSON messages between vehicles and the director: manifests, assignments, event batches.

An envelope is ``{"signed": PAYLOAD, "signatures": [{"keyid": …, "sig": …}]}`` — the TUF shape —
where the signature covers the canonical JSON of ``PAYLOAD`` (sorted keys, no whitespace) and
``PAYLOAD["_type"]`` names what it is, so that one kind of message can never be replayed as
another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature, Signer

from overdrive.errors import OverdriveError

MANIFEST = "vehicle_manifest"
ASSIGNMENT = "assignment"
EVENTS = "vehicle_events"


class EnvelopeError(OverdriveError):
    """A message is malformed, of the wrong type, or not signed by a trusted key."""


def canonical(payload: Mapping[str, Any]) -> bytes:
    data = encode_canonical(dict(payload))
    assert isinstance(data, str)
    return data.encode()


def sign_envelope(payload: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """Wrap ``payload`` (which must carry ``_type``) with ``signer``'s signature."""
    if "_type" not in payload:
        raise EnvelopeError("payload has no _type")
    signature = signer.sign(canonical(payload))
    return {"signed": dict(payload), "signatures": [signature.to_dict()]}


def verify_envelope(
    envelope: Any, keys: Mapping[str, Key], expected_type: str, threshold: int = 1
) -> dict[str, Any]:
    """Return the payload if ``envelope`` is a ``expected_type`` message signed by ``threshold``
    of ``keys`` (key id → key); raise :class:`EnvelopeError` saying what is wrong otherwise."""
    if not isinstance(envelope, dict):
        raise EnvelopeError("message must be a JSON object with 'signed' and 'signatures'")
    payload, signatures = envelope.get("signed"), envelope.get("signatures")
    if not isinstance(payload, dict) or not isinstance(signatures, list):
        raise EnvelopeError("message must have an object 'signed' and a list 'signatures'")
    if payload.get("_type") != expected_type:
        raise EnvelopeError(f"expected a {expected_type} message, got {payload.get('_type')!r}")
    try:
        data = canonical(payload)
    except Exception as e:
        raise EnvelopeError(f"payload cannot be canonicalised: {e}") from e
    good: set[str] = set()
    for raw in signatures:
        try:
            signature = Signature.from_dict(dict(raw))
        except Exception:
            continue
        key = keys.get(signature.keyid)
        if key is None or signature.keyid in good:
            continue
        try:
            key.verify_signature(signature, data)
        except Exception:
            continue
        good.add(signature.keyid)
    if len(good) < threshold:
        raise EnvelopeError(f"{expected_type} is not signed by a trusted key")
    return payload
