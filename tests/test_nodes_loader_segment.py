"""Unit tests of the loader and segment nodes, with the fake host of ``tests/fake_host``.

The nodes are called directly, as ComfyUI's executor does, after the fake ``folder_paths`` and
``comfy.*`` modules were put in ``sys.modules`` (the pack imports them lazily). The model is a
random PVT-v2-b0 BiRefNet saved in fp16 (~32 MB), run at a tiny working size so that the tests
stay fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack.py, fake_host/

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402

PACK = load_pack()
from birefnet_pack.birefnet_core.errors import CheckpointError, InputError  # noqa: E402
from birefnet_pack.birefnet_core.inference import predict_masks  # noqa: E402
from birefnet_pack.nodes import host as host_module  # noqa: E402
from birefnet_pack.nodes.loader import BiRefNetModel, BiRefNetModelLoader  # noqa: E402
from birefnet_pack.nodes.segment import BiRefNetSegment  # noqa: E402

CKPT_NAME = "BiRefNet_lite-test.safetensors"
TINY = "64x64"  # working size of these tests (the node's combo offers 512x512 and up)


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight PVT-v2-b0 BiRefNet, fp16 safetensors, named like a lite model."""
    from safetensors.torch import save_file

    from birefnet_pack.birefnet_core.model import BiRefNet
    from birefnet_pack.birefnet_core.variants import Architecture

    torch.manual_seed(0)
    model = BiRefNet(Architecture("pvt_v2_b0"))
    path = tmp_path_factory.mktemp("ckpt") / CKPT_NAME
    save_file({k: v.half() if v.is_floating_point() else v
               for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def host(tmp_path, checkpoint):
    """Fake host rooted at ``tmp_path/models`` with the checkpoint in ``models/birefnet``."""
    models = tmp_path / "models"
    (models / "birefnet").mkdir(parents=True)
    os.symlink(checkpoint, models / "birefnet" / CKPT_NAME)
    h = fake_host.install(models)
    h.models = models
    yield h
    fake_host.uninstall()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, checkpoint):
    """One ``BIREFNET_MODEL`` shared by the segment tests (loading takes a second or two)."""
    models = tmp_path_factory.mktemp("shared") / "models"
    (models / "birefnet").mkdir(parents=True)
    os.symlink(checkpoint, models / "birefnet" / CKPT_NAME)
    fake_host.install(models)
    try:
        out = BiRefNetModelLoader().load(CKPT_NAME, "fp32", "auto", "auto")
    finally:
        fake_host.uninstall()
    return out["result"][0]


def _images(b=2, h=40, w=56, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


# -- model folders -------------------------------------------------------------------------

def test_register_creates_entry_with_model_extensions(host):
    fp = host.folder_paths
    assert "birefnet" not in fp.folder_names_and_paths
    host_module.register_model_folder()
    paths, exts = fp.folder_names_and_paths["birefnet"]
    assert paths == [str(host.models / "birefnet")]
    assert ".safetensors" in exts and ".pth" in exts and ".json" not in exts


def test_register_appends_to_existing_entry_and_keeps_user_paths(host, tmp_path):
    fp = host.folder_paths
    user = str(tmp_path / "elsewhere" / "birefnet")
    fp.add_model_folder_path("birefnet", user)  # what extra_model_paths.yaml does
    entry_paths = fp.folder_names_and_paths["birefnet"][0]
    host_module.register_model_folder()
    host_module.register_model_folder()  # idempotent
    paths, exts = fp.folder_names_and_paths["birefnet"]
    assert paths is entry_paths  # the same list object: appended to, never replaced
    assert paths == [user, str(host.models / "birefnet")]
    assert ".safetensors" in exts and ".txt" not in exts


def test_pack_import_registers_folder_inside_host(host):
    pack = load_pack("birefnet_pack_hosted", fresh=True)
    try:
        assert "birefnet" in host.folder_paths.folder_names_and_paths
        assert "BiRefNetSegment" in pack.NODE_CLASS_MAPPINGS
    finally:
        for key in [k for k in sys.modules if k.startswith("birefnet_pack_hosted")]:
            del sys.modules[key]


def test_model_list_merges_birefnet_and_core_background_removal(host, checkpoint):
    core = host.models / "background_removal"
    (core / "sub").mkdir(parents=True)
    os.symlink(checkpoint, core / "sub" / "RMBG-2.0.safetensors")
    os.symlink(checkpoint, core / CKPT_NAME)  # same name in both: listed once
    (host.models / "birefnet" / "README.md").write_text("not a model")
    (host.models / "birefnet" / "config.json").write_text("{}")
    host.folder_paths.folder_names_and_paths["background_removal"] = (
        [str(core)], host.folder_paths.supported_pt_extensions)

    options = BiRefNetModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert options == [CKPT_NAME, "sub/RMBG-2.0.safetensors"]
    assert host_module.model_path("sub/RMBG-2.0.safetensors") == str(
        core / "sub" / "RMBG-2.0.safetensors")
    # Ours first when a name is in both folders.
    assert host_module.model_path(CKPT_NAME) == str(host.models / "birefnet" / CKPT_NAME)


def test_core_folder_is_registered_on_hosts_without_it(host, checkpoint):
    """ComfyUI 0.3.64 has no ``background_removal`` entry: the pack adds one (weights only),
    so files users put there, as the README says, are listed."""
    assert "background_removal" not in host.folder_paths.folder_names_and_paths
    assert host_module.list_models() == [CKPT_NAME]
    paths, exts = host.folder_paths.folder_names_and_paths["background_removal"]
    assert paths == [str(host.models / "background_removal")] and ".txt" not in exts
    core = host.models / "background_removal"
    core.mkdir(exist_ok=True)
    os.symlink(checkpoint, core / "birefnet.safetensors")
    (core / "notes.txt").write_text("not a model")
    assert host_module.list_models() == [CKPT_NAME, "birefnet.safetensors"]


# -- loader --------------------------------------------------------------------------------

def test_loader_schema_options_come_from_core_tables(host):
    from birefnet_pack.birefnet_core.plan import Precision
    from birefnet_pack.birefnet_core.variants import FAMILIES, PatchOrder

    req = BiRefNetModelLoader.INPUT_TYPES()["required"]
    assert list(req) == ["model_name", "precision", "family", "patch_order"]
    assert req["precision"][0] == [p.value for p in Precision]
    assert req["family"][0] == ["auto", *FAMILIES]
    assert req["patch_order"][0] == ["auto", *(p.value for p in PatchOrder)]
    assert req["patch_order"][1]["advanced"] is True
    assert BiRefNetModelLoader.RETURN_TYPES == ("BIREFNET_MODEL",)


def test_loader_loads_model_under_model_patcher_and_reports_info(host):
    out = BiRefNetModelLoader().load(CKPT_NAME, "auto", "auto", "auto")
    (model,) = out["result"]
    assert isinstance(model, BiRefNetModel)
    patcher = model.patcher
    assert isinstance(patcher, host.model_patcher.ModelPatcher)
    assert patcher.load_device == host.mm.get_torch_device()
    assert patcher.offload_device == host.mm.unet_offload_device()
    assert patcher.model is model.model
    assert model.info.family.name == "lite" and model.info.arch.backbone == "pvt_v2_b0"
    assert model.precision == "auto"
    (text,) = out["ui"]["text"]
    for expected in ("pvt_v2_b0.lite", "Lite", "backbone: pvt_v2_b0", "1024x1024",
                     "parameters: 15.", "float16"):
        assert expected in text
    assert host.mm.load_calls == []  # loading the file does not put it on the device


def test_loader_family_and_patch_order_overrides(host):
    out = BiRefNetModelLoader().load(CKPT_NAME, "fp16", "hr", "split")
    model = out["result"][0]
    assert model.info.family.name == "hr"
    assert model.info.family.resolution == (2048, 2048)
    assert model.model.patch_order.value == "split"  # HR's own order is einops: overridden
    assert "2048x2048" in out["ui"]["text"][0]
    assert model.precision == "fp16"


@pytest.mark.parametrize("name", [None, "", "none"])
def test_loader_no_model_selected(host, name):
    with pytest.raises(FileNotFoundError, match="No BiRefNet model selected") as info:
        BiRefNetModelLoader().load(name)
    assert str(host.models / "birefnet") in str(info.value)
    message = BiRefNetModelLoader.VALIDATE_INPUTS(name)
    assert isinstance(message, str) and "No BiRefNet model selected" in message


def test_loader_file_removed_since_listing(host):
    options = BiRefNetModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert options == [CKPT_NAME]
    os.remove(host.models / "birefnet" / CKPT_NAME)
    with pytest.raises(FileNotFoundError, match="was not found .* moved, renamed or deleted"):
        BiRefNetModelLoader().load(CKPT_NAME)
    assert "was not found" in BiRefNetModelLoader.VALIDATE_INPUTS(CKPT_NAME)
    assert BiRefNetModelLoader.IS_CHANGED(CKPT_NAME) == f"missing:{CKPT_NAME}"


def test_loader_validate_inputs_accepts_listed_file(host):
    assert BiRefNetModelLoader.VALIDATE_INPUTS(CKPT_NAME) is True


def test_loader_non_birefnet_file_gives_core_error(host):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)},
              str(host.models / "birefnet" / "sd15.safetensors"))
    with pytest.raises(CheckpointError, match="is not a BiRefNet checkpoint.*Stable Diffusion"):
        BiRefNetModelLoader().load("sd15.safetensors")
    (host.models / "birefnet" / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="junk.pth"):
        BiRefNetModelLoader().load("junk.pth")


def test_loader_rejects_unknown_precision(host):
    with pytest.raises(ValueError, match="precision"):
        BiRefNetModelLoader().load(CKPT_NAME, "fp8")


def test_is_changed_follows_file_on_disk(host, checkpoint):
    before = BiRefNetModelLoader.IS_CHANGED(CKPT_NAME, precision="auto")
    link = host.models / "birefnet" / CKPT_NAME
    os.remove(link)
    shutil.copyfile(checkpoint, link)
    os.utime(link, ns=(1, 1))
    assert BiRefNetModelLoader.IS_CHANGED(CKPT_NAME) != before


# -- segment -------------------------------------------------------------------------------

def test_segment_outputs_and_memory_management(host, loaded):
    images = _images(2, 40, 56)
    mask, rgba = BiRefNetSegment().segment(loaded, images, TINY, 4.19, 0)

    assert mask.shape == (2, 40, 56) and mask.dtype == torch.float32
    assert rgba.shape == (2, 40, 56, 4) and rgba.dtype == torch.float32
    assert mask.device == host.mm.intermediate_device() == rgba.device
    assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0
    torch.testing.assert_close(rgba[..., :3], images)
    torch.testing.assert_close(rgba[..., 3], mask)

    (call,) = host.mm.load_calls
    assert call["models"] == [loaded.patcher]
    assert call["force_full_load"] is True
    assert call["memory_required"] > 0
    assert host.mm.current_loaded_models == [loaded.patcher]
    assert host.utils.PROGRESS[-1] == (2, 2)

    # Same as the core called directly (the node adds no processing of its own).
    expected = predict_masks(loaded.model, images, family=loaded.info.family, resolution=TINY,
                             precision="fp32")
    torch.testing.assert_close(mask, expected)


def test_segment_chunks_report_progress(host, loaded):
    BiRefNetSegment().segment(loaded, _images(3, 32, 32), TINY, 4.19, 1)
    assert host.utils.PROGRESS == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("channels", [1, 4])
def test_segment_grey_and_rgba_inputs(host, loaded, channels):
    images = _images(1, 32, 48, channels)
    mask, rgba = BiRefNetSegment().segment(loaded, images, TINY, 4.19, 0)
    assert mask.shape == (1, 32, 48) and rgba.shape == (1, 32, 48, 4)
    rgb = images.expand(-1, -1, -1, 3) if channels == 1 else images[..., :3]
    torch.testing.assert_close(rgba[..., :3], rgb)
    torch.testing.assert_close(rgba[..., 3], mask)  # an input alpha is replaced by the mask
    rgb3 = _images(1, 32, 48, 3)
    rgb3[..., :] = rgb
    mask3, _ = BiRefNetSegment().segment(loaded, rgb3, TINY, 4.19, 0)
    torch.testing.assert_close(mask, mask3)


@pytest.mark.parametrize("shape", [(1, 32, 32, 2), (32, 32, 3), (1, 32, 32, 5)])
def test_segment_rejects_bad_channels_before_loading(host, loaded, shape):
    with pytest.raises(InputError, match="IMAGE"):
        BiRefNetSegment().segment(loaded, torch.rand(shape), TINY, 4.19, 0)
    assert host.mm.load_calls == []


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_segment_empty_batch(host, loaded, channels):
    mask, rgba = BiRefNetSegment().segment(loaded, torch.zeros(0, 24, 40, channels), "auto",
                                           4.19, 0)
    assert mask.shape == (0, 24, 40) and rgba.shape == (0, 24, 40, 4)
    assert host.mm.load_calls == []  # nothing was put on the device


def test_segment_region_of_other_size_all_zero_means_whole_frame(host, loaded):
    images = _images(1, 40, 56)
    whole, _ = BiRefNetSegment().segment(loaded, images, TINY, 4.19, 0)
    # What LoadImage returns for an image without alpha: 64x64 zeros.
    masked, _ = BiRefNetSegment().segment(loaded, images, TINY, 4.19, 0,
                                          region=torch.zeros(1, 64, 64))
    torch.testing.assert_close(masked, whole)


def test_segment_region_box_is_resized_and_restricts_mask(host, loaded):
    images = _images(2, 40, 56)
    region = torch.zeros(1, 10, 14)  # a quarter-size region mask, one for all frames
    region[:, 2:6, 3:9] = 1.0  # -> frame box x 12..36, y 8..24
    mask, rgba = BiRefNetSegment().segment(loaded, images, TINY, 4.19, 0, region=region)
    assert mask.shape == (2, 40, 56)
    outside = torch.ones(40, 56, dtype=torch.bool)
    outside[8:24, 12:36] = False
    assert float(mask[:, outside].abs().max()) == 0.0
    assert float(mask[:, 8:24, 12:36].min()) > 0.0
    torch.testing.assert_close(rgba[..., 3], mask)


def test_segment_interrupt_raises_host_exception(host, loaded):
    host.mm.interrupt_current_processing(True)
    with pytest.raises(host.mm.InterruptProcessingException):
        BiRefNetSegment().segment(loaded, _images(2, 32, 32), TINY, 4.19, 1)
    assert host.mm.processing_interrupted() is False  # cleared, like ComfyUI does


def test_segment_model_stays_under_host_control(host, loaded):
    calls = []
    original = loaded.model.clear_caches
    loaded.model.clear_caches = lambda: (calls.append(1), original())[1]
    try:
        BiRefNetSegment().segment(loaded, _images(1, 32, 32), TINY, 4.19, 0)
        host.mm.unload_all_models()  # what "/free" (Unload models) does
        assert host.mm.current_loaded_models == []
        assert loaded.model.device == loaded.patcher.offload_device
        assert calls, "the offload callback should drop per-device caches"
        BiRefNetSegment().segment(loaded, _images(1, 32, 32), TINY, 4.19, 0)
        assert len(host.mm.load_calls) == 2  # loaded again through the host, not behind it
    finally:
        del loaded.model.clear_caches


def test_segment_rejects_foreign_model(host):
    with pytest.raises(TypeError, match="Load BiRefNet Model"):
        BiRefNetSegment().segment(object(), _images(1, 32, 32), "auto", 4.19, 0)


def test_segment_bad_resolution_is_clear(host, loaded):
    with pytest.raises(InputError, match="resolution"):
        BiRefNetSegment().segment(loaded, _images(1, 32, 32), "huge", 4.19, 0)


def test_auto_precision_follows_the_host_on_cuda(host, monkeypatch):
    cuda = torch.device("cuda", 0)  # only the device type matters; no GPU needed
    assert host_module.auto_precision(torch.device("cpu")) == "auto"  # the core's policy
    monkeypatch.setattr(host.mm, "should_use_bf16", lambda device=None, **_: True)
    monkeypatch.setattr(host.mm, "should_use_fp16", lambda device=None, **_: True)
    assert host_module.auto_precision(cuda) == "fp16"  # preferred: closer to fp32 than bf16
    monkeypatch.setattr(host.mm, "should_use_fp16", lambda device=None, **_: False)
    assert host_module.auto_precision(cuda) == "bf16"  # a GPU where ComfyUI avoids fp16
    monkeypatch.setattr(host.mm, "should_use_bf16", lambda device=None, **_: False)
    assert host_module.auto_precision(cuda) == "fp32"  # e.g. --force-fp32, or Pascal


def test_segment_passes_one_plan_to_the_core_and_its_memory_to_the_host(host, loaded,
                                                                         monkeypatch):
    from birefnet_pack.nodes import segment as segment_module

    seen = {}

    def fake_predict(model, images, **kwargs):
        seen.update(kwargs, model=model)
        return torch.full(images.shape[:3], 0.25)

    monkeypatch.setattr(segment_module, "predict_masks", fake_predict)
    region = torch.zeros(1, 8, 8)
    mask, rgba = BiRefNetSegment().segment(loaded, _images(3, 32, 32), "dynamic", 2.0, 2,
                                           region=region)
    assert seen["model"] is loaded.model
    plan = seen["plan"]
    assert plan.family is loaded.info.family
    assert plan.options.resolution == "dynamic" and plan.options.max_megapixels == 2.0
    assert plan.chunk == 2 and seen["regions"] is region
    assert plan.precision.name == "fp32" and plan.device == loaded.patcher.load_device
    assert seen["output_device"] == host.mm.intermediate_device()
    assert seen["is_cancelled"]() is False
    assert float(rgba[..., 3].mean()) == 0.25
    (call,) = host.mm.load_calls
    assert call["memory_required"] == plan.memory_required > 0
    auto = dataclasses.replace(loaded, precision="auto")
    BiRefNetSegment().segment(auto, _images(1, 32, 32), "auto", 4.19, 0)
    assert seen["plan"].options.precision == "auto"  # on the CPU the core's policy decides
    assert seen["plan"].precision.name == "fp32"
