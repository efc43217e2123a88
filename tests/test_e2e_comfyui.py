"""End-to-end: a real, headless ComfyUI on the CPU runs LoadImage -> load -> segment -> SaveImage.

Opt-in: set ``COMFYUI_DIR`` to a ComfyUI checkout (and ``COMFYUI_PYTHON`` to the interpreter
that has ComfyUI's requirements plus this pack's, when it is not the one running pytest)::

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python \
        python -m pytest tests/test_e2e_comfyui.py -m e2e -v

Everything happens in a temporary base directory (``--base-directory``): this pack is linked into
its ``custom_nodes``, a small random-weight checkpoint goes into its ``models/birefnet``, the
input image into ``input``; the checkout is not modified. The server listens on a free loopback
port only and is stopped at the end. Takes about a minute on a laptop CPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PACK_LINK = "ComfyUI-BiRefNet"
CKPT = "BiRefNet_lite-e2e.safetensors"
IMAGE_WH = (96, 64)
START_TIMEOUT = float(os.environ.get("COMFYUI_START_TIMEOUT", 240))
RUN_TIMEOUT = float(os.environ.get("COMFYUI_RUN_TIMEOUT", 300))

if not COMFYUI_DIR:
    pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the end-to-end test",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path, comfy: Path):
        self.base, self.comfy = base, comfy
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        cli = (self.comfy / "comfy" / "cli_args.py").read_text()
        if "--base-directory" not in cli:
            pytest.skip("this ComfyUI has no --base-directory option (too old for this test)")
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch"]
        if "--database-url" in cli:  # keep the checkout's user database untouched
            cmd += ["--database-url", "sqlite:///:memory:"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            pytest.fail(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}")
        return json.loads(body) if body.strip() else None

    def run(self, prompt: dict) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": "birefnet-e2e"})
        assert not queued.get("node_errors"), queued
        prompt_id = queued["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if history and prompt_id in history:
                entry = history[prompt_id]
                if entry.get("status", {}).get("completed") or entry.get("outputs"):
                    return entry
                if entry.get("status", {}).get("status_str") == "error":
                    pytest.fail(f"prompt failed: {json.dumps(entry['status'])[:4000]}\n"
                                f"{self.log_tail()}")
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI died while running:\n{self.log_tail()}")
            time.sleep(1.0)
        pytest.fail(f"prompt not done within {RUN_TIMEOUT:.0f} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    comfy = Path(COMFYUI_DIR).expanduser().resolve()
    assert (comfy / "main.py").is_file(), f"COMFYUI_DIR={comfy} is not a ComfyUI checkout"
    base = tmp_path_factory.mktemp("comfyui_base")
    for sub in ("custom_nodes", "models/birefnet", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / PACK_LINK, target_is_directory=True)

    sys.path.insert(0, str(REPO / "tests"))
    from pack import load_pack

    load_pack()
    from birefnet_pack.birefnet_core.model import BiRefNet
    from birefnet_pack.birefnet_core.variants import Architecture

    torch.manual_seed(0)
    sd = BiRefNet(Architecture("pvt_v2_b0")).state_dict()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
              str(base / "models" / "birefnet" / CKPT))
    rgb = (np.random.RandomState(0).rand(IMAGE_WH[1], IMAGE_WH[0], 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(base / "input" / "e2e.png")  # no alpha: LoadImage's mask is 64x64 0

    srv = Server(base, comfy)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _prompt(prefix: str, resolution: str = "dynamic") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e.png"}},
        "2": {"class_type": "BiRefNetModelLoader",
              "inputs": {"model_name": CKPT, "precision": "auto", "family": "auto",
                         "patch_order": "auto"}},
        # dynamic: the 96x64 image runs at 384x256 (shorter side >= 256), quick on a CPU.
        "3": {"class_type": "BiRefNetSegment",
              "inputs": {"model": ["2", 0], "images": ["1", 0], "resolution": resolution,
                         "max_megapixels": 4.19, "batch_size": 0, "region": ["1", 1]}},
        "4": {"class_type": "SaveImage",
              "inputs": {"images": ["3", 1], "filename_prefix": prefix}},
    }


def test_nodes_are_registered_without_import_errors(server):
    info = server.get("/object_info")
    assert {"BiRefNetModelLoader", "BiRefNetSegment"} <= set(info)
    loader = info["BiRefNetModelLoader"]
    assert CKPT in loader["input"]["required"]["model_name"][0]
    assert loader["output"] == ["BIREFNET_MODEL"]
    assert info["BiRefNetSegment"]["output"] == ["MASK", "IMAGE"]
    assert info["BiRefNetSegment"]["display_name"] == "BiRefNet Remove Background"
    log = server.log()
    ours = [line for line in log.splitlines() if PACK_LINK in line]
    assert ours, "the pack was not found in custom_nodes:\n" + server.log_tail()
    bad = [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, "\n".join(bad)
    tracebacks = [block for block in log.split("Traceback (most recent call last):")[1:]
                  if PACK_LINK in block.split("\n\n")[0] or str(REPO) in block.split("\n\n")[0]]
    assert not tracebacks, tracebacks[0][:3000]


def test_load_segment_save_writes_rgba_png_at_input_size(server):
    from PIL import Image

    entry = server.run(_prompt("birefnet_e2e"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = entry["outputs"]["4"]["images"]
    path = server.base / "output" / saved.get("subfolder", "") / saved["filename"]
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        assert im.size == IMAGE_WH
    text = entry["outputs"]["2"]["text"][0]  # the loader's ui text: detected variant
    assert "pvt_v2_b0.lite" in text and "parameters" in text

    # "Unload models" (/free) then run again: the model is reloaded through ComfyUI.
    server.post("/free", {"unload_models": True, "free_memory": True})
    entry = server.run(_prompt("birefnet_e2e_again", "512x512"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = entry["outputs"]["4"]["images"]
    with Image.open(server.base / "output" / saved["filename"]) as im:
        assert (im.mode, im.size) == ("RGBA", IMAGE_WH)
