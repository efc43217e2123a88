"""All inference optimisations on: still the official function (issue 6)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from birefnet_core import kernels
from birefnet_core.fast import (FastASPPDeformable, FastDecBlk, FastDecoder, FastDeformableConv2d,
                                FastSwinStage, FastSwinTransformer)
from birefnet_core.model import BiRefNet
from birefnet_core.model.blocks import ASPPDeformable, DeformableConv2d
from birefnet_core.model.decoder import Decoder
from birefnet_core.model.swin import SwinStage, SwinTransformer
from birefnet_core.optimize import fuse_conv_bn, optimize_for_inference
from birefnet_core.variants import BACKBONES, Architecture
from birefnet_core.weights import load_model
from devices import DEVICE

TOLERANCE = 1e-4  # max |Δ sigmoid| in float32 on the CPU, as in test_model_fidelity.py
SIZES = ("256x256", "256x384")
ORDERS = ("split", "einops")


@pytest.fixture(scope="module")
def lite_fast(fixtures_dir):
    model = load_model(fixtures_dir / "lite_fp16.safetensors", family="lite").model
    return optimize_for_inference(model)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("size", SIZES)
def test_optimised_lite_matches_official(lite_fast, fixtures_dir, order, size):
    """On ``BIREFNET_TEST_DEVICE`` (tests/devices.py), against the CPU reference."""
    x = load_file(str(fixtures_dir / f"input_{size}.safetensors"))["input"]
    ref = load_file(str(fixtures_dir / order / f"output_{size}.safetensors"))["prob"]
    lite_fast.to(DEVICE).patch_order = order
    logits = lite_fast(x.to(DEVICE))
    assert logits.shape == ref.shape and logits.dtype == torch.float32
    err = (logits.sigmoid().cpu() - ref).abs().max().item()
    assert err <= TOLERANCE, f"{order} {size}: max |Δ sigmoid| = {err:.2e}"


def _types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def test_everything_is_rewritten(lite_fast):
    assert set(lite_fast.optimizations) == {"fold_batchnorm", "fast_deform", "channels_last",
                                            "fast_head", "fast_backbone"}
    types = _types(lite_fast)
    # Every exact module of a replaced kind is gone, its fast form is in.
    assert not types & {SwinStage, SwinTransformer, Decoder, DeformableConv2d, ASPPDeformable}
    assert {FastSwinStage, FastSwinTransformer, FastDecoder, FastDeformableConv2d,
            FastASPPDeformable} <= types
    split = [isinstance(getattr(lite_fast.decoder, f"decoder_block{lv}"), FastDecBlk)
             for lv in (4, 3, 2, 1)]
    assert split == [lv + 1 in lite_fast.decoder.ipt_levels for lv in (4, 3, 2, 1)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lite_fast.modules())


def test_no_model_forward_reads_a_flag():
    """The exact network has one forward per class: no code in ``model/`` reads an optimiser
    flag, branches on an attribute the optimiser might attach, or names a fast-only module."""
    import inspect
    import re
    from pathlib import Path

    import birefnet_core.model as model_pkg

    flags = re.compile(r"\b(fast\w*|compiled\w*|channels_last|fp32_under_autocast|"
                       r"offset_modulator_conv|conv1_pool|head_p1|conv_in_x|_plans)\b|hasattr\(")
    found = []
    for file in sorted(Path(inspect.getfile(model_pkg)).parent.glob("*.py")):
        # Docstrings and comments may point at the fast modules; the code may not.
        code = re.sub(r'"""[\s\S]*?"""', "", file.read_text())
        for line in code.splitlines():
            line = line.split("#")[0]
            if flags.search(line):
                found.append(f"{file.name}: {line.strip()}")
    assert found == []


def test_idempotent(lite_fast, fixtures_dir):
    x = load_file(str(fixtures_dir / "input_256x256.safetensors"))["input"]
    before = lite_fast(x)
    state = {k: v.clone() for k, v in lite_fast.state_dict().items()}
    assert optimize_for_inference(lite_fast) is lite_fast
    after = lite_fast.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    torch.testing.assert_close(lite_fast(x), before, rtol=0, atol=0)


def test_options_apply_separately(fixtures_dir):
    model = load_model(fixtures_dir / "lite_fp16.safetensors", family="lite").model
    off = dict(fast_deform=False, channels_last=False, fast_head=False, fast_backbone=False)
    optimize_for_inference(model, fold_batchnorm=True, **off)
    assert model.optimizations == ("fold_batchnorm",)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(type(m).__module__.startswith("birefnet_core.fast") for m in model.modules())
    optimize_for_inference(model, fold_batchnorm=False, **{**off, "fast_deform": True})
    assert model.optimizations == ("fold_batchnorm", "fast_deform")
    assert {FastDeformableConv2d, FastASPPDeformable} <= _types(model)
    assert type(model.decoder) is Decoder and type(model.bb.layers[0]) is SwinStage
    optimize_for_inference(model, fold_batchnorm=False, **{**off, "fast_head": True})
    assert model.optimizations == ("fold_batchnorm", "fast_deform", "fast_head")
    assert type(model.decoder) is FastDecoder and type(model.bb.layers[0]) is SwinStage
    assert type(model.bb) is SwinTransformer


def test_fast_deform_without_folding_keeps_the_norms(fixtures_dir):
    """Unfolded norms keep the ASPP on its concatenating path (its buffer path assumes none)."""
    model = load_model(fixtures_dir / "lite_fp16.safetensors", family="lite").model
    ref = copy.deepcopy(model)
    optimize_for_inference(model, fold_batchnorm=False, channels_last=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    types = _types(model)
    assert ASPPDeformable in types and FastASPPDeformable not in types
    assert FastDeformableConv2d in types and DeformableConv2d not in types
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    err = (model(x).sigmoid() - ref(x).sigmoid()).abs().max().item()
    assert err <= TOLERANCE


def test_fast_aspp_is_the_float64_function_on_either_path(monkeypatch):
    """On the CPU in float32 the fusing convolution is accumulated branch by branch; other
    dtypes (float64 here, reduced ones under autocast) fill the all-branch buffer. Both are the
    exact ASPP computed in float64, for a batch of two (a per-image pooled bias)."""
    torch.manual_seed(0)
    exact = ASPPDeformable(8, planes=16).eval()
    with torch.no_grad():
        for p in exact.parameters():
            p.normal_(0, 0.05)
    x = torch.randn(2, 8, 20, 28, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = copy.deepcopy(exact).double()(x.double())
        branch_by_branch = FastASPPDeformable._fused_branch_by_branch
        calls = []
        monkeypatch.setattr(FastASPPDeformable, "_fused_branch_by_branch",
                            lambda self, *a: calls.append(1) or branch_by_branch(self, *a))
        out32 = FastASPPDeformable.from_exact(copy.deepcopy(exact))(x)
        assert calls == [1]
        out64 = FastASPPDeformable.from_exact(copy.deepcopy(exact).double())(x.double())
        assert calls == [1]
    torch.testing.assert_close(out64, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-5)


def _random_model(arch: Architecture) -> BiRefNet:
    torch.manual_seed(0)
    model = BiRefNet(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, DeformableConv2d):  # official init zeroes them: exercise them
                m.offset_conv.weight.normal_(0, 0.05)
                m.offset_conv.bias.normal_(0, 1.0)
                m.modulator_conv.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("arch", (
    Architecture("pvt_v2_b0"),
    Architecture("swin_v1_t", batch_norm=False),
    Architecture("swin_v1_t", decoder="legacy"),
    Architecture("pvt_v2_b0", decoder="legacy", batch_norm=False),
), ids=lambda a: a.name)
def test_random_architectures_same_output(arch):
    exact = _random_model(arch).to(DEVICE)
    fast = optimize_for_inference(copy.deepcopy(exact))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    err = (fast(x).sigmoid() - exact(x).sigmoid()).abs().max().item()
    assert err <= TOLERANCE, f"{arch.name}: max |Δ sigmoid| = {err:.2e}"


def test_fuse_conv_bn_float64_reference():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False).double(), nn.BatchNorm2d(6).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    ref = bn(conv(x))
    fuse_conv_bn(conv, bn)
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)


def test_load_model_optimize_flag(fixtures_dir):
    from safetensors.torch import load_file

    from birefnet_core.weights import load_model

    x = load_file(str(fixtures_dir / "input_256x256.safetensors"))["input"]
    ref = load_file(str(fixtures_dir / "split" / "output_256x256.safetensors"))["prob"]
    exact = load_model(fixtures_dir / "lite_fp16.safetensors")
    fast = load_model(fixtures_dir / "lite_fp16.safetensors", optimize=True)
    assert not getattr(exact.model, "optimizations", ())
    assert fast.model.optimizations
    assert fast.info.n_params == exact.info.n_params
    assert (fast.model(x).sigmoid() - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("backbone", ("swin_v1_t", "swin_v1_l"))
@pytest.mark.parametrize("shape", ((1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 224, 352)),
                         ids=lambda s: "x".join(map(str, s)))
def test_fast_swin_is_the_same_function(backbone, shape):
    """Gathered windows, masked windows last, 4-D attention: same features as the exact path,
    with and without padding (window 7 and 12), for one image and a batch."""
    torch.manual_seed(0)
    exact = SwinTransformer(BACKBONES[backbone]).eval()
    with torch.no_grad():
        for p in exact.parameters():
            p.normal_(0, 0.05)  # the zero-initialised bias tables and norms must matter too
    exact.to(DEVICE)
    fast = copy.deepcopy(exact)
    fast.layers = nn.ModuleList(FastSwinStage.from_exact(stage) for stage in fast.layers)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.inference_mode():
        for a, b in zip(exact(x), fast(x)):
            torch.testing.assert_close(b, a, rtol=0, atol=2e-5)


@pytest.mark.parametrize("one_launch", (False, True), ids=("cpu", "gpu-style"))
@pytest.mark.parametrize("shift", (False, True), ids=("plain", "shifted"))
def test_fast_swin_block_attends_from_real_tokens_only(monkeypatch, shift, one_launch):
    """On the CPU the padding positions of a window are keys (as trained) but not queries:
    the attention calls get exactly the image's tokens as query rows. The GPU's form (every
    window of a mask part in one launch, every position a query; run here on the CPU) gets
    them all. Either way the block's output is the exact one. A 12 x 17 grid in 7 x 7 windows
    is 26 % padding."""
    torch.manual_seed(0)
    exact = SwinTransformer(BACKBONES["swin_v1_t"]).eval()
    with torch.no_grad():
        for p in exact.parameters():
            p.normal_(0, 0.05)
    stage = FastSwinStage.from_exact(exact.layers[0])
    block = stage.blocks[int(shift)]
    assert bool(block.shift) == shift
    h, w = 12, 17
    x = torch.randn(2, h * w, block.norm1.normalized_shape[0])
    plan = stage.plan_for(h, w, block.shift, x.device)
    query_rows = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        assert q.shape[-2] <= k.shape[-2] == block.window ** 2
        query_rows.append(q.shape[0] * q.shape[-2])
        return sdpa(q, k, v, **kwargs)

    linear = kernels.plain_linear
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.inference_mode():
        fast = block._mlp_in_place(
            block._attention_chunked(x.clone(), plan, linear, one_launch=one_launch), linear)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
        ref = block.forward_exact(x.clone(), h, w, stage.mask_for(h, w, x.device))
    assert sum(query_rows) == x.shape[0] * (plan.gather.numel() if one_launch else h * w)
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-5)


def test_composed_head_matches_two_convolutions():
    """The 5x5 composition plus the recomputed edge equals conv3x3(conv3x3(x)) everywhere."""
    from birefnet_core.fast import compose_convs as _compose_convs

    torch.manual_seed(0)
    inner = nn.Conv2d(3, 8, 3, padding=1).double()
    outer = nn.Conv2d(8, 1, 3, padding=1).double()
    composed = _compose_convs(inner, outer)
    x = torch.randn(2, 3, 9, 12, dtype=torch.float64)
    ref = outer(inner(x))
    out = composed(x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-12, atol=1e-12)
    assert (out[..., 0, :] - ref[..., 0, :]).abs().max() > 1e-3  # why the edge is recomputed


def test_compiled_fast_swin_is_one_graph_with_the_same_output():
    """``compile_for_inference``: with the size warmed up, the whole fast Swin BiRefNet
    (cached window layouts, deformable convolutions) traces into one graph, no breaks, through
    AOT functionalisation (what inductor compiles; inductor itself takes minutes on a CPU)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from birefnet_core.optimize import compile_for_inference

    fast = optimize_for_inference(_random_model(Architecture("swin_v1_t")))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    ref = fast(x)
    compiled = copy.deepcopy(fast)
    torch._dynamo.reset()
    counters.clear()
    try:
        assert compile_for_inference(compiled, backend="aot_eager",
                                     warmup_sizes=[(64, 96)]) is compiled
        out = compiled(x)
        assert counters["stats"]["unique_graphs"] == 1
        assert sum(counters["graph_break"].values()) == 0
    finally:
        torch._dynamo.reset()
    assert compiled.optimizations[-1] == "compile" and isinstance(compiled, BiRefNet)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
