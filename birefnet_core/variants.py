"""What a BiRefNet checkpoint is: its architecture (read from the weights) and family (from the name).

A loaded model is described as ``arch.family``, e.g. ``swin_v1_l.hr_matting``, the way timm names
``model_name.pretrained_tag``:

* the **architecture** (backbone, decoder generation, BatchNorm or not) is fixed by the state
  dict's keys and shapes, so :mod:`.weights` detects it and never trusts a name for it;
* the **family** (working resolution, matting or segmentation, image-patch channel order) is not
  visible in the weights, so it comes from the file name, with an explicit override.

This module imports nothing heavy: the ComfyUI nodes build their option lists from it at
registration time.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from dataclasses import dataclass

from .errors import InputError

__all__ = [
    "PatchOrder",
    "DecoderGeneration",
    "BackboneSpec",
    "BACKBONES",
    "Architecture",
    "Family",
    "FAMILIES",
    "family_from_filename",
    "get_family",
]


class PatchOrder(str, enum.Enum):
    """How the decoder stacks a GxG grid of image patches on the channel axis.

    ``split``  : the official code before Nov 2024, channel ``(wg * G + hg) * 3 + c``.
    ``einops`` : the official code since then, channel ``c * G * G + hg * G + wg``.

    The weights cannot tell them apart; a wrong order silently degrades masks.
    """

    SPLIT = "split"
    EINOPS = "einops"


class DecoderGeneration(str, enum.Enum):
    """``current``: with ``decoder.ipt_blk5`` and gradient attention on level 4, and deformable
    ASPP branches of kernels 1/3/7. ``legacy``: paper-era checkpoints without those, with a
    single 3x3 deformable branch (the ``paper`` family; the ``legacy`` *family*,
    BiRefNet-legacy, is a later checkpoint with the current decoder)."""

    CURRENT = "current"
    LEGACY = "legacy"


@dataclass(frozen=True)
class BackboneSpec:
    """Hyper-parameters of one backbone. ``channels`` are the four stage widths, shallow first."""

    name: str
    kind: str  # "swin" or "pvt"
    channels: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int = 0  # swin
    mlp_ratios: tuple[float, float, float, float] = (4.0, 4.0, 4.0, 4.0)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)  # pvt
    # Peak activation bytes per input pixel of one frame in fp32, decoder included (its width
    # follows the backbone's). Rough: the CPU peak-RSS growth of a forward between 256² and 512²
    # inputs (PVT-v2 b0 1.3k, b2 1.5k, Swin-T 1.9k, Swin-L 2.7k bytes/pixel) plus ~30 % for GPU
    # workspaces; Swin-L at 1024² then comes to ~3.8 GB, in line with the few GB reported for
    # the official model. Used by birefnet_core.plan.estimate_memory.
    activation_bytes_per_pixel: int = 3600


def _swin(name: str, dim: int, depths, heads, window: int, act_bytes: int) -> BackboneSpec:
    return BackboneSpec(name, "swin", (dim, 2 * dim, 4 * dim, 8 * dim), tuple(depths), tuple(heads),
                        window_size=window, activation_bytes_per_pixel=act_bytes)


def _pvt(name: str, dims, depths, heads, mlp_ratios, act_bytes: int) -> BackboneSpec:
    return BackboneSpec(name, "pvt", tuple(dims), tuple(depths), tuple(heads),
                        mlp_ratios=tuple(float(r) for r in mlp_ratios),
                        activation_bytes_per_pixel=act_bytes)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _swin("swin_v1_t", 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 2400),
        _swin("swin_v1_s", 96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 2400),
        _swin("swin_v1_b", 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 3000),
        _swin("swin_v1_l", 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 3600),
        _pvt("pvt_v2_b0", (32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8), (8, 8, 4, 4), 1700),
        _pvt("pvt_v2_b1", (64, 128, 320, 512), (2, 2, 2, 2), (1, 2, 5, 8), (8, 8, 4, 4), 2000),
        _pvt("pvt_v2_b2", (64, 128, 320, 512), (3, 4, 6, 3), (1, 2, 5, 8), (8, 8, 4, 4), 2000),
        _pvt("pvt_v2_b5", (64, 128, 320, 512), (3, 6, 40, 3), (1, 2, 5, 8), (4, 4, 4, 4), 2400),
    )
}


@dataclass(frozen=True)
class Architecture:
    """The part of a model that the weights determine."""

    backbone: str = "swin_v1_l"
    decoder: DecoderGeneration = DecoderGeneration.CURRENT
    batch_norm: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(
                f"unknown backbone {self.backbone!r}; expected one of {', '.join(BACKBONES)}"
            )
        object.__setattr__(self, "decoder", DecoderGeneration(self.decoder))

    @property
    def spec(self) -> BackboneSpec:
        return BACKBONES[self.backbone]

    @property
    def name(self) -> str:
        """``swin_v1_l``, ``swin_v1_l_legacy``, ``swin_v1_l_no_bn`` ... (the manifest's names)."""
        name = self.backbone
        if self.decoder is DecoderGeneration.LEGACY:
            name += "_legacy"
        if not self.batch_norm:
            name += "_no_bn"
        return name


@dataclass(frozen=True)
class Family:
    """The part of a model that only its name can tell: how it was trained and must be fed.

    ``resolution`` is the working size as ``(width, height)``; ``None`` for dynamic families,
    which take the image size rounded to a multiple of 32.
    """

    name: str
    label: str
    resolution: tuple[int, int] | None = (1024, 1024)
    patch_order: PatchOrder = PatchOrder.SPLIT
    matting: bool = False
    hf_repo: str = ""
    note: str = ""

    @property
    def dynamic(self) -> bool:
        return self.resolution is None


def _fam(name: str, label: str, **kwargs) -> Family:
    """Defaults helper: each table entry lists only what differs from a 1024² split-order model."""
    return Family(name=name, label=label, **kwargs)


_EINOPS = PatchOrder.EINOPS

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _fam("general", "General (1024²)", hf_repo="ZhengPeng7/BiRefNet",
             note="trained with the split patch order (before Nov 2024), so split is the default; "
                  "the repository's current runtime code uses einops, core ComfyUI uses split: "
                  "set the loader's patch_order if masks look blocky"),
        _fam("lite", "Lite (1024²)", hf_repo="ZhengPeng7/BiRefNet_lite",
             note="Swin-T; formerly published as BiRefNet_T"),
        _fam("lite_2k", "Lite 2K (2560x1440)", resolution=(2560, 1440),
             hf_repo="ZhengPeng7/BiRefNet_lite-2K"),
        _fam("lite_matting", "Lite matting (1024², einops likely)", patch_order=_EINOPS,
             matting=True, hf_repo="ZhengPeng7/BiRefNet_lite-matting",
             note="Swin-T, soft alpha mattes; trained after the Nov 2024 switch to the einops "
                  "order, so einops is likely but not verified"),
        _fam("hr", "HR (2048²)", resolution=(2048, 2048), patch_order=_EINOPS,
             hf_repo="ZhengPeng7/BiRefNet_HR"),
        _fam("hr_matting", "HR matting (2048²)", resolution=(2048, 2048), patch_order=_EINOPS,
             matting=True, hf_repo="ZhengPeng7/BiRefNet_HR-matting"),
        _fam("res_512", "512x512", resolution=(512, 512), patch_order=_EINOPS,
             hf_repo="ZhengPeng7/BiRefNet_512x512",
             note="trained after the Nov 2024 switch to the einops patch order"),
        _fam("dynamic", "Dynamic (any size)", resolution=None, patch_order=_EINOPS,
             hf_repo="ZhengPeng7/BiRefNet_dynamic"),
        _fam("dynamic_matting", "Dynamic matting (any size)", resolution=None,
             patch_order=_EINOPS, matting=True, hf_repo="ZhengPeng7/BiRefNet_dynamic-matting"),
        _fam("matting", "Matting (1024²)", matting=True, hf_repo="ZhengPeng7/BiRefNet-matting"),
        _fam("portrait", "Portrait (1024²)", hf_repo="ZhengPeng7/BiRefNet-portrait"),
        _fam("dis5k", "DIS5K (1024²)", hf_repo="ZhengPeng7/BiRefNet-DIS5K"),
        _fam("dis5k_tr_tes", "DIS5K-TR_TEs (1024²)", hf_repo="ZhengPeng7/BiRefNet-DIS5K-TR_TEs"),
        _fam("cod", "COD (1024²)", hf_repo="ZhengPeng7/BiRefNet-COD"),
        _fam("hrsod", "HRSOD (1024²)", hf_repo="ZhengPeng7/BiRefNet-HRSOD"),
        _fam("rmbg2", "RMBG-2.0 (1024²)", hf_repo="briaai/RMBG-2.0",
             note="BRIA RMBG-2.0: BiRefNet general architecture, non-commercial licence"),
        _fam("legacy", "Legacy general, no portrait data (1024²)",
             hf_repo="ZhengPeng7/BiRefNet-legacy",
             note="the general model trained without the portrait data (May 2024), current "
                  "decoder; not the paper-era weights"),
        _fam("paper", "Paper-era release (1024², legacy decoder)",
             note="the paper's release files (BiRefNet-DIS_ep580.pth and kin) with the older "
                  "decoder generation; chosen from the weights, whatever the file name"),
        _fam("toonout", "ToonOut anime/illustration (1024²)", patch_order=_EINOPS,
             hf_repo="joelseytre/toonout",
             note="Swin-L fine-tune of general for anime and illustration cut-outs (MIT, Sep "
                  "2025), trained with the einops-order code"),
        _fam("lucida", "Lucida transparency/text/illustration (1024², einops unverified)",
             patch_order=_EINOPS, matting=True, hf_repo="egeorcun/lucida",
             note="Swin-L fine-tune of HR, trained and run at 1024² (not 2048); einops from its "
                  "HR lineage, not verified"),
    )
}

# Old names of families in file names, rewritten before the rules below run.
_ALIASES: tuple[tuple[str, str], ...] = (
    (r"birefnet[-_ ]?t(?![a-z0-9])", "birefnet_lite"),  # BiRefNet_T: the lite model's first name
)

# Ordered (pattern, family) rules over the lower-cased file stem; the first match wins.
# More specific names come first ("hrsod" before "hr", "hr-matting" before "matting"), and
# fine-tunes first of all: their own names say more than the base model's words inside them.
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"toonout", "toonout"),
    (r"lucida", "lucida"),
    (r"hrsod", "hrsod"),
    (r"(?<![a-z])hr[-_ ]?matting", "hr_matting"),
    (r"(?<![a-z])hr(?![a-z])|2048", "hr"),
    (r"dynamic.*matting|matting.*dynamic", "dynamic_matting"),
    (r"dynamic", "dynamic"),
    (r"(?<![a-z])2k(?![a-z])|2560", "lite_2k"),
    (r"512", "res_512"),
    (r"lite.*matting|matting.*lite", "lite_matting"),
    (r"matting", "matting"),
    (r"portrait", "portrait"),
    (r"rmbg", "rmbg2"),
    (r"tr[-_]tes", "dis5k_tr_tes"),
    (r"dis5k|(?<![a-z])dis(?![a-z])", "dis5k"),
    (r"(?<![a-z])cod(?![a-z])", "cod"),
    (r"legacy", "legacy"),
    (r"lite", "lite"),
)

# Files named by a folder's convention rather than by their family: ComfyUI's own repack
# (Comfy-Org/BiRefNet), which core's background-removal template puts in
# models/background_removal/ ((folder, stem) -> family; "lucida*" is a rule above).
_FOLDER_NAMES: dict[tuple[str, str], str] = {
    ("background_removal", "birefnet"): "general",
}


def family_from_filename(path: str | os.PathLike,
                         decoder: DecoderGeneration | str | None = None) -> Family:
    """Guess the family from a checkpoint's file name (and folder); ``general`` when nothing
    matches. Case-insensitive.

    ``decoder``: the decoder generation detected from the weights, when known. A checkpoint
    with the legacy decoder is a paper-era file, described as ``paper``, unless its name asks
    for another working size or patch order.

    >>> family_from_filename("models/birefnet/BiRefNet_HR-matting.safetensors").name
    'hr_matting'
    >>> family_from_filename("BiRefNet_lite-2K.pth").resolution
    (2560, 1440)
    >>> family_from_filename("models/background_removal/lucida.safetensors").name
    'lucida'
    >>> family_from_filename("BiRefNet-DIS_ep580.pth", decoder="legacy").name
    'paper'
    """
    path = os.fspath(path)
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    folder = os.path.basename(os.path.dirname(path)).lower()
    family = FAMILIES[_FOLDER_NAMES.get((folder, stem)) or _family_name(stem)]
    paper = FAMILIES["paper"]
    if (decoder is not None and DecoderGeneration(decoder) is DecoderGeneration.LEGACY
            and (family.resolution, family.patch_order) == (paper.resolution, paper.patch_order)):
        return paper
    return family


def _family_name(stem: str) -> str:
    for pattern, replacement in _ALIASES:
        stem = re.sub(pattern, replacement, stem)
    for pattern, family in _NAME_RULES:
        if re.search(pattern, stem):
            return family
    return "general"


def get_family(
    name: str | Family,
    *,
    resolution: tuple[int, int] | None | str = "keep",
    patch_order: PatchOrder | str | None = None,
) -> Family:
    """Look a family up by name and optionally override its resolution or patch order.

    Overrides return a copy (``dataclasses.replace``); the shared table is never mutated.
    """
    if isinstance(name, Family):
        family = name
    else:
        key = str(name).strip().lower().replace("-", "_")
        if key not in FAMILIES:
            raise InputError(
                f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}"
            )
        family = FAMILIES[key]
    changes = {}
    if resolution != "keep":
        changes["resolution"] = resolution
    if patch_order is not None and str(patch_order) != "auto":
        try:
            changes["patch_order"] = PatchOrder(patch_order)
        except ValueError:
            raise InputError(
                f"unknown patch order {patch_order!r}; expected 'split', 'einops' or 'auto'"
            ) from None
    return dataclasses.replace(family, **changes) if changes else family
