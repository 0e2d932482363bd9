"""Atomic writes: the old file or the new one, never a partial one, with the user's normal permissions."""

import os
import stat

import pytest

from lesiondiff.io_utils import atomic_path, atomic_write_text


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask_not_the_temporary_files_0600(tmp_path, umask, mask, mode):
    umask(mask)
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the same as a file the user creates directly
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
