"""The director's public keys, published as the TUF target ``director/keys.json``.

Vehicles learn which keys may sign assignments only through the image repository, so changing
them takes the offline targets keys: a compromised rollout server cannot vouch for a key of its own.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tuf.api.metadata import TargetFile

from overdrive.tuf_layout import DIRECTOR_KEYS_TARGET
from signing.errors import KeyError_, ReleaseError
from signing.keys import public_key_from_pem
from signing.repository import ImageRepository


def set_director_keys(
    repo: ImageRepository, public_keys: list[Path], *, stage_only: bool = False
) -> list[str]:
    """Replace the published director keys with ``public_keys``; return their key ids."""
    keys = {}
    for path in public_keys:
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise KeyError_(f"cannot read {path}: {e.strerror}") from e
        key = public_key_from_pem(pem, str(path))
        keys[key.keyid] = key.to_dict()
    if repo.load_staged():
        raise ReleaseError("staged changes are waiting: publish or discard them first")
    if not stage_only:
        for role in ("targets", "snapshot", "timestamp"):
            repo.require_signers(role)
    document = json.dumps({"keys": keys, "threshold": 1}, indent=2, sort_keys=True).encode()
    targets = repo.bump(repo.targets, "targets")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, "keys.json")
        local.write_bytes(document)
        target = TargetFile.from_data(DIRECTOR_KEYS_TARGET, document, ["sha256"])
        targets.signed.targets[DIRECTOR_KEYS_TARGET] = target
        repo.sign(targets, "targets", repo.root.signed)
        files = [(DIRECTOR_KEYS_TARGET, target, local)]
        if stage_only:
            repo.stage_targets(targets, files)
        else:
            repo.publish(targets=targets, target_files=files)
    return sorted(keys)
