"""``birefnet_core.atomic``: a file appears under its name only once complete."""

from __future__ import annotations

import os
import sys

import pytest

from birefnet_core import atomic
from birefnet_core.atomic import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_write(target) as f:
                f.write(b"half of the new")
                raise error
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_killed_writer_leaves_a_hidden_part_file_that_no_reader_takes_for_an_output(tmp_path):
    from birefnet_core.batch import expand_inputs
    from birefnet_core.weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES

    (tmp_path / "frame.png").write_bytes(b"an input")
    leftover = atomic._open_temporary(tmp_path / "frame_out.png")  # as a SIGKILL leaves it
    leftover.close()
    name = os.path.basename(leftover.name)
    assert name.startswith(".frame_out.png.") and name.endswith(".part"), name
    assert not name.endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["frame.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_finished_file_gets_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.png") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644
