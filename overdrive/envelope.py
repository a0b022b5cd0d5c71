"""Signed JSON messages: vehicle version manifests and ECU reports, time attestations, event
batches (see :mod:`overdrive.uptane`).

An envelope is ``{"signed": PAYLOAD, "signatures": [{"keyid": …, "sig": …}]}`` — the TUF shape —
where the signature covers the canonical JSON of ``PAYLOAD`` (sorted keys, no whitespace) and
``PAYLOAD["_type"]`` names what it is, so that one kind of message can never be replayed as
another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature, Signer

from overdrive.errors import OverdriveError

EVENTS = "vehicle_events"


class EnvelopeError(OverdriveError):
    """A message is malformed, of the wrong type, or not signed by a trusted key."""


def canonical(payload: Mapping[str, Any], *, vetted: bool = False) -> bytes:
    """The OLPC canonical JSON of ``payload`` (what TUF signs): sorted keys, no whitespace, only
    ``"`` and ``\\`` escaped, no floats.

    The stdlib's C encoder gives the same bytes whenever it escapes nothing and there is no
    float, at a fraction of the cost (this runs for every poll and every assignment); anything
    else goes through securesystemslib's reference encoder. ``vetted``: ``payload`` is part of
    a payload canonicalised already (so it has no float and only string keys): the walk that
    checks that is skipped.
    """
    try:
        fast = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        fast = "\\"  # not plain JSON data: let the reference encoder say what is wrong
    if "\\" not in fast and (vetted or _plain(payload)):
        return fast.encode()
    data = encode_canonical(dict(payload))
    assert isinstance(data, str)
    return data.encode()


def _plain(value: Any) -> bool:
    """No floats and only string keys: where the stdlib's output is canonical JSON."""
    kind = type(value)
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    return kind is not float


def sign_envelope(payload: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """Wrap ``payload`` (which must carry ``_type``) with ``signer``'s signature."""
    if "_type" not in payload:
        raise EnvelopeError("payload has no _type")
    signature = signer.sign(canonical(payload))
    return {"signed": dict(payload), "signatures": [signature.to_dict()]}


def verify_envelope(
    envelope: Any,
    keys: Mapping[str, Key],
    expected_type: str,
    threshold: int = 1,
    *,
    vetted: bool = False,
) -> dict[str, Any]:
    """Return the payload if ``envelope`` is a ``expected_type`` message signed by ``threshold``
    of ``keys`` (key id → key); raise :class:`EnvelopeError` saying what is wrong otherwise.
    ``vetted``: ``envelope`` is inside a message already canonicalised (see :func:`canonical`)."""
    if not isinstance(envelope, dict):
        raise EnvelopeError("message must be a JSON object with 'signed' and 'signatures'")
    payload, signatures = envelope.get("signed"), envelope.get("signatures")
    if not isinstance(payload, dict) or not isinstance(signatures, list):
        raise EnvelopeError("message must have an object 'signed' and a list 'signatures'")
    if payload.get("_type") != expected_type:
        raise EnvelopeError(f"expected a {expected_type} message, got {payload.get('_type')!r}")
    try:
        data = canonical(payload, vetted=vetted)
    except Exception as e:
        raise EnvelopeError(f"payload cannot be canonicalised: {e}") from e
    good: set[str] = set()
    for raw in signatures:
        try:
            signature = Signature.from_dict(dict(raw))
        except Exception:
            continue
        if not isinstance(signature.keyid, str):
            continue  # an object or list as keyid is no key of ours (and not hashable)
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
