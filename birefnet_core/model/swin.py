"""Swin Transformer v1 as a 4-stage feature extractor, in the layout BiRefNet's weights use.

This is the detection-style Swin (features of any size): inputs are padded to the patch size,
every block pads its normalised tokens with zeros up to a multiple of the window, and the
shifted-window mask is computed over the padded grid, exactly as the published weights were
trained. timm's Swin differs in layout (downsample at the start of a stage) and padding, so it is
not used here.

Statics are cached: each attention keeps its gathered relative-position bias, each stage its
shift mask per padded size. ``relative_position_index`` stays a persistent buffer because it is
in the published files; :meth:`SwinTransformer.reset_static` recomputes it after loading.

``fast`` (set on every stage by :func:`birefnet_core.optimize.optimize_for_inference`) computes
the same function with fewer memory passes and fewer rows: pad, cyclic shift and window
partition become one gather with a cached index (and the merge one gather back), windows are
ordered so the ones a shift mask touches come last, and attention runs as 4-D
``scaled_dot_product_attention`` calls (the fused CPU kernel; the 5-D exact call falls back to
the unfused math path) with the mask added only for those trailing windows. ``proj`` runs after
the gather back, on the real tokens only (padding is 27 % of the stage-3 rows at 1024²), and the
linear layers fuse their bias, GELU and residual adds (:func:`birefnet_core.ops.linear`).
(``qkv`` before the gather would skip the padding rows too, but gathering the 3x wider result
into a fresh buffer costs more than the rows it saves on the CPU.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.linear import linear
from ..variants import BackboneSpec

_MASK_VALUE = -100.0  # what the published weights were trained with, not -inf
_MLP_CHUNK = 3 * 2**20  # hidden-activation elements per MLP chunk in the fast path


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


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(1, index)`` for ``[B, L, C]`` tokens, as a row gather of the flattened
    batch (the CPU kernel copies whole rows along dim 0, ~3x faster than along dim 1)."""
    b, n = x.shape[:2]
    if b > 1:
        index = (torch.arange(b, device=index.device)[:, None] * n + index).flatten()
    return x.reshape(b * n, -1).index_select(0, index).view(b, -1, x.shape[-1])


@dataclass(frozen=True)
class _WindowPlan:
    """Where each window token of one block kind (shifted or not) comes from, for one size.

    ``gather``: ``[nW * N]`` token index per window position (windows in plan order, padding
    pointing at token 0), ``padding``: the padding positions, or None; ``scatter``: ``[H * W]``
    position of every token in that order; windows ``[0, n_plain)`` need no shift mask,
    ``mask`` (``[nW - n_plain, 1, N, N]``) is the one of the others.
    """

    gather: torch.Tensor
    padding: torch.Tensor | None
    scatter: torch.Tensor
    n_plain: int
    mask: torch.Tensor | None


def window_plan(h: int, w: int, window: int, shift: int, device=None) -> _WindowPlan:
    """The :class:`_WindowPlan` of an ``h`` x ``w`` token grid: zero-pad to whole windows,
    roll by ``-shift``, partition, and put the windows the shift mask touches last."""
    hp, wp = -(-h // window) * window, -(-w // window) * window
    rows = (torch.arange(hp) + shift) % hp  # torch.roll by -shift: out[i] = in[i + shift]
    cols = (torch.arange(wp) + shift) % wp
    valid = (rows[:, None] < h) & (cols[None, :] < w)
    source = torch.where(valid, rows[:, None] * w + cols[None, :], -1)
    source = window_partition(source[None, :, :, None], window)[0, :, :, 0]  # [nW, N]
    if shift:
        mask = shift_mask(hp, wp, window, shift)
        masked = mask.flatten(1).ne(0).any(1)
    else:
        mask, masked = None, torch.zeros(source.shape[0], dtype=torch.bool)
    order = torch.cat((torch.nonzero(~masked)[:, 0], torch.nonzero(masked)[:, 0]))
    source = source[order].flatten()
    n_plain = int((~masked).sum())
    padded = source < 0
    scatter = torch.empty(h * w, dtype=torch.long)
    scatter[source[~padded]] = torch.nonzero(~padded)[:, 0]
    return _WindowPlan(
        gather=source.clamp(min=0).to(device),
        padding=torch.nonzero(padded)[:, 0].to(device) if padded.any() else None,
        scatter=scatter.to(device),
        n_plain=n_plain,
        mask=None if mask is None or n_plain == len(order) else
        mask[order[n_plain:], None].to(device),
    )


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
        self._bias: torch.Tensor | None = None
        self._bias_key: tuple | None = None

    def reset_static(self) -> None:
        self.relative_position_index.copy_(relative_position_index(self.window))
        self._bias = self._bias_key = None

    def relative_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """``[heads, N, N]`` bias, gathered once per weights/dtype/device and then reused."""
        table = self.relative_position_bias_table
        key = (id(table), table._version, table.device, dtype)
        if self._bias_key != key:
            n = self.window * self.window
            bias = table[self.relative_position_index.view(-1)].view(n, n, -1)
            self._bias = bias.permute(2, 0, 1).contiguous().to(dtype)
            self._bias_key = key
        return self._bias

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

    def attend_windows(self, qkv: torch.Tensor, n_plain: int,
                       mask: torch.Tensor | None) -> torch.Tensor:
        """Fast path, between the projections. ``qkv``: ``[B, nW, N, 3C]`` (``self.qkv`` of the
        windowed tokens) with the ``n_plain`` unmasked windows first and ``mask``
        (``[nW - n_plain, 1, N, N]``) for the rest; returns the heads' outputs
        ``[B, nW, N, C]`` (``proj`` is per token: apply it after un-windowing)."""
        b, nw, n, c3 = qkv.shape
        heads = self.num_heads
        qkv = qkv.view(b, nw, n, 3, heads, c3 // (3 * heads))
        c = c3 // 3
        bias = self.relative_bias(qkv.dtype)[None]  # [1, heads, N, N]
        parts = [(0, n_plain, bias)]
        if n_plain < nw:
            parts.append((n_plain, nw, bias + mask.to(qkv.dtype)))
        parts = [part for part in parts if part[1] > part[0]]
        if b == 1 and len(parts) == 1:
            return self._sdpa(qkv[0], parts[0][2]).view(b, nw, n, c)  # [nW, N, heads, d] rows
        out = torch.empty(b, nw, n, c, dtype=qkv.dtype, device=qkv.device)
        for i in range(b):
            for start, stop, attn_mask in parts:
                out[i, start:stop] = self._sdpa(qkv[i, start:stop], attn_mask)
        return out

    @staticmethod
    def _sdpa(qkv: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``qkv``: ``[nW, N, 3, heads, d]`` -> ``[nW, N, heads * d]``."""
        nw, n = qkv.shape[:2]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [nW, heads, N, d] strided views
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(nw, n, -1)


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

    def forward_fast(self, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        """Same as :meth:`forward`, with the padded, shifted window layout given by ``plan``;
        the projections and the MLP run as fused linear ops (bias, GELU and residual adds in the
        GEMM where the CPU library can, see :func:`birefnet_core.ops.linear`)."""
        b, _, c = x.shape
        n = self.window * self.window
        attn = self.attn
        y = _rows(self.norm1(x), plan.gather)
        if plan.padding is not None:
            y.index_fill_(1, plan.padding, 0.0)  # zeros after the norm, as trained
        qkv = linear(y, attn.qkv.weight, attn.qkv.bias)
        y = attn.attend_windows(qkv.view(b, -1, n, 3 * c), plan.n_plain, plan.mask)
        y = _rows(y.view(b, -1, c), plan.scatter)
        x = linear(y, attn.proj.weight, attn.proj.bias, residual=x)
        return self._mlp_in_place(x)

    def _mlp_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(norm2(x))`` written over ``x`` (a tensor this block owns), in row chunks.

        The MLP is per token, so chunking changes no value; it keeps the 4x wide hidden
        activation to ~12 MB, which stays in cache and in the allocator's reused memory instead
        of a fresh, page-faulted buffer of up to 200 MB per block (~25 % faster at stage 1)."""
        mlp = self.mlp
        rows = x.view(-1, x.shape[-1])
        step = max(256, _MLP_CHUNK // mlp.fc1.out_features)
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step]
            hidden = linear(self.norm2(chunk), mlp.fc1.weight, mlp.fc1.bias, gelu=True)
            chunk.copy_(linear(hidden, mlp.fc2.weight, mlp.fc2.bias, residual=chunk))
        return x


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
    fast: bool = False  # see the module docstring; set by optimize_for_inference

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
        self._plans: dict[tuple, _WindowPlan] = {}

    def mask_for(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
        key = (hp, wp, device)
        if key not in self._masks:
            self._masks[key] = shift_mask(hp, wp, self.window, self.shift, device)
        return self._masks[key]

    def plan_for(self, h: int, w: int, shift: int, device: torch.device) -> _WindowPlan:
        key = (h, w, shift, device)
        if key not in self._plans:
            self._plans[key] = window_plan(h, w, self.window, shift, device)
        return self._plans[key]

    def forward(self, x: torch.Tensor, h: int, w: int):
        if self.fast:
            for block in self.blocks:
                x = block.forward_fast(x, self.plan_for(h, w, block.shift, x.device))
        else:
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
    """Returns four ``[B, C_i, H/2^(i+2), W/2^(i+2)]`` feature maps (strides 4, 8, 16, 32).

    ``channels_last`` (set by :func:`birefnet_core.optimize.optimize_for_inference`): the maps
    are handed out in the tokens' own channels-last layout instead of being copied to NCHW; the
    channels-last decoder then reads them without converting them back.
    """

    channels_last: bool = False

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
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.reset_static()
            elif isinstance(module, SwinStage):
                module._masks.clear()
                module._plans.clear()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, nh, nw = stage(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
            outs.append(out if self.channels_last else out.contiguous())
            h, w = nh, nw
        return outs
