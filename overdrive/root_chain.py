"""A TUF repository's root chain in storage: every ``metadata/N.root.json``, each signed by the
threshold of the previous root and of its own.

Read by the signing tools (the image repository, and the director's root, which is managed with
the same tools) and by the rollout server's director, which signs per-vehicle metadata under the
newest root and serves the whole chain to vehicles.
"""

from __future__ import annotations

import re

from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError

from overdrive.errors import OverdriveError
from overdrive.storage import NotFound, Storage
from overdrive.tuf_layout import METADATA_PREFIX, metadata_key

_ROOT_FILE = re.compile(r"^metadata/(\d+)\.root\.json$")


class RootChainError(OverdriveError):
    """The root history has gaps, or a version is unreadable, mislabelled or not signed by the
    thresholds it needs."""


def root_versions(storage: Storage) -> list[int]:
    """The versions of ``N.root.json`` in ``storage``, in order."""
    versions = []
    for key in storage.list(METADATA_PREFIX):
        match = _ROOT_FILE.fullmatch(key)
        if match:
            versions.append(int(match.group(1)))
    return sorted(versions)


def read_root_chain(storage: Storage) -> list[tuple[bytes, Metadata[Root]]]:
    """Every root version in ``storage`` as published (bytes) and parsed, verified in order;
    empty when there is none. :class:`RootChainError` names the first version that is wrong."""
    versions = root_versions(storage)
    if versions and versions != list(range(1, versions[-1] + 1)):
        raise RootChainError(f"root history in {storage.url} has gaps: versions {versions}")
    chain: list[tuple[bytes, Metadata[Root]]] = []
    trusted: Root | None = None
    for version in versions:
        key = metadata_key("root", version)
        try:
            data = storage.get_bytes(key)
            md: Metadata[Root] = Metadata.from_bytes(data)
        except NotFound as e:
            raise RootChainError(f"{key} vanished from {storage.url}") from e
        except DeserializationError as e:
            raise RootChainError(f"{key} is corrupted: {e}") from e
        if not isinstance(md.signed, Root):
            raise RootChainError(f"{key} is corrupted: it holds {md.signed.type} metadata")
        if md.signed.version != version:
            raise RootChainError(f"{key} claims version {md.signed.version}")
        result = md.signed.get_root_verification_result(trusted, md.signed_bytes, md.signatures)
        if not result.verified:
            raise RootChainError(f"{key} is not signed by a threshold of root keys")
        trusted = md.signed
        chain.append((data, md))
    return chain
