"""Download a published checkpoint from Hugging Face, on explicit request only.

This is the only module of the pack that opens a network connection, and only when
:func:`download_checkpoint` is called. It honours ``HF_ENDPOINT`` (mirrors), ``HF_TOKEN`` (gated
repositories such as RMBG-2.0) and the offline switches ``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE``, under which it fails at once with the URL and the target folder so the
file can be fetched by hand.

The file is saved under a name that carries its family (``BiRefNet_HR-matting.safetensors``), so
:func:`~birefnet_core.variants.family_from_filename` picks the right working resolution and patch
order later. Integrity is checked against the size and sha256 the hub reports for the file (its
``X-Linked-Size`` / ``X-Linked-Etag`` headers); the data is written to a ``.part`` file that only
becomes the checkpoint once both match.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import DownloadError, InputError
from .variants import FAMILIES, Family

__all__ = ["PublishedCheckpoint", "CHECKPOINTS", "checkpoint_url", "download_checkpoint",
           "is_offline"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PublishedCheckpoint:
    family: Family
    repo: str
    filename: str  # the local file name; it carries the family
    remote_file: str = "model.safetensors"
    gated: bool = False


def _local_name(family: Family) -> str:
    return f"{family.hf_repo.split('/')[-1]}.safetensors"


CHECKPOINTS: dict[str, PublishedCheckpoint] = {
    name: PublishedCheckpoint(fam, fam.hf_repo, _local_name(fam), gated=name == "rmbg2")
    for name, fam in FAMILIES.items() if fam.hf_repo
}


def is_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def checkpoint_url(name: str, *, endpoint: Optional[str] = None, revision: str = "main") -> str:
    ckpt = _lookup(name)
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return f"{base}/{ckpt.repo}/resolve/{revision}/{ckpt.remote_file}"


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


def download_checkpoint(
    name: str,
    models_dir: str | os.PathLike,
    *,
    endpoint: Optional[str] = None,
    token: Optional[str] = None,
    revision: str = "main",
    overwrite: bool = False,
    timeout: float = 30.0,
    on_progress: Optional[Callable[[int, Optional[int]], None]] = None,
) -> Path:
    """Fetch the published checkpoint ``name`` (a key of :data:`CHECKPOINTS`) into ``models_dir``.

    Returns the path of the checkpoint; an existing file is returned without any network access
    unless ``overwrite``. ``on_progress(done_bytes, total_bytes_or_None)`` is called per chunk.
    """
    ckpt = _lookup(name)
    folder = Path(models_dir)
    target = folder / ckpt.filename
    if target.is_file() and not overwrite:
        return target
    url = checkpoint_url(name, endpoint=endpoint, revision=revision)
    manual = f"download {url} by hand and save it as {target}"
    if is_offline():
        raise DownloadError(f"offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE): {manual}.")
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        size, sha = _expected(url, token, timeout)
        digest = hashlib.sha256()
        done = 0
        with urllib.request.urlopen(_request(url, "GET", token), timeout=timeout) as response, \
                open(partial, "wb") as out:
            total = size or int(response.headers.get("Content-Length") or 0) or None
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        hint = (" The repository is gated: accept its licence on the model page and set HF_TOKEN."
                if exc.code in (401, 403) else "")
        raise DownloadError(f"the hub answered HTTP {exc.code} for {url}.{hint} Or {manual}.") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url} ({exc}); {manual}.") from exc
    if size is not None and done != size:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} is incomplete ({done} of {size} bytes); try again.")
    if sha is not None and digest.hexdigest() != sha:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} is corrupt (sha256 {digest.hexdigest()} instead of "
                            f"{sha}); try again.")
    os.replace(partial, target)
    return target
