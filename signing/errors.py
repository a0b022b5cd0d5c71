"""Errors of the signing toolchain; each message is one line a release engineer can act on."""

from __future__ import annotations

from overdrive.errors import OverdriveError


class SigningError(OverdriveError):
    """Base class of the signing toolchain's errors."""


class KeyError_(SigningError):
    """A key is missing, unreadable, locked with another passphrase, or not one of a role's keys."""


class RepositoryError(SigningError):
    """The image repository in storage is missing, corrupted, expired or inconsistent."""


class ThresholdError(SigningError):
    """A role's metadata does not carry enough valid signatures to be published."""


class ReleaseError(SigningError):
    """A build cannot be registered (bad hardware id, duplicate version, missing image, …)."""
