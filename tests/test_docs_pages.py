"""The site's Markdown pages run as written: the tutorials' python blocks, in order in one
namespace per page, on the test fixtures and ``../shared/realworld`` (see tests/doc_blocks.py;
the guide's blocks run alone in tests/test_readme.py), and every page's bash commands (the
README's too) parsed by the real argument parsers."""

from pathlib import Path

import doc_blocks
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts)
TUTORIALS = [page for page in PAGES if page.parent.name == "tutorials"]


def test_the_tutorials_are_found_and_have_code():
    names = {page.stem for page in TUTORIALS}
    assert {"bits", "stable_diffusion", "own_model", "reproduce", "gpu"} <= names
    assert all(doc_blocks.blocks(page) or doc_blocks.blocks(page, "bash") for page in TUTORIALS)


@pytest.mark.parametrize("page", [*PAGES, DOCS.parent / "README.md"],
                         ids=lambda page: str(page.relative_to(DOCS.parent)))
def test_page_commands_parse(page):
    problems = [problem for block in doc_blocks.blocks(page, "bash")
                for words in doc_blocks.commands(block)
                if (problem := doc_blocks.check_command(words))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", [page for page in TUTORIALS if doc_blocks.blocks(page)],
                         ids=lambda page: str(page.relative_to(DOCS)))
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import realworld

    monkeypatch.chdir(tmp_path)  # files a block writes
    namespace, skipped = {}, []
    for index, block in enumerate(doc_blocks.blocks(page), start=1):
        name = f"{page.relative_to(DOCS)} python block {index}"
        if block.startswith("# needs:"):
            skipped.append(f"{name}: {block.splitlines()[0]}")
            continue
        if "../shared/realworld" in block and not realworld.REALWORLD.exists():
            pytest.skip(f"{name} and later: {realworld.REALWORLD} is absent; ran "
                        f"{index - 1 - len(skipped)} block(s) before it")
        doc_blocks.run(doc_blocks.prepare(block, realworld.REALWORLD), namespace, name)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_command_check_can_fail():
    bad = doc_blocks.commands("OMP_NUM_THREADS=1 vaeprobe rate runs/demo --data digits8 \\\n"
                              "    --no-such-flag 3\npython -m trainers.train --gama 4\n")
    problems = [doc_blocks.check_command(words) for words in bad]
    assert all(problems) and "--no-such-flag" in problems[0] and "--gama" in problems[1]
    assert doc_blocks.check_command(["make", "docs"]) is None  # not ours to check
