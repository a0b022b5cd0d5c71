"""Errors of the signing toolchain; each message is one line a release engineer can act on."""

from __future__ import annotations

from overdrive.errors import OverdriveError
from overdrive.keys import KeyError_

__all__ = ["KeyError_", "ReleaseError", "RepositoryError", "SigningError", "ThresholdError"]


class SigningError(OverdriveError):
    """Base class of the signing toolchain's errors."""


class RepositoryError(SigningError):
    """The image repository in storage is missing, corrupted, expired or inconsistent."""


class ThresholdError(SigningError):
    """A role's metadata does not carry enough valid signatures to be published."""


class ReleaseError(SigningError):
    """A build cannot be registered (bad hardware id, duplicate version, missing image, …)."""
