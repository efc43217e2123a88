"""A "same" convolution computed through the FFT, tile by tile (overlap-save).

For the decoder's 7x7 offset / modulator predictors (64 -> 147 channels at 1/4 of 1024²: the
largest convolution of the lite model) the direct convolution does 49 multiply-adds per input
channel, output channel and pixel; here the image is cut into ``tile``² windows overlapping by
``k - 1`` px, each window's 2-D real FFT is multiplied by the kernels' spectra (one real GEMM per
frequency over all windows), and the inverse FFT's ``tile - k + 1``² valid pixels are kept: ~12x
fewer multiply-adds, 2x faster on a CPU at that size (``benchmarks/RESULTS.md``). Stride 1,
dilation 1, one group, zero padding ``k // 2``, odd square kernels. In float32 it is as close to a
float64 convolution as the direct float32 one (``tests/test_fft_conv.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv_spectrum", "fft_conv2d", "TILE"]

# FFT window side: for a 7x7 kernel 26² valid pixels per 32² window (measured against 16, 24,
# 40 and 64 on the lite model's shapes).
TILE = 32
# Windows per step (whole rows of windows, then whole images) are limited so that the
# per-frequency products of a step stay this small (bytes): below glibc's 32 MiB mmap threshold
# they are reused from the heap instead of being page-faulted in anew each time; at 256² this
# took the predictor from 133-140 to 85-97 ms per call (2 rows of windows per step).
_CHUNK_BYTES = 24 * 2 ** 20


def conv_spectrum(weight: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """The kernels' spectra as one real matrix per frequency, ``[tile * (tile // 2 + 1), 2 Cin,
    2 Cout]``, such that ``[Re X, Im X]`` (interleaved per input channel) times it is ``[Re Y,
    Im Y]`` (interleaved per output channel) for the cross-correlation ``Y = X conj(W)``."""
    cout, cin, k, k2 = weight.shape
    if k != k2 or k % 2 == 0 or k > tile:
        raise ValueError(f"conv_spectrum: an odd square kernel up to {tile} px, got {k}x{k2}")
    spec = torch.fft.rfft2(weight.detach(), s=(tile, tile)).conj()
    spec = spec.permute(2, 3, 1, 0).reshape(-1, cin, cout)  # [freq, Cin, Cout]
    re, im = spec.real, spec.imag
    block = torch.stack((torch.stack((re, im), -1), torch.stack((-im, re), -1)), 2)
    return block.reshape(spec.shape[0], 2 * cin, 2 * cout)


def fft_conv2d(x: torch.Tensor, spectrum: torch.Tensor, bias: torch.Tensor | None,
               kernel_size: int, tile: int = TILE) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=kernel_size // 2)`` for ``spectrum =
    conv_spectrum(weight, tile)``; ``x`` ``[N, Cin, H, W]`` in the spectrum's dtype."""
    n, cin, h, w = x.shape
    cout = spectrum.shape[-1] // 2
    if spectrum.shape[-2] != 2 * cin:
        raise ValueError(f"fft_conv2d: the spectrum is for {spectrum.shape[-2] // 2} input "
                         f"channels, x has {cin}")
    valid = tile - kernel_size + 1
    ty, tx = -(-h // valid), -(-w // valid)
    freq = spectrum.shape[0]
    row_bytes = freq * tx * 2 * (cin + cout) * x.element_size()  # one row of windows
    images = max(1, _CHUNK_BYTES // (ty * row_bytes))
    pad = kernel_size // 2
    out = x.new_empty(n, cout, h, w)
    for i0 in range(0, n, images):
        part = x[i0:i0 + images]
        m = part.shape[0]
        xp = F.pad(part, (pad, tx * valid + kernel_size - 1 - w - pad,
                          pad, ty * valid + kernel_size - 1 - h - pad))
        windows = xp.unfold(2, tile, valid).unfold(3, tile, valid)  # [m, Cin, ty, tx, t, t]
        step = max(1, _CHUNK_BYTES // (m * row_bytes))
        for r0 in range(0, ty, step):
            rows = min(step, ty - r0)
            y = _windows_conv(windows[:, :, r0:r0 + rows], spectrum, bias, tile)
            y0, y1 = r0 * valid, min(h, (r0 + rows) * valid)
            out[i0:i0 + m, :, y0:y1] = y[:, :, :, :valid, :, :valid].reshape(
                m, cout, rows * valid, tx * valid)[:, :, :y1 - y0, :w]
    return out


def _windows_conv(windows: torch.Tensor, spectrum: torch.Tensor, bias: torch.Tensor | None,
                  tile: int) -> torch.Tensor:
    """``[N, Cin, ty, tx, tile, tile]`` windows -> ``[N, Cout, ty, tile, tx, tile]``: each
    window's circular cross-correlation with the kernels (its valid part is the convolution)."""
    n, cin, ty, tx = windows.shape[:4]
    cout = spectrum.shape[-1] // 2
    spec_x = torch.fft.rfft2(windows)
    freq = spec_x.shape[-2] * spec_x.shape[-1]
    # [freq, windows, (Cin, re/im)] @ [freq, (Cin, re/im), (Cout, re/im)]
    rows = torch.view_as_real(spec_x.permute(4, 5, 0, 2, 3, 1)).reshape(freq, n * ty * tx, 2 * cin)
    prod = torch.bmm(rows, spectrum).view(freq, n * ty * tx, cout, 2)
    if bias is not None:
        # A constant output is the DC coefficient times tile² (irfft2 divides by it).
        prod[0, :, :, 0] += bias.to(prod.dtype) * (tile * tile)
    spec_y = torch.view_as_complex(prod.view(tile, -1, n, ty, tx, cout, 2))
    y = torch.fft.irfft2(spec_y.permute(2, 5, 3, 4, 0, 1), s=(tile, tile))
    return y.permute(0, 1, 2, 4, 3, 5)
