"""The FFT form of the decoder's large-kernel convolutions (``ops.fft_conv``, ``FastConv2d``):
the same function as ``F.conv2d`` (against a float64 reference), chosen only where measured
faster (a fake clock), and the fast model with it forced still the official function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from birefnet_core import kernels
from birefnet_core.fast import FastConv2d
from birefnet_core.ops import fft_conv
from birefnet_core.ops.fft_conv import conv_spectrum, fft_conv2d
from birefnet_core.optimize import optimize_for_inference
from birefnet_core.weights import load_model
from kernel_fakes import slowed

CPU = torch.device("cpu")


def _case(n, cin, cout, k, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    return x, weight, torch.randn(cout, generator=g)


@pytest.mark.parametrize("shape", [
    (1, 64, 147, 7, 96, 80),   # the offset / modulator predictor's channels, several windows
    (3, 5, 7, 7, 33, 70),      # sizes that are no multiple of the 26 px a window keeps
    (2, 4, 6, 5, 9, 5),        # smaller than one window
    (1, 3, 2, 7, 1, 1),        # one pixel: every tap but the centre reads the padding
    (2, 4, 6, 3, 40, 41),
])
def test_matches_a_float64_convolution_as_closely_as_the_direct_one(shape):
    n, cin, cout, k, h, w = shape
    x, weight, bias = _case(*shape)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=k // 2)
    out = fft_conv2d(x, conv_spectrum(weight), bias, k)
    direct = F.conv2d(x, weight, bias, padding=k // 2)
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out.double() - ref).abs().max().item()
    err_direct = (direct.double() - ref).abs().max().item()
    assert err <= max(2 * err_direct, 1e-6), (err, err_direct)


def test_without_bias_and_in_chunks_of_images(monkeypatch):
    x, weight, _ = _case(5, 3, 4, 7, 30, 20)
    ref = F.conv2d(x.double(), weight.double(), padding=3)
    whole = fft_conv2d(x, conv_spectrum(weight), None, 7)
    monkeypatch.setattr(fft_conv, "_CHUNK_BYTES", 1)  # one image per chunk
    chunked = fft_conv2d(x, conv_spectrum(weight), None, 7)
    torch.testing.assert_close(whole.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows_per_step", (1, 2))
def test_in_steps_of_window_rows(monkeypatch, rows_per_step):
    """Three rows of windows (70 px, 26 kept per window) in steps of one or two rows, the last
    step shorter and cropped: the float64 convolution, for each image of a batch."""
    x, weight, bias = _case(2, 3, 4, 7, 70, 50)
    spectrum = conv_spectrum(weight)
    row_bytes = spectrum.shape[0] * 2 * 2 * (3 + 4) * x.element_size()  # two windows per row
    monkeypatch.setattr(fft_conv, "_CHUNK_BYTES", rows_per_step * row_bytes)
    out = fft_conv2d(x, spectrum, bias, 7)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=3)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


def test_channels_last_input():
    x, weight, bias = _case(2, 8, 6, 7, 40, 30)
    out = fft_conv2d(x.contiguous(memory_format=torch.channels_last), conv_spectrum(weight),
                     bias, 7)
    torch.testing.assert_close(out, fft_conv2d(x, conv_spectrum(weight), bias, 7),
                               rtol=0, atol=0)


def test_rejects_what_it_does_not_compute():
    with pytest.raises(ValueError, match="odd square kernel"):
        conv_spectrum(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="input channels"):
        fft_conv2d(torch.randn(1, 5, 8, 8), conv_spectrum(torch.randn(2, 3, 7, 7)), None, 7)


# -- the fast module and its kernel choice ----------------------------------------------------

def _conv(k=7, **kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(6, 9, k, padding=k // 2, **kwargs).eval()


@pytest.mark.parametrize("slow", ("direct", "fft"))
def test_the_faster_form_runs_and_computes_the_convolution(fresh, slow):
    calls = slowed(fresh, "conv2d", {"direct": 0.001, "fft": 0.001, slow: 0.5})
    exact = _conv()
    fast = FastConv2d.from_exact(exact)
    assert fast.state_dict().keys() == exact.state_dict().keys()
    x = torch.randn(2, 6, 45, 37)
    with torch.inference_mode():
        out = fast(x)
        del calls[:]
        again = fast(x)
        ref = F.conv2d(x.double(), exact.weight.double(), exact.bias.double(), padding=3)
    (choice,) = kernels.choices()
    assert choice["op"] == "conv2d" and choice["chosen"] != slow
    assert calls == [choice["chosen"]], "after the choice, one call of the chosen form"
    assert fast.has_spectrum == (choice["chosen"] == "fft"), "a spectrum only where it is used"
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_building_the_spectrum_is_not_timed_against_the_fft_form(fresh, monkeypatch):
    """A one-off set-up (the spectra: ~0.15 s for the lite model's largest predictor) must not
    decide the choice; the fft form wins here only if it is built before the timed run."""
    from birefnet_core.fast import blocks

    def slow_spectrum(weight, *args):
        fresh.now += 1.0
        return conv_spectrum(weight, *args)

    monkeypatch.setattr(blocks, "conv_spectrum", slow_spectrum)
    slowed(fresh, "conv2d", {"direct": 0.01, "fft": 0.001})
    fast = FastConv2d.from_exact(_conv())
    with torch.no_grad():
        fast(torch.randn(1, 6, 40, 40))
    (choice,) = kernels.choices()
    assert choice["chosen"] == "fft", choice


@pytest.mark.parametrize("conv", (
    _conv(k=3),                                   # below FFT_MIN_KERNEL
    _conv(k=7, stride=2),
    _conv(k=7, dilation=2),
    nn.Conv2d(6, 9, 7, padding=0),
), ids=("3x3", "stride 2", "dilation 2", "no padding"))
def test_what_the_fft_form_does_not_compute_runs_directly_unmeasured(fresh, conv):
    fast = FastConv2d.from_exact(conv)
    x = torch.randn(1, 6, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=0)
    assert kernels.choices() == [] and not fast.has_spectrum


@pytest.mark.parametrize("forced", (None, "fft"))
@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16))
def test_outside_cpu_float32_the_direct_form_runs(fresh, dtype, forced):
    """No CPU FFT in the reduced dtypes, cuDNN's own algorithms on CUDA: direct there, also
    where ``fft`` is forced (e.g. for the whole process, then run under bf16 autocast)."""
    if forced:
        kernels.configure(force={"conv2d": forced})
    conv = _conv().to(dtype)
    fast = FastConv2d.from_exact(conv)
    x = torch.randn(1, 6, 30, 30, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=0)
    assert not fast.has_spectrum
    assert not kernels._fft_runs(torch.device("cuda"), torch.float32)


def test_under_bf16_autocast_the_direct_form_runs_even_if_fft_is_forced(fresh):
    kernels.configure(force={"conv2d": "fft"})
    conv = _conv()
    fast = FastConv2d.from_exact(conv)
    x = torch.randn(1, 6, 30, 30)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fast(x), conv(x)
    assert out.dtype == torch.bfloat16 and not fast.has_spectrum
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_the_spectrum_is_rebuilt_for_new_weight_storage_and_on_request(fresh):
    kernels.configure(force={"conv2d": "fft"})
    fast = FastConv2d.from_exact(_conv())
    x = torch.randn(1, 6, 30, 30)

    def ref():
        return F.conv2d(x.double(), fast.weight.double(), fast.bias.double(), padding=3)

    with torch.no_grad():
        fast(x)
        fast.weight = nn.Parameter(fast.weight * 2.0, requires_grad=False)  # what .to() does
        torch.testing.assert_close(fast(x).double(), ref(), rtol=0, atol=1e-5)
        fast.weight.mul_(0.5)  # in place: the frozen fast modules' contract
        fast.drop_spectrum()
        torch.testing.assert_close(fast(x).double(), ref(), rtol=0, atol=1e-5)


def test_fast_lite_with_the_fft_form_is_the_official_function(fixtures_dir, monkeypatch):
    """The real lite weights, every op's default kernel but ``conv2d=fft``, against the
    official output (the tolerance of test_optimize.py)."""
    forced = {op: kernels._DEFAULT[op] for op in kernels._REGISTRY} | {"conv2d": "fft"}
    monkeypatch.setenv(kernels.FORCE_ENV, ",".join(f"{k}={v}" for k, v in forced.items()))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    model = optimize_for_inference(
        load_model(fixtures_dir / "lite_fp16.safetensors", family="lite").model)
    x = load_file(str(fixtures_dir / "input_256x384.safetensors"))["input"]
    ref = load_file(str(fixtures_dir / "split" / "output_256x384.safetensors"))["prob"]
    with torch.inference_mode():
        prob = model(x).sigmoid()
    assert any(c["op"] == "conv2d" and c["chosen"] == "fft" for c in kernels.choices())
    assert (prob - ref).abs().max().item() <= 1e-4
