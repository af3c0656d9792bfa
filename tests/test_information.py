"""vp.information against closed forms: rate = I(x; z) + KL(q(z) || p(z))."""

import math

import numpy as np
import pytest
import torch
from linear_gaussian import DIMS, LinearGaussianProbe

import vaeprobe as vp


def gaussian_images(probe, n, spread, seed=0):
    """uint8 images y ~ N(mu, spread W W^T + sigma^2 I) (quantised), and their covariance
    including the quantisation noise (1 / (12 * 255^2) per pixel)."""
    covariance = spread * probe.W @ probe.W.T + probe.sigma ** 2 * torch.eye(DIMS,
                                                                              dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    y = probe.mu + torch.randn(n, DIMS, generator=generator, dtype=torch.float64) @ \
        torch.linalg.cholesky(covariance).T
    x = (y * 255).round().clamp(0, 255).to(torch.uint8).reshape(n, 1, 2, 2)
    return x, covariance + torch.eye(DIMS, dtype=torch.float64) / (12 * 255 ** 2)


def closed_form(probe, covariance):
    """Population I(y; z) and KL(q(z) || N(0, I)) of a linear-Gaussian encoder on Gaussian data:
    q(z) = N(shift, A C A^T + S), I = 0.5 log det(A C A^T + S) - 0.5 log det S."""
    a = probe.W.T / probe.m_diag[:, None]
    s = torch.diag(probe.sigma ** 2 / probe.m_diag * math.exp(2 * probe.logstd_shift))
    shift = torch.full((2,), float(probe.mean_shift), dtype=torch.float64)
    aggregate = a @ covariance @ a.T + s
    information = 0.5 * (torch.logdet(aggregate) - torch.logdet(s))
    marginal_kl = 0.5 * (torch.trace(aggregate) + shift @ shift - 2 - torch.logdet(aggregate))
    return float(information), float(marginal_kl)


def test_linear_gaussian_matches_closed_form():
    probe = LinearGaussianProbe(scales=(0.1, 0.05), sigma=0.02, mean_shift=0.3, logstd_shift=0.2)
    x, covariance = gaussian_images(probe, 3000, spread=1.5)
    ds = vp.information(probe, x, n_images=None, progress=False)
    information, marginal_kl = closed_form(probe, covariance)
    for name, truth in (("total_mutual_information", information),
                        ("total_marginal_kl", marginal_kl),
                        ("total_rate", information + marginal_kl)):
        assert abs(float(ds[name]) - truth) < 4 * float(ds[f"{name}_se"]), name
    assert ds.sizes == {"layer": 1, "dimension": 2}
    assert ds.attrs["identity_holds"] == 1 and ds.attrs["n_images"] == 3000
    assert ds.attrs["log_n_ceiling"] == pytest.approx(math.log(3000))
    # the beta-TCVAE split is exact, and the per-dimension terms add up
    assert float(ds.total_correlation + ds.dimension_wise_kl) == pytest.approx(
        float(ds.total_marginal_kl), abs=1e-9)
    assert float(ds.marginal_kl_per_dimension.sum()) == pytest.approx(
        float(ds.dimension_wise_kl), abs=1e-9)
    assert float(ds.rate_per_dimension.sum()) == pytest.approx(float(ds.rate[0]), rel=1e-9)
    assert all(ds[v].attrs["units"] == "nats" for v in ds.data_vars)
    assert ds.attrs["warning"] == ""


def test_posterior_equal_to_prior_carries_no_information():
    probe = LinearGaussianProbe(scales=(0.0, 0.0), sigma=1.0)  # q(z | x) = N(0, I) = p(z)
    x, _ = gaussian_images(LinearGaussianProbe(), 200, spread=1.0)
    ds = vp.information(probe, x, n_images=None, progress=False)
    for name in ("total_rate", "total_mutual_information", "total_marginal_kl",
                 "total_correlation"):
        assert abs(float(ds[name])) < 1e-9, name


def test_deterministic_encoder_hits_log_n_and_warns():
    probe = LinearGaussianProbe(scales=(0.1, 0.05), sigma=0.02, logstd_shift=-12.0)
    x, _ = gaussian_images(probe, 300, spread=1.0)
    x = torch.unique(x, dim=0)  # distinct images: distinct posterior means
    ds = vp.information(probe, x, n_images=None, progress=False)
    assert float(ds.total_mutual_information) == pytest.approx(math.log(len(x)), abs=1e-6)
    assert float(ds.total_mutual_information) <= math.log(len(x)) + 1e-12
    assert "near its ceiling log N" in ds.attrs["warning"] and "; " not in ds.attrs["warning"]


def test_hierarchical_terms_follow_the_chain_rule(tiny_run, digits_test):
    ds = vp.information(tiny_run, digits_test, n_images=48, progress=False)
    n_layers = len(vp.load(tiny_run, device="cpu").layers)
    assert ds.sizes == {"layer": n_layers} and "total_correlation" not in ds
    assert ds.attrs["identity_holds"] == 1
    # per-layer conditional terms sum to the joint terms; the joint I stays under log N
    assert float(ds.mutual_information.sum()) == pytest.approx(
        float(ds.total_mutual_information), abs=1e-9)
    assert float(ds.marginal_kl.sum()) == pytest.approx(float(ds.total_marginal_kl), abs=1e-9)
    assert np.all(ds.mutual_information_cumulative.values <= math.log(48) + 1e-9)
    np.testing.assert_allclose(ds.rate_sampled.values,
                               (ds.mutual_information + ds.marginal_kl).values, atol=1e-9)
    # the rate is vp.rate's (same draws' analytic KL)
    rate = vp.rate(tiny_run, digits_test, n_images=48, progress=False)
    np.testing.assert_allclose(ds.rate.values, rate.rate.values, rtol=1e-4)


def test_saved_and_plotted(tmp_path):
    probe = LinearGaussianProbe()
    x, _ = gaussian_images(probe, 100, spread=1.0)
    ds = vp.information(probe, x, n_images=None, progress=False)
    path = vp.save(ds, tmp_path / "information.nc")
    reopened = vp.open_results(path)
    assert float(reopened.total_mutual_information) == pytest.approx(
        float(ds.total_mutual_information))
    ax = vp.plot.information(reopened)
    assert ax.get_title()


def test_encode_given_reproduces_the_posterior_at_its_own_draw(tiny_run, digits_test):
    probe = vp.load(tiny_run, device="cpu")
    x = digits_test.images[:5] if hasattr(digits_test, "images") else torch.stack(
        [digits_test[i] for i in range(5)])
    latents = probe.encode(x, 1, torch.Generator().manual_seed(0))
    given = probe.encode_given(x, [d.z for d in latents.draws])
    for draw, again in zip(latents.draws, given.draws, strict=True):
        torch.testing.assert_close(again.q_mean, draw.q_mean)
        torch.testing.assert_close(again.p_logstd, draw.p_logstd)


def test_command_line(tiny_run, tmp_path, capsys):
    from vaeprobe.cli import main

    out = tmp_path / "information.nc"
    assert main(["information", str(tiny_run), "--data", "digits8:test", "--n-images", "24",
                 "--out", str(out), "--plot", str(tmp_path / "information.png")]) == 0
    printed = capsys.readouterr().out
    assert "I(x; z)" in printed and "identity holds: yes" in printed
    assert vp.open_results(out).attrs["n_images"] == 24
    assert main(["information", str(tmp_path / "missing"), "--data", "digits8:test"]) == 2


def test_encode_given_shares_the_encoder_across_latents_per_image(tiny_run, digits_test):
    probe = vp.load(tiny_run, device="cpu")
    x = torch.stack([digits_test[i] for i in range(3)])
    latents = probe.encode(x, 2, torch.Generator().manual_seed(1))  # image-major, K = 2
    zs = [d.z for d in latents.draws]
    shared = probe.encode_given(x, zs, n_samples=2)
    repeated = probe.encode_given(x.repeat_interleave(2, 0), zs)
    for a, b in zip(shared.draws, repeated.draws, strict=True):
        torch.testing.assert_close(a.q_mean, b.q_mean)
        torch.testing.assert_close(a.q_logstd, b.q_logstd)
