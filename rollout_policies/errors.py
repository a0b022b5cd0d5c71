"""What can go wrong with a rollout policy, as a small hierarchy under :class:`OverdriveError`.

Every message is one line that names where the problem is (the file or other source, and for a
bad document the field path) and what is wrong, so ``overdrive policy validate`` can print it
as-is and the server can return it as a 400.
"""

from __future__ import annotations

from overdrive.errors import OverdriveError


class PolicyError(OverdriveError):
    """The root of every rollout-policy error."""


class PolicyFileError(PolicyError):
    """A policy file cannot be read or is not well-formed JSON/YAML."""


class InvalidPolicy(PolicyError):
    """A policy document is well-formed but breaks a rule of the policy format.

    ``source`` names the document (a file path, ``preset 'canary'``, ``campaign ID``), ``path``
    the field (``stages[2].share``; empty for the document itself) and ``problem`` what is wrong.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class UnknownPreset(PolicyError):
    """A name is neither a shipped preset nor (for the CLI) an existing policy file."""


class InvalidState(PolicyError):
    """The engine was given a state it cannot judge (negative counts, stage out of range, …)."""
