"""Write a file so that it exists under its final name only once it is complete.

Every file the pack writes (CLI outputs, downloaded checkpoints) goes through
:func:`atomic_write`: the data goes to a hidden temporary file in the same folder
(``.NAME.<random>.part``), is flushed to disk, and replaces ``NAME`` in one ``os.replace``. An
interrupted or failed write removes its temporary file; a killed process can leave one behind,
but never a file that looks finished (hidden, and ``.part`` is no image or checkpoint suffix).

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_write(target) as f:
...     _ = f.write(b"done")
>>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
(b'done', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "check_writable", "TEMPORARY_SUFFIX"]

TEMPORARY_SUFFIX = ".part"


def _open_temporary(path: Path) -> BinaryIO:
    """A new, exclusively created hidden file beside ``path`` (mode from the umask, unlike
    ``tempfile.mkstemp``'s 0600, so the finished file gets the usual permissions)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            return open(tmp, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that becomes ``path`` when the ``with`` block completes.

    ``f.name`` is the temporary file's path (to validate the data before it is committed).
    Raising in the block, ``KeyboardInterrupt`` included, removes the temporary file and leaves
    any existing ``path`` as it was.
    """
    path = Path(path)
    f = _open_temporary(path)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """Raise ``OSError`` unless a file can be created in ``folder`` (tried, not guessed from
    permission bits: ACLs, read-only mounts and root all make those misleading)."""
    f = _open_temporary(Path(folder) / "write-test")
    f.close()
    os.unlink(f.name)
