"""Running the code blocks of the README and of the site's Markdown pages (docs/**/*.md).

A page's ``python`` blocks run in order in one namespace (a tutorial builds on its earlier
blocks), shrunk to the test suite's sizes by ``SMALLER``. A block that starts with
``# needs:`` (pretrained weights, a model hub download, results of a long run) is skipped, and
says so on the page. A block that reads ``../shared/realworld`` reads it where it is; where it
is absent that block and the page's later ones are skipped, saying why. ``bash`` blocks are
checked, not run: each ``vaeprobe``, ``python -m trainers.train`` and ``python -m analyses.*``
command must parse with the real argument parser (a renamed flag fails here).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALLER = {"k=1000": "k=4", "n_images=200": "n_images=8", "n_images=10000": "n_images=32",
           "vp.samples(probe, 64,": "vp.samples(probe, 8,", "n_images=500": "n_images=50",
           "k=100, n_images=100": "k=8, n_images=16", "n_images=24": "n_images=4"}


def blocks(path: Path, language: str = "python") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def prepare(code: str, realworld: Path | None) -> str:
    """The block as the test suite runs it: fixtures by absolute path, smaller counts."""
    code = code.replace('"tests/fixtures/', f'"{ROOT / "tests" / "fixtures"}/')
    if realworld is not None:
        code = code.replace("../shared/realworld", str(realworld))
    for large, small in SMALLER.items():
        code = code.replace(large, small)
    return code


def run(code: str, namespace: dict, name: str) -> None:
    """exec one block; what it registered (datasets, objectives) is removed again."""
    from trainers.objectives import objectives
    from vaeprobe import data

    registered = set(data.datasets.names()), set(objectives.names())
    try:
        exec(compile(code, name, "exec"), namespace)  # noqa: S102
    finally:
        for entry in set(data.datasets.names()) - registered[0]:
            data.datasets._entries.pop(entry)
        for entry in set(objectives.names()) - registered[1]:
            objectives._entries.pop(entry)


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    joined = re.sub(r"\[[^\]\n]*\]", "", joined)  # a synopsis' optional parts: [--out DIR]
    found = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            found.append(shlex.split(line))
    return found


def _parser_for(words: list[str]):
    """(parse function, argv) for a command this project defines, else None."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # OMP_NUM_THREADS=1 ...
        words = words[1:]
    if words[:1] == ["torchrun"]:
        words = words[words.index("-m"):] if "-m" in words else []
        words = ["python", *words]
    if words[:1] in (["vaeprobe"], [".venv/bin/vaeprobe"]):
        from vaeprobe.cli import build_parser

        return build_parser().parse_args, words[1:]
    if len(words) >= 3 and words[0].endswith("python") and words[1] == "-m":
        module = words[2]
        if module == "trainers.train":
            from trainers.config import parser

            return parser().parse_args, words[3:]
        if module == "vaeprobe.cli":
            from vaeprobe.cli import build_parser

            return build_parser().parse_args, words[3:]
        if module.startswith(("analyses.", "benchmarks.")):
            parse = getattr(importlib.import_module(module), "parse_args", None)
            return (parse, words[3:]) if parse else None
    return None


def check_command(words: list[str]) -> str | None:
    """None when the command parses (or is not ours to check), else the parser's complaint."""
    if "..." in words:  # an elided example ("torchrun ... -m trainers.train ...")
        return None
    found = _parser_for(words)
    if found is None:
        return None
    parse, argv = found
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            return f"{shlex.join(words)}: {stderr.getvalue().strip().splitlines()[-1]}"
    except argparse.ArgumentError as error:
        return f"{shlex.join(words)}: {error}"
    return None
