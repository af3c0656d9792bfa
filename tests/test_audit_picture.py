"""The audit's picture: the bits section's rate map (against closed forms and the model's own
KL), per-channel checkpoint targets, and panels whose axes read as categories with units."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_audit import ConvProbe

import vaeprobe as vp
from conftest import STAND_IN_NETS
from vaeprobe.audit import latent_statistics, where_bits_go
from vaeprobe.audit.bits import summary as bits_summary
from vaeprobe.plot import audit_page, audit_panels, axes
from vaeprobe.validate import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
DIFFUSERS = FIXTURES / "diffusers" / "tiny_vae"
TINY8 = FIXTURES / "tiny8_trained"
STAND_INS = {k: v for k, v in STAND_IN_NETS.items() if k != "prc_extractor"}
SECTIONS = ["model_card", "bits", "reconstructions", "latents", "spectra", "precision"]
N = 12
pytestmark = pytest.mark.usefixtures("offline_weights")


def gaussian_kl(mean, std):
    """KL(N(mean, std^2) || N(0, 1)) in nats."""
    return 0.5 * (mean ** 2 + std ** 2 - 1) - np.log(std)


@pytest.fixture(scope="module")
def reports():
    """Audits (card, bits, latents) of a one-layer diffusers model and a hierarchical one."""
    one_layer = vp.audit(vp.load(DIFFUSERS, device="cpu"), "patches16:test", n_images=N,
                         progress=False, sections=SECTIONS, **STAND_INS)
    hierarchical = vp.audit(vp.load(TINY8, device="cpu"), "digits8:test", n_images=N,
                            progress=False, sections=SECTIONS, **STAND_INS)
    return {"one_layer": one_layer, "hierarchical": hierarchical}


# ---- the rate map ------------------------------------------------------------------------------


def test_rate_map_of_a_known_posterior_is_its_closed_form_at_every_position(digits_test):
    means, stds = [0.5, -1.0], [0.5, 2.0]
    probe = ConvProbe(posterior_mean=means, posterior_std=stds)
    ds = where_bits_go(probe, digits_test, n_images=8, progress=False)
    per_position = sum(gaussian_kl(m, s) for m, s in zip(means, stds, strict=True))
    assert ds["rate_map"].dims == ("latent_y", "latent_x")
    assert ds["rate_map"].shape == (8, 8)
    np.testing.assert_allclose(ds["rate_map"].values, per_position, rtol=1e-6)
    np.testing.assert_allclose(ds["rate_map_example"].values, per_position, rtol=1e-6)
    np.testing.assert_allclose(ds["rate_map_se"].values, 0, atol=1e-6)  # same KL every image
    # a flat map: the costliest 6 of 64 positions carry 6/64 of the rate
    assert "rate map 8x8: the costliest 6 of 64 positions carry 9.38% of the rate" in \
        bits_summary(ds)
    np.testing.assert_allclose(ds["rate_per_channel"].values[0],
                               [64 * gaussian_kl(m, s) for m, s in zip(means, stds,
                                                                       strict=True)], rtol=1e-6)


def test_rate_map_sums_to_the_total_rate_with_named_dims_and_units(reports):
    ds = reports["one_layer"]["bits"]
    probe = vp.load(DIFFUSERS, device="cpu")
    height, width = probe.layers[0].resolution
    for name in ("rate_map", "rate_map_se", "rate_map_example"):
        assert ds[name].dims == ("latent_y", "latent_x"), name
        assert ds[name].attrs["units"] == "nats per position", name
    assert ds.sizes["latent_y"] == height and ds.sizes["latent_x"] == width
    np.testing.assert_array_equal(ds["latent_y"].values, np.arange(height))
    assert ds["latent_x"].attrs["units"] == "latent position"
    # the oracle: a map of the rate sums to the rate (the same images, another reduction)
    assert float(ds["rate_map"].sum()) == pytest.approx(float(ds["total_rate"]), rel=1e-6)
    assert (ds["rate_map_se"].values > 0).all() and np.isfinite(ds["rate_map_se"].values).all()
    assert ds["rate_per_channel_se"].dims == ("layer", "channel")
    assert int(ds.attrs["rate_map"]) == 1
    assert "rate_map" not in reports["hierarchical"]["bits"]  # several layers: no one grid
    assert int(reports["hierarchical"]["bits"].attrs["rate_map"]) == 0


def test_the_example_map_is_that_images_own_kl_and_its_thumbnail(reports):
    ds = reports["one_layer"]["bits"]
    probe = vp.load(DIFFUSERS, device="cpu")
    index = int(ds["example_image"])
    image = vp.data.as_dataset("patches16:test")[index]
    image = image[0] if isinstance(image, tuple) else image
    latents = probe.encode(image[None])  # analytic Gaussian KL: the draw does not matter
    own = latents.draws[0].kl.double().sum(1)[0].numpy()
    np.testing.assert_allclose(ds["rate_map_example"].values, own, rtol=1e-5)
    np.testing.assert_array_equal(ds["example_thumbnail"].values, image.numpy())  # 16 px: as is
    assert ds["example_thumbnail"].dtype == np.uint8


def test_rate_maps_of_two_shards_merge_into_the_map_of_all_images():
    from vaeprobe.audit.bits import RateMap

    generator = torch.Generator().manual_seed(0)
    kl = torch.rand(10, 3, 4, 5, generator=generator, dtype=torch.float64)
    x = torch.randint(0, 256, (10, 1, 8, 10), generator=generator, dtype=torch.uint8)
    positions, indices = torch.arange(10), torch.arange(100, 110)
    whole, first, second = RateMap(), RateMap(), RateMap()
    whole.update(kl, x, positions, indices)
    second.update(kl[6:], x[6:], positions[6:], indices[6:])  # a later rank's images
    first.update(kl[:6], x[:6], positions[:6], indices[:6])
    merged = second.merge(first)  # the example comes from whichever shard holds position 0
    probe = ConvProbe()
    a, b = whole.compute(probe), merged.compute(probe)
    np.testing.assert_allclose(b["rate_map"], kl.sum(1).mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(b["rate_map_se"], a["rate_map_se"], rtol=1e-9)
    np.testing.assert_allclose(b["rate_map_se"],
                               kl.sum(1).std(0).numpy() / np.sqrt(10), rtol=1e-9)
    assert int(b["example_image"]) == 100
    np.testing.assert_array_equal(b["rate_map_example"], kl[0].sum(0).numpy())


def test_thumbnail_area_averages_large_images_to_at_most_256_pixels():
    from vaeprobe.audit.bits import thumbnail

    image = torch.zeros(3, 768, 512, dtype=torch.uint8)
    image[:, :, 256:] = 200  # right half bright
    small = thumbnail(image)
    assert small.shape == (3, 256, 171) and small.dtype == np.uint8
    assert small[:, :, :85].max() == 0 and small[:, :, 86:170].min() == 200


# ---- what the checkpoint assumes per channel ---------------------------------------------------


def _fixture_with(tmp_path, **config):
    folder = tmp_path / "vae"
    shutil.copytree(DIFFUSERS, folder)
    stored = json.loads((folder / "config.json").read_text())
    stored.update(config)
    (folder / "config.json").write_text(json.dumps(stored))
    return folder


def test_checkpoint_targets_per_channel(reports, tmp_path, digits_test):
    ds = reports["one_layer"]["latents"]  # scaling_factor 0.5, shift_factor 0.1
    np.testing.assert_allclose(ds["checkpoint_channel_mean"].values, [0.1, 0.1])
    np.testing.assert_allclose(ds["checkpoint_channel_std"].values, [2.0, 2.0])
    assert ds["checkpoint_channel_std"].attrs["units"] == "latent units"
    folder = _fixture_with(tmp_path, latents_mean=[0.25, -0.5], latents_std=[1.5, 3.0])
    declared = latent_statistics(vp.load(folder, device="cpu"), "patches16:test", n_images=4,
                                 progress=False)
    np.testing.assert_allclose(declared["checkpoint_channel_mean"].values, [0.25, -0.5])
    np.testing.assert_allclose(declared["checkpoint_channel_std"].values, [3.0, 6.0])
    hierarchical = reports["hierarchical"]["latents"]  # no factors: nothing assumed
    assert np.isnan(hierarchical["checkpoint_channel_mean"].values).all()


def test_a_latents_mean_of_the_wrong_length_is_refused_at_load(tmp_path):
    folder = _fixture_with(tmp_path, latents_mean=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="latents_mean must be null or a list of "
                       "latent_channels=2 numbers"):
        vp.load(folder, device="cpu")


# ---- the panels: categories on categorical axes, units on the others ---------------------------


def _tick_labels(ax, axis="x"):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [tick.get_text() for tick in ticks]


def _panel_axes(report, name):
    """Each panel of section ``name`` drawn on its own Axes."""
    drawn = []
    for function in audit_panels(name, report[name], report.panels()):
        ax = axes(None, figsize=(6.5, 4.2))
        function(report[name], ax=ax)
        ax.figure.canvas.draw()  # tick labels are filled in at draw time
        drawn.append(ax)
    return drawn


def test_one_layer_panels_are_per_channel_with_the_rate_map(reports):
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer

    report = reports["one_layer"]
    bits, rate_map, example = _panel_axes(report, "bits")
    assert _tick_labels(bits) == ["ch 0", "ch 1"]
    assert bits.get_xlabel() == "latent channel" and bits.get_ylabel() == "rate [nats / image]"
    assert "rate per channel" in bits.get_title()
    assert any("active threshold" in line.get_label() for line in bits.get_lines())
    # the bars are the section's rates and their error bars span +- its standard errors
    section = report["bits"]
    rate = section["rate_per_channel"].values[0]
    se = section["rate_per_channel_se"].values[0]
    (bars,) = [c for c in bits.containers if isinstance(c, BarContainer)]
    np.testing.assert_allclose([patch.get_height() for patch in bars], rate)
    (segments,) = [collection.get_segments() for collection in bars.errorbar.lines[2]]
    np.testing.assert_allclose([[s[0][1], s[1][1]] for s in segments],
                               np.stack([rate - se, rate + se], 1), rtol=1e-6)
    for ax in (rate_map, example):
        assert ax.get_xlabel() == "latent x [latent position]"
        assert ax.get_ylabel() == "latent y [latent position]"
        (colorbar,) = [other for other in ax.figure.axes if other is not ax]
        assert colorbar.get_ylabel() == "KL [nats / position]"
    assert "mean KL per latent position" in rate_map.get_title()
    (latents,) = _panel_axes(report, "latents")
    assert _tick_labels(latents) == ["ch 0", "ch 1"]
    assert "[latent units]" in latents.get_ylabel()
    labels = latents.get_legend_handles_labels()[1]
    assert {"mean the checkpoint assumes", "std the checkpoint assumes"} <= set(labels)
    plt.close("all")


def test_hierarchical_panels_label_layers_by_name_and_resolution(reports):
    import matplotlib.pyplot as plt

    report = reports["hierarchical"]
    layers = ["z00_r1 (1x1)", "z01_r4 (4x4)", "z02_r8 (8x8)"]
    (bits,) = _panel_axes(report, "bits")  # no rate map: one panel
    assert _tick_labels(bits) == layers
    assert bits.get_ylabel() == "rate [nats / image]"
    assert bits.get_title().startswith("rate per layer")
    (latents,) = _panel_axes(report, "latents")
    assert _tick_labels(latents) == layers
    assert latents.get_ylabel() == "std [latent units]"
    # the content is unchanged: the bars are the section's numbers
    heights = [patch.get_height() for patch in bits.patches]
    np.testing.assert_allclose(heights, report["bits"]["rate"].values)
    plt.close("all")


def test_flat_one_layer_panels_are_per_dimension_and_per_channel():
    import matplotlib.pyplot as plt
    from linear_gaussian import LinearGaussianProbe
    from linear_gaussian import images as linear_images

    probe = LinearGaussianProbe(scales=(0.3, 0.001))  # dimension 1 carries ~nothing
    report = vp.audit(probe, linear_images(16), n_images=16, progress=False,
                      sections=["bits", "latents"])
    assert "rate_map" not in report["bits"]  # one position: no map
    (bits,) = _panel_axes(report, "bits")
    assert _tick_labels(bits) == ["d0", "d1"]  # sorted by rate, labelled by dimension
    assert bits.get_ylabel() == "rate [nats / image]"
    (latents,) = _panel_axes(report, "latents")
    assert _tick_labels(latents) == ["ch 0", "ch 1"]
    plt.close("all")


@pytest.mark.parametrize("which", ["one_layer", "hierarchical"])
def test_every_axis_of_the_page_has_units_or_categories(reports, which):
    import matplotlib.pyplot as plt

    report = reports[which]
    figure = audit_page(report)  # the report's own panels (the registry's)
    figure.canvas.draw()
    cells = sum(max(1, len(audit_panels(name, ds, report.panels())))
                for name, ds in report.items())
    drawn = [ax for ax in figure.axes if ax.axison and ax.get_label() != "<colorbar>"]
    assert len(drawn) == cells - 1  # the card is text (its axis off)
    for ax in drawn:
        assert ax.get_title(loc="left"), "a panel without a title"
        for axis in ("x", "y"):
            label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
            ticks = [text for text in _tick_labels(ax, axis) if text]
            if ticks and all(_is_number(text) for text in ticks):  # a number line: its units
                assert "[" in label, f"{ax.get_title(loc='left')!r}: {axis} axis {label!r}"
            elif ticks:  # categories (layers, channels, stages, image rows), never numbers
                assert not any(_is_number(text) for text in ticks), ticks
    plt.close(figure)


def _is_number(text: str) -> bool:
    """A tick label that shows a number: "0.5", "1e-3", a Unicode minus, or a power of ten as
    matplotlib writes it on a log axis ("$\\mathdefault{10^{-1}}$")."""
    for mark, plain in (("$", ""), ("\\mathdefault", ""), ("{", ""), ("}", ""),
                        ("\N{MINUS SIGN}", "-")):
        text = text.replace(mark, plain)
    try:
        [float(part) for part in text.split("^")]
    except ValueError:
        return False
    return True


def test_tick_labels_of_numbers_and_of_categories_are_told_apart():
    assert _is_number("0.5") and _is_number("\N{MINUS SIGN}2") and _is_number("1e-3")
    assert _is_number("$\\mathdefault{10^{-1}}$")
    assert not _is_number("ch 0") and not _is_number("z00_r1 (1x1)") and not _is_number("mean")


def test_panels_come_from_the_registry(reports):
    from vaeprobe.audit.registry import sections

    panels = reports["one_layer"].panels()
    assert panels["bits"] == sections()["bits"].figure
    assert panels["bits"][0] == "audit_bits" and "audit_rate_map" in panels["bits"]
    with pytest.raises(ValueError, match=r"panels=report.panels\(\)"):
        audit_panels("bits", reports["one_layer"]["bits"], None)


def test_html_report_shows_every_panel(reports, tmp_path):
    from vaeprobe.audit import AuditReport

    full = reports["one_layer"]
    paths = AuditReport({name: full[name] for name in ("bits", "latents")}, full.attrs).save(
        tmp_path / "one")
    page = paths["html"].read_text()
    bits = page[page.index("<section id='bits'>"):page.index("<section id='latents'>")]
    assert bits.count("<img alt='bits'") == 3  # per channel, rate map, the example's map
    latents = page[page.index("<section id='latents'>"):]
    assert latents.count("<img alt='latents'") == 1
    assert "rate_per_channel" in bits  # the per-channel numbers as a table
    saved = vp.audit.open_audit(paths["nc"])["bits"]  # the map survives netCDF
    assert saved["rate_map"].dims == ("latent_y", "latent_x")
    assert saved["rate_map"].attrs["units"] == "nats per position"
    np.testing.assert_array_equal(saved["example_thumbnail"], full["bits"]["example_thumbnail"])
