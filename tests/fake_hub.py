"""A loopback stand-in for the Hugging Face hub, for download tests (no real network)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from dataclasses import dataclass

PAYLOAD = b"not really weights, but bytes with a known hash" * 1000


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    """Answers like the hub: ``/<repo>/resolve/main/<file>`` redirects to a CDN path, and the
    redirect carries the file's size and sha256 (``X-Linked-Size`` / ``X-Linked-Etag``)."""

    payload = PAYLOAD
    advertised_sha = hashlib.sha256(PAYLOAD).hexdigest()
    requests: list[str] = []

    def _redirect(self):
        self.send_response(302)
        self.send_header("Location", "/cdn/blob")
        self.send_header("X-Linked-Size", str(len(self.payload)))
        self.send_header("X-Linked-Etag", f'"{self.advertised_sha}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        type(self).requests.append(f"HEAD {self.path}")
        self._redirect()

    def do_GET(self):
        type(self).requests.append(f"GET {self.path}")
        if not self.path.startswith("/cdn/"):
            return self._redirect()
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@dataclass
class FakeHub:
    url: str
    handler: type[FakeHubHandler]


@contextlib.contextmanager
def serve(payload: bytes = PAYLOAD):
    """Serve ``payload`` for every file on 127.0.0.1; yields a :class:`FakeHub`."""
    handler = type("Handler", (FakeHubHandler,), {
        "payload": payload, "advertised_sha": hashlib.sha256(payload).hexdigest(),
        "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeHub(f"http://127.0.0.1:{server.server_port}", handler)
    finally:
        server.shutdown()
        server.server_close()
