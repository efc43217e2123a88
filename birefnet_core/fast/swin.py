"""The optimiser's Swin stages: the function of :mod:`birefnet_core.model.swin`, computed with
fewer memory passes and fewer rows.

Pad, cyclic shift and window partition become a cached gather index, with the windows a shift
mask touches ordered last. Attention runs a group of windows at a time (each token is in exactly
one window): gather the group's tokens, normalise, ``qkv``, 4-D ``scaled_dot_product_attention``
(the fused CPU kernel; the exact 5-D call falls back to the unfused math path) with the mask
added only for the masked windows and, on the CPU, the padding positions as keys only (their
queries' output is discarded), then ``x + proj(...)`` on the real tokens only (padding is 27 %
of the stage-3 rows at 1024²), written straight to their positions. The MLP runs in row
chunks over the residual. So no full-size ``qkv``, window-ordered copy or 4x-wide hidden
activation is ever allocated (on the CPU each such buffer is a fresh, page-faulted mapping), and
the linear layers fuse their bias, GELU and residual adds where the kernel chosen for the
device does (:mod:`birefnet_core.kernels`, :func:`birefnet_core.ops.linear`).

The fast modules keep the exact ones' parameters (``norm1``, ``attn``, ``norm2``, ``mlp``,
``downsample``): their state-dict keys are the official ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..model.swin import SwinBlock, SwinStage, SwinTransformer, shift_mask, window_partition
from ._adopt import adopt

__all__ = ["FastSwinBlock", "FastSwinStage", "FastSwinTransformer", "window_plan"]

_MLP_CHUNK = 3 * 2**20  # hidden-activation elements per MLP chunk
_ATTN_CHUNK = 2**20  # token-activation elements (rows x channels) per window group
# At most this many rows per chunk / group: oneDNN's GEMMs with 96 input or output channels
# (Swin-T's stage 1) run ~10 % slower on 8192 rows than on 2048-4096.
_MAX_ROWS = 4096


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
    is the one of the others. ``runs``: ``(w0, w1, queries)`` per run of consecutive windows
    with the same padding positions and mask part; ``queries`` the window positions of their
    real tokens, or None where none is padding.
    """

    gather: torch.Tensor
    padded: torch.Tensor | None
    n_plain: int
    mask: torch.Tensor | None
    runs: tuple = ()
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


@torch.compiler.disable  # data-dependent; cached per size by FastSwinStage.plan_for
def window_plan(h: int, w: int, window: int, shift: int, device=None) -> _WindowPlan:
    """The :class:`_WindowPlan` of an ``h`` x ``w`` token grid: zero-pad to whole windows,
    roll by ``-shift``, partition, and put the windows the shift mask touches last; within
    each part, windows without padding first, then those with the same padding positions
    together (their padding queries can be left out as one batch)."""
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
    padding = source < 0
    # (mask part, any padding, padding positions) per window: the plan's order and runs.
    kind = [(m, bool(p.any()), p.numpy().tobytes()) for m, p in zip(masked.tolist(), padding)]
    order = sorted(range(len(kind)), key=lambda i: (kind[i], i))
    runs, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or kind[order[end]] != kind[order[start]]:
            pad = padding[order[start]]
            queries = torch.nonzero(~pad)[:, 0].to(device) if pad.any() else None
            runs.append((start, end, queries))
            start = end
    order = torch.tensor(order)
    source = source[order].flatten()
    n_plain = int((~masked).sum())
    padded = source < 0
    return _WindowPlan(
        gather=source.clamp(min=0).to(device),
        padded=padded.to(device) if padded.any() else None,
        n_plain=n_plain,
        mask=None if mask is None or n_plain == len(order) else
        mask[order[n_plain:], None].to(device),
        runs=tuple(runs),
    )


def _sdpa(qkv: torch.Tensor, attn_mask: torch.Tensor,
          q: torch.Tensor | None = None) -> torch.Tensor:
    """``qkv``: ``[nW, N, 3, heads, d]`` -> ``[nW, Nq, heads * d]``; ``q``: ``[nW, Nq, heads,
    d]`` queries to use instead of all ``N`` of ``qkv`` (``attn_mask`` has their rows)."""
    nw = qkv.shape[0]
    q_all, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [nW, heads, N, d] strided views
    q = q_all if q is None else q.transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(nw, q.shape[2], -1)


class FastSwinBlock(SwinBlock):
    """:class:`~birefnet_core.model.swin.SwinBlock`'s function with the window layout of a
    :class:`_WindowPlan`; attention and MLP run in cache-sized groups of windows / rows (one
    group on a GPU), the linear layers through ``linear`` (an implementation of
    :func:`birefnet_core.ops.linear` chosen per device by :mod:`birefnet_core.kernels`). The
    exact block's modules, shared (:meth:`forward_exact` is the exact computation on them)."""

    @classmethod
    def from_exact(cls, exact: SwinBlock) -> "FastSwinBlock":
        return adopt(cls, exact)

    def forward(self, x: torch.Tensor, plan: "_WindowPlan", linear=kernels.plain_linear
                ) -> torch.Tensor:
        """``x``: ``[B, H*W, C]`` tokens; ``plan``: the window layout of this block's shift at
        the stage's size; ``linear``: the implementation of ``linear(x, w, b, *, gelu,
        residual)`` to run."""
        return self._mlp_in_place(self._attention_chunked(x, plan, linear), linear)

    def forward_exact(self, x: torch.Tensor, h: int, w: int,
                      mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`SwinBlock.forward <birefnet_core.model.swin.SwinBlock.forward>` (the exact
        computation, a kernel candidate where it is the faster one)."""
        return SwinBlock.forward(self, x, h, w, mask)

    def _attention_chunked(self, x: torch.Tensor, plan: "_WindowPlan", linear,
                           one_launch: bool | None = None) -> torch.Tensor:
        """``x + attention(norm1(x))`` as a new tensor, computed a group of windows at a time
        (``one_launch``: all windows of a mask part at once, with every position a query, as
        on a GPU; default: off on the CPU, on elsewhere).

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
        if one_launch is None:
            one_launch = x.device.type != "cpu"
        if not one_launch:
            # Cache-sized groups of windows with the same padding, whose padding positions are
            # left out as queries (their output is discarded; as keys they stay, as trained):
            # 21 % fewer attention rows at Swin-L's stage 3 for a 1024² image.
            step, runs = max(1, min(_ATTN_CHUNK // (n * c), _MAX_ROWS // n)), plan.runs
        else:  # a GPU wants all windows in one launch
            step, runs = n_windows, ((0, plan.n_plain, None), (plan.n_plain, n_windows, None))
        for i in range(b):
            for lo, hi, queries in runs:
                if lo == hi:
                    continue
                # The attention bias (and shift mask) of the run's windows, their query rows.
                plain = lo < plan.n_plain
                run_mask = bias if plain else masked[lo - plan.n_plain:hi - plan.n_plain]
                if queries is not None:
                    run_mask = run_mask[:, :, queries]
                for w0 in range(lo, hi, step):
                    w1 = min(hi, w0 + step)
                    group = plan.group(w0, w1, n)
                    real = group.rows if group.keep is None else group.real_rows
                    if i:
                        real = real + i * length
                    xg = rows_x.index_select(0, real)
                    qkv = linear(self.norm1(xg), attn.qkv.weight, attn.qkv.bias)
                    # The real tokens' rows are the queries (in window order), as computed.
                    q = (None if queries is None else
                         qkv.view(w1 - w0, -1, 3, heads, c // heads)[:, :, 0])
                    if group.keep is not None:
                        qkv = self._with_padding_rows(qkv, group, attn.qkv.bias)
                    qkv = qkv.view(w1 - w0, n, 3, heads, c // heads)
                    mask = run_mask if plain else run_mask[w0 - lo:w1 - lo]
                    o = _sdpa(qkv, mask, q).view(-1, c)
                    if group.keep is not None and queries is None:
                        o = o.index_select(0, group.keep)
                    out.index_copy_(0, real, linear(o, attn.proj.weight, attn.proj.bias,
                                                    residual=xg))
        return out.view(b, length, c)

    @staticmethod
    def _with_padding_rows(qkv: torch.Tensor, group: "_WindowGroup",
                           bias: torch.Tensor) -> torch.Tensor:
        """The group's ``qkv`` rows from those of its real tokens: a padding token is zero after
        the norm, so its ``qkv`` row is exactly the bias and needs no matrix product."""
        full = qkv.new_empty(group.rows.numel(), qkv.shape[1])
        full.index_copy_(0, group.keep, qkv)
        return full.index_copy_(0, group.pad, bias.to(qkv.dtype).expand(group.pad.numel(), -1))

    def _mlp_in_place(self, x: torch.Tensor, linear) -> torch.Tensor:
        """``x + mlp(norm2(x))`` written over ``x`` (a tensor this block owns), in row chunks.

        The MLP is per token, so chunking changes no value; it keeps the 4x wide hidden
        activation to ~12 MB, which stays in cache and in the allocator's reused memory instead
        of a fresh, page-faulted buffer of up to 200 MB per block (~25 % faster at stage 1)."""
        mlp = self.mlp
        rows = x.view(-1, x.shape[-1])
        step = max(256, min(_MLP_CHUNK // mlp.fc1.out_features, _MAX_ROWS))
        if x.device.type != "cpu":
            step = rows.shape[0]  # a GPU wants one large GEMM, not cache-sized pieces
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step]
            hidden = linear(self.norm2(chunk), mlp.fc1.weight, mlp.fc1.bias, gelu=True)
            chunk.copy_(linear(hidden, mlp.fc2.weight, mlp.fc2.bias, residual=chunk))
        return x


class FastSwinStage(SwinStage):
    """:class:`~birefnet_core.model.swin.SwinStage` with :class:`FastSwinBlock` blocks and the
    window layouts cached per size. Per (device, dtype, size), :mod:`birefnet_core.kernels`
    measures which block computation runs (``swin_block``: the gathered windows, or the exact
    blocks) and, for the former, which linear implementation (``linear``)."""

    @classmethod
    def from_exact(cls, exact: SwinStage) -> "FastSwinStage":
        fast = adopt(cls, exact)
        fast.blocks = nn.ModuleList(FastSwinBlock.from_exact(b) for b in exact.blocks)
        fast._masks, fast._plans = {}, {}  # caches of its own
        return fast

    def clear_caches(self) -> None:
        """Forget the per-size masks and window layouts (dictionary entries only)."""
        super().clear_caches()
        self._plans.clear()

    def plan_for(self, h: int, w: int, shift: int, device: torch.device) -> "_WindowPlan":
        key = (h, w, shift, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = window_plan(h, w, self.window, shift, device)
        return plan

    def forward(self, x: torch.Tensor, h: int, w: int):
        mlp = self.blocks[0].mlp
        linear = kernels.linear_for(x, mlp.fc1.weight, mlp.fc1.bias,
                                    (mlp.fc2.weight, mlp.fc2.bias))
        last = self.blocks[-1]  # shifted where the stage has two blocks or more
        impl = kernels.stage_impl_for(x, h, w, {
            "windows": lambda: last(x, self.plan_for(h, w, last.shift, x.device), linear),
            "exact": lambda: last.forward_exact(x, h, w, self.mask_for(h, w, x.device)),
        })
        if impl == "exact":
            mask = self.mask_for(h, w, x.device) if len(self.blocks) > 1 else None
            for block in self.blocks:
                x = block.forward_exact(x, h, w, mask)
        else:
            for block in self.blocks:
                x = block(x, self.plan_for(h, w, block.shift, x.device), linear)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


def _as_is(t: torch.Tensor) -> torch.Tensor:
    return t


class FastSwinTransformer(SwinTransformer):
    """:class:`~birefnet_core.model.swin.SwinTransformer` that hands its feature maps out in the
    tokens' own channels-last layout instead of copying them to NCHW (a channels-last decoder
    reads them without converting them back). Same children, same state-dict keys."""

    @classmethod
    def from_exact(cls, exact: SwinTransformer) -> "FastSwinTransformer":
        return adopt(cls, exact)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._stages(x, _as_is)
