"""vp.compare / vaeprobe compare: several models in one table, audits reused from disk."""

import numpy as np
import pytest

import vaeprobe as vp
from conftest import STAND_IN_NETS

NETS = dict(feature_extractor=STAND_IN_NETS["feature_extractor"],
            lpips_trunk=STAND_IN_NETS["lpips_trunk"])


@pytest.fixture(scope="module")
def compared(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    early, late = vp.checkpoints(tiny_run)[1][1], vp.checkpoints(tiny_run)[-1][1]
    ds = vp.compare([early, late], "digits8:test", n_images=12, information_images=12,
                    out=out, progress=False, **NETS)
    return ds, out, early, late


def test_one_table_of_the_models(compared, tiny_run):
    ds, out, early, late = compared
    assert ds.sizes == {"model": 2} and not ds["audit_reused"].any()
    for path in ("compare.nc", "compare.png", "compare.html"):
        assert (out / path).is_file()
    # the numbers are the nouns' own, on the same images
    rate = vp.rate(late, "digits8:test", n_images=12, progress=False)
    assert float(ds["rate"][1]) == pytest.approx(float(rate.total_rate), rel=1e-6)
    assert float(ds["distortion"][1]) > 0 and np.isfinite(ds["psnr"]).all()
    assert np.allclose(ds["gamma"], 2.0)  # the run's distortion target
    assert np.allclose(ds["rate"], ds["mutual_information"] + ds["marginal_kl"], rtol=0.2)
    assert all("units" in ds[name].attrs for name in ds.data_vars)
    assert ds["checkpoint_sha256"].values[1] == vp.load(late).source["checkpoint_sha256"]


def test_audits_on_disk_are_reused(compared):
    ds, out, early, late = compared
    again = vp.compare([late, out / "models" / ds["model"].values[0]], "digits8:test",
                       n_images=12, information=False, out=out, progress=False, **NETS)
    assert again["audit_reused"].values.tolist() == [1, 1]
    assert float(again["rate"][0]) == float(ds["rate"][1])
    assert np.isnan(again["mutual_information"]).all()


def test_command_line(compared, tmp_path, capsys):
    from vaeprobe.cli import main

    _, out, early, late = compared
    assert main(["compare", str(late), str(out / "models" / compared[0]["model"].values[0]),
                 "--data", "digits8:test", "--n-images", "12", "--no-information",
                 "--lpips-trunk", NETS["lpips_trunk"], "--feature-extractor",
                 NETS["feature_extractor"], "--out", str(out)]) == 0
    assert "audits reused:" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "missing"), "--data", "digits8:test"]) == 2
    with pytest.raises(TypeError, match="list of models"):
        vp.compare(str(late), "digits8:test")


def test_models_of_one_latent_layout_compare_their_channels(compared, tmp_path):
    import shutil
    from pathlib import Path

    import matplotlib.pyplot as plt

    from vaeprobe.audit import where_bits_go
    from vaeprobe.plot import compare_page

    assert "rate_per_channel" not in compared[0]  # three layers of different sizes: no channels
    fixture = Path(__file__).parent / "fixtures" / "diffusers" / "tiny_vae"
    shutil.copytree(fixture, tmp_path / "copy")
    ds = vp.compare([fixture, tmp_path / "copy"], "patches16:test", n_images=8,
                    information=False, progress=False, **NETS)
    assert ds["rate_per_channel"].dims == ("model", "channel") and ds.sizes["channel"] == 2
    assert ds["rate_per_channel"].attrs["units"] == "nats"
    bits = where_bits_go(vp.load(fixture), "patches16:test", n_images=8, progress=False)
    for model in ds["model"].values:
        np.testing.assert_allclose(ds["rate_per_channel"].sel(model=model),
                                   bits["rate_per_channel"].values[0], rtol=1e-6)
        np.testing.assert_allclose(ds["rate_per_channel_se"].sel(model=model),
                                   bits["rate_per_channel_se"].values[0], rtol=1e-6)
    figure = compare_page(ds)
    figure.canvas.draw()
    (panel,) = [ax for ax in figure.axes if ax.get_xlabel() == "latent channel"]
    assert [tick.get_text() for tick in panel.get_xticklabels()] == ["ch 0", "ch 1"]
    assert panel.get_legend_handles_labels()[1] == [str(m) for m in ds["model"].values]
    assert panel.get_ylabel() == "rate [nats / image]"
    plt.close(figure)
