"""The primary's side of the secondary protocol: one TCP connection per request to an
``overdrive vehicle secondary serve`` process, and the metadata files it sends it.

Wire format (both ends are here and in :mod:`overdrive.client.secondary.server`): each message
is one JSON object on one line (UTF-8, at most :data:`MAX_LINE` bytes with its newline); every
request ``{"op": …}`` gets one answer line, ``{"ok": true, …}`` or ``{"ok": false, "reason":
"<snake_case>", "error": "<one line>"}``. ``stage`` is the one request with a body: the
secondary first answers ``{"ok": true, "send": LENGTH}`` (the length of the target *it*
verified; or ``{"ok": true, "staged": true}`` when it already holds the bundle), then exactly
``LENGTH`` raw bytes follow, then its final answer. Waiting for that go-ahead means a refusal
never races the body: the primary sends no byte a secondary has not asked for.

The primary never has to trust its own verification on the secondary's behalf: it forwards the
metadata files as they are (:class:`RepoFiles`) and the secondary verifies them itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from overdrive.client.errors import ClientError
from overdrive.text import one_line

#: The longest message line either side accepts (with its newline); longer is a protocol error.
MAX_LINE = 4 << 20
#: Delegated targets roles one repository may bring (a bound, far above any real layout).
MAX_DELEGATED = 64
_CHUNK = 1 << 16
_TOP_LEVEL = ("root", "timestamp", "snapshot", "targets")
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class SecondaryError(ClientError):
    """The secondary answered something that is not the protocol (or the request was bad)."""


class SecondaryUnreachable(SecondaryError):
    """The secondary could not be reached, did not answer in time, or dropped the connection."""


class SecondaryRefused(SecondaryError):
    """The secondary said no; ``reason`` is its snake_case code, ``str(e)`` its message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RepoFiles:
    """One repository's metadata as the primary holds it, for a secondary to verify itself.

    ``roots`` are the ``N.root.json`` files after the secondary's trusted root version, in
    order (empty when it trusts the current root already); ``delegated`` maps delegated targets
    role names to their files.
    """

    roots: list[bytes]
    timestamp: bytes
    snapshot: bytes
    targets: bytes
    delegated: dict[str, bytes] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "roots": [_b64(r) for r in self.roots],
            "timestamp": _b64(self.timestamp),
            "snapshot": _b64(self.snapshot),
            "targets": _b64(self.targets),
            "delegated": {name: _b64(data) for name, data in self.delegated.items()},
        }

    @classmethod
    def from_wire(cls, raw: Any, where: str) -> RepoFiles:
        """Parse :meth:`to_wire`'s shape; :class:`SecondaryError` naming what is wrong."""
        if not isinstance(raw, dict):
            raise SecondaryError(f"{where} must be an object")
        roots = raw.get("roots", [])
        delegated = raw.get("delegated", {})
        if not isinstance(roots, list) or not isinstance(delegated, dict):
            raise SecondaryError(f"{where}: roots must be a list, delegated an object")
        if len(delegated) > MAX_DELEGATED:
            raise SecondaryError(f"{where}: more than {MAX_DELEGATED} delegated roles")
        for name in delegated:
            if not isinstance(name, str) or not name or len(name) > 128 or name in _TOP_LEVEL:
                raise SecondaryError(f"{where}: invalid delegated role name")
        return cls(
            [_unb64(r, f"{where}.roots") for r in roots],
            _unb64(raw.get("timestamp"), f"{where}.timestamp"),
            _unb64(raw.get("snapshot"), f"{where}.snapshot"),
            _unb64(raw.get("targets"), f"{where}.targets"),
            {name: _unb64(data, f"{where}.delegated") for name, data in delegated.items()},
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise SecondaryError(f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SecondaryError(f"{where} is not valid base64") from e


def repo_files(metadata_dir: Path, roots: list[bytes]) -> RepoFiles:
    """The metadata of a TUF client directory as the primary keeps it (``STATE_DIR/director``
    or ``STATE_DIR/tuf``: ``timestamp.json snapshot.json targets.json <delegated>.json``), with
    ``roots`` (the root files the secondary lacks)."""

    def read(name: str) -> bytes:
        try:
            return (metadata_dir / name).read_bytes()
        except OSError as e:
            raise SecondaryError(f"cannot read {metadata_dir / name}: {e.strerror or e}") from e

    delegated: dict[str, bytes] = {}
    for path in sorted(metadata_dir.glob("*.json")):
        stem = path.name[: -len(".json")]
        if stem in _TOP_LEVEL or path.name.startswith(".") or stem.split(".")[0].isdigit():
            continue  # top-level roles, temporary files, versioned copies
        delegated[unquote(stem)] = read(path.name)
    return RepoFiles(
        list(roots), read("timestamp.json"), read("snapshot.json"), read("targets.json"), delegated
    )


# ------------------------------------------------------------------------------ framing


def encode_line(message: dict[str, Any]) -> bytes:
    """``message`` as one protocol line."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    if len(data) > MAX_LINE:
        raise SecondaryError(f"message of {len(data)} bytes is longer than {MAX_LINE} bytes")
    return data


def decode_line(line: bytes, what: str) -> dict[str, Any]:
    """One protocol line as a JSON object; :class:`SecondaryError` if it is none."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise SecondaryError(f"{what} is not a JSON line: {one_line(e, 120)}") from e
    if not isinstance(message, dict):
        raise SecondaryError(f"{what} is not a JSON object")
    return message


def take_line(buffer: bytearray) -> bytes | None:
    """The first whole line in ``buffer`` (removed from it), None if it holds none yet."""
    end = buffer.find(b"\n")
    if end < 0:
        return None
    line = bytes(buffer[: end + 1])
    del buffer[: end + 1]
    return line


class _Reader:
    """Lines from a socket, each at most :data:`MAX_LINE` bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def line(self) -> bytes:
        while True:
            line = take_line(self.buffer)
            if line is not None:
                return line
            if len(self.buffer) >= MAX_LINE:
                raise SecondaryError(f"answer longer than {MAX_LINE} bytes")
            block = self.sock.recv(_CHUNK)
            if not block:
                raise SecondaryUnreachable("the secondary closed the connection without answering")
            self.buffer += block


# ------------------------------------------------------------------------------ the client


class SecondaryLink:
    """Requests to one secondary at ``address`` (``host:port``); ``timeout_s`` bounds the
    connect and every read and write (a trial's health check must answer within it)."""

    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SecondaryError(f"secondary address {address!r} is not host:port")
        self.address = address
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout_s = timeout_s

    # -- the operations (see docs/vehicles.md, "Secondary ECUs")

    def info(self) -> dict[str, Any]:
        return self._request({"op": "info"})

    def report(self, nonce: str) -> dict[str, Any]:
        """The secondary's signed ECU version report echoing ``nonce`` (the envelope)."""
        answer = self._request({"op": "report", "nonce": nonce})
        report = answer.get("report")
        if not isinstance(report, dict):
            raise SecondaryError("the secondary's report answer holds no report")
        return report

    def verify(
        self,
        set_id: str,
        *,
        time: dict[str, Any],
        director: RepoFiles,
        image_repo: RepoFiles | None,
    ) -> dict[str, Any]:
        answer = self._request(
            {
                "op": "verify",
                "set_id": set_id,
                "time": time,
                "director": director.to_wire(),
                "image_repo": image_repo.to_wire() if image_repo is not None else None,
            }
        )
        if answer.get("status") not in ("update", "none"):
            raise SecondaryError("the secondary's verify answer has no status")
        return answer

    def stage(self, set_id: str, bundle: Path) -> None:
        """Stream ``bundle`` to the secondary, once it says how many bytes it expects."""
        try:
            length = bundle.stat().st_size
            source = bundle.open("rb")
        except OSError as e:
            raise SecondaryError(f"cannot read bundle {bundle}: {e.strerror or e}") from e
        with source, self._connect() as sock:
            reader = _Reader(sock)
            go = self._exchange(sock, reader, {"op": "stage", "set_id": set_id, "length": length})
            if go.get("staged") is True:
                return
            if go.get("send") != length:
                raise SecondaryError(f"the secondary asked for {go.get('send')!r} bytes")
            try:
                while block := source.read(_CHUNK):
                    sock.sendall(block)
            except OSError as e:
                # it may have refused mid-stream (too slow, say): its answer is the story
                try:
                    self._answer(reader)
                except SecondaryRefused:
                    raise
                except SecondaryError:
                    pass
                raise SecondaryUnreachable(f"sending the bundle failed: {one_line(e, 200)}") from e
            self._answer(reader)

    def install(self, set_id: str) -> None:
        self._request({"op": "install", "set_id": set_id})

    def trial(self, set_id: str) -> dict[str, Any]:
        answer = self._request({"op": "trial", "set_id": set_id})
        return {"healthy": bool(answer.get("healthy")), "message": str(answer.get("message", ""))}

    def commit(self, set_id: str) -> None:
        self._request({"op": "commit", "set_id": set_id})

    def rollback(self, set_id: str) -> None:
        self._request({"op": "rollback", "set_id": set_id})

    def status(self) -> dict[str, Any]:
        return self._request({"op": "status"})

    # -- transport

    def _connect(self) -> socket.socket:
        try:
            return socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as e:
            raise SecondaryUnreachable(
                f"cannot reach the secondary at {self.address}: {one_line(e, 200)}"
            ) from e

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request on its own connection; the answer without its ``ok``."""
        with self._connect() as sock:
            answer = self._exchange(sock, _Reader(sock), message)
        answer.pop("ok", None)
        return answer

    def _exchange(
        self, sock: socket.socket, reader: _Reader, message: dict[str, Any]
    ) -> dict[str, Any]:
        data = encode_line(message)
        try:
            sock.sendall(data)
        except OSError as e:
            raise SecondaryUnreachable(f"sending to {self.address} failed: {one_line(e)}") from e
        return self._answer(reader)

    def _answer(self, reader: _Reader) -> dict[str, Any]:
        started = time.monotonic()
        try:
            line = reader.line()
        except TimeoutError as e:
            raise SecondaryUnreachable(
                f"the secondary at {self.address} did not answer within "
                f"{time.monotonic() - started:.0f} s"
            ) from e
        except OSError as e:
            raise SecondaryUnreachable(
                f"the connection to {self.address} failed: {one_line(e, 200)}"
            ) from e
        answer = decode_line(line, "the secondary's answer")
        ok = answer.get("ok")
        if ok is True:
            return answer
        if ok is False:
            reason = answer.get("reason")
            reason = reason if isinstance(reason, str) and _REASON.fullmatch(reason) else "refused"
            raise SecondaryRefused(reason, one_line(answer.get("error", "refused")))
        raise SecondaryError("the secondary's answer has no ok field")
