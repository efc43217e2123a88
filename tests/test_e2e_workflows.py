"""End-to-end: the shipped workflows (a) remove background, (b) replace background, (c) video run
on a real, headless ComfyUI.

Opt-in, like ``test_e2e_comfyui.py`` whose server fixture it reuses (a random-weight lite
checkpoint, a temporary base directory, a loopback port)::

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python \
        python -m pytest tests/test_e2e_workflows.py -m e2e -v

Each ``workflows/*.json`` (UI format) is converted to an API prompt with the server's own
``/object_info`` (``tests/workflow_to_prompt.py``), pointed at small generated inputs (a 96x64
PNG, a 64x48 background, a 6-frame 64x48 mp4 written with PyAV by ComfyUI's interpreter), with
the segment nodes at ``dynamic`` resolution to stay quick on a CPU, then queued; the files it
writes are checked for mode, size and frame count. The SD-inpainting and box-guided workflows
are only checked structurally (``tests/test_workflows.py``): they need a real checkpoint / a
large image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the end-to-end test",
                allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_e2e_comfyui import CKPT, IMAGE_WH, server  # noqa: E402,F401  (module-scoped fixture)
from workflow_to_prompt import find_nodes, workflow_to_prompt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SUBJECT = "e2e.png"  # written by the server fixture (IMAGE_WH, RGB)
BACKGROUND = "e2e_background.png"
BACKGROUND_WH = (64, 48)
VIDEO = "e2e.mp4"
VIDEO_WH, VIDEO_FRAMES, VIDEO_FPS = (64, 48), 6, 12

_MAKE_VIDEO = """
import sys, av, numpy as np
path, w, h, n, fps = sys.argv[1], *map(int, sys.argv[2:6])
c = av.open(path, "w")
s = c.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=fps)
s.width, s.height, s.pix_fmt = w, h, "yuv420p"
rng = np.random.RandomState(0)
for i in range(n):
    a = (rng.rand(h, w, 3) * 255).astype(np.uint8)
    a[h // 4: 3 * h // 4, w // 4 + i: w // 2 + i] = 255
    for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
        c.mux(p)
for p in s.encode():
    c.mux(p)
c.close()
"""

_PROBE_VIDEO = """
import json, sys, av
with av.open(sys.argv[1]) as c:
    v = c.streams.video[0]
    frames = sum(1 for _ in c.decode(v))
    print(json.dumps({"width": v.width, "height": v.height, "frames": frames}))
"""


def _python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


def _has_av() -> bool:
    return subprocess.run([_python(), "-c", "import av"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def object_info(server):
    from PIL import Image

    rgb = Image.linear_gradient("L").resize(BACKGROUND_WH).convert("RGB")
    rgb.save(server.base / "input" / BACKGROUND)
    return server.get("/object_info")


def _prompt(name: str, object_info: dict) -> dict:
    """The workflow as an API prompt on the e2e checkpoint, inputs and a quick resolution."""
    prompt = workflow_to_prompt(json.loads((WORKFLOWS / name).read_text()), object_info)
    for nid in find_nodes(prompt, "BiRefNetModelLoader"):
        prompt[nid]["inputs"]["model_name"] = CKPT
    for nid in find_nodes(prompt, "BiRefNetSegment"):
        prompt[nid]["inputs"]["resolution"] = "dynamic"
    for nid in find_nodes(prompt, "LoadImage"):
        title = prompt[nid]["_meta"]["title"]
        prompt[nid]["inputs"]["image"] = BACKGROUND if "background" in title else SUBJECT
    for nid in find_nodes(prompt, "SaveImage"):
        prompt[nid]["inputs"]["filename_prefix"] = "e2e_wf_" + prompt[nid]["inputs"][
            "filename_prefix"].replace("/", "_")
    return prompt


def _saved(server, entry: dict, nid: str) -> list[Path]:
    out = entry["outputs"].get(nid)
    assert out, f"node {nid} wrote nothing: {json.dumps(entry['outputs'])[:2000]}"
    files = [item for items in out.values() if isinstance(items, list)
             for item in items if isinstance(item, dict) and "filename" in item]
    assert files, out
    return [server.base / f.get("type", "output") / f.get("subfolder", "") / f["filename"]
            for f in files]


def test_remove_background_workflow_writes_rgba_png(server, object_info):
    from PIL import Image

    prompt = _prompt("birefnet_remove_background.json", object_info)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (save,) = find_nodes(prompt, "SaveImage")
    (path,) = _saved(server, entry, save)
    with Image.open(path) as im:
        assert (im.mode, im.size) == ("RGBA", IMAGE_WH)
    (preview,) = find_nodes(prompt, "MaskPreview")
    assert _saved(server, entry, preview)


def test_replace_background_workflow_writes_colour_and_image_composites(server, object_info):
    import numpy as np
    from PIL import Image

    prompt = _prompt("birefnet_replace_background.json", object_info)
    (colour_node,) = find_nodes(prompt, "BiRefNetComposite", "BiRefNet Composite (colour)")
    # no foreground estimation: the output is then exactly a blend of subject and colour
    prompt[colour_node]["inputs"]["foreground_estimation"] = "none"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saves = find_nodes(prompt, "SaveImage")
    assert len(saves) == 2
    for nid in saves:
        (path,) = _saved(server, entry, nid)
        with Image.open(path) as im:
            assert (im.mode, im.size) == ("RGB", IMAGE_WH)  # output_alpha off
    # The colour composite blends subject and colour: each channel lies between the two.
    hex_colour = prompt[colour_node]["inputs"]["color"]
    colour = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    (path,) = _saved(server, entry, [n for n in saves
                                     if prompt[n]["inputs"]["images"][0] == colour_node][0])
    with Image.open(path) as im, Image.open(server.base / "input" / SUBJECT) as src:
        out = np.asarray(im, dtype=float)
        sub = np.asarray(src.convert("RGB"), dtype=float)
    lo, hi = np.minimum(sub, colour) - 3, np.maximum(sub, colour) + 3
    inside = ((out >= lo) & (out <= hi)).mean()
    assert inside > 0.99, inside


def test_video_workflow_writes_mp4_with_all_frames(server, object_info):
    if "LoadVideo" not in object_info or "SaveVideo" not in object_info:
        pytest.skip("this ComfyUI has no core video nodes (LoadVideo/SaveVideo)")
    if not _has_av():
        pytest.skip(f"PyAV (av) is not installed for {_python()}: cannot write the test video")
    subprocess.run([_python(), "-c", _MAKE_VIDEO, str(server.base / "input" / VIDEO),
                    *map(str, (*VIDEO_WH, VIDEO_FRAMES, VIDEO_FPS))], check=True)
    prompt = _prompt("birefnet_video.json", object_info)
    (load,) = find_nodes(prompt, "LoadVideo")
    prompt[load]["inputs"]["file"] = VIDEO
    (save,) = find_nodes(prompt, "SaveVideo")
    prompt[save]["inputs"]["filename_prefix"] = "e2e_wf_video"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (path,) = _saved(server, entry, save)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    probe = subprocess.run([_python(), "-c", _PROBE_VIDEO, str(path)], check=True,
                           capture_output=True, text=True)
    info = json.loads(probe.stdout)
    assert (info["width"], info["height"]) == VIDEO_WH
    assert info["frames"] == VIDEO_FRAMES
