"""Download a published checkpoint from Hugging Face, on explicit request only.

This is the only module of the pack that opens a network connection, and only when
:func:`download_checkpoint` is called. It honours ``HF_ENDPOINT`` (mirrors), ``HF_TOKEN`` (gated
repositories such as RMBG-2.0) and the offline switches ``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE``, under which it fails at once with the URL and the target folder so the
file can be fetched by hand.

Any file of a repository can be published (most are its ``model.safetensors``; ToonOut is a
``.pth``, Lucida sits in a subfolder of ComfyUI's own repack). It is saved under a name that
carries its family (``BiRefNet_HR-matting.safetensors``, ``birefnet_finetuned_toonout.pth``), so
:func:`~birefnet_core.variants.family_from_filename` picks the right working resolution and patch
order later. The data goes to a hidden temporary file beside the target (:mod:`.atomic`) that
becomes the checkpoint only once every check passes:

* the size and sha256 the hub reports for the file (its ``X-Linked-Size`` / ``X-Linked-Etag``
  headers), when it reports them (a mirror may not);
* the sha256 pinned in :data:`CHECKPOINTS` for that revision, when one is known;
* the file's own layout: a safetensors file's tensor data offsets must end exactly at the end of
  the file, and a ``.pth`` zip archive (``torch.save``) must end with its central directory, which
  catches a cut-off transfer even when nothing else is known.

A file already under the target name is reused without network access when its layout is whole,
and downloaded again when it is not.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .atomic import atomic_write
from .errors import DownloadError, InputError
from .variants import FAMILIES, Family

__all__ = ["PublishedCheckpoint", "CHECKPOINTS", "checkpoint_url", "download_checkpoint",
           "is_offline"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One downloadable file: ``remote_file`` (a path inside ``repo``) saved as ``filename``.
    ``sha256`` pins the file's hash at ``revision``; it is set only where the hash is known, and
    is then verified on download."""

    family: Family
    repo: str
    filename: str  # the local file name; it carries the family
    remote_file: str = "model.safetensors"
    gated: bool = False
    revision: str = "main"
    sha256: Optional[str] = None


# Where a family's file is not its repository's model.safetensors, saved as <repo name>.safetensors:
# name -> (repo, remote file, local name).
_FILES: dict[str, tuple[str, str, str]] = {
    "toonout": ("joelseytre/toonout", "birefnet_finetuned_toonout.pth",
                "birefnet_finetuned_toonout.pth"),
    # ComfyUI's repack of egeorcun/lucida, the file core's template puts in background_removal/.
    "lucida": ("Comfy-Org/BiRefNet", "background_removal/lucida.safetensors", "lucida.safetensors"),
}

# Known hashes of published files: name -> (revision, sha256). Add one only from a verified
# download of that exact revision, never a guess. A single-file release whose commit was not
# recorded is pinned at "main": should its owner replace the file, the download is refused (with
# that explanation) instead of silently giving another model under the same family.
_PINNED: dict[str, tuple[str, str]] = {
    "lite_matting": ("99c33412e3f58e1f33187abdc8c435c645243690",
                     "ce8bcfc045e336322c0424a5863dcfb7e9ce8fed0a5fd4d1b2b20adf12d97243"),
    "toonout": ("main", "8c7f8a0bc24400f4caade76622f75ff22ca1e93e169add9d2b70093e2487fbe5"),
}

_GATED = frozenset({"rmbg2"})


def _published(name: str, fam: Family) -> PublishedCheckpoint:
    default = (fam.hf_repo, "model.safetensors", f"{fam.hf_repo.split('/')[-1]}.safetensors")
    repo, remote, local = _FILES.get(name, default)
    revision, sha = _PINNED.get(name, ("main", None))
    return PublishedCheckpoint(fam, repo, local, remote, gated=name in _GATED,
                               revision=revision, sha256=sha)


CHECKPOINTS: dict[str, PublishedCheckpoint] = {
    name: _published(name, fam) for name, fam in FAMILIES.items() if fam.hf_repo
}


def is_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def checkpoint_url(name: str, *, endpoint: Optional[str] = None,
                   revision: Optional[str] = None) -> str:
    """The file's URL at ``revision`` (default: the table's, ``main`` unless a hash is pinned)."""
    ckpt = _lookup(name)
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    path = urllib.parse.quote(ckpt.remote_file)  # "/" stays: a file in a subfolder
    return f"{base}/{ckpt.repo}/resolve/{revision or ckpt.revision}/{path}"


def _lookup(name: str) -> PublishedCheckpoint:
    key = name.strip().lower().replace("-", "_")
    if key not in CHECKPOINTS:
        raise InputError(f"unknown checkpoint {name!r}; published ones: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[key]


class _KeepRedirect(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: the hub puts the file's size and hash on the redirect itself."""

    def redirect_request(self, *args, **kwargs):
        return None


def _request(url: str, method: str, token: Optional[str]) -> urllib.request.Request:
    headers = {"User-Agent": "birefnet-nodes"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, method=method, headers=headers)


def _expected(url: str, token: Optional[str], timeout: float) -> tuple[Optional[int], Optional[str]]:
    """(size, sha256) the hub reports for the file, from a HEAD that does not follow redirects."""
    opener = urllib.request.build_opener(_KeepRedirect)
    try:
        response = opener.open(_request(url, "HEAD", token), timeout=timeout)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        headers = exc.headers
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').lower()
    etag = etag.removeprefix("w/").strip('"')
    sha = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    return (int(size) if size else None), sha


def _layout_problem(path: Path, filename: str) -> Optional[str]:
    """What is wrong with the layout of ``path``, a checkpoint to be named ``filename``, or
    None."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".safetensors":
        from .weights import safetensors_layout_problem  # torch: imported only when checking

        return safetensors_layout_problem(path)
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _zip_problem(path)
    return None


def _zip_problem(path: Path) -> Optional[str]:
    """``torch.save`` writes a zip archive, whose directory is at its very end: a file cut short
    has none. Only the directory is read. The legacy pickle stream describes no length of its
    own, and passes."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        return None
    if head != b"PK":
        return "neither the zip archive nor the pickle stream that torch.save writes"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError) as exc:
        return f"not a whole zip archive ({exc})"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive without the data.pkl of torch.save"
    return None


def download_checkpoint(
    name: str,
    models_dir: str | os.PathLike,
    *,
    endpoint: Optional[str] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    overwrite: bool = False,
    timeout: float = 30.0,
    on_progress: Optional[Callable[[int, Optional[int]], None]] = None,
) -> Path:
    """Fetch the published checkpoint ``name`` (a key of :data:`CHECKPOINTS`) into ``models_dir``.

    Returns the path of the checkpoint. An existing, whole file is returned without any network
    access unless ``overwrite``. ``revision`` defaults to the table's (the pinned one where a
    hash is known; a pinned hash is only checked at its own revision).
    ``on_progress(done_bytes, total_bytes_or_None)`` is called per chunk. Nothing is ever left
    under the target name unless every check passed, interrupted runs included.
    """
    ckpt = _lookup(name)
    folder = Path(models_dir)
    target = folder / ckpt.filename
    if target.is_file() and not overwrite:
        try:
            problem = _layout_problem(target, target.name)
        except OSError:  # unreadable: the loader reports that, with the path
            problem = None
        if problem is None:
            return target
    revision = revision or ckpt.revision
    url = checkpoint_url(name, endpoint=endpoint, revision=revision)
    pinned = ckpt.sha256 if revision == ckpt.revision else None
    manual = f"download {url} by hand and save it as {target}"
    if is_offline():
        raise DownloadError(f"offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE): {manual}.")
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the models folder {folder} ({exc.strerror or exc}); "
                            "choose a folder this user may write to.") from exc
    try:
        size, sha = _expected(url, token, timeout)
        digest = hashlib.sha256()
        done = 0
        with atomic_write(target) as out:
            with urllib.request.urlopen(_request(url, "GET", token), timeout=timeout) as response:
                total = size or int(response.headers.get("Content-Length") or 0) or None
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
            out.flush()
            problem = _verify(done, size, digest.hexdigest(), sha) or \
                _layout_problem(Path(out.name), target.name)
            if problem:
                raise DownloadError(f"download of {url} is incomplete or corrupt ({problem}); "
                                    "try again, or another HF_ENDPOINT.")
            if pinned is not None and digest.hexdigest() != pinned:
                raise DownloadError(
                    f"{url} is not the published file this pack describes as {ckpt.family.name!r}"
                    f" (sha256 {digest.hexdigest()} instead of the published sha256 {pinned}): "
                    "the transfer was corrupted, or the file has changed in the repository since. "
                    f"Try again; if it persists, check the model page, then {manual}.")
    except urllib.error.HTTPError as exc:
        hint = (" The repository is gated: accept its licence on the model page and set HF_TOKEN."
                if exc.code in (401, 403) else "")
        raise DownloadError(f"the hub answered HTTP {exc.code} for {url}.{hint} Or {manual}.") from exc
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(f"cannot download {url} ({exc}); {manual}.") from exc
    return target


def _verify(done: int, size: Optional[int], digest: str, sha: Optional[str]) -> Optional[str]:
    """What the downloaded bytes fail of the size and hash the hub reports, or None."""
    if size is not None and done != size:
        return f"{done} of {size} bytes"
    if sha is not None and digest != sha:
        return f"sha256 {digest} instead of the {sha} the hub reports"
    return None
