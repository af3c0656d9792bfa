"""The README's Python blocks, and those of the user guide it links to (docs/guide/*.md, its
reference text moved there), run as written on the tiny run fixture: ``runs/demo`` is the tiny
run (tiny-8 on digits8), so ``patches32`` reads ``digits8`` (the run's image shape) and the
large counts shrink (``doc_blocks.SMALLER``). Blocks on ``../shared/realworld`` read it where it
is (skipped, saying why, without it). Blocks that start with ``# needs:`` (pretrained weights,
third-party files elsewhere) are skipped, and say so on the page. Each block runs alone."""

from pathlib import Path

import doc_blocks
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def python_blocks() -> list[tuple[Path, int, str]]:
    return [(page, index, block) for page in PAGES
            for index, block in enumerate(doc_blocks.blocks(page), start=1)]


def test_the_readme_has_runnable_and_skipped_blocks():
    blocks = [block for _, _, block in python_blocks()]
    runnable = [b for b in blocks if not b.startswith("# needs:")]
    assert len(runnable) >= 3 and len(blocks) > len(runnable)
    assert any('vp.rate("runs/demo", "mine:test")' in b for b in runnable)
    assert doc_blocks.blocks(README), "the README keeps its short example"


@pytest.mark.parametrize("page, index, block", python_blocks(),
                         ids=[f"{page.relative_to(ROOT)}-{index}"
                              for page, index, _ in python_blocks()])
def test_readme_block_runs(page, index, block, tiny_run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    if block.startswith("# needs:"):
        pytest.skip(block.splitlines()[0])
    code = block.replace('"runs/demo"', repr(str(tiny_run))).replace("patches32", "digits8")
    realworld_dir = None
    if "../shared/realworld" in code:
        import realworld

        realworld_dir = realworld.path()
    monkeypatch.chdir(tmp_path)  # files the block writes (spectra.nc)
    doc_blocks.run(doc_blocks.prepare(code, realworld_dir), {},
                   f"{page.relative_to(ROOT)} python block {index}")
