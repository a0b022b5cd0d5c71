"""Errors of the vehicle client; each message is one line that ends up in a reported event."""

from __future__ import annotations

from typing import Any

from overdrive.errors import OverdriveError


class ClientError(OverdriveError):
    """Base class of the vehicle client's errors."""


class ConfigError(ClientError):
    """The vehicle's configuration or state directory is missing or unusable."""


class ServerError(ClientError):
    """The rollout server could not be reached or refused a request."""


class ServerRefused(ServerError):
    """The server answered 4xx: it refused this very request (not: it was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Refused(ClientError):
    """An update was refused by a verification step; the vehicle stays on its slot.

    ``reason`` is a short machine-readable code (``director_mismatch``, ``downgrade`` …) reported
    with the human message.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        #: The assignment's payload once its signature checked out (None before): only then may
        #: a refusal be reported against the campaign it names.
        self.payload: dict[str, Any] | None = None


class RepositoryUnreachable(ClientError):
    """The image repository could not be reached (not: did not verify). Retried later."""
