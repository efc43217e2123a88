"""Swin Transformer v1 as a 4-stage feature extractor, in the layout BiRefNet's weights use.

This is the detection-style Swin (features of any size): inputs are padded to the patch size,
every block pads its normalised tokens with zeros up to a multiple of the window, and the
shifted-window mask is computed over the padded grid, exactly as the published weights were
trained. timm's Swin differs in layout (downsample at the start of a stage) and padding, so it is
not used here.

Statics are cached: each stage keeps its shift mask and window layout per padded size (a
function of the size alone, never of the weights). ``relative_position_index`` stays a persistent buffer because it is
in the published files; :meth:`SwinTransformer.reset_static` recomputes it after loading.

``fast`` (set on every stage by :func:`birefnet_core.optimize.optimize_for_inference`) computes
the same function with fewer memory passes and fewer rows. Pad, cyclic shift and window
partition become a cached gather index, with the windows a shift mask touches ordered last.
Attention runs a group of windows at a time (each token is in exactly one window): gather the
group's tokens, normalise, ``qkv``, 4-D ``scaled_dot_product_attention`` (the fused CPU kernel;
the exact 5-D call falls back to the unfused math path) with the mask added only for the masked
windows, then ``x + proj(...)`` on the real tokens only (padding is 27 % of the stage-3 rows at
1024²), written straight to their positions. The MLP runs in row chunks over the residual. So
no full-size ``qkv``, window-ordered copy or 4x-wide hidden activation is ever allocated (on
the CPU each such buffer is a fresh, page-faulted mapping), and the linear layers fuse their
bias, GELU and residual adds (:func:`birefnet_core.ops.linear`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.linear import linear
from ..variants import BackboneSpec

_MASK_VALUE = -100.0  # what the published weights were trained with, not -inf
_MLP_CHUNK = 3 * 2**20  # hidden-activation elements per MLP chunk in the fast path
_ATTN_CHUNK = 2**20  # token-activation elements (rows x channels) per window group


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


@dataclass(frozen=True)
class _WindowGroup:
    """Windows ``[w0, w1)`` of a plan: ``rows`` (the token index of each of their positions);
    if some are padding, ``keep`` / ``pad`` (the real / padding positions in the group) and
    ``real_rows`` (``rows[keep]``), else None."""

    rows: torch.Tensor
    keep: torch.Tensor | None = None
    pad: torch.Tensor | None = None
    real_rows: torch.Tensor | None = None


@dataclass(frozen=True)
class _WindowPlan:
    """Where each window token of one block kind (shifted or not) comes from, for one size.

    ``gather``: ``[nW * N]`` token index per window position (windows in plan order, padding
    pointing at token 0); ``padded``: ``[nW * N]`` bool, True at the padding positions, or
    None; windows ``[0, n_plain)`` need no shift mask, ``mask`` (``[nW - n_plain, 1, N, N]``)
    is the one of the others.
    """

    gather: torch.Tensor
    padded: torch.Tensor | None
    n_plain: int
    mask: torch.Tensor | None
    _groups: dict = field(default_factory=dict, compare=False, repr=False)

    def group(self, w0: int, w1: int, n: int) -> _WindowGroup:
        """The :class:`_WindowGroup` of windows ``[w0, w1)`` (``n`` tokens each); cached, so
        the forward pass never waits on the device to find the padding."""
        group = self._groups.get((w0, w1))
        if group is None:
            group = self._groups[(w0, w1)] = _window_group(self.gather, self.padded, w0, w1, n)
        return group


@torch.compiler.disable  # data-dependent (finds the padding); runs once per size, eagerly
def _window_group(gather: torch.Tensor, padded: torch.Tensor | None, w0: int, w1: int,
                  n: int) -> _WindowGroup:
    rows = gather[w0 * n:w1 * n]
    if padded is not None:
        pad = padded[w0 * n:w1 * n].cpu()
        if pad.any():
            keep = torch.nonzero(~pad)[:, 0].to(rows.device)
            return _WindowGroup(rows, keep, torch.nonzero(pad)[:, 0].to(rows.device), rows[keep])
    return _WindowGroup(rows)


@torch.compiler.disable  # data-dependent; cached per size by SwinStage.plan_for
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
    return _WindowPlan(
        gather=source.clamp(min=0).to(device),
        padded=padded.to(device) if padded.any() else None,
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
        attention and MLP run in cache-sized groups of windows / rows, and the linear layers
        as fused ops (bias, GELU and residual adds in the GEMM where the CPU library can, see
        :func:`birefnet_core.ops.linear`)."""
        return self._mlp_in_place(self._attention_chunked(x, plan))

    def _attention_chunked(self, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        """``x + attention(norm1(x))`` as a new tensor, computed a group of windows at a time.

        Each group gathers its tokens' rows, normalises them (zeroing the padding positions,
        as trained), projects, attends, and writes ``x + proj(...)`` of its real tokens straight
        to their positions: every token is in exactly one window, so the groups are
        independent, and no full-size ``qkv`` (up to 160 MB at stage 1 of a 1024² image,
        page-faulted on every allocation) or window-ordered copy is materialised.
        """
        b, length, c = x.shape
        n = self.window * self.window
        attn = self.attn
        heads = attn.num_heads
        rows_x = x.reshape(b * length, c)
        out = torch.empty_like(rows_x)
        bias = attn.relative_bias(x.dtype)[None]  # [1, heads, N, N]
        masked = None if plan.mask is None else bias + plan.mask.to(x.dtype)
        n_windows = plan.gather.numel() // n
        # Cache-sized groups on the CPU; a GPU wants all windows in one launch.
        step = max(1, _ATTN_CHUNK // (n * c)) if x.device.type == "cpu" else n_windows
        parts = ((0, plan.n_plain, bias), (plan.n_plain, n_windows, masked))
        for i in range(b):
            for lo, hi, part_bias in parts:
                for w0 in range(lo, hi, step):
                    w1 = min(hi, w0 + step)
                    group = plan.group(w0, w1, n)
                    real = group.rows if group.keep is None else group.real_rows
                    if i:
                        real = real + i * length
                    xg = rows_x.index_select(0, real)
                    qkv = linear(self.norm1(xg), attn.qkv.weight, attn.qkv.bias)
                    if group.keep is not None:
                        qkv = self._with_padding_rows(qkv, group, attn.qkv.bias)
                    qkv = qkv.view(w1 - w0, n, 3, heads, c // heads)
                    mask = part_bias if part_bias is bias else part_bias[w0 - lo:w1 - lo]
                    o = attn._sdpa(qkv, mask).view(-1, c)
                    if group.keep is not None:
                        o = o.index_select(0, group.keep)
                    out.index_copy_(0, real, linear(o, attn.proj.weight, attn.proj.bias,
                                                    residual=xg))
        return out.view(b, length, c)

    @staticmethod
    def _with_padding_rows(qkv: torch.Tensor, group: _WindowGroup,
                           bias: torch.Tensor) -> torch.Tensor:
        """The group's ``qkv`` rows from those of its real tokens: a padding token is zero after
        the norm, so its ``qkv`` row is exactly the bias and needs no matrix product."""
        full = qkv.new_empty(group.rows.numel(), qkv.shape[1])
        full.index_copy_(0, group.keep, qkv)
        return full.index_copy_(0, group.pad, bias.to(qkv.dtype).expand(group.pad.numel(), -1))

    def _mlp_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(norm2(x))`` written over ``x`` (a tensor this block owns), in row chunks.

        The MLP is per token, so chunking changes no value; it keeps the 4x wide hidden
        activation to ~12 MB, which stays in cache and in the allocator's reused memory instead
        of a fresh, page-faulted buffer of up to 200 MB per block (~25 % faster at stage 1)."""
        mlp = self.mlp
        rows = x.view(-1, x.shape[-1])
        step = max(256, _MLP_CHUNK // mlp.fc1.out_features)
        if x.device.type != "cpu":
            step = rows.shape[0]  # a GPU wants one large GEMM, not cache-sized pieces
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
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = window_plan(h, w, self.window, shift, device)
        return plan

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
        """Recompute derived buffers (after loading) and drop the size caches."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.reset_static()
        self.clear_caches()

    def clear_caches(self) -> None:
        """Drop the per-size shift masks and window layouts (they may hold device memory).

        Only forgets dictionary entries, so it cannot fail whatever mode created them."""
        for module in self.modules():
            if isinstance(module, SwinStage):
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
