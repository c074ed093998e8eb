"""Atomic writes: readers see the old file (or folder) or the new one, never half of one.

Every file tinysora writes (configs, safetensors, videos, reports, checkpoints) goes
through :func:`atomic_file` or :func:`atomic_dir`: the content is written under a
temporary name in the same folder, flushed to disk, then renamed onto the target in
one ``os.replace``. A failure or a ``kill -9`` leaves at most a ``.NAME.*.tmp`` next
to the target, which nothing reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written as a new file or folder (None when it can): the
    check to run before long work that ends in a write."""
    target = Path(path)
    if target.is_dir():
        return f"'{target}' is a folder"
    for folder in target.absolute().parents:  # the first existing one is where it lands
        if folder.exists():
            if not folder.is_dir():
                return f"'{folder}' is a file, not a folder"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"folder '{folder}' is not writable"
            return None
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block succeeds it is
    fsynced and renamed onto ``path`` (usual file mode), when it fails it is removed."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``directory``; when the block succeeds it
    replaces ``directory`` (an old one is moved aside, then deleted), when it fails it is
    removed."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
