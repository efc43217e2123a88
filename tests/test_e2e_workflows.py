"""End-to-end: every shipped workflow (``workflows/*.json``) on a real, headless ComfyUI.

Each UI-format file is converted to an API prompt with the server's own ``/object_info``
(``tests/workflow_to_prompt.py``) and queued as shipped: the real-architecture lite checkpoint
(Swin-T, fp16) is installed under every file name the workflow's loaders ask for, and small
generated inputs under the names its Load Image / Load Video nodes ask for (a 96x64 PNG, a
64x48 background, a 320x240 "large" JPEG, a 4-frame 64x48 mp4). The one change is the
segment nodes' ``resolution``, set to ``dynamic`` so a CPU takes seconds, not minutes. The
files each workflow writes are checked (mode, size, frame count). The Stable Diffusion
workflow must be refused only for its missing SD checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("e2e_checkpoints")  # also a plugin (below): rewrite it first
from e2e_checkpoints import (  # noqa: E402
    install_model,
    make_video,
    probe_video,
    save_input,
    synthetic_image,
)
from workflow_to_prompt import find_nodes, workflow_to_prompt  # noqa: E402

pytest_plugins = ("e2e_checkpoints",)
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SUBJECT_WH, BACKGROUND_WH, LARGE_WH = (96, 64), (64, 48), (320, 240)
VIDEO_WH, VIDEO_FRAMES, VIDEO_FPS = (64, 48), 4, 12
HANG = 300.0  # seconds per prompt: far above what any of them takes


def test_every_workflow_is_tested():
    assert {p.name for p in WORKFLOWS.glob("*.json")} == set(RUNS) | {SD_INPAINT}


@pytest.fixture(scope="module")
def server(e2e_server, lite_fixture):
    """The shared server with the inputs and checkpoints the workflows name."""
    from PIL import Image

    for wf in WORKFLOWS.glob("*.json"):
        for node in json.loads(wf.read_text())["nodes"]:
            if node["type"] == "BiRefNetModelLoader":
                install_model(e2e_server, lite_fixture, node["widgets_values"][0])
    save_input(e2e_server, "example.png", synthetic_image(SUBJECT_WH, seed=0))
    save_input(e2e_server, "background.png", np.asarray(
        Image.linear_gradient("L").resize(BACKGROUND_WH).convert("RGB")))
    Image.fromarray(synthetic_image(LARGE_WH, seed=1)).save(
        e2e_server.base / "input" / "large_photo.jpg", quality=90)
    make_video(e2e_server.base / "input" / "example.mp4", VIDEO_WH, VIDEO_FRAMES, VIDEO_FPS)
    return e2e_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def as_prompt(name: str, object_info: dict) -> dict:
    """The workflow as an API prompt, segmenting at ``dynamic`` (quick on a CPU)."""
    prompt = workflow_to_prompt(json.loads((WORKFLOWS / name).read_text()), object_info)
    for nid in find_nodes(prompt, "BiRefNetSegment"):
        prompt[nid]["inputs"]["resolution"] = "dynamic"
    return prompt


def image_of(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im


# -- one check per workflow -----------------------------------------------------------------------

def check_remove_background(server, prompt, entry):
    (save,) = find_nodes(prompt, "SaveImage")
    (path,) = server.outputs(entry, save)
    im = image_of(path)
    assert (im.mode, im.size) == ("RGBA", SUBJECT_WH)
    (preview,) = find_nodes(prompt, "MaskPreview")
    assert server.outputs(entry, preview)


def check_replace_background(server, prompt, entry):
    saves = find_nodes(prompt, "SaveImage")
    assert len(saves) == 2
    for nid in saves:
        (path,) = server.outputs(entry, nid)
        im = image_of(path)
        assert (im.mode, im.size) == ("RGB", SUBJECT_WH), nid  # output_alpha off
    # Without foreground estimation the colour composite is a blend of subject and colour:
    # each channel lies between the two.
    (colour_node,) = find_nodes(prompt, "BiRefNetComposite", "BiRefNet Composite (colour)")
    hex_colour = prompt[colour_node]["inputs"]["color"]
    colour = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    (save,) = [n for n in saves if prompt[n]["inputs"]["images"][0] == colour_node]
    out = np.asarray(image_of(server.outputs(entry, save)[0]), dtype=float)
    sub = np.asarray(image_of(server.base / "input" / "example.png").convert("RGB"), dtype=float)
    inside = ((out >= np.minimum(sub, colour) - 3) & (out <= np.maximum(sub, colour) + 3)).mean()
    assert inside > 0.99, inside


def check_video(server, prompt, entry):
    (save,) = find_nodes(prompt, "SaveVideo")
    (path,) = server.outputs(entry, save)
    assert path.suffix == ".mp4" and path.stat().st_size > 0, path
    info = probe_video(path)
    assert (info["width"], info["height"], info["frames"]) == (*VIDEO_WH, VIDEO_FRAMES), info


def check_box_guided(server, prompt, entry):
    (save,) = find_nodes(prompt, "SaveImage")
    (path,) = server.outputs(entry, save)
    im = image_of(path)
    assert (im.mode, im.size) == ("RGBA", LARGE_WH)
    (preview,) = find_nodes(prompt, "MaskPreview")
    assert server.outputs(entry, preview)
    # Only the box is segmented (x 0.3..0.7, y 0.2..0.8 of the image: the Solid Masks on the
    # 1000x1000 canvas); the mask is 0 outside it (2 px of slack for rounding).
    alpha = np.asarray(im)[..., 3].astype(int)
    w, h = LARGE_WH
    x0, x1, y0, y1 = int(0.3 * w) - 2, int(0.7 * w) + 2, int(0.2 * h) - 2, int(0.8 * h) + 2
    outside = alpha.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0, f"{(outside > 0).sum()} pixels outside the box are not transparent"
    assert alpha[y0:y1, x0:x1].std() > 0, "the box holds no segmentation"


RUNS = {
    "birefnet_remove_background.json": check_remove_background,
    "birefnet_replace_background.json": check_replace_background,
    "birefnet_video.json": check_video,
    "birefnet_box_guided_large_image.json": check_box_guided,
}
SD_INPAINT = "birefnet_sd_inpaint_background.json"


@pytest.mark.parametrize("name", list(RUNS), ids=[n.removesuffix(".json") for n in RUNS])
def test_workflow_runs_and_writes_its_outputs(name, server, object_info):
    prompt = as_prompt(name, object_info)
    if name == "birefnet_replace_background.json":
        (colour,) = find_nodes(prompt, "BiRefNetComposite", "BiRefNet Composite (colour)")
        prompt[colour]["inputs"]["foreground_estimation"] = "none"  # see its check
    entry = server.run(prompt, timeout=HANG)
    RUNS[name](server, prompt, entry)


def test_sd_inpaint_workflow_fails_only_for_its_missing_sd_checkpoint(server, object_info):
    prompt = as_prompt(SD_INPAINT, object_info)
    (ckpt_loader,) = find_nodes(prompt, "CheckpointLoaderSimple")
    ckpt = prompt[ckpt_loader]["inputs"]["ckpt_name"]
    answer = server.post("/prompt", {"prompt": prompt, "client_id": server.client_id},
                         check=False)
    assert "prompt_id" not in answer, f"an SD checkpoint {ckpt} was not expected: {answer}"
    errors = answer["node_errors"]
    assert set(errors) == {ckpt_loader}, f"other nodes failed validation too: {errors}"
    assert errors[ckpt_loader]["class_type"] == "CheckpointLoaderSimple"
    details = json.dumps(errors[ckpt_loader]["errors"])
    assert "ckpt_name" in details and ckpt in details, details
