"""fsutil: atomic writes leave the destination complete or untouched, no temp files, and
the mode a plain open() would give (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

import pytest

from dfer_cli.fsutil import atomic_path, atomic_write_bytes, atomic_write_text, default_file_mode


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_final_file_gets_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    assert default_file_mode() == expected
    p = atomic_write_text(tmp_path / "config.json", "{}\n")
    assert mode(p) == expected and p.read_text() == "{}\n"
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert mode(plain) == mode(p)  # same as a file written the ordinary way


def test_replaces_atomically_and_cleans_up_on_failure(tmp_path, umask):
    p = tmp_path / "state.pt"
    atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            assert tmp.parent == p.parent and tmp.name.startswith(".state.pt.") and tmp.suffix == ".pt"
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert p.read_bytes() == b"old"
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["state.pt"]
