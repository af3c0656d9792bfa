"""vaeprobe.digests: a file's sha256 is cached against its identity and recomputed when the
file changes."""

import hashlib
import os

import pytest

from vaeprobe import digests
from vaeprobe.io import sha256_file


def test_cached_sha256_is_the_sha256_and_follows_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "_MEMORY", {})
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == expected
    assert list((tmp_path / "cache" / "sha256").glob("*.json"))  # remembered on disk

    def no_hash(*args, **kwargs):
        raise AssertionError("hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(digests, "_hash", no_hash)
        assert sha256_file(path) == expected  # from memory
        patch.setattr(digests, "_MEMORY", {})
        assert sha256_file(path) == expected  # from disk (a new process)
    path.write_bytes(b"other!!" * 1000)  # same size, new content and mtime
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() != expected


def test_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("VAEPROBE_CACHE", str(blocker))
    monkeypatch.setattr(digests, "_MEMORY", {})
    path = tmp_path / "m.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing.bin")
