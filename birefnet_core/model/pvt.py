"""PVT-v2 (b0..b5) as a 4-stage feature extractor, in the layout BiRefNet's weights use.

timm's ``pvt_v2`` names its layers differently (``stages.*``, a bare ``dwconv``) and builds its
overlapping patch embedding into each stage, so a local copy keeps the published key names
without a remapping table. Block LayerNorms use eps 1e-6; the patch-embedding and
spatial-reduction norms keep PyTorch's default 1e-5, as the published weights were trained.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import BackboneSpec

_BlockNorm = functools.partial(nn.LayerNorm, eps=1e-6)


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Attention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced (strided conv) map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int):
        super().__init__()
        self.norm1 = _BlockNorm(dim)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.norm2 = _BlockNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride, patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PyramidVisionTransformerV2(nn.Module):
    """Returns four ``[B, C_i, H/2^(i+2), W/2^(i+2)]`` feature maps (strides 4, 8, 16, 32)."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.channels = spec.channels
        in_channels = 3
        for i, dim in enumerate(spec.channels, start=1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            self.add_module(f"patch_embed{i}", OverlapPatchEmbed(in_channels, dim, patch, stride))
            self.add_module(f"block{i}", nn.ModuleList(
                Block(dim, spec.num_heads[i - 1], spec.mlp_ratios[i - 1], spec.sr_ratios[i - 1])
                for _ in range(spec.depths[i - 1])
            ))
            self.add_module(f"norm{i}", _BlockNorm(dim))
            in_channels = dim

    def reset_static(self) -> None:
        """Nothing is derived (kept for a uniform backbone interface)."""

    def clear_caches(self) -> None:
        """Nothing is cached (kept for a uniform backbone interface)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs
