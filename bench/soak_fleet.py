"""The soak benchmark's simulated fleet: a tiny keep-alive HTTP/1.1 client on asyncio and the
vehicle loop (signed polls, in-process "installs", signed event batches retried with the same ids).

A poll is a vehicle version manifest with one ECU version report (``tests.server.fleet.SimVehicle``).
Its answer carries a time attestation (checked: the director's timestamp key, our nonce) and the
version of the vehicle's director chain; when that version changes the vehicle reads its director
metadata as a vehicle does (timestamp → snapshot → targets, each verified against the director's
root) and installs what the targets assign to its ECU.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from overdrive.envelope import verify_envelope
from overdrive.uptane import TIME_ATTESTATION, VEHICLE_FIELD, DirectorEntry, entries_for
from tests.server.fleet import SimVehicle

TIMEOUT = 30.0
IDLE_MAX = 1.5  # seconds: reuse an idle connection only well within gunicorn's keepalive (2 s)


class HttpError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Pool:
    """Keep-alive connections to one server; a broken connection is dropped, never reused."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        #: (reader, writer, when it went idle); gunicorn drops keep-alive connections after 2 s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.slots = asyncio.Semaphore(size)

    async def request(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> tuple[int, Any]:
        """(status, JSON body); the body's bytes instead with ``raw``."""
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            + "\r\n"
        ).encode()
        async with self.slots:
            conn = None
            while self.idle and conn is None:
                reader, writer, since = self.idle.pop()
                if time.monotonic() - since < IDLE_MAX and not reader.at_eof():
                    conn = (reader, writer)
                else:
                    writer.close()
            reused = conn is not None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), TIMEOUT
                    )
                status, payload, keep = await asyncio.wait_for(
                    self._exchange(conn, head + data, raw), TIMEOUT
                )
            except TimeoutError:
                self._close(conn)
                raise HttpError("timeout") from None
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                self._close(conn)
                if isinstance(e, ConnectionRefusedError):
                    raise HttpError("connection refused") from None
                raise HttpError(
                    "connection reset (reused)" if reused else "connection reset"
                ) from None
            if keep:
                self.idle.append((conn[0], conn[1], time.monotonic()))
            else:
                self._close(conn)
            return status, payload

    @staticmethod
    def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, raw: bool
    ) -> tuple[int, Any, bool]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        keep = headers.get("connection", "").lower() != "close" and lines[0].startswith("HTTP/1.1")
        if raw:
            return status, body, keep
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body[:200].decode("latin-1")
        return status, payload, keep


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    poll_latency: list[float] = field(default_factory=list)
    assignments: int = 0
    director_reads: int = 0  # director metadata read (and verified) after a version change
    events_sent: int = 0  # unique event ids the fleet created and sent
    events_acked: int = 0  # unique event ids a server acknowledged (200)
    events_accepted: int = 0  # sum of the servers' "accepted"
    events_duplicates: int = 0  # sum of the servers' "duplicates" (after a retry)
    event_retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[tuple[float, str]] = field(default_factory=list)
    unacked: int = 0  # event batches given up on (must stay 0)
    outcomes: Counter[str] = field(default_factory=Counter)

    def error(self, where: str, kind: str) -> None:
        label = f"{where}: {kind}"
        self.errors[label] += 1
        self.error_times.append((time.monotonic() - self.started, label))


class DirectorError(Exception):
    """The vehicle's director metadata could not be read or does not verify."""


@dataclass
class Fleet:
    pools: list[Pool]
    image_old: dict[str, Any]
    image_new: dict[str, Any]
    failure_rate: float
    install_seconds: tuple[float, float]
    stats: Stats
    director_root: bytes  # the director's 1.root.json (what vehicles are provisioned with)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    #: vehicle id → the director version whose targets it has acted on
    seen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Metadata[Root].from_bytes(self.director_root).signed
        role = self.root.roles["timestamp"]
        self.time_keys: dict[str, Key] = {k: self.root.keys[k] for k in role.keyids}
        self.time_threshold = role.threshold

    def pool(self) -> Pool:
        return self.rng.choice(self.pools)

    def check_time(self, body: dict[str, Any], nonce: str) -> str | None:
        """What is wrong with the answer's time attestation, or None."""
        try:
            payload = verify_envelope(
                body.get("time"), self.time_keys, TIME_ATTESTATION, self.time_threshold
            )
        except Exception as e:
            return f"time attestation: {type(e).__name__}"
        return None if payload.get("nonce") == nonce else "time attestation: not our nonce"

    async def _get(self, path: str) -> bytes:
        status, body = await self.pool().request("GET", path, None, raw=True)
        if status != 200:
            raise DirectorError(f"HTTP {status} for {path.rsplit('/', 1)[-1]}")
        return bytes(body)

    async def director_entry(self, vehicle: SimVehicle) -> DirectorEntry | None:
        """What the vehicle's verified director targets assign to its ECU (None: nothing)."""
        base = f"/api/v1/director/{vehicle.vehicle_id}/metadata"
        try:
            timestamp = Metadata[Timestamp].from_bytes(await self._get(f"{base}/timestamp.json"))
            self.root.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
            version = timestamp.signed.snapshot_meta.version
            snapshot = Metadata[Snapshot].from_bytes(
                await self._get(f"{base}/{version}.snapshot.json")
            )
            self.root.verify_delegate("snapshot", snapshot.signed_bytes, snapshot.signatures)
            version = snapshot.signed.meta["targets.json"].version
            targets = Metadata[Targets].from_bytes(
                await self._get(f"{base}/{version}.targets.json")
            )
            self.root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
        except (DirectorError, HttpError):
            raise
        except Exception as e:  # a signature or a document that does not verify
            raise DirectorError(f"does not verify: {type(e).__name__}") from e
        if targets.signed.unrecognized_fields.get(VEHICLE_FIELD) != vehicle.vehicle_id:
            raise DirectorError("targets for another vehicle")
        self.stats.director_reads += 1
        return entries_for(targets.signed.targets).get(vehicle.serial)

    async def register(self, vehicle: SimVehicle, token: str) -> None:
        for attempt in range(20):
            try:
                status, _body = await self.pool().request(
                    "POST", "/api/v1/vehicles/register", vehicle.registration(token)
                )
            except HttpError as e:
                self.stats.error("register", e.kind)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                continue
            if status == 201 or status == 409:  # 409: an earlier try got through
                return
            self.stats.error("register", f"HTTP {status}")
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        raise RuntimeError(f"could not register {vehicle.vehicle_id}")

    async def send_events(self, vehicle: SimVehicle, events: list[dict[str, Any]]) -> None:
        """Send one batch until a server acknowledges it; retries keep the event ids."""
        self.stats.events_sent += len(events)
        delay = 0.5
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                status, body = await self.pool().request(
                    "POST", f"/api/v1/vehicles/{vehicle.vehicle_id}/events", vehicle.events(*events)
                )
            except HttpError as e:
                self.stats.error("events", e.kind)
                status, body = 0, None
            if status == 200 and isinstance(body, dict):
                self.stats.events_acked += len(events)
                self.stats.events_accepted += int(body.get("accepted", 0))
                self.stats.events_duplicates += int(body.get("duplicates", 0))
                return
            if status:
                self.stats.error("events", f"HTTP {status}")
            self.stats.event_retries += 1
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 8.0)
        self.stats.unacked += 1

    async def install(self, vehicle: SimVehicle, assignment: dict[str, Any]) -> None:
        ids = {"campaign_id": assignment["campaign_id"], "hardware_id": assignment["hardware_id"]}

        def event(kind: str, **extra: Any) -> dict[str, Any]:
            return {"id": uuid.uuid4().hex, "type": kind, **ids, **extra}

        low, high = self.install_seconds
        await self.send_events(vehicle, [event("downloading")])
        await asyncio.sleep(self.rng.uniform(low, high))
        if self.rng.random() < self.failure_rate:
            await self.send_events(
                vehicle, [event("installed"), event("rolled_back", reason="injected failure")]
            )
            self.stats.outcomes["rolled_back"] += 1
            vehicle.failed = True  # type: ignore[attr-defined]
            return
        await self.send_events(vehicle, [event("installed"), event("committed")])
        vehicle.image = dict(self.image_new)
        self.stats.outcomes["committed"] += 1

    async def run_vehicle(self, vehicle: SimVehicle, poll_interval: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, poll_interval))
        failures = 0
        while not self.stop.is_set():
            pool = self.pool()
            nonce = uuid.uuid4().hex
            envelope = vehicle.manifest(nonce, slot="A", state="idle", last_result=None)
            begin = time.perf_counter()
            try:
                status, body = await pool.request(
                    "POST", f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", envelope
                )
            except HttpError as e:
                self.stats.error("poll", e.kind)
                status, body = 0, None
            if status != 200 or not isinstance(body, dict):
                if status:
                    self.stats.error("poll", f"HTTP {status}")
                failures += 1
                await asyncio.sleep(min(30.0, 0.5 * 2**failures) * (0.5 + self.rng.random()))
                continue
            failures = 0
            self.stats.polls += 1
            self.stats.poll_latency.append(time.perf_counter() - begin)
            wait = float(body.get("next_poll_seconds", poll_interval))
            problem = self.check_time(body, nonce)
            if problem:
                self.stats.error("poll", problem)
            director = body.get("director")
            version = director.get("version") if isinstance(director, dict) else None
            if (
                isinstance(version, int)
                and version != self.seen.get(vehicle.vehicle_id)
                and not getattr(vehicle, "failed", False)
            ):
                try:
                    entry = await self.director_entry(vehicle)
                except (DirectorError, HttpError) as e:
                    self.stats.error("director", str(e))
                    await asyncio.sleep(wait * self.rng.uniform(0.8, 1.2))
                    continue  # read it again after the next poll
                self.seen[vehicle.vehicle_id] = version
                if entry is not None and entry.sha256 != vehicle.image.get("sha256"):
                    self.stats.assignments += 1
                    assignment = {
                        "campaign_id": entry.campaign_id,
                        "hardware_id": entry.hardware_id,
                    }
                    await self.install(vehicle, assignment)
                    continue  # poll again right away, reporting the new image
            await asyncio.sleep(wait * self.rng.uniform(0.8, 1.2))
