"""``BiRefNetDownloadModel`` with the fake host and a loopback fake hub."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack.py, fake_host/

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402

from tests.fake_hub import serve  # noqa: E402

PACK = load_pack()
from birefnet_pack.birefnet_core.errors import DownloadError  # noqa: E402
from birefnet_pack.nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from birefnet_pack.nodes.download import BiRefNetDownloadModel  # noqa: E402


@pytest.fixture
def checkpoint_bytes(tmp_path):
    from safetensors.torch import save_file

    from birefnet_pack.birefnet_core.model import BiRefNet
    from birefnet_pack.birefnet_core.variants import Architecture

    torch.manual_seed(0)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v
               for k, v in BiRefNet(Architecture("pvt_v2_b0")).state_dict().items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    models = tmp_path / "models"
    models.mkdir()
    h = fake_host.install(models)
    h.models = models
    yield h
    fake_host.uninstall()


def test_registered():
    assert NODE_CLASS_MAPPINGS["BiRefNetDownloadModel"] is BiRefNetDownloadModel
    spec = BiRefNetDownloadModel.INPUT_TYPES()["required"]
    assert "hr_matting" in spec["checkpoint"][0]
    assert all("tooltip" in opts for _, opts in spec.values())


def test_downloads_into_models_birefnet_and_loads(host, checkpoint_bytes, monkeypatch):
    with serve(checkpoint_bytes) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        out = BiRefNetDownloadModel().download("hr", "fp32", False)
        model, name = out["result"]
        assert name == "BiRefNet_HR.safetensors"
        assert (host.models / "birefnet" / name).read_bytes() == checkpoint_bytes
        assert model.info.family.name == "hr" and model.info.arch.backbone == "pvt_v2_b0"
        assert "2048x2048" in out["ui"]["text"][0]
        # The file now shows up in the loader's list, and a second run makes no request.
        from birefnet_pack.nodes import host as host_module
        assert name in host_module.list_models()
        hub.handler.requests.clear()
        BiRefNetDownloadModel().download("hr", "fp32", False)
        assert hub.handler.requests == []


def test_offline_error_names_url_and_folder(host, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        BiRefNetDownloadModel().download("lite", "auto", False)
    assert "BiRefNet_lite/resolve/main/model.safetensors" in str(info.value)
    assert str(host.models / "birefnet") in str(info.value)
