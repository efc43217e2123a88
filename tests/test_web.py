"""The JS extension in ``web/``: its node tests, that it matches the nodes it decorates, and the
server side of the loader's model info.

``node --test web/tests/`` runs the unit tests of ``web/lib`` (colour parsing, compare-view
geometry, model-info text) and tests of ``web/birefnet.js`` against a stub ComfyUI app (skipped
where ``node`` 18+ is not on PATH). ``GET /birefnet/model_info`` (``nodes/loader.py``) describes
a listed model file from its tensor names and shapes, without reading the weights, and must say
exactly what the loader says after loading it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the JS tests of web/ need Node.js 18+")
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(re.match(r"v(\d+)", out).group(1)) if re.match(r"v(\d+)", out) else 0
    if major < 18:
        pytest.skip(f"node {out} has no built-in test runner (needs 18+)")
    return node


def test_node_unit_tests_pass():
    node = _node()
    tests = sorted(str(p.relative_to(REPO)) for p in (WEB / "tests").glob("*.test.mjs"))
    assert tests, "no web/tests/*.test.mjs"
    proc = subprocess.run([node, "--test", *tests], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_extension_files_are_es_modules_served_from_web_directory():
    pack = load_pack()
    assert (REPO / pack.WEB_DIRECTORY / "birefnet.js").is_file()
    entry = (WEB / "birefnet.js").read_text()
    # served as /extensions/<pack>/birefnet.js: ComfyUI's scripts are two levels up
    assert 'from "../../scripts/app.js"' in entry
    assert "registerExtension" in entry
    # ComfyUI imports every .js under web/ as an extension: the tests must not be .js
    assert not list((WEB / "tests").glob("*.js"))


def test_names_used_by_the_extension_exist_on_the_nodes(tmp_path):
    fake_host.install(tmp_path)
    try:
        mappings = load_pack().NODE_CLASS_MAPPINGS
        inputs = {name: {**cls.INPUT_TYPES().get("required", {}),
                         **(cls.INPUT_TYPES().get("optional") or {})}
                  for name, cls in mappings.items()}
        returns = {name: cls.RETURN_TYPES for name, cls in mappings.items()}
    finally:
        fake_host.uninstall()
    entry = (WEB / "birefnet.js").read_text()
    for node in re.findall(r"^\s+(BiRefNet\w+): \[", entry, flags=re.M):
        assert node in mappings, f"web/birefnet.js decorates unknown node {node}"
    assert inputs["BiRefNetComposite"]["color"][0] == "STRING"
    sources = (WEB / "lib" / "sources.js").read_text()
    found = re.findall(r"(BiRefNet\w+): Object\.freeze\(\{ input: \"(\w+)\", outputs: "
                       r"Object\.freeze\(\[([\d, ]+)\]\)", sources)
    assert {f[0] for f in found} == {"BiRefNetSegment", "BiRefNetComposite"}, found
    for node, image_input, outputs in found:
        assert inputs[node][image_input][0] == "IMAGE", (node, image_input)
        slots = [int(s) for s in outputs.split(",")]
        assert returns[node][slots[0]] == "IMAGE", (node, slots)
        assert all(0 <= s < len(returns[node]) for s in slots)


# -- the model info route ----------------------------------------------------------------------

LITE = "BiRefNet_lite-test.safetensors"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A PVT-v2-b0 BiRefNet as users download it (fp16 safetensors, named like a lite model)
    and the same state dict as a ``.pth`` inside ``{"state_dict": ...}`` with a ``module.``
    prefix, as training scripts save it. Zeros: only names, shapes and dtypes matter."""
    from safetensors.torch import save_file

    load_pack()
    from birefnet_pack.birefnet_core.model import BiRefNet
    from birefnet_pack.birefnet_core.variants import Architecture

    with torch.device("meta"):
        shapes = BiRefNet(Architecture("pvt_v2_b0")).state_dict()
    state = {k: torch.zeros(v.shape, dtype=torch.float16 if v.is_floating_point() else v.dtype)
             for k, v in shapes.items()}
    folder = tmp_path_factory.mktemp("weights")
    save_file(state, str(folder / LITE))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}},
               folder / "BiRefNet-HR-epoch_100.pth")
    return folder


@pytest.fixture
def models(tmp_path, weights):
    root = tmp_path / "models"
    (root / "birefnet").mkdir(parents=True)
    for f in weights.iterdir():
        (root / "birefnet" / f.name).symlink_to(f)
    fake_host.install(root)
    load_pack()
    yield root / "birefnet"
    fake_host.uninstall()


def _loader():
    from birefnet_pack.nodes import loader

    return loader


def test_model_info_says_what_the_loader_says(models):
    loader = _loader()
    (loaded,) = loader.BiRefNetModelLoader().load(LITE, "fp16", "auto", "auto")["ui"]["text"]
    assert loader.describe_model_file(LITE, precision="fp16") == loaded


@pytest.mark.parametrize("name,options", [
    (LITE, {"family": "hr", "patch_order": "split", "precision": "auto"}),
    ("BiRefNet-HR-epoch_100.pth", {"family": "auto", "patch_order": "auto", "precision": "bf16"}),
])
def test_model_info_follows_the_options_like_loading(models, name, options):
    """Family (from the name or chosen), patch order and precision as loading reports them
    (the core's loader, without the node's speed-ups, to keep this quick)."""
    from birefnet_pack.birefnet_core.weights import load_model

    loader = _loader()
    auto = lambda v: None if v == "auto" else v  # noqa: E731
    info = load_model(models / name, family=auto(options["family"]),
                      patch_order=auto(options["patch_order"])).info
    assert loader.describe_model_file(name, **options) == loader.summary_text(
        info, options["precision"])


def test_model_info_reads_no_weights(models, monkeypatch):
    from birefnet_pack.birefnet_core import weights

    def refuse(*_, **__):
        raise AssertionError("the weights were read")

    real_load = weights._torch_load

    def meta_only(path, map_location):
        assert map_location == "meta", "the pickled storages were read"
        return real_load(path, map_location)

    monkeypatch.setattr(weights, "_torch_load", meta_only)
    monkeypatch.setattr("safetensors.torch.load_file", refuse)
    monkeypatch.setattr(weights, "load_model", refuse)
    monkeypatch.setattr(weights, "build_model", refuse)
    loader = _loader()
    text = loader.describe_model_file("BiRefNet-HR-epoch_100.pth", family="auto")
    assert text.splitlines()[:2] == ["BiRefNet pvt_v2_b0.hr", "family: HR (2048²)"]
    assert "(stored as float16)" in text
    assert loader.describe_model_file(LITE).startswith("BiRefNet pvt_v2_b0.lite")


@pytest.fixture
def get(models, monkeypatch):
    """``get(query) -> (status, body)``: the route registered as the pack registers it on
    ComfyUI's server (``PromptServer.instance.routes``), served by a real aiohttp app."""
    pytest.importorskip("aiohttp")
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from birefnet_pack.nodes import host

    loader = _loader()
    routes = web.RouteTableDef()
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(
        PromptServer=SimpleNamespace(instance=SimpleNamespace(routes=routes))))
    assert host.add_get_route(loader.INFO_ROUTE, loader.model_info_route)

    async def ask(query):
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            response = await client.get(loader.INFO_ROUTE, params=query)
            return response.status, json.loads(await response.text())

    def run(query):
        # A thread of its own: the session's browser tests (Playwright's sync API) may keep an
        # event loop running in this one, where asyncio.run refuses to start.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, ask(query)).result()

    return run


def test_model_info_route(models, get):
    status, body = get({"model_name": LITE, "family": "auto", "patch_order": "auto",
                         "precision": "auto"})
    assert status == 200, body
    assert body["text"].startswith("BiRefNet pvt_v2_b0.lite\nfamily: Lite")
    # only names from the model list: no paths, no files elsewhere
    for name in ("../" + LITE, str(models / LITE), "missing.safetensors", ""):
        status, body = get({"model_name": name})
        assert status == 404 and "not in the BiRefNet model list" in body["error"], (name, body)
    status, body = get({"model_name": LITE, "family": "huge"})
    assert status == 400 and "family must be one of" in body["error"]
    (models / "broken.safetensors").write_bytes(b"\x00" * 64)
    status, body = get({"model_name": "broken.safetensors"})
    assert status == 422 and "broken.safetensors is truncated or corrupt" in body["error"]
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(models / "sd.safetensors"))
    status, body = get({"model_name": "sd.safetensors"})
    assert status == 422 and "not a BiRefNet checkpoint" in body["error"]


def test_route_is_registered_only_inside_a_server(models, monkeypatch):
    from birefnet_pack.nodes import host

    monkeypatch.delitem(sys.modules, "server", raising=False)
    assert host.add_get_route("/x", None) is False  # tests, the CLI: no web server
    monkeypatch.setitem(sys.modules, "server",
                        SimpleNamespace(PromptServer=SimpleNamespace(instance=None)))
    assert host.add_get_route("/x", None) is False  # imported, not started
