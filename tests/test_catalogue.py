"""The checkpoint catalogue: each family's settings, the file-name rules that find it, its download
entry and `birefnet list`; random-weight checkpoints of the newer families load as those
families. Also the registry metadata that says which ComfyUI the pack supports."""

from __future__ import annotations

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core.cli import main
from birefnet_core.download import CHECKPOINTS
from birefnet_core.model import BiRefNet
from birefnet_core.variants import FAMILIES, Architecture, PatchOrder, family_from_filename
from birefnet_core.weights import load_model
from tests.conftest import REPO

# name: (working size (W, H), patch order, matting)
SETTINGS = {
    "general": ((1024, 1024), "split", False),
    "lite": ((1024, 1024), "split", False),
    "lite_matting": ((1024, 1024), "einops", True),
    "legacy": ((1024, 1024), "split", False),
    "paper": ((1024, 1024), "split", False),
    "toonout": ((1024, 1024), "einops", False),
    "lucida": ((1024, 1024), "einops", True),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_family_settings(name):
    family = FAMILIES[name]
    assert (family.resolution, family.patch_order.value, family.matting) == SETTINGS[name]


def test_family_descriptions_say_what_is_known_and_what_is_not():
    assert "likely" in FAMILIES["lite_matting"].label
    assert "unverified" in FAMILIES["lucida"].label and "HR" in FAMILIES["lucida"].note
    assert "1024" in FAMILIES["lucida"].note and "not 2048" in FAMILIES["lucida"].note
    assert "portrait" in FAMILIES["legacy"].note and "current decoder" in FAMILIES["legacy"].note
    assert "paper" not in FAMILIES["legacy"].label.lower()
    assert "legacy decoder" in FAMILIES["paper"].label
    # The general model's contested order: the default and its reason, both orders named.
    note = FAMILIES["general"].note
    assert "trained with the split" in note and "einops" in note and "ComfyUI" in note


@pytest.mark.parametrize("path, family", [
    ("models/birefnet/BiRefNet_lite-matting.safetensors", "lite_matting"),
    ("models/birefnet/BIREFNET_LITE-MATTING.SAFETENSORS", "lite_matting"),
    ("BiRefNet_lite-matting-epoch_100.pth", "lite_matting"),
    ("BiRefNet_T.safetensors", "lite"),
    ("models/birefnet/birefnet-t.pth", "lite"),
    ("BiRefNet_T-matting.safetensors", "lite_matting"),
    ("General-Lite.safetensors", "lite"),
    ("models/birefnet/birefnet_finetuned_toonout.pth", "toonout"),
    ("ToonOut.safetensors", "toonout"),
    ("models/birefnet/lucida.safetensors", "lucida"),
    ("models/birefnet/Lucida_v7.PTH", "lucida"),
    ("models/background_removal/lucida.safetensors", "lucida"),
    ("models/background_removal/LUCIDA.safetensors", "lucida"),
    ("models/background_removal/birefnet.safetensors", "general"),
    ("models/Background_Removal/BiRefNet.safetensors", "general"),
    ("models/background_removal/BiRefNet_HR.safetensors", "hr"),  # named files keep their names
    ("BiRefNet-legacy.safetensors", "legacy"),
    ("BiRefNet-DIS-epoch_590.pth", "dis5k"),
])
def test_file_names(path, family):
    assert family_from_filename(path).name == family


@pytest.mark.parametrize("name, decoder, family", [
    ("BiRefNet-DIS_ep580.pth", "legacy", "paper"),
    ("BiRefNet-legacy.safetensors", "legacy", "paper"),
    ("model.safetensors", "legacy", "paper"),
    ("BiRefNet_lite.pth", "legacy", "paper"),
    ("BiRefNet_HR.pth", "legacy", "hr"),  # the name asks for 2048² and einops: honoured
    ("birefnet_finetuned_toonout.pth", "legacy", "toonout"),
    ("BiRefNet-DIS_ep580.pth", "current", "dis5k"),
    ("BiRefNet-legacy.safetensors", "current", "legacy"),
])
def test_decoder_generation_separates_paper_files_from_birefnet_legacy(name, decoder, family):
    assert family_from_filename(name, decoder=decoder).name == family


def test_download_entries_of_the_new_families():
    for name, (repo, remote, local) in {
        "lite_matting": ("ZhengPeng7/BiRefNet_lite-matting", "model.safetensors",
                         "BiRefNet_lite-matting.safetensors"),
        "toonout": ("joelseytre/toonout", "birefnet_finetuned_toonout.pth",
                    "birefnet_finetuned_toonout.pth"),
        "lucida": ("Comfy-Org/BiRefNet", "background_removal/lucida.safetensors",
                   "lucida.safetensors"),
    }.items():
        ckpt = CHECKPOINTS[name]
        assert (ckpt.repo, ckpt.remote_file, ckpt.filename) == (repo, remote, local), name
        assert family_from_filename(ckpt.filename) is ckpt.family is FAMILIES[name]
    assert "paper" not in CHECKPOINTS  # release assets on GitHub, not a Hugging Face file


def test_birefnet_list_shows_the_new_entries(capsys):
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["lite_matting"][1:3] == ["1024x1024", "einops"]
    assert rows["lite_matting"][-1] == "BiRefNet_lite-matting.safetensors"
    assert rows["toonout"][1:4] == ["1024x1024", "einops", "joelseytre/toonout"]
    assert rows["toonout"][-1] == "birefnet_finetuned_toonout.pth"
    assert rows["lucida"][1:3] == ["1024x1024", "einops"] and rows["lucida"][-1] == \
        "lucida.safetensors"
    assert rows["legacy"][1:3] == ["1024x1024", "split"]
    assert set(rows) == set(CHECKPOINTS)


# -- loading: architecture from the weights, family from the name --------------------------------

def _random_state_dict(arch: Architecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights with the published layout, without a random initialisation pass
    (built on the meta device, filled directly: seconds for Swin-L instead of tens)."""
    with torch.device("meta"):
        expected = BiRefNet(arch).state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, meta in expected.items():
        if not meta.is_floating_point():
            sd[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif key.endswith("running_var"):
            sd[key] = torch.ones(meta.shape)
        else:
            sd[key] = torch.empty(meta.shape).uniform_(-0.05, 0.05, generator=g)
    return sd


def _describe(info):
    return info.name, info.resolution, info.patch_order.value


def test_paper_era_and_birefnet_legacy_files_load_as_what_they_are(tmp_path):
    """Small PVT stand-ins: the decoder generation comes from the weights."""
    paper = tmp_path / "BiRefNet-DIS_ep580.pth"
    torch.save(_random_state_dict(Architecture("pvt_v2_b0", decoder="legacy")), paper)
    assert _describe(load_model(paper).info) == (
        "pvt_v2_b0_legacy.paper", (1024, 1024), "split")
    legacy = tmp_path / "BiRefNet-legacy.safetensors"
    save_file(_random_state_dict(Architecture("pvt_v2_b0")), str(legacy))
    info = load_model(legacy).info
    assert _describe(info) == ("pvt_v2_b0.legacy", (1024, 1024), "split")
    assert "portrait" in info.family.note


@pytest.mark.parametrize("name, described", [
    ("BiRefNet_lite-matting.safetensors", ("swin_v1_t.lite_matting", (1024, 1024), "einops")),
    ("BiRefNet_T.safetensors", ("swin_v1_t.lite", (1024, 1024), "split")),
])
def test_swin_t_files_load_as_their_family(name, described, fixtures_dir, tmp_path):
    path = tmp_path / name
    os.symlink(fixtures_dir / "lite_fp16.safetensors", path)
    loaded = load_model(path)
    assert _describe(loaded.info) == described
    assert loaded.model.patch_order is PatchOrder(described[2])


@pytest.fixture(scope="module")
def swin_l(tmp_path_factory):
    """One Swin-L state dict (the published general architecture), saved as a ToonOut-style
    fp32 .pth with DDP + torch.compile key prefixes and as ComfyUI's fp16 lucida.safetensors."""
    folder = tmp_path_factory.mktemp("swin_l")
    sd = _random_state_dict(Architecture("swin_v1_l"), seed=3)
    toonout = folder / "birefnet" / "birefnet_finetuned_toonout.pth"
    toonout.parent.mkdir()
    torch.save({"module._orig_mod." + k: v for k, v in sd.items()}, toonout)
    lucida = folder / "background_removal" / "lucida.safetensors"
    lucida.parent.mkdir()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(lucida))
    probe = "decoder.gdt_convs_4.0.weight"
    return {"toonout": toonout, "lucida": lucida, "probe": (probe, sd[probe])}


@pytest.mark.slow
def test_toonout_pth_with_prefixed_keys_loads_as_toonout(swin_l):
    loaded = load_model(swin_l["toonout"])
    info = loaded.info
    assert _describe(info) == ("swin_v1_l.toonout", (1024, 1024), "einops")
    assert info.stored_dtype == "float32"
    assert loaded.model.patch_order is PatchOrder.EINOPS
    key, value = swin_l["probe"]
    torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_comfyui_lucida_file_loads_as_lucida(swin_l):
    loaded = load_model(swin_l["lucida"])
    info = loaded.info
    assert _describe(info) == ("swin_v1_l.lucida", (1024, 1024), "einops")
    assert info.stored_dtype == "float16" and info.family.matting
    key, value = swin_l["probe"]
    torch.testing.assert_close(loaded.model.state_dict()[key], value.half().float(), rtol=0,
                               atol=0)
    # Core's repack of the general model in the same folder (test_file_names covers the rule).
    general = swin_l["lucida"].with_name("birefnet.safetensors")
    assert family_from_filename(general).name == "general"


# -- registry metadata ----------------------------------------------------------------------------

def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML itself")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_registry_metadata():
    project = _pyproject()
    comfy = project["tool"]["comfy"]
    # The floor is the one nodes/host.py documents for every host API the nodes use.
    host_doc = (REPO / "nodes" / "host.py").read_text(encoding="utf-8")
    documented = re.search(r"all of it is in (\d+\.\d+\.\d+) and newer", host_doc)
    assert documented, "nodes/host.py no longer says since which ComfyUI its APIs exist"
    assert comfy["requires-comfyui"] == f">={documented.group(1)}"
    classifiers = project["project"]["classifiers"]
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers
    # Left exactly as they were (CI installs .[test]; pytest reads its options from here).
    assert project["project"]["optional-dependencies"] == {
        "video": ["av>=14"], "ray": ["ray[data]>=2.40", "av>=14"],
        "test": ["pytest>=8", "playwright>=1.45", "av>=14", "ray[data]>=2.40", "kornia>=0.7",
                 "moto[server]>=5", "scipy>=1.10"]}
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore semantics for the two pattern forms .comfyignore uses: ``dir/`` (a directory
    at any depth) and ``/dir/`` (at the root)."""
    parts = path.split("/")[:-1]
    for pattern in patterns:
        name = pattern.strip("/")
        if pattern.startswith("/") and parts[:1] == [name]:
            return True
        if not pattern.startswith("/") and name in parts:
            return True
    return False


def test_comfyignore_keeps_development_files_out_of_the_published_archive():
    lines = (REPO / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    unsupported = [p for p in patterns if not re.fullmatch(r"/?[\w.-]+/", p)]
    assert unsupported == [], "this test understands only 'dir/' and '/dir/' patterns"
    left_out = ["tests/conftest.py", "tests/data/make_workflows.py", "web/tests/color.test.mjs",
                "benchmarks/RESULTS.md", ".ci/run"]
    shipped = ["__init__.py", "pyproject.toml", "requirements.txt", "README.md",
               "nodes/host.py", "birefnet_core/ops/deform_conv.py", "birefnet_core/model/swin.py",
               "web/birefnet.js", "web/lib/modelinfo.js", "web/icon.png",
               "workflows/birefnet_remove_background.json"]
    for path in left_out + shipped:
        assert (REPO / path).is_file(), f"{path} moved: update this test"
    assert [p for p in left_out if not _ignored(p, patterns)] == []
    assert [p for p in shipped if _ignored(p, patterns)] == []


def test_readme_states_supported_versions():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Compatibility"):text.index("## Weights")]
    for needle in ("0.3.0", "0.3.64", "1.27.10", "1.38.3", "V1 node API"):
        assert needle in section, needle
    table = text[text.index("## Weights"):text.index("## Nodes")]
    for name in (*CHECKPOINTS, "paper"):
        assert re.search(rf"^\| {name} \|", table, re.M), f"no README row for {name}"
