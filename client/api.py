"""Talking to the rollout server: register, poll with a signed manifest, report signed events.

The server is trusted for nothing but scheduling, and its answers are treated as untrusted
input: every request has an overall deadline (a server that trickles its headers cannot hold the
vehicle), answers are bounded in size and checked for shape before anything uses them, and any
text taken from them is sanitised (:func:`overdrive.text.one_line`) before it can reach the
vehicle's state or event queue. Every failure is a :class:`~overdrive.client.errors.ServerError` with one
line saying what happened; :class:`ServerRefused` when the server answered 4xx, i.e. refused this
very request (the event queue uses that to set one bad event aside instead of retrying forever).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import urllib3
from securesystemslib.signer import Signer

from overdrive.client.errors import ServerError, ServerRefused
from overdrive.envelope import EVENTS, sign_envelope
from overdrive.http import Deadline, DeadlineExceeded, pool_manager
from overdrive.text import clean_json, one_line

#: Largest answer body read from the server: a poll answer with a few signed assignments is a few
#: KiB; anything near this is not an answer we can use.
MAX_ANSWER_BYTES = 1 << 20
#: The longest wait between polls a server may ask for (a day); more is a malformed answer.
MAX_NEXT_POLL_S = 86_400


@dataclass(frozen=True)
class PollAnswer:
    """A well-formed poll answer: the version of the vehicle's director chain (None: it has
    none), the time attestation (still unverified) and when to poll next."""

    director_version: int | None
    time: dict[str, Any] | None
    next_poll: int | None


def parse_poll_answer(answer: Any) -> PollAnswer:
    """Check a poll answer's shape; :class:`ServerError` for anything malformed.

    ``next_poll_seconds`` must be an integer in ``[1, MAX_NEXT_POLL_S]`` when present,
    ``director.version`` a positive integer, ``time`` an object. The signatures are checked
    later, by the caller; the director chain is fetched and verified through TUF.
    """
    if not isinstance(answer, dict):
        raise ServerError(f"malformed poll answer: expected a JSON object, got {_kind(answer)}")
    raw_next = answer.get("next_poll_seconds")
    if raw_next is not None and (
        isinstance(raw_next, bool)
        or not isinstance(raw_next, int)
        or not 1 <= raw_next <= MAX_NEXT_POLL_S
    ):
        raise ServerError(
            f"malformed poll answer: next_poll_seconds must be an integer in "
            f"[1, {MAX_NEXT_POLL_S}], got {one_line(json.dumps(raw_next), 40)}"
        )
    director = answer.get("director")
    version = director.get("version") if isinstance(director, dict) else None
    if director is not None and (
        isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 1 << 31
    ):
        raise ServerError("malformed poll answer: director.version must be a positive integer")
    time = answer.get("time")
    if time is not None and not isinstance(time, dict):
        raise ServerError("malformed poll answer: time must be an object")
    return PollAnswer(version, time, raw_next)


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


class ServerApi:
    def __init__(
        self,
        base_url: str,
        vehicle_id: str,
        signer: Signer | None,
        *,
        deadline_s: float = 60.0,
        socket_timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.vehicle_id = vehicle_id
        self.signer = signer
        self.deadline_s = deadline_s
        self._pool = pool_manager(
            timeout=urllib3.Timeout(connect=socket_timeout_s, read=socket_timeout_s),
            retries=False,
        )

    def _post(self, path: str, body: Any) -> Any:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "overdrive-vehicle"}
        url = f"{self.base_url}/api/v1{path}"
        try:
            with Deadline(self.deadline_s).running(f"server {self.base_url}"):
                response = self._pool.request(
                    "POST", url, body=data, headers=headers, preload_content=False
                )
                try:
                    raw = response.read(MAX_ANSWER_BYTES + 1)
                finally:
                    response.release_conn()
        except DeadlineExceeded as e:
            raise ServerError(f"cannot reach server: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ServerError(f"cannot reach server {self.base_url}: {one_line(e, 200)}") from e
        if len(raw) > MAX_ANSWER_BYTES:
            raise ServerError(f"server's answer to {path} is larger than {MAX_ANSWER_BYTES} bytes")
        status = response.status
        if status >= 400:
            message = _error_message(raw) or one_line(response.reason or "", 100)
            error = f"server answered {status} to {path}: {message}"
            if 400 <= status < 500:
                raise ServerRefused(status, error)
            raise ServerError(error)
        if status not in (200, 201):
            raise ServerError(f"server answered {status} to {path}")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ServerError(f"server's answer to {path} is not JSON") from e

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        result = self._post("/vehicles/register", body)
        if not isinstance(result, dict):
            raise ServerError("malformed registration answer: expected a JSON object")
        return result

    def poll(self, manifest: dict[str, Any]) -> PollAnswer:
        assert self.signer is not None
        # clean_json: a string we send is never one the server must refuse (NUL, surrogates)
        envelope = sign_envelope(clean_json(manifest), self.signer)
        return parse_poll_answer(self._post(f"/vehicles/{self.vehicle_id}/poll", envelope))

    def send_events(self, events: list[dict[str, Any]]) -> None:
        assert self.signer is not None
        payload = {"_type": EVENTS, "vehicle_id": self.vehicle_id, "events": clean_json(events)}
        self._post(f"/vehicles/{self.vehicle_id}/events", sign_envelope(payload, self.signer))


def _error_message(raw: bytes) -> str:
    """The message of the server's JSON error body, sanitised; "" if there is none."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return ""
    return one_line(message, 300) if isinstance(message, str) else ""
