"""A fault-injecting HTTP proxy for tests: between an S3 client and moto's server, both on 127.0.0.1.

Requests are forwarded to the server unless a :class:`Fault` matches: then the proxy answers 500/503, resets the
connection (before answering or mid-body), stalls (then answers, or resets), or cuts the body (with an honest
``Content-Length``, or one that lies). It counts every request per ``(object key, Range)`` and, separately, the
ones it answered in full.

    with FaultProxy(moto_url) as proxy:
        proxy.add("503", key="train/chunk", times=None)  # every request to a train chunk, forever
        ... AWS_ENDPOINT_URL=proxy.url ...
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("500", "503", "reset", "reset_mid_body", "stall", "stall_reset", "truncate", "truncate_lying_length")
STALL_S = 2.0


@dataclass
class Fault:
    """Inject ``kind`` into requests whose key contains ``key`` (and, if ``ranged``, that carry a Range header).

    Of the matching requests, every ``every``-th one is hit (the first, the ``every+1``-th, ...), ``times`` times in
    all (None: forever).
    """

    kind: str
    key: str = ""
    ranged: bool = True
    every: int = 1
    times: int | None = 1
    seen: int = 0
    hit: int = 0

    def take(self, key: str, ranged: bool) -> bool:
        if self.key not in key or (self.ranged and not ranged) or (self.times is not None and self.hit >= self.times):
            return False
        self.seen += 1
        if (self.seen - 1) % self.every:
            return False
        self.hit += 1
        return True


class FaultProxy:
    """The proxy: ``url`` for the client's endpoint, ``upstream`` the server's; :meth:`add` schedules faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults: list[Fault] = []
        self.requests: Counter[tuple[str, str]] = Counter()  # (key, Range) -> requests received
        self.served: Counter[tuple[str, str]] = Counter()  # (key, Range) -> answered in full, unchanged
        self.injected: Counter[str] = Counter()  # fault kind -> times injected
        self.log: list[tuple[float, str, str, str | None]] = []  # (time.monotonic(), key, Range, fault) per request
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, kind: str, **match) -> Fault:
        assert kind in FAULTS, kind
        fault = Fault(kind, **match)
        with self.lock:
            self.faults.append(fault)
        return fault

    def fault_for(self, key: str, ranged: bool) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.take(key, ranged):
                    self.injected[fault.kind] += 1
                    return fault.kind
        return None

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args) -> None:  # quiet
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, OSError):  # our own resets, or a client that gave up on a stall
                self.close_connection = True

        def do_GET(self) -> None:
            self._forward()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _forward(self) -> None:
            key = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            span = self.headers.get("Range", "")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with proxy.lock:
                proxy.requests[key, span] += 1
            fault = proxy.fault_for(key, bool(span))
            with proxy.lock:
                proxy.log.append((time.monotonic(), key, span, fault))
            if fault in ("stall", "stall_reset"):
                time.sleep(STALL_S)
                if fault == "stall_reset":
                    return self._reset()
            if fault in ("500", "503"):
                return self._error(int(fault))
            if fault == "reset":
                return self._reset()
            status, headers, data = self._upstream(body)
            if fault in ("reset_mid_body", "truncate", "truncate_lying_length") and len(data) > 1:
                cut = data[: len(data) // 2]
                self._head(status, headers, len(cut) if fault == "truncate_lying_length" else len(data))
                self.wfile.write(cut)
                self.wfile.flush()
                return self._reset() if fault == "reset_mid_body" else self._close()
            self._head(status, headers, len(data))
            if self.command != "HEAD":
                self.wfile.write(data)
            if fault is None:
                with proxy.lock:
                    proxy.served[key, span] += 1

        def _upstream(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
            try:
                headers = {name: value for name, value in self.headers.items() if name.lower() != "connection"}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                kept = [(n, v) for n, v in response.getheaders() if n.lower() not in ("content-length",
                        "transfer-encoding", "connection")]  # fmt: skip
                return response.status, kept, data
            finally:
                connection.close()

        def _head(self, status: int, headers: list[tuple[str, str]], length: int) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _error(self, status: int) -> None:
            code = "InternalError" if status == 500 else "SlowDown"
            data = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            self._head(status, [("Content-Type", "application/xml")], len(data))
            self.wfile.write(data)

        def _reset(self) -> None:  # RST, not FIN: SO_LINGER 0, then close
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._close()

        def _close(self) -> None:
            self.close_connection = True
            try:
                self.connection.close()
            except OSError:
                pass

        def finish(self) -> None:
            try:
                super().finish()
            except (OSError, ValueError):  # the socket we closed
                pass

    return Handler
