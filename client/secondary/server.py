"""The secondary's TCP server: the protocol of :mod:`overdrive.client.secondary_link`, bounded.

* one thread per connection, at most ``max_connections`` at once (more get a one-line ``busy``
  answer and are closed), so one bad connection cannot wedge the others;
* every read has an idle timeout (``idle_timeout_s``) and every request line an overall
  deadline, so a silent or trickling peer is cut off; a line longer than
  :data:`~overdrive.client.secondary_link.MAX_LINE` is a protocol error;
* a ``stage`` body is read through the bytes the secondary *itself* verified (never one more),
  at no less than :data:`MIN_STAGE_RATE` on average;
* every failure is one answer line (``{"ok": false, "reason", "error"}``) and one log line,
  never a traceback; the server keeps serving.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overdrive.client.errors import ConfigError, Refused
from overdrive.client.secondary.bundle import Reader
from overdrive.client.secondary.ecu import Secondary
from overdrive.client.secondary_link import (
    MAX_LINE,
    RepoFiles,
    SecondaryError,
    decode_line,
    encode_line,
    take_line,
)
from overdrive.errors import OverdriveError
from overdrive.text import one_line

#: The slowest average a stage body may arrive at (bytes/s) before it is cut off.
MIN_STAGE_RATE = 64 * 1024
#: Requests one connection may make before it is closed.
MAX_REQUESTS_PER_CONNECTION = 64
_CHUNK = 1 << 16

Log = Callable[[str], None]


class _Cut(Exception):
    """The peer broke the protocol or went quiet: answer (if possible) and close."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Connection:
    """Lines and raw bytes from one peer, each read bounded in time."""

    def __init__(self, sock: socket.socket, idle_s: float) -> None:
        self.sock = sock
        self.idle_s = idle_s
        self.buffer = bytearray()

    def _recv(self, n: int, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(min(self.idle_s, left))
        return self.sock.recv(n)

    def line(self) -> bytes | None:
        """The next line (None: the peer closed between requests)."""
        deadline = time.monotonic() + self.idle_s + MAX_LINE / MIN_STAGE_RATE
        while True:
            line = take_line(self.buffer)
            if line is not None:
                return line
            if len(self.buffer) >= MAX_LINE:
                raise _Cut("protocol_error", f"request line longer than {MAX_LINE} bytes")
            try:
                block = self._recv(_CHUNK, deadline)
            except TimeoutError as e:
                if not self.buffer:
                    raise _Cut("timeout", "no request within the idle timeout") from e
                raise _Cut("timeout", "the request line did not arrive in time") from e
            if not block:
                if self.buffer:
                    raise _Cut("protocol_error", "connection closed inside a request line")
                return None
            self.buffer += block

    def reader(self, length: int) -> Reader:
        """``read(n)`` over the next ``length`` bytes: idle timeout per read, and an overall
        deadline of :data:`MIN_STAGE_RATE` on average."""
        deadline = time.monotonic() + self.idle_s + length / MIN_STAGE_RATE

        def read(n: int) -> bytes:
            if self.buffer:  # bytes sent before the go-ahead count, and are bounded too
                block = bytes(self.buffer[:n])
                del self.buffer[:n]
                return block
            try:
                return self._recv(n, deadline)
            except TimeoutError as e:
                raise Refused(
                    "slow_retrieval",
                    "the bundle stopped arriving (idle timeout) or arrives too slowly",
                ) from e
            except OSError as e:
                raise Refused("truncated", f"the connection failed: {one_line(e, 200)}") from e

        return read

    def send(self, message: dict[str, Any]) -> None:
        self.sock.settimeout(self.idle_s)
        self.sock.sendall(encode_line(message))


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str):
        raise Refused("bad_request", f"{name} must be a string")
    return value


def _refusal(reason: str, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "error": one_line(message)}


class _Handler(socketserver.BaseRequestHandler):
    server: SecondaryServer

    def handle(self) -> None:
        ecu = self.server.ecu
        conn = _Connection(self.request, ecu.config.idle_timeout_s)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    line = conn.line()
                    if line is None:
                        return
                    request = decode_line(line, "request")
                except (_Cut, SecondaryError) as e:
                    reason = e.reason if isinstance(e, _Cut) else "protocol_error"
                    self.server.log(f"{peer}: {reason}: {e}")
                    conn.send(_refusal(reason, str(e)))
                    return
                if not self._serve(conn, request, peer):
                    return
        except OSError:  # the peer went away: nothing to answer
            return

    def _serve(self, conn: _Connection, request: dict[str, Any], peer: str) -> bool:
        """Answer one request; False when the connection must end after it."""
        op = request.get("op")
        keep = True
        try:
            if op == "stage":
                keep = False  # whatever follows a body is not trusted to be a request
                answer = self._stage(conn, request)
            else:
                answer = {"ok": True, **self._dispatch(op, request)}
        except Refused as e:
            self.server.log(f"{peer} {one_line(op, 20)}: refused {e.reason}: {e}")
            answer = _refusal(e.reason, str(e))
        except SecondaryError as e:
            answer = _refusal("bad_request", str(e))
        except OverdriveError as e:
            self.server.log(f"{peer} {one_line(op, 20)}: error: {e}")
            answer = _refusal("secondary_error", str(e))
        except Exception as e:  # a bug must not take the server down, nor print a traceback
            self.server.log(f"{peer} {one_line(op, 20)}: internal error: {type(e).__name__}: {e}")
            answer = _refusal("internal_error", f"{type(e).__name__}: {e}")
        conn.send(answer)
        return keep

    def _dispatch(self, op: Any, request: dict[str, Any]) -> dict[str, Any]:
        ecu = self.server.ecu
        if op == "info":
            return ecu.info()
        if op == "status":
            return ecu.status()
        if op == "report":
            return {"report": ecu.report(_text(request, "nonce"))}
        if op == "verify":
            director = RepoFiles.from_wire(request.get("director"), "director")
            raw_image = request.get("image_repo")
            image = None if raw_image is None else RepoFiles.from_wire(raw_image, "image_repo")
            return ecu.verify(_text(request, "set_id"), request.get("time"), director, image)
        steps: dict[Any, Callable[[str], Any]] = {
            "install": ecu.install,
            "trial": ecu.trial,
            "commit": ecu.commit,
            "rollback": ecu.rollback,
        }
        step = steps.get(op) if isinstance(op, str) else None
        if step is not None:
            return step(_text(request, "set_id")) or {}
        raise Refused("unknown_op", f"unknown op {one_line(op, 40)!r}")

    def _stage(self, conn: _Connection, request: dict[str, Any]) -> dict[str, Any]:
        ecu = self.server.ecu
        set_id, length = _text(request, "set_id"), request.get("length")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise Refused("bad_request", "length must be a number of bytes")
        expected = ecu.begin_stage(set_id, length)
        if expected is None:
            return {"ok": True, "staged": True}
        conn.send({"ok": True, "send": expected})
        return {"ok": True, **ecu.receive_stage(set_id, conn.reader(expected))}


class SecondaryServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server with a bound on the connections served at once."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    #: The listen backlog: a burst of connections is accepted (and answered, "busy" beyond
    #: max_connections) at once instead of waiting for the peers' SYN retransmits.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], ecu: Secondary, log: Log) -> None:
        self.ecu = ecu
        self.log = log
        self._slots = threading.BoundedSemaphore(ecu.config.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(encode_line(_refusal("busy", "too many connections; retry")))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        self.log(f"{client_address}: {type(error).__name__}: {one_line(error)}")


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {listen!r} must be host:port (port 0: any free port)")
    return host.strip("[]"), int(port)


def serve(state_dir: Path, listen: str, echo: Log, log: Log) -> None:
    """Serve until SIGTERM or SIGINT; an operation under way is let finish (bounded)."""
    ecu = Secondary(state_dir, recover=False)
    host, port = parse_listen(listen)
    try:
        server = SecondaryServer((host, port), ecu, log)
    except OSError as e:
        raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}") from e
    ecu.recover()  # only once the port is ours: another server's files are not
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    bound_host, bound_port = server.socket.getsockname()[:2]
    echo(f"secondary {ecu.config.serial} listening on {bound_host}:{bound_port}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        # state is safe at any point, but a step under way is let finish if it does so soon
        if ecu.lock.acquire(timeout=ecu.config.health_timeout_s + 5):
            ecu.lock.release()
    echo(f"secondary {ecu.config.serial} stopped")
