"""Server configuration, from the environment (``OVERDRIVE_*``) or the ``server run`` options."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from overdrive.errors import UsageError

STATE_DIR_ENV = "OVERDRIVE_STATE_DIR"


def default_state_dir() -> Path:
    """Where a server keeps its state (pinned TUF metadata) unless told otherwise: an absolute
    path, whatever the working directory: ``$XDG_STATE_HOME/overdrive/server`` if that is set
    (and absolute, as the XDG spec requires), else ``~/.local/state/overdrive/server``."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "overdrive" / "server"


def state_dir_from(value: str | os.PathLike[str] | None) -> Path:
    """``value`` (``--state-dir`` or ``$OVERDRIVE_STATE_DIR``) made absolute (``~`` expanded,
    relative to the working directory at start-up), or :func:`default_state_dir` if unset."""
    if value is None or str(value) == "":
        return default_state_dir()
    return Path(value).expanduser().absolute()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise UsageError(f"${name} must be a whole number of seconds, got {value!r}") from e


@dataclass
class ServerConfig:
    """Everything a worker needs; workers share nothing else but the database."""

    db_url: str = "sqlite:///overdrive.db"
    storage_url: str | None = None
    #: The director's root chain (``overdrive director init``) and this server's online keys.
    director_storage: str | None = None
    director_keys: Path | None = None
    director_passphrase_env: str | None = None
    trusted_root: Path | None = None
    #: Pinned TUF state, one subdirectory per repository (see ``ReleaseCache.trust_dir``).
    state_dir: Path = field(default_factory=default_state_dir)
    #: Seconds between polls that a vehicle is told when there is nothing to do.
    poll_interval: int = 900
    #: Seconds between in-process evaluator runs (0: only ``overdrive server tick``).
    tick_interval: int = 30
    #: Seconds between re-reading the image repository.
    repository_refresh: int = 60
    max_body_bytes: int = 1 << 20
    #: Allowed skew between a vehicle's clock and ours for event times (bounds what is stored).
    clock_skew: int = 300
    #: Signs the dashboard's session cookies; every worker of a deployment needs the same one.
    secret_key: str | None = field(default=None, repr=False)
    #: Commit each poll synchronously (PostgreSQL). Off (default): a crash of the database
    #: server can forget its last fraction of a second of polls (see docs/deployment.md).
    durable_polls: bool = False

    @classmethod
    def from_env(cls) -> ServerConfig:
        env = os.environ
        keys = env.get("OVERDRIVE_DIRECTOR_KEYS")
        root = env.get("OVERDRIVE_TRUSTED_ROOT")
        return cls(
            db_url=env.get("OVERDRIVE_DB", cls.db_url),
            storage_url=env.get("OVERDRIVE_STORAGE") or None,
            director_storage=env.get("OVERDRIVE_DIRECTOR_STORAGE") or None,
            director_keys=Path(keys) if keys else None,
            director_passphrase_env=env.get("OVERDRIVE_DIRECTOR_PASSPHRASE_ENV") or None,
            trusted_root=Path(root) if root else None,
            state_dir=state_dir_from(env.get(STATE_DIR_ENV)),
            poll_interval=_env_int("OVERDRIVE_POLL_INTERVAL", cls.poll_interval),
            tick_interval=_env_int("OVERDRIVE_TICK_INTERVAL", cls.tick_interval),
            repository_refresh=_env_int("OVERDRIVE_REPOSITORY_REFRESH", cls.repository_refresh),
            secret_key=env.get("OVERDRIVE_SECRET_KEY") or None,
            durable_polls=env.get("OVERDRIVE_DURABLE_POLLS", "").lower() in ("1", "true", "yes"),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` return this config (for gunicorn workers)."""
        env = {
            "OVERDRIVE_DB": self.db_url,
            STATE_DIR_ENV: str(self.state_dir),
            "OVERDRIVE_POLL_INTERVAL": str(self.poll_interval),
            "OVERDRIVE_TICK_INTERVAL": str(self.tick_interval),
            "OVERDRIVE_REPOSITORY_REFRESH": str(self.repository_refresh),
        }
        if self.storage_url:
            env["OVERDRIVE_STORAGE"] = self.storage_url
        if self.director_storage:
            env["OVERDRIVE_DIRECTOR_STORAGE"] = self.director_storage
        if self.director_keys:
            env["OVERDRIVE_DIRECTOR_KEYS"] = str(self.director_keys)
        if self.director_passphrase_env:
            env["OVERDRIVE_DIRECTOR_PASSPHRASE_ENV"] = self.director_passphrase_env
        if self.trusted_root:
            env["OVERDRIVE_TRUSTED_ROOT"] = str(self.trusted_root)
        if self.secret_key:
            env["OVERDRIVE_SECRET_KEY"] = self.secret_key
        if self.durable_polls:
            env["OVERDRIVE_DURABLE_POLLS"] = "1"
        return env
