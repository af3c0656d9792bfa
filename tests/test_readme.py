"""The README's Python blocks run as written, on the tiny run fixture: ``runs/demo`` is the tiny
run (tiny-8 on digits8), so ``patches32`` reads ``digits8`` (the run's image shape) and the
large counts shrink (K, images). Blocks on ``../shared/realworld`` read it where it is (skipped,
saying why, without it). Blocks that start with ``# needs:`` (pretrained weights, third-party
files elsewhere) are skipped, and say so in the README."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SMALLER = {"k=1000": "k=4", "n_images=200": "n_images=8", "n_images=10000": "n_images=32",
           "vp.samples(probe, 64,": "vp.samples(probe, 8,", "n_images=500": "n_images=50",
           "k=100, n_images=100": "k=8, n_images=16"}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_runnable_and_skipped_blocks():
    blocks = python_blocks()
    runnable = [b for b in blocks if not b.startswith("# needs:")]
    assert len(runnable) >= 3 and len(blocks) > len(runnable)
    assert any('vp.rate("runs/demo", "mine:test")' in b for b in runnable)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index, tiny_run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    block = python_blocks()[index]
    if block.startswith("# needs:"):
        pytest.skip(block.splitlines()[0])
    code = block.replace('"runs/demo"', repr(str(tiny_run))).replace("patches32", "digits8")
    if "../shared/realworld" in code:
        import realworld

        code = code.replace("../shared/realworld", str(realworld.path()))
    for large, small in SMALLER.items():
        code = code.replace(large, small)
    monkeypatch.chdir(tmp_path)  # files the block writes (spectra.nc)
    from trainers.objectives import objectives
    from vaeprobe import data

    registered = set(data.datasets.names()), set(objectives.names())
    try:
        exec(compile(code, f"README.md python block {index + 1}", "exec"), {})  # noqa: S102
    finally:  # what a block registered is removed again
        for name in set(data.datasets.names()) - registered[0]:
            data.datasets._entries.pop(name)
        for name in set(objectives.names()) - registered[1]:
            objectives._entries.pop(name)
