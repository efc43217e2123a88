"""The bad-input matrix: every kind of bad file, tensor or option a user can hand the pack.

Each row either names the error class and what its message must say (the input, what was
expected, what to do), or checks the correct result. Weights go through ``load_model`` and,
where the problem is visible without reading tensor values, the header-only ``inspect_model``
that the loader panel uses; images through ``predict_masks``; masks and backgrounds through the
compositing and mask ops; downloads through a loopback hub; the command line through its
``main``. The host-level rows (interrupt, ``/free``, queued prompts, a model deleted after
queueing) run on the real ComfyUI in ``tests/test_e2e_comfyui.py``; node rows through the fake
host are at the end.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import re
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core import CheckpointError, InputError
from birefnet_core.model import BiRefNet
from birefnet_core.variants import Architecture
from birefnet_core.weights import inspect_model, load_model

TINY = "64x64"  # working size of the image rows


@pytest.fixture(scope="module")
def state_dict():
    torch.manual_seed(0)
    return BiRefNet(Architecture("pvt_v2_b0")).state_dict()


# -- weights --------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the marker must never appear."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _safetensors(sd, path, **_):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write(kind: str, path: Path, sd: dict, marker: Path) -> None:
    """Make the bad (or odd but valid) file of row ``kind`` at ``path``."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    key = "decoder.conv_out1.0.weight"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _safetensors(sd, path)
        _cut(path)
    elif kind == "truncated_zip":
        torch.save(sd, path)
        _cut(path)
    elif kind == "random":
        path.write_bytes(os.urandom(1 << 16))
    elif kind == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    elif kind == "onnx":
        path.write_bytes(b"\x08\x07\x12\x07pytorch" + os.urandom(256))
    elif kind == "stable_diffusion":
        _safetensors({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, path)
    elif kind == "other_model":  # a torchvision-style classifier
        _safetensors({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8),
                      "fc.bias": torch.zeros(10)}, path)
    elif kind == "pickle_zip":  # torch.save's zip format, payload inside the state dict
        torch.save({"state_dict": {**sd, "x": Payload(marker)}}, path)
    elif kind == "pickle_legacy":  # torch.save's pre-1.6 stream
        torch.save({**sd, "x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "pickle_raw":  # a plain pickle.dumps, as some tools write
        path.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))
    elif kind == "pickle_only":  # nothing but the payload
        torch.save(Payload(marker), path)
    elif kind == "wrong_shape":
        _safetensors({**sd, key: torch.zeros(2, 2, 1, 1)}, path)
    elif kind == "missing_keys":
        _safetensors({k: v for k, v in sd.items() if "lateral_block4" not in k}, path)
    elif kind == "unexpected_keys":
        _safetensors({**sd, "decoder.extra_head.weight": torch.zeros(3)}, path)
    elif kind == "nan":
        _safetensors({**sd, key: torch.full_like(sd[key], float("nan"))}, path)
    elif kind == "inf_fp16":  # an fp32 value beyond fp16's range, converted carelessly
        _safetensors({**half, key: torch.full_like(half[key], float("inf"))}, path)
    elif kind == "integer":
        _safetensors({**sd, key: sd[key].to(torch.int32)}, path)
    elif kind == "no_state_dict":
        torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    elif kind.startswith("prefix:"):
        prefix = kind.split(":", 1)[1]
        torch.save({f"{prefix}{k}": v for k, v in sd.items()}, path)
    elif kind.startswith("container:"):
        torch.save({kind.split(":", 1)[1]: dict(sd), "epoch": 7}, path)
    elif kind in ("fp16", "bf16"):
        dtype = torch.float16 if kind == "fp16" else torch.bfloat16
        _safetensors({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                     path)
    elif kind == "symlink_loop":
        other = path.with_name("loop_b" + path.suffix)
        path.symlink_to(other)
        other.symlink_to(path)
    elif kind == "dangling_symlink":
        path.symlink_to(path.with_name("moved_away.safetensors"))
    elif kind == "folder":
        path.mkdir()
    else:
        raise AssertionError(kind)


# (row, file name, message pattern, visible from the header: inspect_model refuses it too)
WEIGHT_ERRORS = [
    ("empty", "BiRefNet.safetensors", r"BiRefNet\.safetensors is truncated or corrupt: "
     r"download it again", True),
    ("empty", "BiRefNet-general-epoch_244.pth", r"BiRefNet-general-epoch_244\.pth is not a "
     r"valid PyTorch checkpoint .*download it again", True),
    ("truncated", "BiRefNet_lite.safetensors", r"BiRefNet_lite\.safetensors is truncated or "
     r"corrupt: download it again", True),
    ("truncated_zip", "BiRefNet-HR.pth", r"BiRefNet-HR\.pth is not a valid PyTorch checkpoint "
     r"\(a damaged zip archive", True),
    ("random", "model.safetensors", r"model\.safetensors is truncated or corrupt", True),
    ("random", "model.pth", r"model\.pth is not a valid PyTorch checkpoint \(neither the zip",
     True),
    ("random", "model.bin", r"model\.bin is not a valid PyTorch checkpoint", True),
    ("random", "model.weights", r"model\.weights is neither a safetensors nor a PyTorch "
     r"checkpoint", True),
    ("text", "model.safetensors", r"model\.safetensors is truncated or corrupt", True),
    ("text", "model.ckpt", r"model\.ckpt is not a valid PyTorch checkpoint", True),
    ("onnx", "birefnet.onnx", r"birefnet\.onnx is an ONNX export.*Use the PyTorch weights",
     True),
    ("stable_diffusion", "sd15.safetensors", r"sd15\.safetensors is not a BiRefNet checkpoint"
     r".*Stable Diffusion", True),
    ("other_model", "resnet.safetensors", r"resnet\.safetensors is not a BiRefNet checkpoint: "
     r"it has no 'decoder\.conv_out1\.0\.weight'", True),
    ("pickle_zip", "BiRefNet-evil.pth", r"BiRefNet-evil\.pth contains pickled objects other "
     r"than tensors, which are refused for safety", True),
    ("pickle_legacy", "BiRefNet-evil.pth", r"refused for safety", True),
    ("pickle_raw", "BiRefNet-evil.pth", r"BiRefNet-evil\.pth (contains pickled objects|is not "
     r"a valid PyTorch checkpoint)", True),
    ("pickle_only", "BiRefNet-evil.ckpt", r"refused for safety", True),
    ("pickle_zip", "BiRefNet-evil.bin", r"refused for safety", True),
    ("no_state_dict", "BiRefNet-train.pth", r"BiRefNet-train\.pth holds no state dict", True),
    ("wrong_shape", "BiRefNet.safetensors", r"does not fit the detected architecture "
     r"pvt_v2_b0: 1 shape: decoder\.conv_out1\.0\.weight \(2, 2, 1, 1\)", True),
    ("missing_keys", "BiRefNet.safetensors", r"does not fit the detected architecture "
     r"pvt_v2_b0: \d+ missing: decoder\.lateral_block4", True),
    ("unexpected_keys", "BiRefNet.safetensors", r"1 unexpected: decoder\.extra_head\.weight",
     True),
    ("nan", "BiRefNet.safetensors", r"tensor 'decoder\.conv_out1\.0\.weight' \(1, \d+, 1, 1\) "
     r"holds \d+ NaN and 0 infinite", False),
    ("inf_fp16", "BiRefNet.safetensors", r"holds 0 NaN and \d+ infinite value", False),
    ("integer", "BiRefNet.safetensors", r"weights must be floating point.*"
     r"decoder\.conv_out1\.0\.weight \(int32\)", True),
    ("symlink_loop", "BiRefNet.safetensors", r"BiRefNet\.safetensors is a symbolic link that "
     r"leads nowhere", True),
    ("dangling_symlink", "BiRefNet.safetensors", r"BiRefNet\.safetensors is a symbolic link "
     r"that leads nowhere.*moved_away\.safetensors", True),
    ("folder", "BiRefNet.safetensors", r"BiRefNet\.safetensors is a folder, not a weights "
     r"file", True),
    ("missing", "BiRefNet.safetensors", r"checkpoint not found: .*BiRefNet\.safetensors", True),
]


@pytest.mark.parametrize("kind, name, message, from_header", WEIGHT_ERRORS,
                         ids=[f"{r[0]}-{r[1]}" for r in WEIGHT_ERRORS])
def test_bad_weights_get_a_checkpoint_error_naming_the_file(tmp_path, state_dict, kind, name,
                                                            message, from_header):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    if kind != "missing":
        _write(kind, path, state_dict, marker)
    readers = [load_model, inspect_model] if from_header else [load_model]
    for read in readers:
        with pytest.raises(CheckpointError) as info:
            read(path)
        assert re.search(message, str(info.value), re.S), f"{read.__name__}: {info.value}"
        assert isinstance(info.value, ValueError)  # catchable as the builtin too
    assert not marker.exists(), "a pickled payload was executed"


VALID_VARIANTS = ["prefix:module.", "prefix:_orig_mod.", "prefix:module._orig_mod.",
                  "prefix:birefnet.", "prefix:model.", "container:state_dict",
                  "container:model", "container:model_state_dict", "fp16", "bf16"]


@pytest.mark.parametrize("kind", VALID_VARIANTS)
def test_files_as_training_scripts_save_them_load_weight_exactly(tmp_path, state_dict, kind):
    path = tmp_path / ("BiRefNet.safetensors" if kind in ("fp16", "bf16") else "BiRefNet.pth")
    _write(kind, path, state_dict, tmp_path / "PWNED")
    loaded = load_model(path)
    got = loaded.model.state_dict()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(kind, torch.float32)
    for key, value in state_dict.items():
        expected = value.to(dtype).float() if value.is_floating_point() else value
        assert torch.equal(got[key], expected), key
    assert loaded.info.stored_dtype == str(dtype).removeprefix("torch.")
    assert inspect_model(path) == loaded.info


def test_unreadable_weights_say_permission_denied(tmp_path, state_dict, monkeypatch):
    """chmod 000 cannot stop root (CI runs as root), so the refusal is simulated at open()."""
    path = tmp_path / "BiRefNet.safetensors"
    _safetensors(state_dict, path)
    real_open = open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    for read in (load_model, inspect_model):
        with pytest.raises(CheckpointError, match=r"permission denied reading .*BiRefNet\."
                           r"safetensors: make the file readable"):
            read(path)


# -- images -----------------------------------------------------------------------------------

def _predict(model, images, **kwargs):
    from birefnet_core.inference import predict_masks

    return predict_masks(model, images, resolution=TINY, batch_size=kwargs.pop("batch_size", 2),
                         **kwargs)


def _frames(b=2, h=24, w=40, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def _with(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


IMAGE_ERRORS = [
    ("no batch dimension", lambda: _frames()[0], r"\[B, H, W, C\].*got \(24, 40, 3\)"),
    ("channels first", lambda: _frames().permute(0, 3, 1, 2), r"C in \(1, 3, 4\).*got "
     r"\(2, 3, 24, 40\)"),
    ("2 channels", lambda: _frames(c=2), r"C in \(1, 3, 4\).*got \(2, 24, 40, 2\)"),
    ("a list", lambda: [_frames()], r"\[B, H, W, C\] tensor.*got list"),
    ("int32", lambda: (_frames() * 255).int(), r"float 0\.\.1 or uint8, got torch\.int32"),
    ("0..255 floats", lambda: _frames() * 255, r"images: frame 0 has values up to 25\d.*divide "
     r"them by 255"),
    ("NaN", lambda: _with(_frames(), (1, 3, 4, 0), float("nan")),
     r"images: frame 1 has 1 NaN and 0 infinite"),
    ("inf", lambda: _with(_frames(), (0, 0, 0, 2), float("inf")),
     r"images: frame 0 has 0 NaN and 1 infinite"),
]


@pytest.mark.parametrize("case, make, message", IMAGE_ERRORS, ids=[r[0] for r in IMAGE_ERRORS])
def test_bad_images_get_an_input_error_naming_the_frame_or_layout(tiny_model, case, make,
                                                                  message):
    with pytest.raises(InputError, match=message):
        _predict(tiny_model, make())


def test_images_in_every_accepted_form_give_the_same_masks(tiny_model):
    """uint8 and float16 frames, an alpha channel and a grey channel are the same picture as
    float32 RGB (to their quantisation); the batch can be empty."""
    rgb = (_frames() * 255).round() / 255
    reference = _predict(tiny_model, rgb)
    assert reference.shape == (2, 24, 40) and reference.dtype == torch.float32
    same = {
        "uint8": (rgb * 255).round().to(torch.uint8),
        "rgba": torch.cat([rgb, torch.rand(2, 24, 40, 1)], dim=-1),
        "float16": rgb.half(),
    }
    for case, images in same.items():
        tol = 2e-3 if case == "float16" else 1e-5
        torch.testing.assert_close(_predict(tiny_model, images), reference, atol=tol, rtol=0,
                                   msg=case)
    grey = rgb.mean(-1, keepdim=True)
    torch.testing.assert_close(_predict(tiny_model, grey),
                               _predict(tiny_model, grey.expand(-1, -1, -1, 3)), atol=1e-5,
                               rtol=0)
    assert _predict(tiny_model, torch.rand(0, 24, 40, 3)).shape == (0, 24, 40)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 64, 4096), (1, 4096, 64), (3, 7, 5)])
def test_extreme_frame_sizes_give_masks_at_their_own_size(tiny_model, shape):
    images = torch.rand(*shape, 3, generator=torch.Generator().manual_seed(1))
    masks = _predict(tiny_model, images)
    assert masks.shape == shape and bool(torch.isfinite(masks).all())
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1


def test_300_frames_in_chunks_equal_one_frame_at_a_time(tiny_model):
    images = torch.rand(300, 16, 24, 3, generator=torch.Generator().manual_seed(2))
    seen = []
    masks = _predict(tiny_model, images, batch_size=0,
                     on_progress=lambda done, total: seen.append((done, total)))
    assert masks.shape == (300, 16, 24) and seen[-1] == (300, 300)
    for i in (0, 149, 299):
        torch.testing.assert_close(masks[i:i + 1], _predict(tiny_model, images[i:i + 1]),
                                   atol=1e-5, rtol=0)


@pytest.mark.slow
def test_an_8k_frame_is_segmented_at_its_size(tiny_model):
    images = torch.randint(0, 256, (1, 4320, 7680, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    masks = _predict(tiny_model, images)
    assert masks.shape == (1, 4320, 7680) and bool(torch.isfinite(masks).all())


# -- masks and backgrounds --------------------------------------------------------------------

def _composite(image, mask, background="transparent", **kwargs):
    from birefnet_core.composite import composite

    return composite(image, mask, background, **kwargs)


MASK_ERRORS = [
    ("mask batch 3 for 2 frames", lambda: _composite(_frames(), torch.rand(3, 24, 40)),
     r"mask batch has 3 frames but the image batch has 2"),
    ("NaN in a mask", lambda: _composite(_frames(), _with(torch.rand(2, 24, 40), (1, 2, 3),
                                                          float("nan"))), r"frame 1 .*NaN"),
    ("inf in a mask", lambda: _composite(_frames(), _with(torch.rand(2, 24, 40), (0, 0, 0),
                                                          float("inf"))), r"frame 0 .*infinite"),
    ("NaN in a background", lambda: _composite(
        _frames(), torch.rand(2, 24, 40), _with(_frames(seed=1), (0, 1, 1, 1), float("nan"))),
     r"background.*frame 0.*NaN"),
    ("background batch 3 for 2 frames", lambda: _composite(
        _frames(), torch.rand(2, 24, 40), _frames(b=3)), r"background batch has 3 frames but "
     r"the image batch has 2"),
    ("mask with 2 channels", lambda: _composite(_frames(), torch.rand(2, 24, 40, 2)),
     r"mask: expected shape \[H,W\], \[B,H,W\] or \[B,1,H,W\], got \[2, 24, 40, 2\]"),
    ("colour name", lambda: _composite(_frames(), torch.rand(2, 24, 40), "red"), r"'red'.*#RRGGBB"),
    ("short hex colour", lambda: _composite(_frames(), torch.rand(2, 24, 40), "#12345"),
     r"'#12345'.*#RRGGBB"),
    ("not hex", lambda: _composite(_frames(), torch.rand(2, 24, 40), "#GGHHII"),
     r"'#GGHHII'.*#RRGGBB"),
    ("empty colour", lambda: _composite(_frames(), torch.rand(2, 24, 40), ""), r"''.*#RRGGBB"),
]


@pytest.mark.parametrize("case, call, message", MASK_ERRORS, ids=[r[0] for r in MASK_ERRORS])
def test_bad_masks_backgrounds_and_colours_get_an_input_error(case, call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_masks_of_another_size_or_one_for_all_frames_are_fitted():
    from birefnet_core.composite import composite

    image = _frames()
    full = torch.rand(1, 24, 40).expand(2, -1, -1)
    small = torch.nn.functional.interpolate(full[:1, None], size=(12, 20), mode="bilinear",
                                            align_corners=False)[:, 0]
    one = composite(image, full[0], "#000000", foreground="none")
    assert torch.equal(one, composite(image, full, "#000000", foreground="none"))
    resized = composite(image, small, "#000000", foreground="none")
    assert resized.shape == (2, 24, 40, 3) and bool(torch.isfinite(resized).all())


@pytest.mark.parametrize("op, radius", [("grow_shrink", 10**6), ("grow_shrink", -10**6),
                                        ("feather", 1e9)])
def test_extreme_radii_are_bounded_by_the_image(op, radius):
    """A radius far beyond the image costs what the image's own size costs (was: 5 GB for a
    64x48 mask), and gives the limit result: all grown, all shrunk, the mean."""
    import birefnet_core

    mask = torch.zeros(1, 48, 64)
    mask[:, 10:30, 20:40] = 1
    out = getattr(birefnet_core, op)(mask, radius)
    assert out.shape == mask.shape
    if op == "grow_shrink":
        assert bool((out == (1.0 if radius > 0 else 0.0)).all())
    else:
        torch.testing.assert_close(out, torch.full_like(mask, float(mask.mean())), atol=2e-2,
                                   rtol=0)


# -- downloads --------------------------------------------------------------------------------

class _StatusHub(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _hub_answering(status: int):
    handler = type("Handler", (_StatusHub,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [404, 500, 403])
def test_http_errors_name_the_status_the_url_and_the_manual_route(tmp_path, monkeypatch,
                                                                  status):
    from birefnet_core.download import download_checkpoint
    from birefnet_core.errors import DownloadError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with _hub_answering(status) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(DownloadError) as info:
            download_checkpoint("lite", tmp_path / "models", timeout=5)
    message = str(info.value)
    assert f"HTTP {status}" in message and "ZhengPeng7/BiRefNet_lite" in message, message
    assert str(tmp_path / "models") in message, message
    assert not any((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_a_models_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    from birefnet_core.download import download_checkpoint
    from birefnet_core.errors import DownloadError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    blocker = tmp_path / "models"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(DownloadError, match=r"cannot create the models folder .*models"):
        download_checkpoint("lite", blocker / "birefnet", timeout=5)
    assert blocker.read_text() == "a file where the folder should be"


# -- command line -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state_dict):
    path = tmp_path_factory.mktemp("cli") / "BiRefNet_lite-test.safetensors"
    _safetensors(state_dict, path)
    return path


CLI_ERRORS = [
    ("missing input", lambda t: [str(t / "nowhere")], r"nowhere"),
    ("empty glob", lambda t: [str(t / "*.png")], r"\*\.png"),
    ("empty folder", lambda t: [str((t / "empty").mkdir() or t / "empty")], r"empty"),
]


@pytest.mark.parametrize("case, inputs, message", CLI_ERRORS, ids=[r[0] for r in CLI_ERRORS])
def test_cli_inputs_that_name_nothing_exit_2_with_an_error_line(checkpoint, tmp_path, capsys,
                                                                case, inputs, message):
    from birefnet_core.cli import main

    code = main(["remove", str(checkpoint), *inputs(tmp_path), "-o", str(tmp_path / "out"),
                 "--resolution", TINY])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines and re.search(message, lines[0]), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_bad_weights_exit_2_naming_the_file(tmp_path, capsys):
    from birefnet_core.cli import main

    weights = tmp_path / "BiRefNet.safetensors"
    weights.write_bytes(b"\x00" * 64)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    code = main(["remove", str(weights), str(image), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert re.search(r"error: .*BiRefNet\.safetensors is truncated or corrupt", err), err


# -- nodes (fake host) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_env(tmp_path_factory, checkpoint):
    """The pack as ComfyUI imports it, a fake host, and a ``BIREFNET_MODEL`` from the loader."""
    import importlib

    import fake_host
    from pack import load_pack

    pack = load_pack()
    models = tmp_path_factory.mktemp("nodes") / "models"
    (models / "birefnet").mkdir(parents=True)
    os.symlink(checkpoint, models / "birefnet" / checkpoint.name)
    fake_host.install(models)
    try:
        mod = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}")
               for name in ("loader", "segment", "refine", "composite")}
        model = mod["loader"].BiRefNetModelLoader().load(checkpoint.name, "fp32", "auto",
                                                         "auto")["result"][0]
        errors = importlib.import_module(f"{pack.__name__}.birefnet_core.errors")
        yield mod, model, errors
    finally:
        fake_host.uninstall()


NODE_ERRORS = [
    ("segment 0..255", lambda m, model: m["segment"].BiRefNetSegment().segment(
        model, _frames() * 255, TINY), r"images: frame 0 has values up to .*divide them by 25"),
    ("segment NaN", lambda m, model: m["segment"].BiRefNetSegment().segment(
        model, _with(_frames(), (1, 0, 0, 0), float("nan")), TINY), r"images: frame 1 has 1 NaN"),
    ("segment no batch", lambda m, model: m["segment"].BiRefNetSegment().segment(
        model, _frames()[0], TINY), r"\[B, H, W, C\]"),
    ("refine NaN", lambda m, model: m["refine"].BiRefNetRefineMask().refine(
        _with(torch.rand(2, 24, 40), (1, 5, 5), float("nan"))), r"frame 1 .*NaN"),
    ("composite colour", lambda m, model: m["composite"].BiRefNetComposite().composite(
        _frames(), torch.rand(2, 24, 40), "color", "green"), r"'green'.*#RRGGBB"),
    ("composite mask batch", lambda m, model: m["composite"].BiRefNetComposite().composite(
        _frames(), torch.rand(3, 24, 40)), r"mask batch has 3 frames but the image batch has 2"),
]


@pytest.mark.parametrize("case, call, message", NODE_ERRORS, ids=[r[0] for r in NODE_ERRORS])
def test_nodes_raise_the_cores_input_error(node_env, case, call, message):
    """What ComfyUI shows in its error dialog: the core's message, as a ValueError."""
    mod, model, errors = node_env
    with pytest.raises(errors.InputError, match=message) as info:
        call(mod, model)
    assert isinstance(info.value, ValueError)
