import copy
import math

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe.pca import gaussian_rate_distortion, water_filling
from vaeprobe.spectrum import power_2d, radial_bins, radial_profile, window_2d


def white_noise(n, side, std=0.1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, side, side, generator=generator, dtype=torch.float64) * std


@pytest.mark.parametrize("side", [31, 32])
@pytest.mark.parametrize("window", ["none", "hann", "kaiser"])
def test_white_noise_is_flat_at_its_variance(side, window):
    images = white_noise(3000, side)
    frequency, power, counts = radial_profile(power_2d(images, window) / len(images))
    assert np.allclose(power[2:], 0.01, rtol=0.06), power  # odd and even sizes agree
    assert frequency[-1] == pytest.approx((side // 2) / side)


@pytest.mark.parametrize("side", [32, 33])
def test_sinusoid_peaks_at_its_frequency(side):
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = torch.cos(2 * math.pi * 0.25 * x + 0.3)[None, None].double()
    frequency, power, _ = radial_profile(power_2d(images, "hann"))
    assert abs(frequency[np.argmax(power)] - 0.25) <= 1 / side


def test_parseval():
    images = white_noise(5, 16) + torch.linspace(0, 1, 16).double()
    centred = images - images.mean((2, 3), keepdim=True)
    power = power_2d(images, "none")
    assert float(power.sum()) == pytest.approx(float((centred ** 2).sum()), rel=1e-12)
    index, n_bins = radial_bins(16, 16)
    frequency, mean_power, counts = radial_profile(power)
    corners = float(power[index < 0].sum())
    assert (mean_power * counts).sum() + corners == pytest.approx(float(power.sum()), rel=1e-12)
    assert counts.sum() + int((index < 0).sum()) == 256


def test_images_source_and_batch_size_independence():
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    a = vp.spectrum(images, n_images=None, batch_size=7, progress=False)
    b = vp.spectrum(images, n_images=None, batch_size=128, progress=False)
    np.testing.assert_allclose(a["power_data"], b["power_data"], rtol=1e-12)
    assert a["frequency"].attrs["units"] == "cycles/pixel"
    with pytest.raises(ValueError, match="window"):
        vp.spectrum(images, window="hamming")


def test_run_directory_gives_step_by_frequency(tiny_run):
    ds = vp.spectrum(str(tiny_run), n_images=64, batch_size=20, progress=False)
    assert dict(ds.sizes)["step"] == 4 and dict(ds.sizes)["frequency"] == 4
    assert list(ds["step"].values) == [10, 20, 30, 40]
    assert ds["checkpoint"].values[0].endswith("ckpt_step00000010.pt")
    assert ds["power_reconstruction"].dims == ("step", "frequency")
    np.testing.assert_allclose(ds["relative_power"],
                               ds["power_reconstruction"] / ds["power_data"])
    assert ((ds["high_frequency_fraction"] >= 0) & (ds["high_frequency_fraction"] <= 1)).all()
    assert ds.attrs["dataset"] == "digits8:test" and ds.attrs["n_images"] == 64
    again = vp.spectrum(str(tiny_run), n_images=64, batch_size=64, progress=False)
    # batch-size independent up to float32 convolution round-off
    np.testing.assert_allclose(ds["power_reconstruction"], again["power_reconstruction"],
                               rtol=1e-5)
    np.testing.assert_allclose(ds["distortion"], again["distortion"], rtol=1e-5)


def test_pca_top_and_bottom_k_against_numpy_svd():
    images = vp.data.load("digits8:test").images
    ds = vp.pca_baseline(images, progress=False)
    total = float(ds["total_variance"])
    top, bottom = ds["distortion"].sel(order="top"), ds["distortion"].sel(order="bottom")
    assert float(top.sel(k=0)) == pytest.approx(total) and float(top.sel(k=64)) == \
        pytest.approx(0, abs=1e-12)
    assert float(bottom.sel(k=0)) == pytest.approx(total) and float(bottom.sel(k=64)) == \
        pytest.approx(0, abs=1e-12)
    flat = images.double().flatten(1).numpy() / 255.0
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for k in (1, 5, 20):
        for order, basis in (("top", vt[:k]), ("bottom", vt[64 - k:])):
            error = centred - centred @ basis.T @ basis
            assert float(ds["distortion"].sel(k=k, order=order)) == pytest.approx(
                (error ** 2).sum(1).mean(), rel=1e-8)
    needed = ds["components_needed"]
    assert (needed.sel(order="top") <= needed.sel(order="bottom")).all()


def test_water_filling_closed_form_on_a_diagonal_covariance():
    eigenvalues = np.array([4.0, 1.0, 0.25])
    total = eigenvalues.sum()
    assert gaussian_rate_distortion(eigenvalues, total)[0] == 0.0
    # theta below every eigenvalue: D = 3 theta
    d = 0.3
    assert gaussian_rate_distortion(eigenvalues, d)[0] == pytest.approx(
        0.5 * np.log(eigenvalues / (d / 3)).sum())
    # theta between 0.25 and 1: D = 0.25 + 2 theta, two components coded
    theta = 0.5
    rate, level = water_filling(eigenvalues, 0.25 + 2 * theta)
    assert level[0] == pytest.approx(theta) and rate[0] == pytest.approx(
        0.5 * (np.log(4 / theta) + np.log(1 / theta)))
    grid = np.linspace(0.05, total, 50)
    assert (np.diff(gaussian_rate_distortion(eigenvalues, grid)) < 0).all()
    with pytest.raises(ValueError, match="> 0"):
        gaussian_rate_distortion(eigenvalues, 0.0)


def test_pca_spectrum_at_a_distortion_and_bad_ks():
    ds = vp.pca_baseline("digits8:test", spectrum_distortion=2.0, n_spectrum_images=100,
                         progress=False)
    assert float(ds["pca_spectrum_distortion"]) <= 2.0 < float(ds["total_variance"])
    assert int(ds["pca_k"]) > 0
    assert 0 <= float(ds["high_frequency_fraction_pca"]) <= 1
    with pytest.raises(ValueError, match="ks must lie"):
        vp.pca_baseline("digits8:test", ks=[0, 100], progress=False)


@pytest.mark.parametrize("shape", [(16, 16), (15, 16), (16, 15), (7, 9)])
def test_half_spectrum_unfolds_to_the_full_fft(shape):
    images = torch.randn(3, 2, *shape, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    centred = images - images.mean((2, 3), keepdim=True)
    full = torch.fft.fft2(centred, norm="ortho").abs().pow(2).sum((0, 1))
    assert torch.allclose(power_2d(images, "none"), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window", ["none", "hann", "kaiser"])
@pytest.mark.parametrize("channels", ["per_channel", "luminance"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_grouped_power_matches_one_full_fft(window, channels, dtype):
    """1200 planes cross power_2d's group boundary; uint8 scaling, DC handling and the
    luminance mix all agree with the estimator written out in one full fft2."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (400, 3, 16, 16), generator=generator, dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.to(dtype) / 255 + 0.25
    x = images.double() / 255 if dtype == torch.uint8 else images.double()
    if channels == "luminance":
        x = (x * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]).sum(
            1, keepdim=True)
    x = (x - x.mean((2, 3), keepdim=True)) * window_2d(16, 16, window)
    expected = torch.fft.fft2(x, norm="ortho").abs().square().sum((0, 1))
    got = power_2d(images, window, channels)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12 * float(expected.max()))


def test_power_2d_leaves_its_input_alone():
    images = white_noise(4, 8) + 0.5
    before = images.clone()
    power_2d(images, "hann")
    assert torch.equal(images, before)


def test_spectrum_distortion_and_rate_agree_with_vp_rate(tiny_run, digits_test):
    """The same checkpoint, images and seed through two code paths give the same numbers."""
    spectra = vp.spectrum(str(tiny_run), digits_test, n_images=100, progress=False)
    rate = vp.rate(vp.load(tiny_run, device="cpu"), digits_test, n_images=100, progress=False)
    assert float(spectra["distortion"].sel(step=40)) == pytest.approx(float(rate["distortion"]),
                                                                      rel=1e-5)
    assert float(spectra["rate"].sel(step=40)) == pytest.approx(float(rate["total_rate"]),
                                                                rel=1e-5)


def test_one_checkpoint_or_probe_is_one_step_with_its_provenance(tiny_run):
    from vaeprobe import io

    steps = vp.checkpoints(tiny_run)
    late = steps[-1][1]
    by_path = vp.spectrum(str(late), "digits8:test", n_images=16, progress=False)
    probe = vp.load(late, device="cpu")
    by_probe = vp.spectrum(probe, "digits8:test", n_images=16, progress=False)
    sha = io.sha256_file(late)
    for ds in (by_path, by_probe):
        assert ds.sizes["step"] == 1 and list(ds["step"].values) == [40]
        assert ds["checkpoint"].values[0] == str(late)
        assert ds["checkpoint_sha256"].values[0] == sha and ds["family"].values[0] == "hvae"
        assert ds.attrs["checkpoint"] == str(late) and ds.attrs["checkpoint_sha256"] == sha
        assert ds["power_reconstruction"].dims == ("step", "frequency")
    np.testing.assert_array_equal(by_path["power_reconstruction"],
                                  by_probe["power_reconstruction"])
    run = vp.spectrum(str(tiny_run), "digits8:test", n_images=16, progress=False)
    np.testing.assert_allclose(run["power_reconstruction"].sel(step=[40]),
                               by_path["power_reconstruction"], rtol=1e-12)
    assert list(run["checkpoint"].values) == [str(path) for _, path in steps]
    assert len(set(run["checkpoint_sha256"].values)) == 4
    assert run.attrs["run"] == str(tiny_run) and "checkpoint" not in run.attrs
    bare = copy.copy(probe)
    bare.source = {}  # a Probe built in memory says so, at step 0
    ds = vp.spectrum(bare, "digits8:test", n_images=8, progress=False)
    assert ds["checkpoint"].values[0] == "in-memory model" and ds["step"].values[0] == 0


def test_hann_window_on_tiny_images_names_the_fix():
    images = torch.randint(0, 256, (8, 1, 2, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="window='none'"):
        vp.spectrum(images, n_images=None, progress=False)
    with pytest.raises(ValueError, match="2 px or less"):
        window_2d(8, 1, "hann")
    ds = vp.spectrum(images, n_images=None, window="none", progress=False)
    assert np.isfinite(ds["power_data"]).all()
    assert torch.isfinite(window_2d(2, 2, "kaiser")).all()


def test_a_bad_checkpoint_in_a_run_is_reported_and_the_rest_analysed(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "ckpt_step00000020.pt").write_text("not a checkpoint")
    with pytest.warns(UserWarning, match="skipped the checkpoint of step 20"):
        ds = vp.spectrum(str(run), n_images=16, progress=False)
    assert list(ds["step"].values) == [10, 30, 40]
    assert "20" in ds.attrs["skipped_checkpoints"] and "could not be loaded" in ds.attrs["warning"]
    for path in run.glob("ckpt_step*.pt"):
        path.write_text("x")
    with pytest.raises(ValueError, match="no checkpoint of the run could be loaded"), \
            pytest.warns(UserWarning):
        vp.spectrum(str(run), n_images=16, progress=False)


@pytest.mark.parametrize("window, channels", [("hann", "per_channel"), ("none", "luminance")])
def test_per_image_band_energies_add_up_to_the_high_frequency_fraction(window, channels):
    from vaeprobe.spectrum import band_energies, high_frequency_fraction, ratio_standard_error

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 10, 11, generator=generator, dtype=torch.float64) ** 3
    energies = band_energies(x, window, channels, 0.2).numpy()
    frequency, power, counts = radial_profile(power_2d(x, window, channels))
    expected = high_frequency_fraction(power, counts, frequency, 0.2)
    assert energies[:, 0].sum() / energies[:, 1].sum() == pytest.approx(expected, rel=1e-10)
    # the delta-method standard error matches the spread of the ratio over resampled images
    a, b = np.random.default_rng(0).gamma(2.0, 1.0, (2, 4000))
    a = 0.3 * b + 0.1 * a
    ratios = [a[i::40].sum() / b[i::40].sum() for i in range(40)]  # 40 groups of 100
    assert ratio_standard_error(a[:100], b[:100]) == pytest.approx(np.std(ratios), rel=0.35)


def test_figures_have_titles_legends_beside_the_data_and_no_bar_for_one_step(tiny_run):
    import matplotlib.pyplot as plt

    one = vp.spectrum(str(vp.checkpoints(tiny_run)[-1][1]), n_images=16, progress=False)
    ax = vp.plot.spectrum(one)
    assert "digits8:test" in ax.get_title() and len(ax.figure.axes) == 1  # no colour bar
    assert "reconstructions, step 40" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_legend().get_bbox_to_anchor().y1 < ax.get_window_extent().y0 + 1  # below
    several = vp.spectrum(str(tiny_run), n_images=16, progress=False)
    assert len(vp.plot.spectrum(several).figure.axes) == 2  # a colour bar over the steps
    baseline = vp.pca_baseline("digits8:train", n_images=300, spectrum_distortion=2.0,
                               progress=False)
    ax = vp.plot.pca(baseline)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xscale() == "log" and "digits8:train" in ax.get_title()
    assert f"top-{int(baseline['pca_k'])}: distortion" in " ".join(labels)
    log = vp.Run(tiny_run).training_log()
    ax = vp.plot.training_curves(several.merge(log, combine_attrs="override"))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "rate, evaluation images" in labels and "rate, training batches" in labels
    plt.close("all")
