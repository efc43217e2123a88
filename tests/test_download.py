"""Checkpoint download: served from a loopback fake hub; offline and corruption handling."""

from __future__ import annotations

import pytest

from birefnet_core import family_from_filename
from birefnet_core.download import CHECKPOINTS, checkpoint_url, download_checkpoint
from birefnet_core.errors import DownloadError, InputError
from tests.fake_hub import PAYLOAD, serve

@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with serve() as fake:
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
    assert not list(path.parent.glob("*.part"))
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
