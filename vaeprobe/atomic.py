"""Atomic writes: a file is written to a temporary name beside its target and renamed, so a
reader never sees half a file; temporaries left by a killed writer are recognised and
removed by the next write to the same directory. Also the file digest every provenance
uses. Re-exported by :mod:`vaeprobe.io`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

# Temporary files are named ``.<target>.<host>-<pid>-<random><suffix>`` beside their target, so
# that one left by a killed writer (SIGKILL skips every cleanup) can be told apart and removed by
# the next write to the same directory: only names of this shape, and only when the writing
# process is gone (same host) or the file is older than STALE_AFTER_S.
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z_]{8}\.[a-z0-9.]*tmp$")
_LEGACY_TEMP_NAME = re.compile(r"^\..+\.[0-9a-z_]{8}\.(nc|pt|png)\.tmp$")  # mkstemp's names
STALE_AFTER_S = 3600.0


def host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove temporary files that killed writers left in ``directory``; return them.

    Only vaeprobe's own temporary names are touched (``.<target>.<host>-<pid>-<random>.*tmp``,
    and the older ``.<target>.<random>.nc.tmp`` / ``.pt.tmp`` / ``.png.tmp``), and only when
    the process that wrote one is gone (same host) or the file is older than an hour.
    """
    directory, now = Path(directory), time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    host = host_tag()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match and not _LEGACY_TEMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            orphan = bool(match) and match["host"] == host and not pid_alive(int(match["pid"]))
            if old or orphan:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # raced with its owner or another cleaner: leave it
            continue
    return removed


def _create_temporary(directory: Path, name: str, suffix: str) -> Path:
    """Create an empty temporary file with the user's umask (mkstemp would make it 0600)."""
    stem = f".{name}.{host_tag()}-{os.getpid()}-"
    for _ in range(100):
        candidate = directory / (stem + secrets.token_hex(4) + suffix)
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


class OutputError(OSError):
    """A result, figure or checkpoint cannot be written where it was asked to go."""


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before any work that ``path`` can be written (its directory made if missing).

    Creates and removes a probe file in the nearest existing directory, so read-only mounts,
    permissions and a file standing where a directory should be are all caught.
    Raises :class:`OutputError` naming the path and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory; name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a directory; "
                          f"choose another path")
    try:
        probe = _create_temporary(parent, "write-check", ".tmp")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {parent} is not writable "
                          f"({error.strerror or error}); choose another path") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The file gets the user's umask (like ``open``). Stale temporaries of killed writers in the
    same directory are removed first (:func:`clean_stale_temporaries`). A failure to create,
    write or rename is an :class:`OutputError` naming ``path``, not the hidden temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        tmp = _create_temporary(path.parent, path.name, suffix)
    except OSError as error:
        raise OutputError(f"could not write {path}: {error.strerror or error} "
                          f"(directory {path.parent})") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"could not write {path}: {error.strerror or error}") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def disk_error(error: BaseException) -> bool:
    """Whether a library's error text says the disk is full or the write failed."""
    text = str(error).lower()
    return any(words in text for words in ("no space", "disk full", "quota", "errno = 28",
                                           "failed writing", "can't write", "unable to write",
                                           "write failed"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's sha256, cached against its size and mtime (:mod:`vaeprobe.digests`)."""
    from vaeprobe.digests import file_sha256

    return file_sha256(path)
