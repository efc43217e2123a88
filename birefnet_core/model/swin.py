"""Swin Transformer v1 as a 4-stage feature extractor, in the layout BiRefNet's weights use.

This is the detection-style Swin (features of any size): inputs are padded to the patch size,
every block pads its normalised tokens with zeros up to a multiple of the window, and the
shifted-window mask is computed over the padded grid, exactly as the published weights were
trained. timm's Swin differs in layout (downsample at the start of a stage) and padding, so it is
not used here.

Statics are cached: each stage keeps its shift mask per padded size (a function of the size
alone, never of the weights). ``relative_position_index`` stays a persistent buffer because it
is in the published files; :meth:`SwinTransformer.reset_static` recomputes it after loading.

:mod:`birefnet_core.fast.swin` holds the optimiser's faster form of the stages (the same
function with fewer memory passes), built from these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import BackboneSpec

_MASK_VALUE = -100.0  # what the published weights were trained with, not -inf


def relative_position_index(window: int) -> torch.Tensor:
    """``[w*w, w*w]`` index into the ``(2w-1)**2`` bias table for every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B, nW, w*w, C]`` (row-major windows)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_merge(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, w*w, C]`` -> ``[B, H, W, C]``."""
    b, c = x.shape[0], x.shape[-1]
    x = x.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(hp: int, wp: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Additive mask ``[nW, w*w, w*w]`` that stops attention across the regions a cyclic shift
    brings together (0 inside a region, -100 across)."""
    region = torch.zeros(hp, wp, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[hs, ws] = label
            label += 1
    ids = window_partition(region[None, :, :, None], window)[0, :, :, 0]  # [nW, w*w]
    diff = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(diff.shape, device=device).masked_fill_(diff, _MASK_VALUE)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def reset_static(self) -> None:
        """Recompute the derived index (it is in the published files, but not trusted).

        The buffer is replaced, not written in place: weights loaded under
        ``torch.inference_mode()`` (as ComfyUI loads them) are inference tensors, which may not
        be updated in place outside that mode."""
        index = relative_position_index(self.window)
        self.relative_position_index = index.to(self.relative_position_index.device)

    def relative_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """``[heads, N, N]`` bias, gathered from the table on every call.

        Not cached: a cache would have to know when the table changes (loading, moving, a host
        patching weights), and the gather is ~0.1 % of a block's time."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().to(dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``[B, nW, N, C]``; ``mask``: ``[nW, N, N]`` or None."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # [B, nW, heads, N, d]
        bias = self.relative_bias(q.dtype)
        if mask is not None:
            bias = bias + mask.to(q.dtype)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``[B, H*W, C]`` tokens; ``mask``: the stage's shift mask for the padded size."""
        b, _, c = x.shape
        win = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (-h) % win, (-w) % win
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # zeros after the norm, as trained
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, win), mask if self.shift else None)
        y = window_merge(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :h, :w]
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool):
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self._masks: dict[tuple, torch.Tensor] = {}

    def mask_for(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
        key = (hp, wp, device)
        if key not in self._masks:
            self._masks[key] = shift_mask(hp, wp, self.window, self.shift, device)
        return self._masks[key]

    def clear_caches(self) -> None:
        """Forget the per-size shift masks (dictionary entries only: cannot fail)."""
        self._masks.clear()

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = self.mask_for(h, w, x.device) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_b, pad_r = (-x.shape[-2]) % self.patch, (-x.shape[-1]) % self.patch
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        return self.proj(x)


class SwinTransformer(nn.Module):
    """Returns four ``[B, C_i, H/2^(i+2), W/2^(i+2)]`` feature maps (strides 4, 8, 16, 32),
    contiguous NCHW."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        dims = spec.channels
        self.channels = dims
        self.patch_embed = PatchEmbed(dims[0])
        self.layers = nn.ModuleList(
            SwinStage(dims[i], spec.depths[i], spec.num_heads[i], spec.window_size,
                      spec.mlp_ratios[i], downsample=i < 3)
            for i in range(4)
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def reset_static(self) -> None:
        """Recompute derived buffers (after loading) and drop the size caches."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.reset_static()
        self.clear_caches()

    def clear_caches(self) -> None:
        """Drop every stage's per-size caches (they may hold device memory).

        Only forgets dictionary entries, so it cannot fail whatever mode created them."""
        for stage in self.layers:
            stage.clear_caches()

    def _stages(self, x: torch.Tensor, finish) -> list[torch.Tensor]:
        """The four normalised stage outputs, each a ``[B, C, H, W]`` view of the channels-last
        tokens passed through ``finish`` as soon as its stage has run."""
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, nh, nw = stage(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(finish(out.view(b, h, w, -1).permute(0, 3, 1, 2)))
            h, w = nh, nw
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._stages(x, torch.Tensor.contiguous)
