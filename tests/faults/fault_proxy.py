"""A fault-injecting HTTP proxy on loopback, put between our code and an upstream (moto's S3).

Every request is forwarded to the upstream unchanged, unless a :class:`Rule` matches it; then
the rule's fault is injected instead:

``status``               answer ``status`` (e.g. 500 with an S3-style XML error) without
                         forwarding: the upstream never sees the request;
``reset``                read the request, forward nothing, reset the connection (TCP RST, no
                         response at all);
``reset_after_upstream`` forward the request (so it takes effect upstream), then reset the
                         connection instead of answering: the client cannot tell it succeeded;
``reset_mid_body``       forward, send the status line, headers and half of the body, reset;
``truncate``             forward, send the headers (the full Content-Length) and half the body,
                         then close cleanly (FIN);
``corrupt``              forward, answer with the body's bytes flipped (same length).

A rule fires for requests whose method and path match, after ``skip`` matching requests passed
through, at most ``times`` times (``None``: for ever). Everything is logged in :attr:`log`.
"""

from __future__ import annotations

import http.client
import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("status", "reset", "reset_after_upstream", "reset_mid_body", "truncate", "corrupt")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "expect",
    "te",
    "upgrade",
}
_S3_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again. (injected)</Message></Error>"
)


@dataclass
class Rule:
    fault: str
    method: str | None = None  # None: any method
    path_contains: str = ""
    skip: int = 0  # let this many matching requests through first
    times: int | None = 1  # fire at most this often (None: always)
    status: int = 500
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.path_contains in path


@dataclass(frozen=True)
class Record:
    method: str
    path: str
    headers: dict[str, str]
    fault: str | None  # None: passed through
    status: int | None  # what the client got (None: no response)
    at: float = field(default_factory=time.monotonic)


@dataclass
class FaultProxy:
    upstream: str  # http://host:port
    rules: list[Rule] = field(default_factory=list)
    log: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        parts = urlsplit(self.upstream)
        assert parts.hostname and parts.port, self.upstream
        self._upstream = (parts.hostname, parts.port)
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def add(self, fault: str, **kwargs: object) -> Rule:
        rule = Rule(fault, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def heal(self) -> None:
        """Remove every rule: from now on, everything passes through."""
        with self._lock:
            self.rules.clear()

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Record]:
        with self._lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method) and path_contains in r.path
            ]

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                return rule
        return None

    def _record(self, record: Record) -> None:
        with self._lock:
            self.log.append(record)


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up mid-request is what these tests are about; stay quiet


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # so "Expect: 100-continue" is answered at once

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet; the proxy keeps its own log

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.owner._upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (no FIN, no response)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.wfile.close()
        self.rfile.close()
        self.connection.close()  # the last reference: the kernel sends RST (linger 0)
        self.close_connection = True
        # http.server flushes wfile after the handler returns: give it something harmless.
        self.wfile, self.rfile = io.BytesIO(), io.BytesIO()

    def _send_head(
        self, status: int, reason: str, headers: list[tuple[str, str]], size: int
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()

    def _handle(self) -> None:
        body = self._body()
        method, path = self.command, self.path
        rule = self.owner._pick(method, path)
        fault = rule.fault if rule else None
        self.close_connection = True
        if rule is not None and fault == "status":
            self._send_head(
                rule.status, "Injected", [("Content-Type", "application/xml")], len(_S3_ERROR)
            )
            if method != "HEAD":
                self.wfile.write(_S3_ERROR)
            self.owner._record(Record(method, path, dict(self.headers), fault, rule.status))
            return
        if fault == "reset":
            self.owner._record(Record(method, path, dict(self.headers), fault, None))
            self._reset()
            return
        status, reason, headers, data = self._forward(body)
        if fault == "reset_after_upstream":
            self.owner._record(Record(method, path, dict(self.headers), fault, None))
            self._reset()
            return
        declared = next((int(v) for k, v in headers if k.lower() == "content-length"), len(data))
        if method == "HEAD":
            self._send_head(status, reason, headers, declared)
            self.owner._record(Record(method, path, dict(self.headers), fault, status))
            return
        if fault == "corrupt" and data:
            data = bytes(b ^ 0xFF for b in data)
        if fault in ("reset_mid_body", "truncate") and len(data) > 1:
            self._send_head(status, reason, headers, len(data))
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.owner._record(Record(method, path, dict(self.headers), fault, status))
            if fault == "reset_mid_body":
                self._reset()
            else:
                self.connection.shutdown(socket.SHUT_WR)
            return
        self._send_head(status, reason, headers, len(data))
        self.wfile.write(data)
        self.owner._record(Record(method, path, dict(self.headers), fault, status))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
