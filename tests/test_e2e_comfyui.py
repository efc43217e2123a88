"""End-to-end: the pack in a real, headless ComfyUI (``../shared/hosts``, ``--cpu``).

* registration: ``/object_info`` has our nodes and the start-up log shows no import failure;
* checkpoint matrix: LoadImage -> BiRefNetModelLoader -> BiRefNetSegment -> SaveImage with the
  files users have (fp16 safetensors under a Hugging Face name, Swin-L fp32 safetensors, Swin-L
  ``.pth`` with ``module._orig_mod.`` keys, a file in core's ``models/background_removal``); the
  saved PNG's alpha must equal, within one grey level, the mask the core computes here in the
  test process from the same file and image;
* host behaviour: Cancel (``/interrupt``) stops a 64-frame run between chunks, "Unload models"
  (``/free``) then a re-run, two prompts queued back to back, a model file deleted after its
  prompt was queued. Every wait has a timeout, so a dead prompt worker fails instead of hanging.

Real models at a small size: a 96x64 image segmented at ``dynamic`` (384x256).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("e2e_checkpoints")  # also a plugin (below): rewrite it first
from comfy_host import PACK_LINK, REPO  # noqa: E402
from e2e_checkpoints import (  # noqa: E402
    IMAGE_WH,
    install_model,
    load_count,
    reference_mask,
    save_input,
    save_prefixed_pth,
    save_safetensors,
    status_messages,
    swin_l_state_dict,
    synthetic_image,
)

pytest_plugins = ("e2e_checkpoints",)
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

OUR_NODES = ("BiRefNetModelLoader", "BiRefNetSegment", "BiRefNetRefineMask",
             "BiRefNetComposite", "BiRefNetDownloadModel")
LITE = "BiRefNet_lite.safetensors"
MAX_MEGAPIXELS = 4.19  # the node's default
HANG = 240.0  # seconds: far above any prompt here; a prompt that takes longer is stuck
IMAGE, LOADER, SEGMENT, SAVE, REPEAT = "1", "2", "3", "4", "5"


def segment_prompt(image: str, model_name: str, prefix: str, *, resolution: str = "dynamic",
                   batch_size: int = 0, frames: int = 1) -> dict:
    """LoadImage -> BiRefNetModelLoader -> BiRefNetSegment -> SaveImage (the ``rgba`` output);
    ``frames > 1`` repeats the image into a batch first."""
    prompt = {
        IMAGE: {"class_type": "LoadImage", "inputs": {"image": image}},
        LOADER: {"class_type": "BiRefNetModelLoader",
                 "inputs": {"model_name": model_name, "precision": "auto", "family": "auto",
                            "patch_order": "auto"}},
        SEGMENT: {"class_type": "BiRefNetSegment",
                  "inputs": {"model": [LOADER, 0], "images": [IMAGE, 0],
                             "resolution": resolution, "max_megapixels": MAX_MEGAPIXELS,
                             "batch_size": batch_size}},
        SAVE: {"class_type": "SaveImage",
               "inputs": {"images": [SEGMENT, 1], "filename_prefix": prefix}},
    }
    if frames > 1:
        prompt[REPEAT] = {"class_type": "RepeatImageBatch",
                          "inputs": {"image": [IMAGE, 0], "amount": frames}}
        prompt[SEGMENT]["inputs"]["images"] = [REPEAT, 0]
    return prompt


def read_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert (im.mode, im.size) == ("RGBA", IMAGE_WH), (path.name, im.mode, im.size)
        return np.asarray(im)


def tracebacks(log: str) -> list[str]:
    """The Python tracebacks in a log: the header, its indented frames, the exception line."""
    found, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            found.append("\n".join(lines[i:j + 1]))
    return found


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(e2e_server):
    return e2e_server


@pytest.fixture(scope="module")
def subject(server) -> tuple[str, np.ndarray]:
    """The input image: its name in ``input/`` and its pixels."""
    rgb = synthetic_image(IMAGE_WH, seed=0)
    return save_input(server, "e2e_subject.png", rgb), rgb


@pytest.fixture(scope="module")
def lite(server, lite_fixture) -> str:
    """The lite fixture installed as ``models/birefnet/BiRefNet_lite.safetensors``."""
    install_model(server, lite_fixture, LITE)
    return LITE


@pytest.fixture(scope="session")
def swin_l_files(tmp_path_factory):
    """Swin-L (the published architecture, seeded random weights) as fp32 safetensors and as a
    ``.pth`` of the same tensors under ``module._orig_mod.`` keys: ~880 MB each, written once
    and deleted at the end of the session."""
    import gc

    folder = tmp_path_factory.mktemp("swin_l")
    state_dict = swin_l_state_dict(seed=0)
    files = {
        "safetensors": save_safetensors(state_dict, folder / "BiRefNet-general-fp32.safetensors"),
        "pth": save_prefixed_pth(state_dict, folder / "BiRefNet-general-epoch_244.pth"),
    }
    del state_dict
    gc.collect()
    yield files
    for path in files.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def references():
    """``reference(path, rgb, resolution)``: the core's mask, computed once per file/resolution."""
    cache: dict = {}

    def reference(path: Path, rgb: np.ndarray, resolution: str) -> np.ndarray:
        key = (str(path), resolution)
        if key not in cache:
            cache[key] = reference_mask(path, rgb, resolution, MAX_MEGAPIXELS)
        return cache[key]

    return reference


# -- registration ---------------------------------------------------------------------------------

def test_nodes_are_registered_without_import_errors(server, lite):
    info = server.get("/object_info")
    missing = [n for n in OUR_NODES if n not in info]
    assert not missing, f"/object_info lacks {missing}:\n{server.log_tail()}"
    loader = info["BiRefNetModelLoader"]
    assert loader["output"] == ["BIREFNET_MODEL"]
    assert lite in loader["input"]["required"]["model_name"][0]  # a symlinked file is listed
    assert info["BiRefNetSegment"]["output"] == ["MASK", "IMAGE"]
    assert info["BiRefNetSegment"]["display_name"] == "BiRefNet Remove Background"

    startup = server.log().split("Starting server")[0]  # later tracebacks are the tests' own
    ours = [line for line in startup.splitlines() if PACK_LINK in line]
    assert ours, "the pack was not found in custom_nodes:\n" + startup[-3000:]
    bad = [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, "\n".join(bad)
    ours = [tb for tb in tracebacks(startup) if PACK_LINK in tb or str(REPO) in tb]
    assert not ours, ours[0]


# -- checkpoint matrix ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    name: str  # file name in the model folder
    weights: str  # "lite" (the shared fixture), "safetensors" / "pth" (Swin-L)
    variant: str  # arch.family the loader must report
    stored: str  # dtype of the file's tensors
    folder: str = "birefnet"
    resolution: str = "dynamic"


CASES = (
    Case("lite_fp16_hf_name", "BiRefNet_lite.safetensors", "lite", "swin_v1_t.lite", "float16"),
    Case("swin_l_fp32_safetensors", "BiRefNet-general-fp32.safetensors", "safetensors",
         "swin_v1_l.general", "float32"),
    Case("swin_l_fp32_prefixed_pth", "BiRefNet-general-epoch_244.pth", "pth",
         "swin_v1_l.general", "float32"),
    Case("fp16_in_background_removal", "BiRefNet_lite-2K.safetensors", "lite",
         "swin_v1_t.lite_2k", "float16", folder="background_removal"),
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_checkpoint_matrix_alpha_equals_core_mask(case, server, subject, references, request):
    image, rgb = subject
    if case.weights == "lite":
        source = request.getfixturevalue("lite_fixture")
    else:
        source = request.getfixturevalue("swin_l_files")[case.weights]
    installed = install_model(server, source, case.name, case.folder)

    entry = server.run(segment_prompt(image, case.name, f"e2e_matrix_{case.id}",
                                      resolution=case.resolution), timeout=HANG)
    summary = entry["outputs"][LOADER]["text"][0]  # the loader's ui text
    assert summary.splitlines()[0] == f"BiRefNet {case.variant}", summary
    assert f"stored as {case.stored}" in summary, summary
    (png,) = server.outputs(entry, SAVE)
    rgba = read_rgba(png)

    # The reference reads the same weights from a safetensors file under the same family
    # rules: for the .pth that is its twin (so a prefix the loader failed to strip, or weights
    # it left random, cannot go unnoticed).
    ref_path = (request.getfixturevalue("swin_l_files")["safetensors"] if case.weights == "pth"
                else installed)
    expected = references(ref_path, rgb, case.resolution)
    assert int(expected.max()) - int(expected.min()) >= 8, (
        "the reference mask is nearly constant: the comparison would prove little")
    diff = np.abs(rgba[..., 3].astype(int) - expected.astype(int))
    assert diff.max() <= 1, (
        f"alpha differs from the core's mask by up to {diff.max()}/255 "
        f"({(diff > 1).mean():.1%} of pixels > 1)")
    # Straight alpha: the colour is the input's (SaveImage truncates 255 * x: one level).
    assert np.abs(rgba[..., :3].astype(int) - rgb.astype(int)).max() <= 1


# -- host behaviour -------------------------------------------------------------------------------

def test_interrupt_stops_between_chunks_and_next_prompt_runs(server, subject, lite):
    frames = 64
    image, _ = subject
    prompt = segment_prompt(image, lite, "e2e_interrupted", batch_size=1, frames=frames)

    def done(messages, prompt_id) -> int:
        values = [d["value"] for d in messages.events("progress", prompt_id)
                  if d.get("node") == SEGMENT]
        return max(values, default=0)

    with server.messages() as messages:
        prompt_id = server.queue(prompt)
        messages.wait_for(lambda m: done(m, prompt_id) >= 1, timeout=HANG)  # chunks are running
        at_interrupt = done(messages, prompt_id)
        server.post("/interrupt", {"prompt_id": prompt_id})
        entry = server.wait(prompt_id, timeout=HANG, expect_error=True)
        finished = done(messages, prompt_id)

    events = status_messages(entry)
    assert "execution_error" not in events, events["execution_error"][0].get("traceback")
    (interrupted,) = events.get("execution_interrupted", [None])
    assert interrupted and interrupted["node_type"] == "BiRefNetSegment", entry["status"]
    # Stopped after the chunk running when Cancel came (one frame each), far from the end.
    assert finished <= at_interrupt + 2 and finished < frames // 2, (at_interrupt, finished)
    assert SAVE not in entry["outputs"]

    entry = server.run(segment_prompt(image, lite, "e2e_after_interrupt"), timeout=HANG)
    read_rgba(server.outputs(entry, SAVE)[0])


def test_rerun_after_free_memory(server, subject, lite):
    """``/free`` unloads our model through ComfyUI (our detach callback runs on the prompt
    worker thread: an exception there used to kill it, and the queue hung forever)."""
    image, _ = subject
    prompt = segment_prompt(image, lite, "e2e_free")
    server.run(prompt, timeout=HANG)
    loads = load_count(server, lite)
    server.post("/free", {"unload_models": True, "free_memory": True})
    time.sleep(1.0)  # the worker wakes on the flag at once; let it act before the next prompt
    entry = server.run(prompt, timeout=HANG)
    assert load_count(server, lite) == loads + 1, (
        "the model was not loaded again: /free did not reset the cache before the re-run")
    read_rgba(server.outputs(entry, SAVE)[0])
    assert server.alive()


def test_two_prompts_queued_back_to_back_both_succeed(server, lite):
    names = [save_input(server, f"e2e_b2b_{i}.png", synthetic_image(IMAGE_WH, seed=10 + i))
             for i in range(2)]
    ids = [server.queue(segment_prompt(name, lite, f"e2e_b2b_{i}"))
           for i, name in enumerate(names)]
    alphas = []
    for prompt_id in ids:
        entry = server.wait(prompt_id, timeout=HANG)
        assert entry["status"]["status_str"] == "success", entry["status"]
        alphas.append(read_rgba(server.outputs(entry, SAVE)[0])[..., 3])
    assert not np.array_equal(*alphas), "two different images gave the same mask"


def test_model_deleted_after_queueing_fails_clearly_and_next_prompt_runs(
        server, subject, lite, lite_fixture):
    image, _ = subject
    doomed = install_model(server, lite_fixture, "BiRefNet_lite-deleted.safetensors")
    # A prompt that computes (a new image) keeps the worker busy while the file disappears.
    other = save_input(server, "e2e_busy.png", synthetic_image(IMAGE_WH, seed=20))
    first = server.queue(segment_prompt(other, lite, "e2e_busy"))
    second = server.queue(segment_prompt(image, doomed.name, "e2e_doomed"))
    doomed.unlink()
    pending = [item[1] for item in server.get("/queue")["queue_pending"]]
    assert second in pending, "the prompt started before its model file was deleted: " \
                              "the test did not test what it should"

    server.wait(first, timeout=HANG)
    entry = server.wait(second, timeout=HANG, expect_error=True)
    events = status_messages(entry)
    assert "execution_error" in events, entry["status"]
    (error,) = events["execution_error"]
    assert error["node_type"] == "BiRefNetModelLoader", error
    message = error["exception_message"]
    assert doomed.name in message and "not found" in message, message
    assert error["exception_type"].endswith("ModelFileError"), error["exception_type"]

    entry = server.run(segment_prompt(image, lite, "e2e_after_deleted"), timeout=HANG)
    read_rgba(server.outputs(entry, SAVE)[0])
