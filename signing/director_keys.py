"""The director's public keys, published as the TUF target ``director/keys.json``.

Vehicles learn which keys may sign assignments only through the image repository, so changing
them takes the offline targets keys: a compromised rollout server cannot vouch for a key of its own.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tuf.api.metadata import TargetFile

from overdrive.signing.errors import KeyError_, ReleaseError
from overdrive.signing.keys import public_key_from_pem
from overdrive.signing.repository import ImageRepository, Outcome
from overdrive.tuf_layout import DIRECTOR_KEYS_TARGET


def set_director_keys(
    repo: ImageRepository, public_keys: list[Path], *, stage_only: bool = False
) -> tuple[list[str], Outcome]:
    """Replace the published director keys with ``public_keys`` (published, or staged when the
    targets signatures at hand are short); return their key ids and what was done."""
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
    repo.check_targets_change(stage_only=stage_only)
    document = json.dumps({"keys": keys, "threshold": 1}, indent=2, sort_keys=True).encode()
    targets = repo.bump(repo.targets, "targets")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, "keys.json")
        local.write_bytes(document)
        target = TargetFile.from_data(DIRECTOR_KEYS_TARGET, document, ["sha256"])
        targets.signed.targets[DIRECTOR_KEYS_TARGET] = target
        files = [(DIRECTOR_KEYS_TARGET, target, local)]
        outcome = repo.propose(targets=targets, target_files=files, stage_only=stage_only)
    return sorted(keys), outcome
