"""Checkpoint download: served from a loopback fake hub; offline and corruption handling."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
import torch
from safetensors.torch import save

from birefnet_core import family_from_filename
from birefnet_core.download import CHECKPOINTS, checkpoint_url, download_checkpoint
from birefnet_core.errors import DownloadError, InputError
from tests.fake_hub import serve

# A small but well-formed safetensors file: downloads are checked against its own layout.
PAYLOAD = save({"decoder.conv_out1.0.weight": torch.arange(4096.0).reshape(64, 64),
                "bb.x": torch.ones(3)})


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with serve(PAYLOAD) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


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
    assert _leftovers(path.parent) == [path.name]
    # Present already: no network at all.
    hub.handler.requests.clear()
    assert download_checkpoint("hr_matting", tmp_path / "birefnet") == path
    assert hub.handler.requests == []


def test_corrupt_download_leaves_nothing(hub, tmp_path):
    hub.handler.advertised_sha = "0" * 64
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
    assert hub.handler.requests == []


def test_unreachable_hub_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match="by hand"):
        download_checkpoint("lite", tmp_path, timeout=5)


def test_unknown_name():
    with pytest.raises(InputError, match="published ones"):
        download_checkpoint("birefnet_xxl", "/tmp")


def _as_bare_mirror(handler, body: bytes):
    """Make the fake hub answer like a mirror that reports neither size nor hash: no redirect,
    no ``X-Linked-*`` headers, no ``Content-Length`` (the body ends when the connection closes)."""

    def do_HEAD(self):
        type(self).requests.append(f"HEAD {self.path}")
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        type(self).requests.append(f"GET {self.path}")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    handler.do_HEAD, handler.do_GET = do_HEAD, do_GET


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_truncated_download_without_size_or_hash_leaves_nothing(hub, tmp_path):
    _as_bare_mirror(hub.handler, PAYLOAD[: len(PAYLOAD) - 1000])
    with pytest.raises(DownloadError, match="incomplete or corrupt"):
        download_checkpoint("lite", tmp_path)
    assert _leftovers(tmp_path) == []


def test_whole_download_without_size_or_hash_is_accepted(hub, tmp_path):
    _as_bare_mirror(hub.handler, PAYLOAD)
    assert download_checkpoint("lite", tmp_path).read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == ["BiRefNet_lite.safetensors"]


def test_a_truncated_file_already_there_is_downloaded_again(hub, tmp_path):
    (tmp_path / "BiRefNet_lite.safetensors").write_bytes(PAYLOAD[:-10])
    path = download_checkpoint("lite", tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert any(r.startswith("GET") for r in hub.handler.requests)


def test_interrupted_download_leaves_nothing(hub, tmp_path):
    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_checkpoint("lite", tmp_path, on_progress=interrupt)
    assert _leftovers(tmp_path) == []


def test_published_sha256_is_pinned_and_verified(hub, tmp_path, monkeypatch):
    pinned = dataclasses.replace(CHECKPOINTS["lite"], revision="0123abc", sha256="1" * 64)
    monkeypatch.setitem(CHECKPOINTS, "lite", pinned)
    assert checkpoint_url("lite").endswith("/resolve/0123abc/model.safetensors")
    with pytest.raises(DownloadError, match="published sha256"):
        download_checkpoint("lite", tmp_path)
    assert _leftovers(tmp_path) == []
    # The right pin passes, even from a mirror that reports no hash at all.
    good = dataclasses.replace(pinned, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(CHECKPOINTS, "lite", good)
    _as_bare_mirror(hub.handler, PAYLOAD)
    hub.handler.requests.clear()
    assert download_checkpoint("lite", tmp_path).read_bytes() == PAYLOAD
    assert hub.handler.requests and all(
        "/resolve/0123abc/" in r for r in hub.handler.requests), hub.handler.requests


def test_pinned_hashes_are_well_formed():
    """A guard for the table: a pin names a published family, a sha256 and a fixed revision."""
    from birefnet_core.download import _PINNED

    assert set(_PINNED) <= set(CHECKPOINTS)
    for name, ckpt in CHECKPOINTS.items():
        if ckpt.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", ckpt.sha256), name
            assert re.fullmatch(r"[0-9a-f]{40}", ckpt.revision), \
                f"{name}: a pinned hash needs a pinned commit"
