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


# --- path_problem: why an input cannot be read, before any work --------------------------

def test_path_problem_names_each_kind_of_bad_path(tmp_path):
    from dfer_cli.fsutil import path_problem

    good = tmp_path / "good.mp4"
    good.write_bytes(b"x")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "link.mp4").symlink_to(good)
    os.mkfifo(tmp_path / "fifo.mp4")
    (tmp_path / "dir.mp4").mkdir()
    expected = {
        "good.mp4": None,
        "link.mp4": None,  # a symlink to a good file is a good file
        "missing.mp4": "no such file or directory",
        "dangling.mp4": f"broken symbolic link: its target {tmp_path / 'gone.mp4'} does not exist",
        "loop.mp4": "symlink loop",
        "fifo.mp4": "a FIFO (named pipe), not a regular file",
        "empty.mp4": "file is empty (0 bytes)",
        "dir.mp4": "is a directory",
        "good.mp4/x.mp4": "a part of the path is a file",
        "nul\0.mp4": "NUL byte",
    }
    for name, needle in expected.items():
        got = path_problem(tmp_path / name if "\0" not in name else str(tmp_path) + "/" + name)
        if needle is None:
            assert got is None, name
        else:
            assert got is not None and needle in got and "\n" not in got, (name, got)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_path_problem_unreadable(tmp_path):
    from dfer_cli.fsutil import path_problem

    p = tmp_path / "secret.mp4"
    p.write_bytes(b"x")
    p.chmod(0)
    try:
        assert "permission denied" in path_problem(p)
    finally:
        p.chmod(0o644)


# --- PartialFile: --output gets its name only when complete -------------------------------

def test_partial_file_commit_and_abandon(tmp_path, umask):
    from dfer_cli.fsutil import PartialFile

    out = tmp_path / "out.json"
    out.write_text("previous complete result\n")
    f = PartialFile(out)
    f.file.write("[\n")
    assert out.read_text() == "previous complete result\n"  # untouched while running
    assert f.abandon() == tmp_path / "out.json.partial"
    assert out.read_text() == "previous complete result\n"  # an interrupted run leaves it alone
    assert (tmp_path / "out.json.partial").read_text() == "[\n"

    f = PartialFile(out)  # a new run starts over the stale partial file
    f.file.write("[]\n")
    assert f.commit() == out
    assert out.read_text() == "[]\n" and sorted(os.listdir(tmp_path)) == ["out.json"]
    assert mode(out) == 0o644


def test_partial_file_follows_a_symlink_and_writes_devices_directly(tmp_path):
    from dfer_cli.fsutil import PartialFile

    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    f = PartialFile(link)
    f.file.write("new\n")
    f.commit()
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["link.jsonl", "real.jsonl"]

    f = PartialFile(os.devnull)  # /dev/null, like /dev/stdout or a FIFO: no rename possible
    assert f.partial is None
    f.file.write("x")
    f.commit()
    assert not os.path.exists(os.devnull + ".partial")
