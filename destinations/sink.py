"""A local stand-in for the vendors: a threaded HTTP server on loopback that records every request.

It answers from a script: a function of the request returning an `Answer` (status, headers, body,
an optional delay, or a dropped connection). The tests, the benchmarks and the demo point
`dataCenterUrl` / `baseUrl` at it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"statusCode": "SUCCESS"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Script = Callable[[Received], Answer]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle and delayed ACKs add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        if parts.path == "/_sink/stats":  # for benchmarks that run the sink in another process
            stats = json.dumps(self.server.sink.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(stats)))
            self.end_headers()
            self.wfile.write(stats)
            return
        received = Received(
            self.command, parts.path, dict(parse_qsl(parts.query)), dict(self.headers.items()), body, time.time()
        )
        answer = self.server.sink.answer(received)
        if answer.delay:
            time.sleep(answer.delay)
        if answer.drop:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        try:
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the caller gave up waiting: not acknowledged
            self.close_connection = True
            return
        # Recorded once answered, so "received" means the vendor acknowledged it.
        self.server.sink.record(received, answer)

    do_POST = do_GET = do_PUT = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: RecordingServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that went away (a killed worker, a timeout) is not the stand-in's error: no traceback."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class RecordingServer:
    """`with RecordingServer() as sink: ... sink.url ... sink.received`."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script: Script = script or (lambda _: Answer())
        self.received: list[Received] = []
        self.answers: list[Answer] = []
        self.arrivals = 0
        self._lock = threading.Lock()
        self._server = _Server((host, port), _Handler)
        self._server.sink = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="sink", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, received: Received) -> Answer:
        with self._lock:
            self.arrivals += 1
        return self.script(received)

    def record(self, received: Received, answer: Answer) -> None:
        with self._lock:
            self.received.append(received)
            self.answers.append(answer)

    def stats(self) -> dict[str, int]:
        """Requests answered, and the events in them (a JSON array counts its items)."""
        with self._lock:
            events = sum(len(r.json) if r.body.startswith(b"[") else 1 for r in self.received)
            return {"requests": len(self.received), "events": events}

    def delivered(self) -> list[Received]:
        """Requests answered 2xx."""
        with self._lock:
            return [r for r, a in zip(self.received, self.answers, strict=True) if 200 <= a.status < 300]

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sequence(*answers: Answer, then: Answer | None = None) -> Script:
    """Answer in this order, then `then` (200 by default) for every later request."""
    queue = list(answers)
    lock = threading.Lock()
    rest = then or Answer()

    def script(_: Received) -> Answer:
        with lock:
            return queue.pop(0) if queue else rest

    return script


def main() -> None:
    """`python -m destinations.sink [PORT]`: a 200-answering sink in the foreground; prints its URL."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m destinations.sink",
        description="A local stand-in vendor on 127.0.0.1: answers 200 to every call and records it; prints its URL.",
    )
    parser.add_argument("port", nargs="?", type=int, default=0, help="the port to listen on (default: any free one)")
    sink = RecordingServer(port=parser.parse_args().port).start()
    print(sink.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sink.stop()


if __name__ == "__main__":
    main()
