"""Where inputs and outputs live: local paths, or any ``pyarrow.fs`` URI (``s3://``, ``gs://``,
``file://``, ``hdfs://``...; fsspec file systems through pyarrow's wrapper).

Writes are atomic everywhere: a local file through :func:`..atomic.atomic_write`; elsewhere
the data goes to a hidden ``.NAME.<random>.part`` object that is moved onto ``NAME`` when
complete (an object store then shows either the old object or the whole new one).
"""

from __future__ import annotations

import os
import posixpath
import secrets
from pathlib import Path

from ..atomic import TEMPORARY_SUFFIX, atomic_write
from .extras import require


def is_uri(text: str) -> bool:
    return "://" in str(text)


def filesystem_for(uri: str):
    """``(pyarrow file system, path)`` for a URI: pyarrow's own (``s3``, ``gs``, ``hdfs``,
    ``file``), else any fsspec protocol (``az://``, ``memory://`` ...) through pyarrow's
    fsspec handler."""
    pafs = require("pyarrow.fs", "ray", "an input or output given as a URI")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa_errors() + (ValueError,)):
        fsspec = require("fsspec", "ray", f"the URI {uri}")
        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def pa_errors() -> tuple:
    import pyarrow

    return (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError)


class Store:
    """A folder, local or behind a URI. ``path(rel)`` is the full path inside the file
    system; ``uri(rel)`` what to show the user."""

    def __init__(self, root: str | os.PathLike):
        self.root_text = str(root)
        if is_uri(self.root_text):
            import pyarrow.fs as pafs

            self.fs, path = filesystem_for(self.root_text)
            self.root = path.rstrip("/")
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
            if self.local:
                self.root = os.path.abspath(self.root)
        else:
            self.fs, self.root, self.local = None, os.path.abspath(self.root_text), True

    def path(self, rel: str = "") -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        if is_uri(self.root_text):
            return self.root_text.rstrip("/") + ("/" + rel if rel else "")
        return self.path(rel)

    def exists(self, rel: str) -> bool:
        if self.local:
            return os.path.exists(self.path(rel))
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            return Path(self.path(rel)).read_bytes()
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def open_input(self, rel: str):
        """A seekable binary file (for PyAV) or a local path string."""
        if self.local:
            return self.path(rel)
        return self.fs.open_input_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target) as f:
                f.write(data)
            return
        folder, name = posixpath.split(target)
        self.fs.create_dir(folder, recursive=True)
        tmp = posixpath.join(folder, f".{name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except Exception:  # noqa: BLE001 - it may never have been created
                pass
            raise

    def write_file(self, rel: str, local_file: str | os.PathLike) -> None:
        """Copy a finished local file to ``rel`` (atomically)."""
        if self.local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(local_file, "rb") as src, atomic_write(target) as f:
                while chunk := src.read(1 << 22):
                    f.write(chunk)
            return
        self.write_bytes(rel, Path(local_file).read_bytes())

    def list_files(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Relative paths of the files under ``rel`` (hidden names left out), sorted."""
        import pyarrow.fs as pafs

        fs = self.fs or pafs.LocalFileSystem()
        base = self.path(rel)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            sub = posixpath.relpath(info.path, self.root)
            if any(part.startswith(".") for part in sub.split("/")):
                continue
            out.append(sub)
        return sorted(out)

    def delete_dir(self, rel: str) -> None:
        if self.local:
            import shutil

            shutil.rmtree(self.path(rel), ignore_errors=True)
            return
        try:
            self.fs.delete_dir(self.path(rel))
        except OSError:
            pass
