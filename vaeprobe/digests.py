"""sha256 of files, cached against the file's identity so that a model is hashed once.

Provenance records a sha256 per model file (``checkpoint_sha256``), and a resumed audit checks
it against what is on disk; hashing a 300 MB model costs about a second each time. So the
digest is cached, in memory and on disk under ``<cache>/sha256/`` (``$VAEPROBE_CACHE``, else
``$XDG_CACHE_HOME/vaeprobe``, else ``~/.cache/vaeprobe``), keyed by the file's resolved path and
checked against its size, modification time (ns), inode and device: a file changed in any of
these is hashed again. A cache that cannot be written is skipped silently (the digest is still
right, only not remembered).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from vaeprobe.cache import cache_dir

_MEMORY: dict[str, tuple[tuple, str]] = {}


def _identity(path: Path) -> tuple:
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)


def _entry(resolved: str) -> Path:
    name = hashlib.sha256(resolved.encode()).hexdigest()[:32]
    return cache_dir() / "sha256" / f"{name}.json"


def _hash(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of the file at ``path``, from the cache when the file is unchanged."""
    path = Path(path).resolve()
    resolved, identity = str(path), _identity(path)
    remembered = _MEMORY.get(resolved)
    if remembered and remembered[0] == identity:
        return remembered[1]
    entry = _entry(resolved)
    try:
        stored = json.loads(entry.read_text())
        if stored.get("path") == resolved and tuple(stored.get("identity", ())) == identity:
            _MEMORY[resolved] = (identity, str(stored["sha256"]))
            return str(stored["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _hash(path)
    if _identity(path) == identity:  # unchanged while it was read: remember it
        _MEMORY[resolved] = (identity, digest)
        _store(entry, dict(path=resolved, identity=list(identity), sha256=digest))
    return digest


def _store(entry: Path, record: dict) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(record, out)
        os.replace(temporary, entry)
    except OSError:
        pass
