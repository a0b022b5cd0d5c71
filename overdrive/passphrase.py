"""Where a key's passphrase comes from when nobody is at the keyboard (cron, CI, a service).

Every Overdrive key with a name (``root``, ``targets``, ``ts-2026``, ``director-timestamp``) can take its
passphrase from the environment variable ``OVERDRIVE_PASSPHRASE_<NAME>``: the name upper-cased,
every character other than a letter or digit as ``_``. The release engineers' commands and the
rollout server's director keys use the same convention.
"""

from __future__ import annotations

import re

PASSPHRASE_VAR_PREFIX = "OVERDRIVE_PASSPHRASE_"
"""Prefix of the per-key passphrase variables: ``OVERDRIVE_PASSPHRASE_<NAME>``."""


def passphrase_variable(key_name: str) -> str:
    """The environment variable holding ``key_name``'s passphrase: ``OVERDRIVE_PASSPHRASE_`` +
    the name upper-cased, non-alphanumerics as ``_`` (``ts-2026`` → ``…_TS_2026``)."""
    return PASSPHRASE_VAR_PREFIX + re.sub(r"[^A-Z0-9]", "_", key_name.upper())
