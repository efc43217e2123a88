"""Checkpoint download: served from a loopback fake hub; offline and corruption handling."""

from __future__ import annotations

import dataclasses
import hashlib
import io
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
    """A guard for the table: a pin names a published family, a sha256 and a fixed revision
    (or "main" for a single-file release whose commit was not recorded: a replaced file is then
    refused, see test_a_file_changed_at_main_is_refused)."""
    from birefnet_core.download import _PINNED

    assert set(_PINNED) <= set(CHECKPOINTS)
    for name, ckpt in CHECKPOINTS.items():
        if ckpt.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", ckpt.sha256), name
            assert re.fullmatch(r"[0-9a-f]{40}|main", ckpt.revision), \
                f"{name}: a pinned hash needs a pinned commit (or main), got {ckpt.revision!r}"


# -- new catalogue entries: any file of a repository, pins ----------------------------------------

def _pth_bytes() -> bytes:
    """A small ``torch.save`` zip archive with the prefixed keys of a ToonOut-style release."""
    buffer = io.BytesIO()
    torch.save({"module._orig_mod.decoder.conv_out1.0.weight": torch.randn(1, 4, 1, 1),
                "module._orig_mod.bb.x": torch.ones(3)}, buffer)
    return buffer.getvalue()


PTH_PAYLOAD = _pth_bytes()


@pytest.fixture
def pth_hub(monkeypatch):
    """The fake hub serving a .pth, with ToonOut's pin moved onto that payload."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    pinned = dataclasses.replace(CHECKPOINTS["toonout"],
                                 sha256=hashlib.sha256(PTH_PAYLOAD).hexdigest())
    monkeypatch.setitem(CHECKPOINTS, "toonout", pinned)
    with serve(PTH_PAYLOAD) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def test_new_entries_name_their_repository_files():
    assert checkpoint_url("toonout", endpoint="https://hf.example") == (
        "https://hf.example/joelseytre/toonout/resolve/main/birefnet_finetuned_toonout.pth")
    assert checkpoint_url("lucida", endpoint="https://hf.example") == (
        "https://hf.example/Comfy-Org/BiRefNet/resolve/main/background_removal/lucida.safetensors")
    lite_matting = CHECKPOINTS["lite_matting"]
    assert (lite_matting.revision, lite_matting.sha256) == (
        "99c33412e3f58e1f33187abdc8c435c645243690",
        "ce8bcfc045e336322c0424a5863dcfb7e9ce8fed0a5fd4d1b2b20adf12d97243")
    assert checkpoint_url("lite_matting", endpoint="https://hf.example") == (
        "https://hf.example/ZhengPeng7/BiRefNet_lite-matting/resolve/"
        "99c33412e3f58e1f33187abdc8c435c645243690/model.safetensors")
    assert CHECKPOINTS["toonout"].sha256 == (
        "8c7f8a0bc24400f4caade76622f75ff22ca1e93e169add9d2b70093e2487fbe5")


def test_named_pth_download_is_verified_atomic_and_named_by_family(pth_hub, tmp_path):
    seen = []
    path = download_checkpoint("toonout", tmp_path / "birefnet",
                               on_progress=lambda done, total: seen.append((done, total)))
    assert path.name == "birefnet_finetuned_toonout.pth"
    assert path.read_bytes() == PTH_PAYLOAD
    assert seen[-1] == (len(PTH_PAYLOAD), len(PTH_PAYLOAD))
    assert _leftovers(path.parent) == [path.name]
    assert "GET /joelseytre/toonout/resolve/main/birefnet_finetuned_toonout.pth" in \
        pth_hub.handler.requests, pth_hub.handler.requests
    assert family_from_filename(path).name == "toonout"
    # The loader reads it: prefixed keys stripped, fp32 kept.
    from birefnet_core.weights import filter_checkpoint, read_checkpoint

    clean, stored = filter_checkpoint(read_checkpoint(path), path)
    assert set(clean) == {"decoder.conv_out1.0.weight", "bb.x"} and stored == "float32"
    # Present and whole already: no network at all.
    pth_hub.handler.requests.clear()
    assert download_checkpoint("toonout", tmp_path / "birefnet") == path
    assert pth_hub.handler.requests == []


def test_named_pth_with_wrong_size_leaves_nothing(pth_hub, tmp_path):
    pth_hub.handler.payload = PTH_PAYLOAD[:-100]  # the hub still reports the full size
    with pytest.raises(DownloadError, match="incomplete or corrupt"):
        download_checkpoint("toonout", tmp_path)
    assert _leftovers(tmp_path) == []


def test_truncated_pth_without_size_or_hash_leaves_nothing(pth_hub, tmp_path, monkeypatch):
    """A mirror that reports nothing and cuts the transfer: the zip directory is missing."""
    unpinned = dataclasses.replace(CHECKPOINTS["toonout"], sha256=None)
    monkeypatch.setitem(CHECKPOINTS, "toonout", unpinned)
    _as_bare_mirror(pth_hub.handler, PTH_PAYLOAD[: len(PTH_PAYLOAD) // 2])
    with pytest.raises(DownloadError, match="not a whole zip archive"):
        download_checkpoint("toonout", tmp_path)
    assert _leftovers(tmp_path) == []
    # The whole file from the same mirror passes.
    _as_bare_mirror(pth_hub.handler, PTH_PAYLOAD)
    assert download_checkpoint("toonout", tmp_path).read_bytes() == PTH_PAYLOAD


def test_a_truncated_pth_already_there_is_downloaded_again(pth_hub, tmp_path):
    (tmp_path / "birefnet_finetuned_toonout.pth").write_bytes(PTH_PAYLOAD[:-10])
    path = download_checkpoint("toonout", tmp_path)
    assert path.read_bytes() == PTH_PAYLOAD
    assert any(r.startswith("GET") for r in pth_hub.handler.requests)


def test_a_file_changed_at_main_is_refused(tmp_path, monkeypatch):
    """ToonOut's hash is pinned at main: another whole .pth (matching what the hub reports) is
    refused, saying the repository may have changed it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with serve(PTH_PAYLOAD) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(DownloadError, match="published sha256.*changed in the repository"):
            download_checkpoint("toonout", tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_pth_that_is_no_torch_save_output_is_refused(pth_hub, tmp_path):
    pth_hub.handler.payload = b"<html>rate limited</html>" * 10
    pth_hub.handler.advertised_sha = hashlib.sha256(pth_hub.handler.payload).hexdigest()
    with pytest.raises(DownloadError, match="neither the zip archive nor the pickle stream"):
        download_checkpoint("toonout", tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_file_in_a_subfolder_of_a_repository(hub, tmp_path):
    """Lucida comes from ComfyUI's repack: background_removal/lucida.safetensors."""
    path = download_checkpoint("lucida", tmp_path)
    assert path.name == "lucida.safetensors" and path.read_bytes() == PAYLOAD
    assert "GET /Comfy-Org/BiRefNet/resolve/main/background_removal/lucida.safetensors" in \
        hub.handler.requests, hub.handler.requests
    assert family_from_filename(path).name == "lucida"


def test_cli_download_draws_one_progress_line_and_prints_the_path(hub, tmp_path, capsys):
    from birefnet_core.cli import main

    assert main(["download", "HR-matting", "--models-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "BiRefNet_HR-matting.safetensors")
    mib = len(PAYLOAD) / 2 ** 20
    assert f"/{mib:.0f} MiB" in err and err.endswith("\n") and err.count("\n") == 1
    assert main(["download", "HR-matting", "--models-dir", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().err == ""
