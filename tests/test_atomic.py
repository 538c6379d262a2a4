"""`splitfed.atomic`: whole content or none, no temporaries left, directory fsynced, permissions kept."""

from __future__ import annotations

import json
import os
import stat

import pytest

from splitfed import atomic
from splitfed.atomic import atomic_dir, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


class Boom(Exception):
    pass


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.fixture
def synced_dirs(monkeypatch):
    """The directories `fsync_dir` was asked to sync (the real call still runs)."""
    seen = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (seen.append(os.fspath(p)), real(p))[1])
    return seen


def test_write_bytes_and_text_replace_the_content_and_leave_only_the_file(tmp_path, synced_dirs):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    assert atomic_write_bytes(p, b"\x00new") == p
    assert p.read_bytes() == b"\x00new"
    atomic_write_text(tmp_path / "t.txt", "h\u00e9")
    assert (tmp_path / "t.txt").read_bytes() == "h\u00e9".encode()
    atomic_write_text(tmp_path / "l.txt", "h\u00e9", encoding="latin-1")
    assert (tmp_path / "l.txt").read_bytes() == b"h\xe9"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["f.bin", "l.txt", "t.txt"]
    assert synced_dirs == [os.fspath(tmp_path)] * 3


def test_a_failure_mid_write_keeps_the_old_content_and_no_temporary(tmp_path):
    p = tmp_path / "settings.json"
    p.write_text("old")
    with pytest.raises(Boom), atomic_open(p) as f:
        f.write("half")
        raise Boom
    with pytest.raises(Boom), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise Boom
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["settings.json"]


def test_atomic_open_streams_text_and_binary(tmp_path):
    with atomic_open(tmp_path / "a.json") as f:
        json.dump({"x": 1}, f)
    with atomic_open(tmp_path / "b.bin", binary=True) as f:
        f.write(b"\x01\x02")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert (tmp_path / "b.bin").read_bytes() == b"\x01\x02"


def test_atomic_path_hands_a_sibling_to_writers_that_open_the_file_themselves(tmp_path):
    target = tmp_path / "update.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and tmp != target
        tmp.write_bytes(b"tensors")
    assert target.read_bytes() == b"tensors" and not tmp.exists()


def test_permissions_follow_the_umask_by_default_and_mode_exactly_when_given(tmp_path):
    atomic_write_text(tmp_path / "public", "x")
    assert _mode(tmp_path / "public") == 0o666 & ~_umask()
    atomic_write_text(tmp_path / "secret", "x", mode=0o600)
    assert _mode(tmp_path / "secret") == 0o600
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "shared", "x", mode=0o644)  # not narrowed by the umask
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared") == 0o644
    with atomic_path(tmp_path / "secret2", mode=0o600) as tmp, open(tmp, "wb") as f:  # truncating keeps the mode
        f.write(b"k")
    assert _mode(tmp_path / "secret2") == 0o600


def test_directory_fsync_is_skipped_where_the_platform_refuses_it(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(atomic.os, "fsync", refuse)
    atomic.fsync_dir(tmp_path)  # no error
    atomic.fsync_dir(tmp_path / "missing")  # cannot even be opened: no error either


def test_atomic_dir_swaps_a_whole_directory(tmp_path, synced_dirs):
    out = tmp_path / "index"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    with atomic_dir(out) as d:
        (d / "b").write_text("2")
    assert [f.name for f in out.iterdir()] == ["b"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["index"]  # no .tmp, no .old
    assert os.fspath(tmp_path) in synced_dirs


def test_atomic_dir_failure_keeps_the_previous_directory(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(Boom), atomic_dir(out) as d:
        (d / "b").write_text("half")
        raise Boom
    assert [f.name for f in out.iterdir()] == ["a"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["index"]


def test_atomic_dir_puts_the_previous_directory_back_if_the_second_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", second_fails)
    with pytest.raises(OSError, match="disk gone"), atomic_dir(out) as d:
        (d / "b").write_text("2")
    assert [f.name for f in out.iterdir()] == ["a"]


def test_atomic_dir_clears_a_stale_temporary_and_uses_the_names_given(tmp_path):
    out, tmp, old = tmp_path / "adapter", tmp_path / "adapter.tmp-7", tmp_path / "adapter.old-7"
    tmp.mkdir()
    (tmp / "stale").write_text("x")
    with atomic_dir(out, tmp=tmp, old=old) as d:
        assert d == tmp and not any(d.iterdir())
        (d / "new").write_text("y")
    assert [f.name for f in out.iterdir()] == ["new"] and not tmp.exists() and not old.exists()
