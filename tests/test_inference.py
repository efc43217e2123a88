"""Tests of ``birefnet_core.inference``: resolution policy, pre/post-processing against the
official pipeline, chunked prediction (invariance, cancellation, out-of-memory back-off,
precision fallback, bounded memory) and region guidance. CPU only, small sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from birefnet_core import plan as plan_module
from birefnet_core.errors import CancelledError, InputError, OutOfMemoryError
from birefnet_core.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    postprocess,
    predict_masks,
    preprocess,
    regions_to_boxes,
    resize_masks,
)
from birefnet_core.plan import (
    Precision,
    PrecisionPlan,
    WorkingSize,
    auto_batch_size,
    estimate_memory,
    parse_resolution,
    resolve_precision,
    resolve_working_size,
)
from birefnet_core.variants import FAMILIES, get_family


class StubNet(nn.Module):
    """A 3x3 convolution with the BiRefNet forward contract; records every input shape."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.calls: list[tuple[int, ...]] = []

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0, x.shape
        self.calls.append(tuple(x.shape))
        return self.conv(x)

    @property
    def batches(self) -> list[int]:
        return [shape[0] for shape in self.calls]


class OOMNet(StubNet):
    """Raises the CUDA out-of-memory error for chunks larger than ``limit`` frames."""

    def __init__(self, limit: int, error=torch.OutOfMemoryError):
        super().__init__()
        self.limit, self.error = limit, error

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.calls.append(("oom", x.shape[0]))
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


class NaNUnderAutocast(StubNet):
    """Gives NaN logits for frames whose mean input is positive when run under CPU autocast:
    a stand-in for an fp16 overflow."""

    def forward(self, x):
        out = super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            bad = x.float().mean(dim=(1, 2, 3)) > 0
            out = out.float().clone()
            out[bad] = float("nan")
        return out


def frames(b: int = 4, h: int = 48, w: int = 80, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


# ---------------------------------------------------------------------------------------------
# Resolution policy
# ---------------------------------------------------------------------------------------------

FIXED_SIZES = {
    "general": (1024, 1024), "lite": (1024, 1024), "lite_2k": (2560, 1440),
    "hr": (2048, 2048), "hr_matting": (2048, 2048), "res_512": (512, 512),
    "matting": (1024, 1024), "portrait": (1024, 1024), "dis5k": (1024, 1024),
    "dis5k_tr_tes": (1024, 1024), "cod": (1024, 1024), "hrsod": (1024, 1024),
    "rmbg2": (1024, 1024), "legacy": (1024, 1024), "lite_matting": (1024, 1024),
    "paper": (1024, 1024), "toonout": (1024, 1024), "lucida": (1024, 1024),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_resolution_table_covers_every_family(name):
    family = FAMILIES[name]
    size = resolve_working_size(family, (1080, 1920))
    assert size.width % 32 == 0 and size.height % 32 == 0
    if family.dynamic:
        assert size.wh == (1920, 1088) and size.note == ""
    else:
        assert size.wh == FIXED_SIZES[name] and size.note == ""
        assert resolve_working_size(family, (17, 3000)).wh == FIXED_SIZES[name]


@pytest.mark.parametrize("image_hw, expected, noted", [
    ((1080, 1920), (1920, 1088), False),  # rounded to /32, within limits
    ((100, 150), (384, 256), True),  # shorter side enlarged to 256
    ((4000, 6000), (2496, 1664), True),  # capped at 2048² worth of pixels
    ((64, 5000), (18112, 224), True),  # enlarging would pass the cap: the cap wins
])
def test_dynamic_policy(image_hw, expected, noted):
    size = resolve_working_size(FAMILIES["dynamic"], image_hw)
    assert size.wh == expected
    assert size.width * size.height <= plan_module.DYNAMIC_MAX_MEGAPIXELS * 1e6 * 1.05
    assert bool(size.note) is noted


def test_dynamic_limits_are_parameters():
    size = resolve_working_size(None, (1000, 1000), override="dynamic", max_megapixels=0.25)
    assert size.wh == (512, 512) and "capped" in size.note
    assert resolve_working_size(None, (100, 100), override="dynamic", min_side=0).wh == (96, 96)


@pytest.mark.parametrize("override, expected, noted", [
    ((1024, 768), (1024, 768), False),
    ("1000x500", (992, 512), True),
    (" 640 X 480 ", (640, 480), False),
    (700, (704, 704), True),
    ((10, 10), (32, 32), True),
])
def test_override_rounds_and_reports(override, expected, noted):
    size = resolve_working_size(FAMILIES["hr"], (1080, 1920), override=override)
    assert size.wh == expected and bool(size.note) is noted
    if noted:
        assert "rounded" in size.note and f"{expected[0]}x{expected[1]}" in size.note


def test_override_keywords():
    assert resolve_working_size(FAMILIES["hr"], (1080, 1920), override="auto").wh == (2048, 2048)
    assert resolve_working_size(FAMILIES["hr"], (1080, 1920), override="dynamic").wh == (1920, 1088)
    assert resolve_working_size(None, (1080, 1920)).wh == (1024, 1024)
    dynamic_fixed = get_family("dynamic", resolution=(512, 512))
    assert resolve_working_size(dynamic_fixed, (1080, 1920)).wh == (512, 512)
    assert parse_resolution("") == "auto" and parse_resolution("Dynamic") == "dynamic"


@pytest.mark.parametrize("bad", ["big", "1024x", "0x512", (1024,), (-32, 32), (32.0, 32), True])
def test_bad_resolution_raises(bad):
    with pytest.raises(InputError, match="resolution"):
        resolve_working_size(None, (64, 64), override=bad)


def test_working_size_is_frozen_and_formats():
    size = WorkingSize(64, 32)
    assert size.hw == (32, 64) and str(size) == "64x32"
    with pytest.raises(Exception):
        size.width = 1


# ---------------------------------------------------------------------------------------------
# Pre- and post-processing
# ---------------------------------------------------------------------------------------------


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x * std + mean


def test_preprocess_matches_official_pil_pipeline(fixtures_dir):
    from PIL import Image
    from safetensors.torch import load_file

    ref = load_file(str(fixtures_dir / "preproc" / "preproc.safetensors"))
    image = np.asarray(Image.open(fixtures_dir / "preproc" / "image_300x460.png").convert("RGB"))
    x = torch.from_numpy(image.copy()).float().div(255)[None]
    ours = preprocess(x, (512, 512))
    assert ours.shape == ref["input_resized_512"].shape == (1, 3, 512, 512)
    diff = (_denormalise(ours) - _denormalise(ref["input_resized_512"])).abs()
    assert diff.max() <= 1.5 / 255 and diff.mean() <= 0.5 / 255
    # uint8 input goes through the same path
    assert torch.allclose(preprocess(torch.from_numpy(image.copy())[None], (512, 512)), ours)


def test_mask_resize_matches_official_pil_pipeline(fixtures_dir):
    from safetensors.torch import load_file

    ref = load_file(str(fixtures_dir / "preproc" / "preproc.safetensors"))
    expected = ref["mask_pil_uint8"].float() / 255
    ours = resize_masks(ref["prob_512"], expected.shape)
    assert ours.shape == (1, *expected.shape) and ours.dtype == torch.float32
    assert (ours[0] - expected).abs().max() <= 3 / 255
    logits = torch.logit(ref["prob_512"].double()).float()
    assert torch.allclose(postprocess(logits, expected.shape), ours, atol=1e-6)


def test_preprocess_channels_and_normalisation():
    rgb = frames(2, 40, 60)
    size = (64, 32)
    out = preprocess(rgb, size)
    assert out.shape == (2, 3, 32, 64) and out.dtype == torch.float32
    rgba = torch.cat((rgb, torch.rand(2, 40, 60, 1)), dim=-1)
    assert torch.equal(preprocess(rgba, size), out)
    grey = rgb[..., :1]
    assert torch.equal(preprocess(grey, size), preprocess(grey.expand(-1, -1, -1, 3), size))
    # no resize when the size already matches: exactly the normalised image
    same = preprocess(rgb, (60, 40))
    assert torch.allclose(_denormalise(same), rgb.permute(0, 3, 1, 2), atol=1e-6)
    with pytest.raises(InputError):
        preprocess(torch.rand(1, 8, 8, 2), size)


def test_postprocess_range_and_polarity():
    logits = torch.tensor([-30.0, 30.0]).view(2, 1, 1, 1).expand(2, 1, 32, 32)
    masks = postprocess(logits, (7, 9))
    assert masks.shape == (2, 7, 9) and masks.dtype == torch.float32
    assert masks[0].max() < 1e-6 and masks[1].min() > 1 - 1e-6  # 1 = foreground
    m = postprocess(torch.randn(3, 1, 32, 32) * 100, (50, 70))
    assert m.min() >= 0 and m.max() <= 1


# ---------------------------------------------------------------------------------------------
# Precision and memory policy
# ---------------------------------------------------------------------------------------------


def test_precision_policy_cpu():
    assert [p.value for p in Precision] == ["auto", "fp32", "fp16", "bf16"]
    plan = resolve_precision("auto", "cpu")
    assert plan.dtype == torch.float32 and not plan.reduced and plan.note == ""
    plan = resolve_precision("fp16", "cpu")
    assert plan.dtype == torch.float32 and "fp32" in plan.note
    plan = resolve_precision(Precision.BF16, "cpu")
    assert plan.dtype == torch.bfloat16 and plan.reduced and plan.note == ""
    with pytest.raises(InputError, match="precision"):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_precision_policy_cuda(monkeypatch, bf16_ok):
    monkeypatch.setattr(plan_module, "_cuda_bf16_supported", lambda device: bf16_ok)
    auto = resolve_precision("auto", "cuda")
    assert auto.dtype == torch.float16 and auto.reduced  # closer to fp32 than bf16
    assert resolve_precision("fp16", "cuda:0").dtype == torch.float16
    assert resolve_precision("fp32", "cuda").dtype == torch.float32
    if bf16_ok:
        assert resolve_precision("bf16", "cuda").name == "bf16"
    else:
        with pytest.raises(InputError, match="bf16"):
            resolve_precision("bf16", "cuda")


def test_precision_policy_mps():
    assert resolve_precision("auto", "mps").dtype == torch.float32
    assert resolve_precision("fp16", "mps").dtype == torch.float16
    with pytest.raises(InputError):
        resolve_precision("bf16", "mps")


def test_deformable_convolution_runs_in_fp32_under_cuda_autocast():
    # torchvision registers an AutocastCUDA kernel for deform_conv2d that upcasts to fp32 and
    # casts the result back; the fp16/bf16 policy on CUDA relies on it (no CPU one exists).
    pytest.importorskip("torchvision")
    import torchvision.ops  # noqa: F401  (registers the operators)

    assert torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::deform_conv2d",
                                                          "AutocastCUDA")


def test_estimate_memory(tiny_model):
    one = estimate_memory("swin_v1_l", (1024, 1024), "fp32", 1)
    assert 2e9 < one < 6e9
    assert estimate_memory("swin_v1_l", (1024, 1024), "fp32", 4) == 4 * one
    assert estimate_memory("swin_v1_l", (1024, 1024), "fp16", 1) < one
    assert estimate_memory("swin_v1_l_legacy", (2048, 2048)) == 4 * one
    assert estimate_memory("pvt_v2_b0", (1024, 1024)) < one
    with_weights = estimate_memory(tiny_model, (64, 64))
    without = estimate_memory(tiny_model, (64, 64), include_weights=False)
    n_bytes = sum(p.numel() * 4 for p in tiny_model.parameters())
    assert with_weights - without >= n_bytes
    assert without == estimate_memory("pvt_v2_b0", (64, 64))
    with pytest.raises(InputError):
        estimate_memory("resnet50", (64, 64))


@pytest.mark.parametrize("device, cap", [("cuda", 32), ("cpu", 4)])
def test_auto_batch_size_fills_the_free_memory(tiny_model, monkeypatch, device, cap):
    """k = the frames whose activations (estimate_memory, weights excluded) fit in 80 % of the
    free memory, capped (32 on a GPU, 4 on the CPU), at most the frame count, at least 1. The
    free-memory probe is replaced, so the CUDA arithmetic runs without a GPU."""
    plan = resolve_precision("auto", device)
    assert plan.dtype == (torch.float16 if device == "cuda" else torch.float32)
    size = (512, 384)
    per_frame = estimate_memory(tiny_model, size, plan.dtype, 1, include_weights=False)
    assert per_frame == estimate_memory(tiny_model, size, plan.dtype, 3,
                                        include_weights=False) // 3 > 0
    free = {}
    monkeypatch.setattr(plan_module, "_free_memory", lambda dev: free["bytes"])

    def k(free_bytes, total=1000):
        free["bytes"] = free_bytes
        return auto_batch_size(tiny_model, size, plan, device, total)

    def fits(frames):  # the fewest free bytes whose 80 % hold ``frames`` frames
        return int(frames * per_frame / 0.8) + 1

    assert k(fits(3)) == 3
    assert k(fits(3) - 2) == 2  # just short of the third frame
    assert k(fits(cap + 10)) == cap
    assert k(fits(3), total=2) == 2
    assert k(0) == 1 and k(per_frame // 2) == 1  # nothing fits: still one frame at a time
    free["bytes"] = None  # unknown free memory: the cap
    assert auto_batch_size(tiny_model, size, plan, device, 1000) == cap


# ---------------------------------------------------------------------------------------------
# predict_masks
# ---------------------------------------------------------------------------------------------


def test_predict_shapes_dtypes_devices(tiny_model):
    images = frames(2, 50, 70)
    masks = predict_masks(tiny_model, images, resolution=(64, 64))
    assert masks.shape == (2, 50, 70) and masks.dtype == torch.float32
    assert masks.device.type == "cpu"
    assert masks.min() >= 0 and masks.max() <= 1
    net = StubNet()
    for c in (1, 3, 4):
        out = predict_masks(net, frames(3, 40, 30, c=c), resolution="64x32", output_device=None)
        assert out.shape == (3, 40, 30) and out.dtype == torch.float32
    assert set(net.calls) == {(3, 3, 32, 64)}
    assert predict_masks(net, torch.rand(0, 8, 8, 3)).shape == (0, 8, 8)
    double = predict_masks(net, frames(1, 20, 20).double(), resolution=(32, 32))
    assert double.dtype == torch.float32


def test_predict_matches_manual_pipeline():
    net = StubNet()
    images = frames(3, 48, 80)
    masks = predict_masks(net, images, resolution=(96, 64))
    with torch.inference_mode():
        manual = postprocess(net(preprocess(images, (96, 64))), (48, 80))
    assert torch.equal(masks, manual)


def test_predict_input_errors():
    net = StubNet()
    with pytest.raises(InputError, match=r"\[B, H, W, C\]"):
        predict_masks(net, torch.rand(3, 32, 32))
    with pytest.raises(InputError, match=r"\[B, H, W, C\]"):
        predict_masks(net, torch.rand(1, 3, 32, 32))
    with pytest.raises(InputError, match="float"):
        predict_masks(net, torch.zeros(1, 32, 32, 3, dtype=torch.int32))
    with pytest.raises(InputError, match="batch_size"):
        predict_masks(net, frames(1), batch_size=-1)
    broken = frames(3)
    broken[2, 5, 7, 1] = float("nan")  # would reach the model's deformable convolutions
    with pytest.raises(InputError, match="images: frame 2 has 1 NaN"):
        predict_masks(net, broken)


def test_chunk_size_invariance_real_model(tiny_model):
    images = frames(2, 40, 56)  # batches of 1 and 2 at 64x64, as in the shape test (warm caches)
    one = predict_masks(tiny_model, images, resolution=(64, 64), batch_size=1)
    all_ = predict_masks(tiny_model, images, resolution=(64, 64), batch_size=2)
    assert (one - all_).abs().max() <= 1e-6


@pytest.mark.parametrize("k", [1, 2, 3, 7, 20])
def test_chunk_size_invariance_and_progress(k):
    net = StubNet()
    images = frames(7, 40, 56)
    reference = predict_masks(StubNet(), images, resolution=(64, 64), batch_size=7)
    progress = []
    masks = predict_masks(net, images, resolution=(64, 64), batch_size=k,
                          on_progress=lambda done, total: progress.append((done, total)))
    assert (masks - reference).abs().max() <= 1e-6
    chunks = [min(k, 7 - i) for i in range(0, 7, k)]
    assert net.batches == chunks
    assert progress == [(sum(chunks[:i + 1]), 7) for i in range(len(chunks))]


def test_cancellation_stops_between_chunks():
    net = StubNet()
    progress = []
    with pytest.raises(CancelledError, match="4 of 10"):
        predict_masks(net, frames(10, 32, 32), resolution=(32, 32), batch_size=2,
                      on_progress=lambda done, total: progress.append(done),
                      is_cancelled=lambda: len(progress) >= 2)
    assert net.batches == [2, 2] and progress == [2, 4]
    assert issubclass(CancelledError, RuntimeError)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_the_chunk(error):
    images = frames(8, 32, 48)
    reference = predict_masks(StubNet(), images, resolution=(64, 32), batch_size=8)
    net = OOMNet(limit=2, error=error)
    notes = []
    masks = predict_masks(net, images, resolution=(64, 32), batch_size=8, on_note=notes.append)
    assert net.calls[:2] == [("oom", 8), ("oom", 4)]
    assert [c[0] for c in net.calls[2:]] == [2, 2, 2, 2]  # the smaller k is kept
    assert (masks - reference).abs().max() <= 1e-6
    assert len(notes) == 2 and all("out of memory" in n for n in notes)


def test_out_of_memory_with_one_frame_raises_clear_error():
    net = OOMNet(limit=0)
    with pytest.raises(OutOfMemoryError) as info:
        predict_masks(net, frames(4, 32, 32), resolution=(64, 64), batch_size=4,
                      on_note=lambda n: None)
    message = str(info.value)
    assert "64x64" in message and "fp32" in message and "resolution" in message
    assert "batch_size" in message
    assert [c[1] for c in net.calls] == [4, 2, 1]
    assert isinstance(info.value, RuntimeError)


def test_other_errors_are_not_retried():
    class Broken(StubNet):
        def forward(self, x):
            self.calls.append(tuple(x.shape))
            raise RuntimeError("shape mismatch")

    net = Broken()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_masks(net, frames(4, 32, 32), resolution=(32, 32), batch_size=4)
    assert len(net.calls) == 1


def test_non_finite_reduced_precision_falls_back_to_fp32(monkeypatch):
    images = frames(6, 32, 32)
    images[::2] -= 1.0  # even frames: negative mean input, fine in "bf16"; odd frames: NaN
    fp32 = predict_masks(StubNet(), images, resolution=(32, 32))
    monkeypatch.setattr(plan_module, "resolve_precision",
                        lambda precision, device: PrecisionPlan(torch.bfloat16, "cpu"))
    bf16 = predict_masks(StubNet(), images, resolution=(32, 32))
    assert 0 < (bf16 - fp32).abs().max() <= 0.02  # the stand-in really runs in bf16
    notes = []
    net = NaNUnderAutocast()
    masks = predict_masks(net, images, resolution=(32, 32), batch_size=2, on_note=notes.append)
    assert torch.isfinite(masks).all()
    assert len(notes) == 1 and "fp32" in notes[0]  # reported once for three chunks
    # each chunk: one autocast pass of 2 frames, then one fp32 pass of the bad frame
    assert net.batches == [2, 1, 2, 1, 2, 1]
    assert (masks[1::2] - fp32[1::2]).abs().max() <= 1e-6  # redone in fp32
    assert torch.equal(masks[::2], bf16[::2])  # the finite frames are kept from bf16


def test_explicit_fp16_on_cpu_runs_fp32_and_says_so():
    notes = []
    net = StubNet()
    images = frames(2, 32, 32)
    masks = predict_masks(net, images, resolution=(32, 32), precision="fp16", on_note=notes.append)
    assert torch.equal(masks, predict_masks(StubNet(), images, resolution=(32, 32)))
    assert len(notes) == 1 and "fp32" in notes[0]


@pytest.mark.parametrize("optimized", [False, True], ids=["exact", "fast"])
def test_real_model_in_cpu_bf16_stays_close_to_fp32(tiny_model, optimized):
    """Autocast reaches the deformable convolutions (which must run in fp32 there): the whole
    network runs in bf16 on the CPU, exact and fast modes alike, within 1e-2 of fp32."""
    import copy

    from birefnet_core.optimize import optimize_for_inference

    model = copy.deepcopy(tiny_model)
    if optimized:
        optimize_for_inference(model)
    images = frames(2, 64, 64)
    fp32 = predict_masks(model, images, resolution=(64, 64))
    bf16 = predict_masks(model, images, resolution=(64, 64), precision="bf16")
    assert 0 < (bf16 - fp32).abs().max() <= 1e-2


def test_rounded_resolution_is_reported():
    notes = []
    predict_masks(StubNet(), frames(1, 32, 32), resolution="50x40", on_note=notes.append)
    assert notes == ["resolution 50x40 (WxH) rounded to 64x32: sides must be multiples of 32"]


def test_list_outputs_use_the_last_logits():
    class SideOutputs(StubNet):
        def forward(self, x):
            final = super().forward(x)
            return [torch.zeros_like(final), final]

    images = frames(2, 32, 32)
    assert torch.equal(predict_masks(SideOutputs(), images, resolution=(32, 32)),
                       predict_masks(StubNet(), images, resolution=(32, 32)))


# ---------------------------------------------------------------------------------------------
# Region guidance
# ---------------------------------------------------------------------------------------------


def test_regions_to_boxes_forms():
    full = [0, 0, 80, 48]
    assert regions_to_boxes(None, 2, (48, 80)).tolist() == [full, full]
    boxes = regions_to_boxes(torch.tensor([[10.5, 4, 30, 20.2], [0, 0, 0, 0]]), 2, (48, 80))
    assert boxes.tolist() == [[10, 4, 30, 21], full]  # pixel cover; zero area = whole frame
    assert regions_to_boxes([-5, -5, 500, 20], 3, (48, 80)).tolist() == [[0, 0, 80, 20]] * 3
    mask = torch.zeros(2, 24, 40)  # half-resolution region masks
    mask[0, 5:10, 8:12] = 1
    boxes = regions_to_boxes(mask, 2, (48, 80))
    assert boxes.tolist() == [[16, 10, 24, 20], full]
    with pytest.raises(InputError, match="x1 >= x0"):
        regions_to_boxes(torch.tensor([[30, 0, 10, 10]]), 1, (48, 80))
    with pytest.raises(InputError, match="outside"):
        regions_to_boxes(torch.tensor([[100, 0, 120, 10]]), 1, (48, 80))
    with pytest.raises(InputError, match="frames"):
        regions_to_boxes(torch.zeros(3, 4), 2, (48, 80))


def test_region_guidance_zero_outside_the_box():
    net = StubNet()
    images = frames(3, 64, 96)
    boxes = torch.tensor([[10, 8, 50, 40], [0, 0, 96, 64], [60, 30, 90, 62]])
    masks = predict_masks(net, images, resolution=(64, 64), regions=boxes, region_margin=0.25)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        inside = torch.zeros_like(mask, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert (mask[~inside] == 0).all()
        assert (mask[inside] > 0).all()  # a sigmoid is never exactly 0
    assert set(net.calls) == {(3, 3, 64, 64)}  # crops segmented at the working size, one batch
    whole = predict_masks(StubNet(), images[1:2], resolution=(64, 64))
    assert (masks[1] - whole[0]).abs().max() <= 1e-6


def test_region_crop_is_segmented_with_margin():
    images = frames(1, 64, 96)
    box = torch.tensor([[20, 10, 60, 50]])
    masks = predict_masks(StubNet(), images, resolution=(32, 32), regions=box, region_margin=0.1)
    crop = images[:, 6:54, 16:64]  # box grown by 10 % of its 40x40 size on each side
    expected = predict_masks(StubNet(), crop, resolution=(32, 32))
    assert (masks[0, 10:50, 20:60] - expected[0, 4:44, 4:44]).abs().max() <= 1e-6


def test_region_masks_and_empty_region():
    images = frames(2, 64, 64)
    regions = torch.zeros(2, 64, 64)
    regions[0, 16:32, 8:40] = 1.0
    masks = predict_masks(StubNet(), images, resolution=(32, 32), regions=regions)
    assert (masks[0, :16] == 0).all() and (masks[0, 32:] == 0).all()
    assert (masks[0, :, :8] == 0).all() and (masks[0, :, 40:] == 0).all()
    assert (masks[0, 16:32, 8:40] > 0).all()
    whole = predict_masks(StubNet(), images[1:], resolution=(32, 32))
    assert (masks[1] - whole[0]).abs().max() <= 1e-6  # all-zero region = whole frame


def test_masks_carry_the_working_size_seen_from_the_frame():
    """Refine Mask's "auto" reads this tag: whole frames carry the working size; with regions,
    the frame size divided by the largest crop / working ratio of any frame, per axis."""
    from birefnet_core.refine import working_size_of

    images = frames(2, 96, 128)
    assert working_size_of(predict_masks(StubNet(), images, resolution=(64, 32))) == (32, 64)
    # Boxes grown by 10 % a side: frame 0 -> crop 40x60 (HxW) from a 32x50 box, frame 1 ->
    # crop 24x24 from 20x20. At a 32x32 working size, frame 0's crop is upsampled 1.25x
    # (rows) and 1.875x (columns): as seen from the 96x128 frame, 96/1.25 x 128/1.875.
    boxes = torch.tensor([[10, 4, 60, 36], [60, 40, 80, 60]])
    masks = predict_masks(StubNet(), images, resolution=(32, 32), regions=boxes)
    assert working_size_of(masks) == (77, 68)
    # Dynamic: each crop gets its own working size (multiples of 32, at least 32): 40x60 ->
    # 32x64 (rows 1.25x, columns 0.94x); 24x24 -> 32x32 (0.75x). The frame's rows decide.
    masks = predict_masks(StubNet(), images, family=FAMILIES["dynamic"], regions=boxes,
                          min_side=32)
    assert working_size_of(masks) == (77, 137)


def test_dynamic_regions_are_chunk_size_invariant():
    images = frames(4, 96, 128)
    boxes = torch.tensor([[0, 0, 64, 64], [10, 10, 120, 90], [0, 0, 0, 0], [30, 5, 70, 95]])
    kwargs = dict(family=FAMILIES["dynamic"], regions=boxes, min_side=32)
    net = StubNet()
    together = predict_masks(net, images, batch_size=4, **kwargs)
    alone = predict_masks(StubNet(), images, batch_size=1, **kwargs)
    assert (together - alone).abs().max() <= 1e-6
    # frames 1 and 2 (the whole frame) share a 128x96 working size: three model batches
    assert sorted(c[-2:] for c in net.calls) == [(64, 64), (96, 64), (96, 128)]


# ---------------------------------------------------------------------------------------------
# Bounded memory over a long batch
# ---------------------------------------------------------------------------------------------


class _LargestAllocations(TorchDispatchMode):
    """Records the element count of every tensor an op returns that is larger than ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.large: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.limit:
                self.large.append((str(func), t.numel()))
        return out


def test_long_batch_keeps_host_memory_bounded():
    b, h, w, k = 200, 96, 128, 4
    images = frames(b, h, w)
    net = StubNet()
    chunk_elements = k * h * w * 3  # the largest thing one chunk may hold (its input frames)
    with _LargestAllocations(chunk_elements) as tracker:
        masks = predict_masks(net, images, resolution=(64, 64), batch_size=k)
    # The only larger-than-a-chunk tensor is the preallocated output itself.
    assert tracker.large == [("aten.empty.memory_format", b * h * w)]
    assert max(net.batches) == k and sum(net.batches) == b
    assert masks.shape == (b, h, w)


def test_float_images_in_0_255_are_refused_and_uint8_is_scaled():
    net = StubNet()
    images = frames(3)
    as_uint8 = images.mul(255).round().to(torch.uint8)
    assert torch.allclose(predict_masks(net, as_uint8), predict_masks(net, as_uint8.float() / 255))
    images[2] *= 255
    with pytest.raises(InputError, match=r"images: frame 2 has values up to .*divide.* by 255"):
        predict_masks(net, images)
