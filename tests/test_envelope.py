"""Signed messages: the canonical JSON they sign is exactly securesystemslib's (TUF's) form."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner

from overdrive.envelope import EnvelopeError, canonical, sign_envelope, verify_envelope
from overdrive.uptane import VEHICLE_MANIFEST

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500)
@given(st.dictionaries(st.text(), JSON))
def test_canonical_matches_the_reference_encoder(payload: dict[str, Any]) -> None:
    assert canonical(payload) == encode_canonical(payload).encode()


@pytest.mark.parametrize("payload", [{"a": 1.5}, {"a": [{"b": 2.0}]}, {"a": {1: "x"}}])
def test_what_canonical_json_cannot_encode_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever the reference encoder raises
        canonical(payload)


def test_a_float_in_a_signed_message_is_refused() -> None:
    signer = CryptoSigner.generate_ed25519()
    envelope = sign_envelope({"_type": VEHICLE_MANIFEST, "counter": 1}, signer)
    envelope["signed"]["counter"] = 1.0
    with pytest.raises(EnvelopeError, match="cannot be canonicalised"):
        verify_envelope(envelope, {signer.public_key.keyid: signer.public_key}, VEHICLE_MANIFEST)
