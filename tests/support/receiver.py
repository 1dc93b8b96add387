"""A real HTTP webhook receiver on loopback, with scripted answers per path, and raw TCP
servers that misbehave on purpose (never answer, answer a byte at a time)."""

from __future__ import annotations

import contextlib
import socket
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


class SocketServer:
    """A loopback TCP server with one thread per connection, for receivers that misbehave
    on purpose; `stop` closes the listener and every connection it holds."""

    def __init__(self, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self._handle = handle
        self._stopped = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, path: str, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
                self.accepted += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handle(connection, self._stopped)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.close()


def start_blackhole() -> SocketServer:
    """Accepts every connection, reads what comes, never answers (until stopped)."""

    def hold(connection: socket.socket, stopped: threading.Event) -> None:
        connection.settimeout(0.2)
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                if not connection.recv(65536):
                    return

    return SocketServer(hold)


TRICKLED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def start_trickler(
    interval_seconds: float, response: bytes = TRICKLED_RESPONSE, *, at_once_bytes: int = 0
) -> SocketServer:
    """Reads the request's first bytes, sends the first `at_once_bytes` of `response`, then
    one byte every `interval_seconds`: each read of the client gets data in time, the
    whole answer takes as many intervals as the bytes left."""

    def trickle(connection: socket.socket, stopped: threading.Event) -> None:
        connection.recv(65536)
        connection.sendall(response[:at_once_bytes])
        for index in range(at_once_bytes, len(response)):
            if stopped.wait(interval_seconds):
                return
            connection.sendall(response[index : index + 1])

    return SocketServer(trickle)
