"""Atomic file and directory writes: a reader sees the old content or the new, never half of it.

Every writer here follows one recipe: write a temporary sibling (same directory, so the
rename stays on one file system), flush and fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a power cut.  A failure before the
rename removes the temporary and leaves the target untouched.  Leaf module: stdlib only.

- `atomic_write_bytes`, `atomic_write_text`: the whole content at once.
- `atomic_open`: a file object to stream into (``json.dump``, one line at a time).
- `atomic_path`: a temporary path for writers that open the file themselves
  (``safetensors.save_file``, ``torch.save``).
- `atomic_dir`: a temporary directory swapped in for a whole directory (the previous one is
  renamed aside first, so a crash between the two renames leaves it readable under ``old``).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_DEFAULT_MODE = 0o666  # what open() asks for; the umask applies as usual


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and creations in directory `path` durable; skipped where the platform refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory (EINVAL)
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _create_temp(path: Path, mode: int | None) -> Path:
    """A new, empty, exclusively created sibling of `path` with permissions `mode` (umask applies if None)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _DEFAULT_MODE if mode is None else mode)
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        finally:
            os.close(fd)
        return tmp


@contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is fsynced and renamed over `path`.

    The temporary exists (empty) when yielded, created with permissions `mode` (default: what
    ``open`` would give, after the umask), which a writer that truncates it keeps.  On an
    exception it is removed and `path` is left as it was.
    """
    target = Path(path)
    tmp = _create_temp(target, mode)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextmanager
def atomic_open(
    path: str | os.PathLike, *, binary: bool = False, encoding: str = "utf-8", mode: int | None = None
) -> Iterator[IO]:
    """Yield a file open for writing (text in `encoding`, or `binary`) whose content replaces `path`
    on a clean exit; permissions `mode` as in `atomic_path`."""
    kind, enc = ("wb", None) if binary else ("w", encoding)
    with atomic_path(path, mode=mode) as tmp, open(tmp, kind, encoding=enc) as f:
        yield f  # closing it flushes; atomic_path then fsyncs it and renames


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Replace `path` with `data` atomically (permissions `mode`, default as ``open``); returns the path."""
    with atomic_open(path, binary=True, mode=mode) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int | None = None) -> Path:
    """Replace `path` with `text` atomically (permissions `mode`, default as ``open``); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(Path(dirpath, name))
        fsync_dir(dirpath)


@contextmanager
def atomic_dir(
    path: str | os.PathLike, *, tmp: str | os.PathLike | None = None, old: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Yield a fresh temporary directory; on a clean exit it replaces directory `path` whole.

    `tmp` (default ``PATH.tmp``) is emptied first, so a crashed earlier write is cleared.  On
    a clean exit every file in it is fsynced, an existing `path` is renamed to `old` (default
    ``PATH.old``), `tmp` is renamed to `path`, and `old` is removed: a crash between the two
    renames leaves the previous directory complete under `old`.  On an exception `tmp` is
    removed and `path` is left as it was (put back from `old` if the second rename failed).
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp") if tmp is None else Path(tmp)
    old = target.with_name(target.name + ".old") if old is None else Path(old)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    aside = False
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            aside = True
        os.replace(tmp, target)
    except BaseException:
        if aside and not target.exists():
            os.replace(old, target)  # the second rename failed: put the previous directory back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["atomic_dir", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]
