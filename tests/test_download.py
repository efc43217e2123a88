"""Checkpoint download: served from a loopback fake hub; offline and corruption handling."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from birefnet_core import family_from_filename
from birefnet_core.download import CHECKPOINTS, checkpoint_url, download_checkpoint
from birefnet_core.errors import DownloadError, InputError

PAYLOAD = b"not really weights, but bytes with a known hash" * 1000


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like the hub: /<repo>/resolve/main/<file> redirects to a CDN path, and the redirect
    carries the file's size and sha256."""

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
        if self.path.startswith("/cdn/"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        else:
            self._redirect()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    _FakeHub.requests = []
    _FakeHub.advertised_sha = hashlib.sha256(PAYLOAD).hexdigest()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    yield _FakeHub
    server.shutdown()


def test_every_published_file_name_carries_its_family():
    for name, ckpt in CHECKPOINTS.items():
        assert family_from_filename(ckpt.filename).name == name, ckpt.filename


def test_url_respects_hf_endpoint(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert checkpoint_url("hr_matting") == (
        "https://mirror.example/ZhengPeng7/BiRefNet_HR-matting/resolve/main/model.safetensors")


def test_download_verifies_and_names_by_family(hub, tmp_path):
    seen = []
    path = download_checkpoint("HR-matting", tmp_path / "birefnet",
                               on_progress=lambda done, total: seen.append((done, total)))
    assert path.name == "BiRefNet_HR-matting.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list(path.parent.glob("*.part"))
    # Present already: no network at all.
    hub.requests.clear()
    assert download_checkpoint("hr_matting", tmp_path / "birefnet") == path
    assert hub.requests == []


def test_corrupt_download_leaves_nothing(hub, tmp_path):
    hub.advertised_sha = "0" * 64
    with pytest.raises(DownloadError, match="corrupt"):
        download_checkpoint("lite", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_fast_with_url_and_folder(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        download_checkpoint("general", tmp_path / "models")
    message = str(info.value)
    assert "ZhengPeng7/BiRefNet/resolve/main/model.safetensors" in message
    assert str(tmp_path / "models" / "BiRefNet.safetensors") in message
    assert hub.requests == []


def test_unreachable_hub_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match="by hand"):
        download_checkpoint("lite", tmp_path, timeout=5)


def test_unknown_name():
    with pytest.raises(InputError, match="published ones"):
        download_checkpoint("birefnet_xxl", "/tmp")
