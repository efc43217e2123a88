"""Loading: family from names, overrides, and a clear error for every kind of bad file (issue 2)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core import CheckpointError, InputError, family_from_filename, get_family
from birefnet_core.model import BiRefNet
from birefnet_core.variants import Architecture, PatchOrder
from birefnet_core.weights import build_model, inspect_model, load_model, read_checkpoint


@pytest.fixture(scope="module")
def b0_state_dict():
    torch.manual_seed(0)
    return BiRefNet(Architecture("pvt_v2_b0")).state_dict()


@pytest.mark.parametrize("name, family, resolution, order", [
    ("model.safetensors", "general", (1024, 1024), "split"),
    ("BiRefNet-general-epoch_244.pth", "general", (1024, 1024), "split"),
    ("BiRefNet_HR-general-epoch_130.pth", "hr", (2048, 2048), "einops"),
    ("BiRefNet_HR-matting-epoch_135.pth", "hr_matting", (2048, 2048), "einops"),
    ("BiRefNet_lite-2K.safetensors", "lite_2k", (2560, 1440), "split"),
    ("BiRefNet_lite-general-2K-epoch_232.pth", "lite_2k", (2560, 1440), "split"),
    ("BiRefNet_lite.safetensors", "lite", (1024, 1024), "split"),
    ("BiRefNet-general-resolution_512x512-fp16-epoch_216.pth", "res_512", (512, 512), "einops"),
    ("BiRefNet_dynamic-general-epoch_174.pth", "dynamic", None, "einops"),
    ("BiRefNet-matting-epoch_100.pth", "matting", (1024, 1024), "split"),
    ("BiRefNet-portrait-epoch_150.pth", "portrait", (1024, 1024), "split"),
    ("RMBG-2.0.safetensors", "rmbg2", (1024, 1024), "split"),
    ("BiRefNet-HRSOD_DHU-epoch_115.pth", "hrsod", (1024, 1024), "split"),
    ("BiRefNet-COD-epoch_125.pth", "cod", (1024, 1024), "split"),
    ("BiRefNet-DIS-epoch_590.pth", "dis5k", (1024, 1024), "split"),
    ("BiRefNet-DIS5K-TR_TEs-epoch_290.pth", "dis5k_tr_tes", (1024, 1024), "split"),
])
def test_family_from_filename(name, family, resolution, order):
    fam = family_from_filename(os.path.join("models", "birefnet", name))
    assert (fam.name, fam.resolution, fam.patch_order.value) == (family, resolution, order)


def test_overrides_copy_the_table_entry():
    hr = get_family("hr")
    split = get_family("HR", patch_order="split")
    assert split.patch_order is PatchOrder.SPLIT and hr.patch_order is PatchOrder.EINOPS
    assert get_family("general", resolution=(768, 512)).resolution == (768, 512)
    assert get_family("general").resolution == (1024, 1024)
    with pytest.raises(InputError, match="unknown model family"):
        get_family("nope")
    with pytest.raises(InputError, match="unknown patch order"):
        get_family("general", patch_order="zigzag")


def test_load_fp16_random_checkpoint_with_family_override(tmp_path, b0_state_dict):
    path = tmp_path / "my_weights.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in b0_state_dict.items()},
              str(path))
    loaded = load_model(path, family="hr", patch_order="split")
    info = loaded.info
    assert info.name == "pvt_v2_b0.hr"
    assert info.resolution == (2048, 2048) and info.patch_order is PatchOrder.SPLIT
    assert info.stored_dtype == "float16"
    assert info.n_params == sum(v.numel() for k, v in b0_state_dict.items()
                                if "running" not in k and "num_batches" not in k)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert "pvt_v2_b0" in info.summary() and "2048x2048" in info.summary()
    assert not loaded.model.training
    out = loaded.model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()


def test_relative_position_index_is_recomputed(tmp_path, fixtures_dir):
    from safetensors.torch import load_file

    sd = load_file(str(fixtures_dir / "lite_fp16.safetensors"))
    key = "bb.layers.0.blocks.0.attn.relative_position_index"
    good = sd[key].clone()
    sd[key] = torch.zeros_like(good)  # a corrupted derived buffer must not be trusted
    del sd["bb.layers.1.blocks.0.attn.relative_position_index"]  # nor required
    path = tmp_path / "lite.safetensors"
    save_file(sd, str(path))
    model = load_model(path).model
    assert torch.equal(model.bb.layers[0].blocks[0].attn.relative_position_index, good)


@pytest.mark.parametrize("stored, name, options", [
    ("fixture", "BiRefNet_lite-2K.safetensors", {}),
    ("fp32", "weights.safetensors", {"family": "matting", "patch_order": "einops"}),
    ("module", "BiRefNet-HR-epoch_3.pth", {}),
])
def test_inspect_model_reports_what_loading_reports(tmp_path, fixtures_dir, b0_state_dict,
                                                    stored, name, options):
    """The loader panel's description (header only) equals the loaded model's, for the real
    Swin lite fixture and PVT files saved as users have them."""
    path = tmp_path / name
    if stored == "fixture":
        path.symlink_to(fixtures_dir / "lite_fp16.safetensors")
    elif stored == "fp32":
        save_file(b0_state_dict, str(path))
    else:
        torch.save({"state_dict": {f"module._orig_mod.{k}": v.half() if v.is_floating_point()
                                   else v for k, v in b0_state_dict.items()}}, path)
    loaded = load_model(path, **options).info
    assert inspect_model(path, **options) == loaded


def test_inspect_model_refuses_what_loading_refuses(tmp_path, b0_state_dict):
    path = tmp_path / "cut.safetensors"
    save_file(b0_state_dict, str(path))
    _truncate_inside_the_last_tensor(path)
    with pytest.raises(CheckpointError, match="cut.safetensors is truncated or corrupt"):
        inspect_model(path)
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="Stable Diffusion"):
        inspect_model(path)


# -- bad files ----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")


def test_stable_diffusion_checkpoint_is_named(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="not a BiRefNet checkpoint.*Stable Diffusion"):
        load_model(path)


def test_onnx_file(tmp_path):
    path = tmp_path / "birefnet.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError, match="ONNX"):
        load_model(path)


def test_text_file(tmp_path):
    path = tmp_path / "README.txt"
    path.write_text("download the weights from the model page\n")
    with pytest.raises(CheckpointError, match="neither a safetensors nor a PyTorch"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path, b0_state_dict, suffix):
    path = tmp_path / f"BiRefNet{suffix}"
    if suffix == ".pth":
        torch.save(b0_state_dict, path)
    else:
        save_file(b0_state_dict, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)


def test_unknown_backbone(tmp_path, b0_state_dict):
    sd = {k: v for k, v in b0_state_dict.items() if not k.startswith("bb.")}
    sd["bb.stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "resnet_birefnet.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="unknown backbone"):
        load_model(path)


def test_unknown_backbone_depths(tmp_path, b0_state_dict):
    sd = {k: v for k, v in b0_state_dict.items() if not k.startswith("bb.block3.1.")}
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"unknown pvt backbone variant.*depths"):
        load_model(path)


def test_shape_mismatch_names_the_keys(tmp_path, b0_state_dict):
    sd = dict(b0_state_dict)
    sd["decoder.lateral_block4.conv.weight"] = torch.zeros(3, 3, 1, 1)
    sd["decoder.extra_head.weight"] = torch.zeros(1)
    path = tmp_path / "patched.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "patched.safetensors" in msg and "pvt_v2_b0" in msg
    assert "decoder.lateral_block4.conv.weight" in msg and "decoder.extra_head.weight" in msg


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_build_model_without_weights_is_random_init():
    model = build_model(Architecture("pvt_v2_b0"))
    assert model.decoder.conv_out1[0].weight.abs().sum() > 0


def _truncate_inside_the_last_tensor(path):
    data = path.read_bytes()
    path.write_bytes(data[:-7])


def test_safetensors_with_an_intact_header_but_short_data(tmp_path, b0_state_dict):
    """A download cut off inside the last tensor: the header is whole, the data is not."""
    path = tmp_path / "BiRefNet_lite.safetensors"
    save_file(b0_state_dict, str(path))
    _truncate_inside_the_last_tensor(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt: download it again") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_safetensors_layout_accepts_whole_files_only(tmp_path):
    from birefnet_core.weights import safetensors_layout_problem

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2)}, str(path))
    assert safetensors_layout_problem(path) is None
    whole = path.read_bytes()
    for bad, what in ((whole[:-1], "short data"), (whole + b"\0" * 4, "trailing bytes"),
                      (whole[:5], "no header length"), (whole[:20], "cut header"),
                      (b"\xff" * 8 + whole[8:], "absurd header length")):
        path.write_bytes(bad)
        assert safetensors_layout_problem(path) is not None, f"accepted a file with {what}"
        with pytest.raises(CheckpointError, match="truncated or corrupt: download it again"):
            read_checkpoint(path)


def test_random_bytes_pth_is_not_a_valid_checkpoint(tmp_path):
    path = tmp_path / "BiRefNet-general-epoch_244.pth"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "not a valid PyTorch checkpoint" in message and "pickled objects" not in message, \
        message


def test_truncated_legacy_pth_is_not_called_unsafe(tmp_path, b0_state_dict):
    path = tmp_path / "legacy.pth"
    torch.save(b0_state_dict, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "truncated or corrupt" in message and "pickled objects" not in message, message


def test_unreadable_safetensors_says_permission_denied(tmp_path, b0_state_dict, monkeypatch):
    """The OS refusing to read the file (simulated: root reads a chmod 000 file anyway)."""
    from birefnet_core import weights

    path = tmp_path / "locked.safetensors"
    save_file(b0_state_dict, str(path))

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(weights, "open", refuse, raising=False)
    with pytest.raises(CheckpointError, match="permission denied") as info:
        load_model(path)
    assert str(path) in str(info.value) and "No such file" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a chmod 000 file anyway (the simulated test covers it)")
def test_chmod_000_safetensors_says_permission_denied(tmp_path, b0_state_dict):
    path = tmp_path / "locked.safetensors"
    save_file(b0_state_dict, str(path))
    path.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="permission denied") as info:
            load_model(path)
    finally:
        path.chmod(0o644)
    assert str(path) in str(info.value) and "No such file" not in str(info.value)


def test_integer_weight_names_the_tensor_and_dtype(tmp_path, b0_state_dict):
    sd = dict(b0_state_dict)
    key = "decoder.conv_out1.0.weight"
    sd[key] = sd[key].round().to(torch.int32)
    path = tmp_path / "int_weights.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert key in message and "int32" in message, message


def test_legacy_pth_passes_the_container_check(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"x": torch.arange(3.0)}}, path,
               _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["x"], torch.arange(3.0))


@pytest.mark.parametrize("value, what", [(float("nan"), "1 NaN and 0 infinite"),
                                         (float("inf"), "0 NaN and 1 infinite")])
def test_non_finite_weight_names_the_tensor(tmp_path, b0_state_dict, value, what):
    """A NaN weight used to load fine and give all-NaN masks (black in a preview)."""
    sd = {k: v.clone() for k, v in b0_state_dict.items()}
    first, second = "bb.patch_embed1.proj.weight", "decoder.conv_out1.0.weight"
    sd[second].view(-1)[7] = value
    path = tmp_path / "diverged.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and f"'{second}'" in message and what in message, message
    sd[first].view(-1)[0] = float("nan")  # two bad tensors: the first in the model's order
    with pytest.raises(CheckpointError, match=f"'{first}'"):
        build_model(Architecture("pvt_v2_b0"), sd)
