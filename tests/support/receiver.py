"""A real HTTP webhook receiver on loopback, with scripted answers per path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# path -> function(attempt number on that path, starting at 1) -> (status, sleep seconds)
Script = Callable[[int], tuple[int, float]]
wait_timeout_seconds = 60


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    scripts: dict[str, Script] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, script: Script) -> str:
        self.scripts[path] = script
        return self.url(path)

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int) -> list[Received]:
        """Bounded wait until `path` received at least `count` requests."""
        deadline = time.monotonic() + wait_timeout_seconds
        while time.monotonic() < deadline:
            got = self.requests_to(path)
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.requests_to(path))} of {count} requests")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver(port: int = 0) -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.monotonic())
                )
                attempt = sum(1 for r in receiver.received if r.path == self.path)
            script = receiver.scripts.get(self.path, lambda _n: (200, 0.0))
            status, sleep_seconds = script(attempt)
            time.sleep(sleep_seconds)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver
