"""An HTTP server on 127.0.0.1 that serves canned answers: what the asset tests and the fetch
benchmark download from instead of the internet.

Each path answers with a ``Route``: a body, a status, a content type, and the faults a real
server shows (a delay before answering, a body cut short of its Content-Length, a body sent
slowly, a first answer that fails).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the answer
    sent: int | None = None  # bytes of the body sent; fewer than Content-Length: a truncated body
    trickle: float = 0.0  # seconds between two chunks of TRICKLE_CHUNK bytes
    fail_first: int = 0  # the first n requests get a 503


TRICKLE_CHUNK = 256


def random_image(seed: int, size: int = 24, fmt: str = "PNG") -> bytes:
    """An encoded [size, size, 3] image of seeded uniform noise (PNG or JPEG bytes)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # up to 32 parallel clients connect at once


class Loopback:
    """``with Loopback(routes) as server:`` serves ``routes`` (path -> Route) on a free port;
    ``server.url(path)`` is a path's URL, ``server.hits[path]`` how often it was asked for."""

    def __init__(self, routes: dict[str, Route], delay: float = 0.0):
        self.routes, self.delay = routes, delay  # delay: added before every answer
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers
            disable_nagle_algorithm = True  # else headers and body wait out a 40 ms delayed ACK

            def do_GET(self):
                with server.lock:
                    count = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path, Route(b"not found", 404, "text/plain"))
                time.sleep(server.delay + route.delay)
                status = 503 if count <= route.fail_first else route.status
                body = b"busy" if status == 503 and route.status != 503 else route.body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    sent = body if route.sent is None or status == 503 else body[:route.sent]
                    if route.trickle:
                        for start in range(0, len(sent), TRICKLE_CHUNK):
                            self.wfile.write(sent[start:start + TRICKLE_CHUNK])
                            self.wfile.flush()
                            time.sleep(route.trickle)
                    else:
                        self.wfile.write(sent)
                    if len(sent) < len(body):
                        self.close_connection = True
                except ConnectionError:  # the client went away (timeout, killed)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> "Loopback":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
