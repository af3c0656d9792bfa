import math

import numpy as np
import pytest
import scipy.linalg
import torch

import vaeprobe as vp
from conftest import STAND_IN_NETS
from vaeprobe import fidelity, weights
from vaeprobe.cli import main

TEST_NETS = STAND_IN_NETS
pytestmark = pytest.mark.usefixtures("offline_weights")


@pytest.fixture(scope="module")
def probe(tiny_run):
    return vp.load(tiny_run, device="cpu")


def test_fid_of_a_set_against_itself_is_zero():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)).double()
    assert abs(fidelity.fid_from_features(features, features)) < 1e-6


def test_fid_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    sigma1, sigma2 = a @ a.T + np.eye(4), b @ b.T + 0.5 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    closed = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))
    exact = fidelity.fid_from_statistics({"mu": mu1, "sigma": sigma1},
                                         {"mu": mu2, "sigma": sigma2})
    assert exact == pytest.approx(closed, rel=1e-8)
    # through the identity ("pixels") extractor on Gaussian samples: the estimate converges
    pixels = fidelity.build_extractor("pixels-TEST-ONLY")
    def draw(mu, sigma, seed):
        samples = np.random.default_rng(seed).multivariate_normal(mu, sigma, size=200000)
        return pixels(torch.tensor(samples).reshape(-1, 1, 2, 2))
    estimate = fidelity.fid_from_features(draw(mu1, sigma1, 1), draw(mu2, sigma2, 2))
    # grey images are repeated to three channels, so every feature appears three times
    assert estimate == pytest.approx(3 * closed, rel=0.02)


def test_kid_adapts_its_subset_and_refuses_tiny_sets():
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)).double()
    mean, std, size = fidelity.kid_from_features(features, features + 0.5, subset_size=1000)
    assert size == 50 and mean > 0
    with pytest.raises(ValueError, match="at least 2"):
        fidelity.kid_from_features(features[:1], features)


def test_missing_weights_name_the_file_and_where_to_put_it():
    with pytest.raises(FileNotFoundError) as error:
        fidelity.build_extractor("inception-v3-compat")
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert "hub/checkpoints" in message and "VAEPROBE_WEIGHTS_DIR" in message
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        fidelity.LPIPS("alexnet")


def test_weights_are_found_in_the_weights_dir_and_unsafe_files_refused(tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("VAEPROBE_WEIGHTS_DIR", str(tmp_path))
    alexnet = __import__("torchvision").models.alexnet()
    torch.save(alexnet.state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    lpips = fidelity.LPIPS("alexnet")
    assert not lpips.stand_in and len(lpips.weights_sha256) == 64
    assert torch.equal(lpips.model.net.state_dict()["slice2.3.weight"], alexnet.features[3].weight)
    torch.save({"x": fidelity.RandomConvNet()}, tmp_path / "vgg16-397923af.pth")
    with pytest.raises(ValueError, match="refused"):
        fidelity.build_extractor("vgg16-fc2")
    assert main(["weights"]) == 0


def test_lpips_rejects_0_255_inputs_and_identical_images_score_zero():
    lpips = fidelity.LPIPS("random-TEST-ONLY")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lpips.distance(images.float(), images.float())
    assert torch.allclose(lpips(images, images), torch.zeros(4, dtype=torch.float64))


def test_cache_key_changes_with_n_and_weights():
    indices = torch.arange(10)
    base = fidelity.reference_key("abc", indices, 10, (32, 32), "inception", "w1")
    assert base == fidelity.reference_key("abc", indices, 10, (32, 32), "inception", "w1")
    assert base != fidelity.reference_key("abc", torch.arange(11), 11, (32, 32), "inception",
                                          "w1")
    assert base != fidelity.reference_key("abc", indices, 10, (32, 32), "inception", "w2")
    assert base != fidelity.reference_key("abd", indices, 10, (32, 32), "inception", "w1")


def test_sample_quality_structure_cache_and_batch_independence(probe, digits_test):
    def run(batch_size):
        return vp.sample_quality(probe, digits_test, n_images=60, batch_size=batch_size,
                                 kid_subset_size=50, n_diversity_pairs=20, progress=False,
                                 **TEST_NETS)
    first, second = run(25), run(60)
    assert first.attrs["reference_from_cache"] == '{"random-convnet-TEST-ONLY": false}'
    assert second.attrs["reference_from_cache"] == '{"random-convnet-TEST-ONLY": true}'
    for name in ("fid", "kid_mean", "precision", "recall", "lpips", "lpips_diversity"):
        np.testing.assert_allclose(first[name], second[name], rtol=1e-5, atol=1e-9)
    assert list(first["kind"].values) == list(fidelity.KINDS)
    assert first["preview"].shape == (4, 16, 1, 8, 8) and first["preview"].dtype == np.uint8
    assert np.isnan(first["lpips"].sel(kind="mean")) and first["lpips"].sel(
        kind="reconstruction_mean") >= 0
    assert first.attrs["stand_in_network"] == 1 and "NOT comparable" in first.attrs["warning"]
    assert first.attrs["feature_extractor"] == "random-convnet-TEST-ONLY"
    assert first.attrs["kid_subset_size_used"] == 50
    # mean samples average the noise away: less diverse than stochastic ones
    assert first["lpips_diversity"].sel(kind="mean") < first["lpips_diversity"].sel(
        kind="stochastic")
    assert math.isfinite(float(first["fid"].sel(kind="reconstruction_mean")))


def test_sample_quality_bad_input(probe, digits_test):
    with pytest.raises(ValueError, match="unknown"):
        vp.sample_quality(probe, digits_test, kinds=["median"], **TEST_NETS)
    with pytest.raises(ValueError, match=r"expects \(1, 8, 8\)"):
        vp.sample_quality(probe, "patches16:test", n_images=10, **TEST_NETS)


def test_cli_samples_writes_results_and_figure(tiny_run, tmp_path):
    assert main(["quality", str(tiny_run), "--reference", "digits8:test", "-n", "40",
                 "--feature-extractor", "random-convnet-TEST-ONLY", "--prc-extractor",
                 "random-convnet-TEST-ONLY", "--lpips-trunk", "random-TEST-ONLY",
                 "--out", str(tmp_path / "s.nc"), "--plot", str(tmp_path / "s.png")]) == 0
    ds = vp.open_results(tmp_path / "s.nc")
    assert ds.attrs["stand_in_network"] == 1 and (tmp_path / "s.png").exists()
    assert weights.KNOWN["inception-v3-compat"].filename.endswith("6726825d.pth")


def test_lpips_trunks_register_through_the_registry():
    assert fidelity.lpips_trunks.names() == ["alexnet", "random-TEST-ONLY"]
    assert fidelity.lpips_trunks.get("random-TEST-ONLY").stand_in
    with pytest.raises(ValueError, match="'alexnet', 'random-TEST-ONLY'"):
        fidelity.LPIPS("vgg")


def test_every_missing_weights_file_is_listed_at_once_with_the_flag_in_use(probe, digits_test,
                                                                         tmp_path):
    with pytest.raises(weights.MissingWeightsError) as error:
        vp.sample_quality(probe, digits_test, n_images=8, prc_weights=tmp_path / "vgg.pth",
                          progress=False)
    message = str(error.value)
    for name in ("weights-inception-2015-12-05-6726825d.pth", "vgg16-397923af.pth",
                 "alexnet-owt-7be5be79.pth"):
        assert name in message
    assert "weights=PATH" in message and "prc_weights=PATH" in message
    assert f"{tmp_path / 'vgg.pth'} does not exist" in message
    cli = error.value.describe(cli=True)
    assert "--weights PATH" in cli and "--prc-weights PATH" in cli and "--lpips-weights PATH" \
        in cli and "weights=PATH" not in cli
    with pytest.raises(weights.MissingWeightsError) as error:  # only what the metrics need
        vp.sample_quality(probe, digits_test, n_images=8, metrics=["lpips"], progress=False)
    assert len(error.value.missing) == 1 and error.value.missing[0][1] == "lpips_weights"
