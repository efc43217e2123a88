"""Read a checkpoint file, normalise its keys, detect the variant, build and load the model.

The pipeline is ``read_checkpoint -> filter_checkpoint -> detect_architecture -> build_model``;
:func:`load_model` runs all of it. Every failure is a :class:`CheckpointError` that names the file,
says what was expected and what to do. Pickled files are only ever read with
``torch.load(weights_only=True)``: no code from a checkpoint is executed.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError
from .layout import all_finite
from .model import BiRefNet
from .model.swin import relative_position_index
from .variants import (
    BACKBONES,
    Architecture,
    DecoderGeneration,
    Family,
    PatchOrder,
    family_from_filename,
    get_family,
)

__all__ = [
    "ModelInfo",
    "LoadedModel",
    "read_checkpoint",
    "safetensors_layout_problem",
    "filter_checkpoint",
    "detect_architecture",
    "build_model",
    "load_model",
    "inspect_model",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
ANCHOR_KEY = "decoder.conv_out1.0.weight"  # every BiRefNet generation has this head

# Containers that training scripts wrap a state dict in.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Heads used only in training that the eval forward never runs; dropped when present.
_TRAINING_ONLY_PREFIXES = (
    "cls_head.",  # auxiliary classification head (config.auxiliary_classification)
)
_HINTS = (
    ("model.diffusion_model.", "a Stable Diffusion / UNet checkpoint"),
    ("first_stage_model.", "a Stable Diffusion checkpoint (VAE inside)"),
    ("encoder.down_blocks.", "a VAE"),
    ("text_model.", "a text encoder"),
    ("lora_", "a LoRA"),
)


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, described as ``arch.family`` (e.g. ``swin_v1_l.hr_matting``)."""

    path: str
    arch: Architecture
    family: Family
    n_params: int
    stored_dtype: str

    @property
    def name(self) -> str:
        return f"{self.arch.name}.{self.family.name}"

    @property
    def resolution(self) -> tuple[int, int] | None:
        """Working size as (W, H); None for dynamic families."""
        return self.family.resolution

    @property
    def patch_order(self) -> PatchOrder:
        return self.family.patch_order

    def summary(self) -> str:
        res = self.family.resolution
        res_text = f"{res[0]}x{res[1]} (WxH)" if res else "dynamic (image size, /32)"
        return "\n".join((
            f"BiRefNet {self.name}",
            f"family: {self.family.label}{' [matting]' if self.family.matting else ''}",
            f"backbone: {self.arch.backbone}, decoder: {self.arch.decoder.value}, "
            f"batchnorm: {'yes' if self.arch.batch_norm else 'no'}",
            f"working resolution: {res_text}",
            f"patch order: {self.family.patch_order.value}",
            f"parameters: {self.n_params / 1e6:.1f} M (stored as {self.stored_dtype})",
            f"file: {os.path.basename(self.path)}",
        ))


@dataclass
class LoadedModel:
    model: BiRefNet
    info: ModelInfo


# -- reading ---------------------------------------------------------------------------------

_SAFETENSORS_MAX_HEADER = 100 << 20  # the format's own limit
_DOWNLOAD_AGAIN = "The file is truncated or corrupt: download it again."


def _sniff(path: Path, head: bytes) -> str:
    """'safetensors', 'pickle' or 'unknown', from the suffix and, failing that, the first bytes."""
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def safetensors_layout_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file's layout, or None when it is whole.

    A safetensors file describes itself: an 8-byte header length, a JSON header giving every
    tensor's ``data_offsets``, then the data. A file is whole when the data is exactly as long
    as the offsets say, which catches a download cut short even when no size or hash was
    known. Only the header is read. ``OSError`` (e.g. permission denied) propagates.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER):
            return f"its header claims {header_len} bytes, but the file has {size}"
        header = f.read(header_len)
    try:
        meta = json.loads(header)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return "its header is not valid JSON"
    if not isinstance(meta, dict):
        return "its header is not a JSON object"
    end = 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            return f"tensor {name!r} has no valid data_offsets in the header"
        end = max(end, offsets[1])
    data = size - 8 - header_len
    if data != end:
        return f"its header lists {end} bytes of tensor data, the file holds {data}"
    return None


def _check_pickle_container(path: Path, head: bytes) -> None:
    """Refuse, before unpickling, a file that is neither kind of ``torch.save`` output, so that
    random or cut-off bytes are called what they are (not a safety refusal of their content)."""
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("data.pkl") for name in archive.namelist()):
                    return
            problem = "a zip archive without the data.pkl of torch.save"
        except (zipfile.BadZipFile, EOFError) as exc:
            problem = f"a damaged zip archive: {exc}"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return  # a pickle stream (legacy torch.save); torch.load checks its magic number
    else:
        problem = "neither the zip archive nor the pickle stream that torch.save writes"
    raise CheckpointError(
        f"{path} is not a valid PyTorch checkpoint ({problem}). If it was downloaded, it is "
        "truncated or corrupt: download it again.")


def read_checkpoint(path: str | os.PathLike, *, meta: bool = False) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` or ``.pth/.pt/.bin/.ckpt`` file (on the CPU).

    A safetensors file is first checked against its own header
    (:func:`safetensors_layout_problem`), so a truncated file is refused before anything loads.
    ``meta=True`` reads names, shapes and dtypes only (tensors on the ``meta`` device): the
    safetensors header, or the pickle's structure with its storages memory-mapped, not read.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_symlink():  # its target is missing, or links lead back to it
            raise CheckpointError(
                f"{path} is a symbolic link that leads nowhere (-> {os.readlink(path)}: missing "
                "or a loop of links). Point the link at the weights file, or replace it with "
                "the file.")
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a weights file: select the "
                                  ".safetensors or .pth file inside it.")
        raise CheckpointError(f"checkpoint not found: {path}. Check the file name and folder.")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{path.name} is an ONNX export, which this loader does not run. Use the PyTorch "
            "weights of the same model (model.safetensors or a .pth release file).")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        kind = _sniff(path, head)
        problem = safetensors_layout_problem(path) if kind == "safetensors" else None
    except PermissionError as exc:
        raise CheckpointError(
            f"permission denied reading {path}: make the file readable by this user "
            "(e.g. chmod a+r), or run as a user who may read it.") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}.") from exc
    if problem is not None:
        raise CheckpointError(f"{path} is truncated or corrupt: download it again ({problem}).")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _safetensors_meta(path) if meta else load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {path} as safetensors ({exc}). {_DOWNLOAD_AGAIN}") from exc
    if kind == "pickle":
        _check_pickle_container(path, head)
        try:
            obj = _torch_load(path, "meta" if meta else "cpu")
        except pickle.UnpicklingError as exc:
            if "GLOBAL" not in str(exc):  # no refused class named: unreadable pickle data
                raise CheckpointError(
                    f"{path} is not a valid PyTorch checkpoint: its pickled data is damaged, or "
                    "uses a pickle feature that torch's safe reader (weights_only) lacks. If it "
                    "was downloaded, download it again; otherwise re-save its state dict with "
                    "safetensors.torch.save_file.") from exc
            raise CheckpointError(
                f"{path} contains pickled objects other than tensors, which are refused for "
                "safety (weights_only=True; loading them could run arbitrary code). Use the "
                "model.safetensors of this model, or re-save its state dict with "
                "safetensors.torch.save_file in an environment you trust.") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {path} as a PyTorch checkpoint ({exc}). {_DOWNLOAD_AGAIN}") from exc
        return _unwrap(obj, path)
    raise CheckpointError(
        f"{path} is neither a safetensors nor a PyTorch checkpoint (unrecognised content). "
        f"Expected a BiRefNet {'/'.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)} file.")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _safetensors_meta(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        slices = {key: f.get_slice(key) for key in f.keys()}
        return {key: torch.empty(s.get_shape(), device="meta",
                                 dtype=_SAFETENSORS_DTYPES.get(s.get_dtype(), torch.uint8))
                for key, s in slices.items()}


def _torch_load(path: Path, map_location: str):
    if map_location != "meta":
        return torch.load(str(path), map_location=map_location, weights_only=True)
    try:
        return torch.load(str(path), map_location="meta", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch.save file cannot be memory-mapped
        return torch.load(str(path), map_location="meta", weights_only=True)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Dig the state dict out of ``{'state_dict': ...}`` / ``{'model': ...}`` containers."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(
        f"{path} holds no state dict (found {type(obj).__name__}). Expected a mapping of "
        "parameter names to tensors, possibly inside 'state_dict' or 'model'.")


# -- normalising -----------------------------------------------------------------------------

def _describe_foreign(keys: list[str]) -> str:
    for prefix, what in _HINTS:
        if any(prefix in k for k in keys):
            return f" It looks like {what}."
    return ""


def filter_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike = "<memory>",
                      ) -> tuple[dict[str, torch.Tensor], str]:
    """Normalise a raw state dict to the official key names, in float32.

    Strips any wrapper prefix ``P`` for which ``P + 'decoder.conv_out1.0.weight'`` exists
    (``module.``, ``_orig_mod.``, ``module._orig_mod.``, ``birefnet.``, ``model.`` ...), drops
    known training-only heads, and upcasts fp16/bf16 tensors. Returns the clean dict and the
    stored floating dtype (``'float16'`` ...).
    """
    keys = list(state_dict)
    anchors = [k[: -len(ANCHOR_KEY)] for k in keys if k.endswith(ANCHOR_KEY)]
    if not anchors:
        raise CheckpointError(
            f"{path} is not a BiRefNet checkpoint: it has no '{ANCHOR_KEY}' (the output head of "
            f"every BiRefNet) among its {len(keys)} tensors.{_describe_foreign(keys)} "
            "Select a BiRefNet or RMBG-2.0 weights file.")
    prefix = min(anchors, key=len)
    clean: dict[str, torch.Tensor] = {}
    dtypes: collections.Counter[str] = collections.Counter()
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.startswith(_TRAINING_ONLY_PREFIXES):
            continue
        if tensor.is_floating_point():
            dtypes[str(tensor.dtype).removeprefix("torch.")] += tensor.numel()
            tensor = tensor.float()
        clean[key] = tensor
    stored = dtypes.most_common(1)[0][0] if dtypes else "unknown"
    return clean, stored


# -- detection -------------------------------------------------------------------------------

def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def detect_architecture(state_dict: Mapping[str, torch.Tensor],
                        path: str | os.PathLike = "<memory>") -> Architecture:
    """Backbone, decoder generation and BatchNorm presence from a clean state dict's keys/shapes."""
    keys = state_dict.keys()
    if "bb.patch_embed.proj.weight" in state_dict:
        kind = "swin"
        channels = state_dict["bb.patch_embed.proj.weight"].shape[0]
        depths = tuple(_count(keys, rf"bb\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
        table = state_dict.get("bb.layers.0.blocks.0.attn.relative_position_bias_table")
        window = int(round(table.shape[0] ** 0.5) + 1) // 2 if table is not None else 0
        found = dict(channels=channels, depths=depths, window=window)
        match = [s for s in BACKBONES.values() if s.kind == kind and s.channels[0] == channels
                 and s.depths == depths and s.window_size == window]
    elif "bb.patch_embed1.proj.weight" in state_dict:
        kind = "pvt"
        channels = state_dict["bb.patch_embed1.proj.weight"].shape[0]
        depths = tuple(_count(keys, rf"bb\.block{i}\.(\d+)\.") for i in range(1, 5))
        found = dict(channels=channels, depths=depths)
        match = [s for s in BACKBONES.values() if s.kind == kind and s.channels[0] == channels
                 and s.depths == depths]
    else:
        raise CheckpointError(
            f"{path}: unknown backbone. The decoder keys are BiRefNet's, but neither Swin "
            "('bb.patch_embed.proj.weight') nor PVT-v2 ('bb.patch_embed1.proj.weight') backbone "
            f"keys are present. Supported backbones: {', '.join(BACKBONES)}.")
    if not match:
        raise CheckpointError(
            f"{path}: unknown {kind} backbone variant {found}. Supported backbones: "
            f"{', '.join(BACKBONES)}.")
    decoder = (DecoderGeneration.CURRENT if "decoder.ipt_blk5.conv1.weight" in state_dict
               else DecoderGeneration.LEGACY)
    batch_norm = "decoder.decoder_block4.bn_in.weight" in state_dict
    return Architecture(match[0].name, decoder, batch_norm)


# -- building --------------------------------------------------------------------------------

def _mismatch_report(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
                     limit: int = 5) -> str:
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    shapes = [f"{k} {tuple(sd[k].shape)} vs expected {tuple(model_sd[k].shape)}"
              for k in model_sd if k in sd and sd[k].shape != model_sd[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def _check_finite_weights(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                          path: str | os.PathLike) -> None:
    """Refuse NaN / inf weights, naming the first such tensor: they would not fail, they would
    turn every mask into NaN (shown as black) while reporting success.

    One reduction per tensor screens it (:func:`~.layout.all_finite`).
    """
    for key in expected:
        tensor = sd[key]
        if not all_finite(tensor):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise CheckpointError(
                f"{path}: tensor {key!r} {tuple(tensor.shape)} holds {nan} NaN and {inf} "
                f"infinite value(s) of {tensor.numel()}. The file is corrupt, was saved from a "
                "diverged training run, or was converted to fp16 with values beyond its range: "
                "download the published file again.")


def _fit_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                    arch: Architecture, path) -> dict[str, torch.Tensor]:
    """``state_dict`` with the derived buffers recomputed, checked key by key, shape by shape
    and dtype by dtype against the model's ``expected`` one (values are not looked at, so this
    works on ``meta`` tensors too)."""
    sd = dict(state_dict)
    # Derived buffers are recomputed, not trusted (nor required) from the file.
    for key, buf in expected.items():
        if key.endswith("relative_position_index"):
            sd[key] = relative_position_index(int(round(buf.shape[0] ** 0.5)))
        elif key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.long)
    report = _mismatch_report(expected, sd)
    if report:
        raise CheckpointError(
            f"{path} does not fit the detected architecture {arch.name}: {report}. The file may "
            "be a modified or unsupported BiRefNet variant; please report it with this message.")
    # Assigned as-is (assign=True), an integer weight would become an integer parameter.
    not_float = [f"{k} ({str(sd[k].dtype).removeprefix('torch.')})" for k, buf in expected.items()
                 if buf.is_floating_point() and not sd[k].is_floating_point()]
    if not_float:
        more = f" (+{len(not_float) - 5} more)" if len(not_float) > 5 else ""
        raise CheckpointError(
            f"{path}: weights must be floating point, but {len(not_float)} tensor(s) are not: "
            f"{', '.join(not_float[:5])}{more}. The file is corrupt or a quantised/converted "
            "export this loader does not read; use the published model.safetensors.")
    return sd


def build_model(arch: Architecture, state_dict: Mapping[str, torch.Tensor] | None = None, *,
                patch_order: PatchOrder | str = PatchOrder.SPLIT,
                device: torch.device | str = "cpu",
                path: str | os.PathLike = "<memory>") -> BiRefNet:
    """Build a model for ``arch`` and load ``state_dict`` strictly (random init when None).

    With weights, the model is built on the ``meta`` device and the tensors are assigned, so no
    time is spent on a random initialisation that would be overwritten.
    """
    if state_dict is None:
        return BiRefNet(arch, patch_order).to(device)
    with torch.device("meta"):
        model = BiRefNet(arch, patch_order)
    expected = model.state_dict()
    sd = _fit_state_dict(state_dict, expected, arch, path)
    _check_finite_weights(sd, expected, path)
    model.load_state_dict(sd, strict=True, assign=True)
    model.reset_static()
    return model.to(device).eval()


def load_model(path: str | os.PathLike, *, family: str | Family | None = None,
               patch_order: PatchOrder | str | None = None,
               device: torch.device | str = "cpu", optimize: bool = False) -> LoadedModel:
    """Load any published BiRefNet checkpoint into a weight-compatible, eval-mode model.

    ``family``: None/'auto' to guess from the file name and the decoder generation (see
    :func:`~birefnet_core.variants.family_from_filename`), or a name from
    :data:`~birefnet_core.variants.FAMILIES`. ``patch_order``: None/'auto' for the family's, or
    'split'/'einops' to override. ``optimize``: apply
    :func:`~birefnet_core.optimize.optimize_for_inference` (same output to ~1e-6, faster; its
    state dict no longer has the official keys). The default is the exact, unmodified network.
    """
    raw = read_checkpoint(path)
    state_dict, stored = filter_checkpoint(raw, path)
    del raw
    arch = detect_architecture(state_dict, path)
    fam = _resolve_family(path, arch, family, patch_order)
    model = build_model(arch, state_dict, patch_order=fam.patch_order, device=device, path=path)
    n_params = sum(p.numel() for p in model.parameters())
    if optimize:
        from .optimize import optimize_for_inference

        optimize_for_inference(model)
    return LoadedModel(model, ModelInfo(os.fspath(path), arch, fam, n_params, stored))


def inspect_model(path: str | os.PathLike, *, family: str | Family | None = None,
                  patch_order: PatchOrder | str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` that :func:`load_model` would report, without loading weights.

    Reads the safetensors header or the pickle's structure only (see ``read_checkpoint(meta=
    True)``) and counts parameters on the ``meta`` device, so it costs milliseconds, not the
    seconds and gigabytes of a load. Raises the same :class:`CheckpointError` for files that are
    no BiRefNet checkpoint (a bad tensor *value*, e.g. NaN, is only found by loading).
    """
    raw = read_checkpoint(path, meta=True)
    state_dict, stored = filter_checkpoint(raw, path)
    arch = detect_architecture(state_dict, path)
    fam = _resolve_family(path, arch, family, patch_order)
    with torch.device("meta"):
        model = BiRefNet(arch, fam.patch_order)
    _fit_state_dict(state_dict, model.state_dict(), arch, path)
    n_params = sum(p.numel() for p in model.parameters())
    return ModelInfo(os.fspath(path), arch, fam, n_params, stored)


def _resolve_family(path, arch: Architecture, family, patch_order) -> Family:
    """The family from the option, else from the file name and decoder generation."""
    if family is None or family == "auto":
        fam = family_from_filename(path, decoder=arch.decoder)
    else:
        fam = get_family(family)
    return get_family(fam, patch_order=patch_order)

