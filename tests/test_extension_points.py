"""Each extension point is one registry with its glue generated: a toy checkpoint format, a toy
audit section and a toy CLI noun are each written as one file (here: one module written to a
temporary folder, or one function in this test) plus one registration, and every listing
(format sniffing, ``--format`` choices, the CHECKPOINT help, the error that lists the known
formats, the docs' description, the audit's sections and report, the CLI) picks them up with
no other edit."""

import importlib
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from linear_gaussian import LinearGaussianProbe, images

import vaeprobe as vp
from vaeprobe.adapters import FormatError, formats, sniff_format
from vaeprobe.adapters.format_registry import checkpoint_help, describe

TOY_FORMAT = '''
"""A toy checkpoint format: a *.toyvae text file holding the scales of a linear Gaussian VAE."""
from pathlib import Path

from linear_gaussian import LinearGaussianProbe

from vaeprobe.adapters.format_registry import Format, formats


def sniff(path):
    return Path(path).suffix == ".toyvae"


def open_toy(path, *, device=None, sigma=0.05):
    scales = tuple(float(v) for v in Path(path).read_text().split())
    return LinearGaussianProbe(scales=scales, sigma=sigma)


formats.register("toy", Format("toy_format:open_toy", sniff, "a *.toyvae file of scales"))
'''


@pytest.fixture
def toy_format(tmp_path, monkeypatch):
    (tmp_path / "toy_format.py").write_text(textwrap.dedent(TOY_FORMAT))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_format")
    yield tmp_path
    formats._entries.pop("toy", None)
    sys.modules.pop("toy_format", None)


def test_a_new_format_is_one_file(toy_format):
    path = toy_format / "model.toyvae"
    path.write_text("0.3 0.1")
    assert sniff_format(path) == "toy"
    probe = vp.load(path, sigma=0.1)
    assert probe.source["format"] == "toy" and probe.sigma == 0.1
    assert float(vp.rate(probe, images(8), progress=False)["total_rate"]) > 0
    # the listings are generated from the registry
    assert "toy: a *.toyvae file of scales" in checkpoint_help()
    with pytest.raises(FormatError, match=r"'toy': a \*.toyvae file of scales"):
        vp.load(path, format="no-such-format")
    toy = next(entry for entry in describe() if entry["name"] == "toy")
    assert toy["options"] == {"sigma": "0.05"} and toy["required"] == []
    from vaeprobe.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["rate"].format_help()
    assert "toy" in help_text and "a *.toyvae file of scales" in " ".join(help_text.split())


def test_a_foreign_pt_file_is_not_claimed_by_the_fallback_format(tmp_path):
    """'vaeprobe' is whatever no other format claims: a .pt file in a pythae folder is pythae's,
    a lone .pt file is vaeprobe's (no exclusion list names the other formats)."""
    (tmp_path / "model_config.json").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"")
    assert sniff_format(tmp_path / "model.pt") == "pythae"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "weights.pt").write_bytes(b"")
    assert sniff_format(lone / "weights.pt") == "vaeprobe"
    assert formats.get("vaeprobe").fallback and not formats.get("pythae").fallback


def _toy_section(probe, data, *, n_images, seed, progress):
    """Mean pixel value of the audit's images: a section computed by its own work."""
    from vaeprobe.data import as_dataset

    dataset = as_dataset(data)
    pixels = np.stack([np.asarray(dataset[i]) for i in range(min(n_images, len(dataset)))])
    ds = xr.Dataset({"mean_pixel": ((), float(pixels.mean()))})
    ds.attrs.update(section="toy", status="ok")
    return ds


def test_a_new_audit_section_is_one_file_plus_registration(tmp_path):
    from vaeprobe.audit import registry

    section = registry.Section(name="toy", title="Toy pixels", order=95,
                               summary=lambda ds: f"mean pixel {float(ds['mean_pixel']):.1f}",
                               compute=_toy_section, default=False)
    registry.register(section)
    try:
        data = images(8)
        report = vp.audit(LinearGaussianProbe(), data, sections=["toy"], n_images=8,
                          progress=False)
        assert list(report) == ["toy"]
        assert float(report["toy"]["mean_pixel"]) == pytest.approx(float(data.double().mean()))
        assert "toy" in registry.titles() and registry.titles()["toy"].endswith("Toy pixels")
        from vaeprobe.cli import build_parser

        audit_help = build_parser()._subparsers._group_actions[0].choices["audit"].format_help()
        assert "toy" in audit_help  # --sections lists the registry
    finally:
        registry._REGISTRY.pop("toy")


def _toy_noun(probe, data, *, n_images: int = 4, seed: int = 0, batch_size: int = 2,
              scale: float = 1.0):
    """The number of images asked for, times ``scale``: a noun whose flags are checked."""
    return xr.Dataset({"value": ((), n_images * scale)},
                      attrs={"seed": seed, "batch_size": batch_size,
                             "vaeprobe_version": vp.__version__})


def test_a_new_noun_is_one_function_plus_one_table_row(tmp_path, capsys, monkeypatch):
    from vaeprobe import _cli_nouns
    from vaeprobe.cli import main

    monkeypatch.setattr(_cli_nouns, "load_probe", lambda args: LinearGaussianProbe())
    _cli_nouns.nouns.register("toy", _cli_nouns.Noun(
        _toy_noun, "a toy noun", "vaeprobe toy runs/demo --data digits8:test",
        lambda ds: f"toy value {float(ds['value']):g}", "",
        lambda api: api.add("--scale", type=float, help="multiplies the value")))
    try:
        out = tmp_path / "toy.nc"
        assert main(["toy", "anything", "--data", "digits8:test", "--n-images", "3",
                     "--scale", "2.5", "--seed", "7", "--out", str(out)]) == 0
        assert "toy value 7.5" in capsys.readouterr().out
        saved = vp.open_results(out)
        assert float(saved["value"]) == 7.5 and int(saved.attrs["seed"]) == 7
        with pytest.raises(SystemExit):  # the defaults come from the signature
            main(["toy", "--help"])
        assert "(default: 1.0)" in capsys.readouterr().out
    finally:
        _cli_nouns.nouns._entries.pop("toy")


def test_the_section_list_is_generated_from_the_registry():
    from vaeprobe.audit import SECTIONS, registry

    defaults = [name for name, section in registry.sections().items() if section.default]
    assert list(SECTIONS) == defaults
    assert all(callable(function) for function in SECTIONS.values())
    assert SECTIONS["bits"] is vp.audit.SECTIONS["bits"] is registry.get("bits").function
