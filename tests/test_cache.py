"""vaeprobe.cache: one cache directory for the whole library, read from the environment at
call time, in a leaf module (it imports nothing of vaeprobe)."""

import ast
from pathlib import Path

from vaeprobe import _patches, data, digests
from vaeprobe.cache import cache_dir


def test_the_environment_decides_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VAEPROBE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "vaeprobe"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vaeprobe"
    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"  # no "vaeprobe" appended: the folder as named
    monkeypatch.setenv("VAEPROBE_CACHE", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "vaeprobe"


def test_digests_and_the_datasets_use_the_same_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path))
    assert digests._entry("/some/model.safetensors").parent == tmp_path / "sha256"
    assert data.cache_dir is cache_dir and _patches.cache_dir is cache_dir
    assert not hasattr(digests, "_cache_dir")  # the copy is gone


def test_the_module_is_a_leaf():
    tree = ast.parse(Path(cache_dir.__code__.co_filename).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "vaeprobe" for name in imported), imported
