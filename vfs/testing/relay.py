"""A recording, fault-injecting HTTP relay in front of an S3 server (moto), on 127.0.0.1.

Every request is forwarded with its headers unchanged (the ``Host`` header too, so SigV4
signatures stay valid) and recorded; the knobs of :class:`S3Relay` make it misbehave the way
real networks and proxies do. Knobs are plain attributes and may be changed at any time:
each request reads them when it gets to them.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: Bytes of the body sent before a ``stall_body`` pause.
STALL_BODY_AFTER = 64 * 1024
#: Largest piece written at once (without trickle).
PIECE = 64 * 1024
#: Pieces of a trickled body are sent this often (seconds), so a knob change acts quickly.
TRICKLE_TICK = 0.05

_HOP_HEADERS = {"transfer-encoding", "connection", "content-length", "keep-alive"}


@dataclass(frozen=True)
class Request:
    """One request seen by the relay."""

    method: str
    path: str
    range: str | None
    owner: str | None


class _Reset(Exception):
    """The connection was reset on purpose (``reset_after``)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that go away and deliberate resets are normal here: stay quiet."""


class S3Relay:
    """A plain HTTP relay on 127.0.0.1 in front of the S3 server at ``target_url``.

    It records every request in :attr:`seen` (method, path with query, ``Range`` and
    ``x-amz-expected-bucket-owner`` headers) and injects faults:

    * ``down``: answer every request with 503.
    * ``fail_ratio``: answer that share of the requests with 503.
    * ``stall``: wait that many seconds before answering.
    * ``stall_only``: when set, ``stall`` applies only to requests whose ``"METHOD path"``
      contains it (e.g. ``"PUT /bucket/Manifests/"``).
    * ``expected_owner``: when set, a request whose ``x-amz-expected-bucket-owner`` header
      differs (or is missing) gets 403 ``AccessDenied``, like S3 does.
    * ``deny``: ``(status, code, message)``: answer every request with that S3 error (an
      invalid access key, a KMS key policy refusing decryption…).
    * ``drop_range``: forward GETs without their ``Range`` header, so the server answers 200
      with the whole body (a proxy that ignores Range).
    * ``rewrite``: ``f(path, body) -> body`` replaces the body of a GET answered 200/206
      (``Content-Length`` follows).
    * ``stall_body``: send status, headers and the first 64 KiB of a body, then wait that many
      seconds before the rest.
    * ``trickle``: send bodies at that many bytes per second, in small pieces (0: off).
    * ``reset_after``: reset the connection (TCP RST) after that many body bytes (a body
      no longer than that is sent whole).

    Sleeps end early when the relay is closed; :meth:`close` never waits for a request.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seen: list[Request] = []
        self.down = False
        self.fail_ratio = 0.0
        self.stall = 0.0
        self.stall_only: str | None = None
        self.drop_range = False
        self.stall_body = 0.0
        self.trickle = 0.0
        self.rewrite: Callable[[str, bytes], bytes] | None = None
        self.reset_after: int | None = None
        self.expected_owner: str | None = None
        self.deny: tuple[int, str, str] | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    # -- public -------------------------------------------------------------------------------

    def gets(self, contains: str = "") -> list[Request]:
        """The GET requests whose path contains ``contains``."""
        return [r for r in list(self.seen) if r.method == "GET" and contains in r.path]

    def close(self) -> None:
        """Stop serving: end every pause, drop every open connection, close the socket."""
        self._closed.set()
        self.server.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server.server_close()

    def __enter__(self) -> S3Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the relay closes."""
        if seconds > 0:
            self._closed.wait(seconds)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with relay._lock:
                    relay._connections.add(self.connection)

            def finish(self) -> None:
                with relay._lock:
                    relay._connections.discard(self.connection)
                with contextlib.suppress(OSError, ValueError):
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                try:
                    relay._serve(self)
                except (_Reset, OSError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        owner = h.headers.get("x-amz-expected-bucket-owner")
        self.seen.append(Request(h.command, h.path, h.headers.get("Range"), owner))
        only = self.stall_only
        if only is None or only in f"{h.command} {h.path}":
            self._sleep(self.stall)
        if self._closed.is_set():
            raise _Reset
        if self.down or (self.fail_ratio and random.random() < self.fail_ratio):
            self._error(h, 503, "Service Unavailable", "ServiceUnavailable", "Please retry")
            return
        if self.deny is not None:
            status, code, message = self.deny
            self._error(h, status, "Error", code, message)
            return
        expected = self.expected_owner
        if expected is not None and owner != expected:
            self._error(h, 403, "Forbidden", "AccessDenied", "Access Denied")
            return
        headers = {k: v for k, v in h.headers.items()}
        if h.command == "GET" and self.drop_range:
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        conn = http.client.HTTPConnection(*self.target, timeout=120)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            upstream_headers = resp.getheaders()
            status, reason = resp.status, resp.reason
            head_length = resp.getheader("Content-Length") or "0"
        except OSError as e:
            self._error(h, 502, "Bad Gateway", "BadGateway", f"upstream: {e}")
            return
        finally:
            conn.close()
        rewrite = self.rewrite
        if h.command == "GET" and status in (200, 206) and rewrite is not None:
            data = rewrite(h.path, data)
        h.send_response(status, reason)
        for k, v in upstream_headers:
            if k.lower() not in _HOP_HEADERS:
                h.send_header(k, v)
        h.send_header("Content-Length", head_length if h.command == "HEAD" else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            self._send_body(h, data)

    def _error(
        self, h: BaseHTTPRequestHandler, status: int, reason: str, code: str, message: str
    ) -> None:
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code>"
            f"<Message>{message}</Message><Resource>{h.path}</Resource></Error>"
        ).encode()
        h.send_response(status, reason)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _send_body(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        """Write ``data`` as the knobs say: pauses, trickle, reset after some bytes."""
        sent = 0
        paused = False
        view = memoryview(data)
        while sent < len(data):
            if self._closed.is_set():
                self._reset(h)
            trickle = self.trickle
            size = max(1, int(trickle * TRICKLE_TICK)) if trickle > 0 else PIECE
            if self.stall_body > 0 and not paused:
                if sent >= STALL_BODY_AFTER:
                    h.wfile.flush()
                    self._sleep(self.stall_body)
                    paused = True
                    continue
                size = min(size, STALL_BODY_AFTER - sent)
            reset_after = self.reset_after
            if reset_after is not None:
                if sent >= reset_after:
                    self._reset(h)
                size = min(size, reset_after - sent)
            piece = view[sent : sent + size]
            h.wfile.write(piece)
            sent += len(piece)
            if trickle > 0:
                h.wfile.flush()
                self._sleep(len(piece) / trickle)

    def _reset(self, h: BaseHTTPRequestHandler) -> None:
        """Close the connection abruptly: SO_LINGER 0 turns close() into a TCP RST."""
        h.close_connection = True
        with contextlib.suppress(OSError, ValueError):
            h.wfile.flush()
        sock = h.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()
        raise _Reset


def wait_for(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)
