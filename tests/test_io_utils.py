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


def test_a_full_disk_names_the_file_not_the_temporary(tmp_path):
    import errno

    from lesiondiff.io_utils import atomic_write

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a failed write() raises: no file name

    target = tmp_path / "a.npz"
    with pytest.raises(OSError) as caught:
        atomic_write(target, full)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []


def test_the_cli_says_which_file_did_not_fit(tmp_path, capsys, monkeypatch):
    import errno

    from PIL import Image

    from lesiondiff.cli import main

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "synth"
    assert main(["data", "synth", "--n", "1", "--size", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}/") and err.endswith(f"phantom_0000.png: {os.strerror(errno.EDQUOT)}\n")
    assert ".tmp" not in err and err.count("\n") == 1


@pytest.mark.parametrize("read_only, reason", [(True, "read-only file system"), (False, "permission denied")])
@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_file_system_is_not_called_permission_denied(tmp_path, capsys, monkeypatch, read_only,
                                                                 reason, existing):
    from types import SimpleNamespace

    from lesiondiff.cli import main

    out = tmp_path / "out" if existing else tmp_path / "new" / "out"
    if existing:
        out.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY if read_only else 0))
    assert main(["data", "synth", "--n", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: cannot write in ") and err.endswith(f"({reason})\n")
