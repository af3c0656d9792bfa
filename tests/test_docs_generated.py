"""The reference pages the docs extension generates (docs/_ext/vaeprobe_docs.py), without a
Sphinx build: every public name gets its page, and a format or an audit section registered in
the library gets its entry with no edit to the docs."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra (pip install -e '.[docs]') is absent")
EXTENSION = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "vaeprobe_docs.py"


@pytest.fixture(scope="module")
def docs_ext():
    spec = importlib.util.spec_from_file_location("vaeprobe_docs_under_test", EXTENSION)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_public_name_has_a_page(docs_ext, tmp_path):
    import vaeprobe

    docs_ext.api_pages(tmp_path)
    pages = {path.stem for path in (tmp_path / "api").glob("*.rst")}
    expected = {f"vaeprobe.{name}" for name in vaeprobe.__all__}
    expected |= {f"vaeprobe.plot.{name}" for name in vaeprobe.plot.__all__}
    expected |= {f"vaeprobe.data.{name}" for name in vaeprobe.data.__all__}
    assert expected <= pages, sorted(expected - pages)
    index = (tmp_path / "api_index.rst").read_text()
    assert ":py:obj:`vp.audit <vaeprobe.audit>`" in index
    assert ".. autofunction:: vaeprobe.iwae" in (tmp_path / "api" / "vaeprobe.iwae.rst").read_text()


def test_cli_page_has_a_section_per_command(docs_ext, tmp_path):
    from vaeprobe.cli import build_parser

    docs_ext.cli_page(tmp_path)
    text = (tmp_path / "cli.rst").read_text()
    commands = next(action for action in build_parser()._actions
                    if action.__class__.__name__ == "_SubParsersAction").choices
    for name in commands:
        assert f".. _cli-{name}:" in text and f"``vaeprobe {name}``" in text
    assert "``--gamma GAMMA``" in text  # the trainer's flags


def test_training_page_follows_the_config(docs_ext, tmp_path):
    import dataclasses

    from trainers.config import PRESETS, TrainConfig

    docs_ext.training_page(tmp_path)
    text = (tmp_path / "training.rst").read_text()
    for item in dataclasses.fields(TrainConfig):
        assert f"``--{item.name.replace('_', '-')}``" in text
    for name in PRESETS:
        assert f"``{name}``" in text


def test_a_registered_format_gets_its_section(docs_ext, tmp_path):
    from vaeprobe.adapters import Format, formats

    docs_ext.formats_page(tmp_path)
    before = (tmp_path / "formats.rst").read_text()
    for name in formats.names():
        assert f".. _format-{name}:" in before
    assert "docs-test-format" not in before
    formats.register("docs-test-format", Format(opener="vaeprobe.adapters.module:from_module",
                                                sniff=lambda path: False,
                                                files="files of a test-only format"))
    try:
        docs_ext.formats_page(tmp_path)
    finally:
        formats._entries.pop("docs-test-format")
    after = (tmp_path / "formats.rst").read_text()
    assert ".. _format-docs-test-format:" in after and "files of a test-only format" in after
    assert "``encoder_output``" in after  # the opener's options, from its signature


def _test_section_compute(probe, data, *, n_images, seed, progress):
    raise NotImplementedError


def test_a_registered_section_gets_its_entry(docs_ext, tmp_path, monkeypatch):
    from vaeprobe.audit import registry

    monkeypatch.setattr(docs_ext, "_section_variables", lambda: {})  # no tiny audit here
    section = registry.Section(name="docs_test_section", title="A test-only section", order=999,
                               summary=lambda ds: "", compute=_test_section_compute,
                               options={"threshold": 0.5}, default=False)
    registry.register(section)
    try:
        docs_ext.sections_page(tmp_path)
    finally:
        registry._REGISTRY.pop("docs_test_section")
    text = (tmp_path / "sections.rst").read_text()
    for name in registry.sections():
        assert f".. _section-{name}:" in text
    assert ".. _section-docs_test_section:" in text and "A test-only section" in text
    assert "{'threshold': 0.5}" in text and "opt-in" in text
    assert "reference pages the docs extension generates" in text  # its module's docstring
