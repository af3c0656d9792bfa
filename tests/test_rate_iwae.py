import math

import numpy as np
import pytest
import torch
from linear_gaussian import DIMS, LinearGaussianProbe, images

import vaeprobe as vp
from vaeprobe.cli import main


@pytest.fixture(scope="module")
def tiny_probe(tiny_run):
    return vp.load(tiny_run, device="cpu")


@pytest.mark.parametrize("k", [1, 2, 16])
def test_exact_posterior_gives_exact_log_likelihood_for_every_k(k):
    probe, x = LinearGaussianProbe(), images()
    ds = vp.iwae(probe, x, k=k, progress=False)
    np.testing.assert_allclose(ds["log_likelihood"], probe.exact_log_likelihood(x), atol=1e-9)
    np.testing.assert_allclose(ds["elbo"], probe.exact_log_likelihood(x), atol=1e-9)


def test_wrong_posterior_is_below_and_approaches_with_k():
    probe, x = LinearGaussianProbe(mean_shift=0.5, logstd_shift=0.4), images()
    exact = probe.exact_log_likelihood(x).numpy()
    by_k = vp.iwae(probe, x, k=1024, chunk=100, progress=False)["log_likelihood_by_k"]
    gaps = exact.mean() - by_k.mean("image").values
    # a lower bound in expectation: below the truth, up to Monte Carlo error once it is tight
    assert gaps[0] > 1 and (gaps[:5] > 0).all() and (gaps > -0.05).all()
    # nested subsets of the same draws: the gap shrinks up to Monte Carlo noise, whose largest
    # step up over seeds 0-5 measured 0.063 nats (counter-based streams, 40 images)
    assert abs(gaps[-1]) < 0.05 * gaps[0] and (np.diff(gaps) < 0.1).all()


def test_rate_equals_analytic_kl():
    probe, x = LinearGaussianProbe(), images()
    ds = vp.rate(probe, x, progress=False, per_image=True)
    exact = probe.exact_kl(x).numpy()
    np.testing.assert_allclose(ds["rate_per_image"].sel(layer=0), exact, rtol=1e-9)
    assert float(ds["total_rate"]) == pytest.approx(exact.mean(), rel=1e-9)
    assert float(ds["rate_se"][0]) == pytest.approx(exact.std(ddof=1) / math.sqrt(len(x)))
    assert float(ds["rate_bpd"][0]) == pytest.approx(exact.mean() / (DIMS * math.log(2)))


def test_bits_per_dim_and_dequantized_offset():
    probe, x = LinearGaussianProbe(), images()
    plain = vp.iwae(probe, x, k=4, progress=False)
    np.testing.assert_allclose(plain["bpd"], -plain["log_likelihood"] / (DIMS * math.log(2)))
    deq = vp.iwae(probe, x, k=4, kind="dequantized", progress=False)
    np.testing.assert_allclose(deq["bpd"], plain["bpd"] + 8.0)  # log2(256) for [0, 1] data
    assert deq.attrs["likelihood_kind"] == "dequantized" and deq.attrs["bpd_offset"] == 8.0
    assert plain.attrs["bpd_offset"] == 0.0


def test_k1_is_the_elbo_and_the_bound_grows_with_k(tiny_probe, digits_test):
    one = vp.iwae(tiny_probe, digits_test, k=1, n_images=60, progress=False)
    np.testing.assert_allclose(one["log_likelihood"], one["elbo"])
    many = vp.iwae(tiny_probe, digits_test, k=32, n_images=60, progress=False)
    assert many["bpd_by_k"].values[-1] < many["bpd_by_k"].values[0]
    assert float(many["log_likelihood"].mean()) >= float(many["elbo"].mean())
    assert ((many["ess"] >= 1) & (many["ess"] <= 32 + 1e-9)).all()
    assert list(many["k"].values) == [1, 2, 4, 8, 16, 32]


def test_batch_size_independent_and_seeded(tiny_probe, digits_test):
    def run(**kwargs):
        return vp.iwae(tiny_probe, digits_test, k=6, n_images=20, chunk=4, progress=False,
                       **kwargs)["log_likelihood"].values
    np.testing.assert_allclose(run(batch_size=3), run(batch_size=16), rtol=1e-6)
    np.testing.assert_allclose(run(kind="dequantized", batch_size=3),
                               run(kind="dequantized", batch_size=16), rtol=1e-6)
    assert not np.allclose(run(seed=1), run(seed=2))
    a = vp.rate(tiny_probe, digits_test, n_images=30, batch_size=7, progress=False)
    b = vp.rate(tiny_probe, digits_test, n_images=30, batch_size=64, progress=False)
    np.testing.assert_allclose(a["rate"], b["rate"], rtol=1e-6)


def test_encoder_runs_once_per_image_across_chunks(tiny_probe, digits_test):
    calls = []
    handle = tiny_probe.model.encoder.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        vp.iwae(tiny_probe, digits_test, k=10, chunk=3, n_images=8, batch_size=8,
                progress=False)
    finally:
        handle.remove()
    assert calls == [8]


def test_shared_chunks_equal_separate_full_passes(tiny_probe, digits_test):
    """Sharing the encoder work (and the repeated per-image tensors) across chunks of 3, 3 and
    1 draws gives the log weights of separate full passes with the same noise streams."""
    from vaeprobe.random import image_streams

    x = digits_test.images[:5]
    ours = vp.iwae(tiny_probe, x, k=7, chunk=3, batch_size=5, progress=False)
    generators, log_w = image_streams(0, range(5)), []
    for k in (3, 3, 1):
        latents = tiny_probe.encode(x, k, generators)  # encoder run again for every chunk
        log_px = tiny_probe.decode(latents).log_prob(x.repeat_interleave(k, 0))
        log_w.append((log_px.double() + latents.log_p().double()
                      - latents.log_q().double()).reshape(5, k))
    expected = torch.logsumexp(torch.cat(log_w, 1), 1) - math.log(7)
    np.testing.assert_allclose(ours["log_likelihood"], expected.numpy(), rtol=1e-6)


def test_rate_dataset_structure(tiny_probe, digits_test):
    ds = vp.rate(tiny_probe, digits_test, n_images=50, progress=False)
    assert dict(ds.sizes) == {"layer": 3, "resolution": 3, "channel": 2}
    assert list(ds["name"].values) == ["z00_r1", "z01_r4", "z02_r8"]
    assert float(ds["rate_fraction"].sum()) == pytest.approx(1.0)
    assert float(ds["rate_by_resolution"].sum()) == pytest.approx(float(ds["total_rate"]))
    np.testing.assert_allclose(ds["rate_per_channel"].sum("channel"), ds["rate"], rtol=1e-6)
    assert ds["rate"].attrs["units"] == "nats" and ds.attrs["analysis"] == "rate"
    assert ds.attrs["checkpoint"].endswith("ckpt_step00000040.pt")
    assert float(ds["mse"]) == pytest.approx(float(ds["distortion"]) / 64)


def test_two_stage_rate_has_stages(tiny_run, digits_test, tmp_path):
    from vaeprobe.adapters.native import probe_for
    from vaeprobe.models import TwoStageVAE, preset, secondary_config

    probe = probe_for(TwoStageVAE(preset("tiny-8"), secondary_config(preset("tiny-8"))), "cpu")
    ds = vp.rate(probe, digits_test, n_images=10, progress=False)
    assert list(ds["stage_name"].values) == ["primary", "secondary"]
    assert np.isfinite(vp.iwae(probe, digits_test, k=3, n_images=4, progress=False)["bpd"]).all()


def test_bad_input(tiny_probe, digits_test):
    with pytest.raises(ValueError, match="k .* >= 1"):
        vp.iwae(tiny_probe, digits_test, k=0)
    with pytest.raises(ValueError, match=r"expects \(1, 8, 8\)"):
        vp.rate(tiny_probe, "patches16:test", progress=False)
    with pytest.raises(ValueError, match="empty"):
        vp.iwae(tiny_probe, torch.zeros(0, 1, 8, 8, dtype=torch.uint8))


def test_cli_rate_and_iwae(tiny_run, tmp_path):
    assert main(["rate", str(tiny_run), "--data", "digits8:test", "--n-images", "30",
                 "--out", str(tmp_path / "rate.nc"), "--plot", str(tmp_path / "rate.png")]) == 0
    assert vp.open_results(tmp_path / "rate.nc")["rate"].sizes == {"layer": 3}
    assert main(["iwae", str(tiny_run), "-k", "8", "--data", "digits8:test", "--n-images", "10",
                 "--out", str(tmp_path / "iwae.nc"), "--plot", str(tmp_path / "iwae.png")]) == 0
    assert (tmp_path / "iwae.png").exists() and (tmp_path / "rate.png").exists()


def test_warnings_beside_the_numbers():
    from vaeprobe._analysis import interpretation_warnings

    assert interpretation_warnings(bpd=7.9, ess_mean=30.0, k=100) == []
    worse, = interpretation_warnings(bpd=8.2)
    assert "worse than a uniform guess" in worse and "8 bits/dim" in worse
    tiny, = interpretation_warnings(ess_mean=1.2, k=1000)
    assert "effective sample size 1.2 of K=1000" in tiny
    assert interpretation_warnings(ess_mean=1.9, k=8)  # below 2 draws whatever K
    assert not interpretation_warnings(ess_mean=1.0, k=1)  # K=1: nothing to weigh


def test_exact_posterior_has_no_warning_and_a_fixed_sigma_decoder_is_named(tiny_probe,
                                                                           tmp_path):
    from vaeprobe.adapters.native import HVAEProbe
    from vaeprobe.models import HVAE, preset

    probe, x = LinearGaussianProbe(), images()
    assert vp.iwae(probe, x, k=8, progress=False).attrs["warning"] == ""
    assert "fixed sigma" not in vp.iwae(tiny_probe, "digits8:test", k=4, n_images=8,
                                        progress=False).attrs["warning"]  # an optimal head
    torch.manual_seed(0)
    fixed = HVAEProbe(HVAE(preset("tiny-8", likelihood="fixed", sigma=0.5)), device="cpu")
    ds = vp.iwae(fixed, "digits8:test", k=4, n_images=8, progress=False)
    assert "fixed sigma (0.5 on [0, 1])" in ds.attrs["warning"]
    saved = vp.open_results(vp.save(ds, tmp_path / "i.nc"))
    assert saved.attrs["warning"] == ds.attrs["warning"]


def test_reconstruction_term_beside_rate_and_elbo(tiny_probe, digits_test):
    """rate: log_px is the decoder's log p(x|z) at the same posterior draws; elbo = log_px - R.
    iwae: per image, log_px - rate is the mean single-draw bound (the ELBO) over the K draws."""
    from vaeprobe.random import image_streams

    x = digits_test.images[:6]
    ds = vp.rate(tiny_probe, x, seed=3, progress=False)
    generators = image_streams(3, range(6))
    latents = tiny_probe.encode(x, 1, generators)
    log_px = tiny_probe.decode(latents).log_prob(x, generator=generators).double()
    assert float(ds["log_px"]) == pytest.approx(float(log_px.mean()), rel=1e-9)
    assert float(ds["elbo"]) == pytest.approx(float(ds["log_px"] - ds["total_rate"]), rel=1e-9)
    assert float(ds["log_px_bpd"]) == pytest.approx(-float(ds["log_px"]) / (64 * math.log(2)))
    assert ds["log_px"].attrs["units"] == "nats" and ds["elbo_bpd"].attrs["units"] == "bits/dim"
    assert ds.attrs["decoder_likelihood"] == "optimal" and ds.attrs["decoder_sigma"] > 0
    iw = vp.iwae(tiny_probe, x, k=4, progress=False)
    np.testing.assert_allclose(iw["log_px"] - iw["rate"], iw["elbo"], rtol=1e-9)
    assert float(iw["log_px_bpd_mean"]) == pytest.approx(
        -float(iw["log_px_mean"]) / (64 * math.log(2)))
    assert iw["log_px"].attrs["units"] == "nats" and float(iw["rate_mean"]) > 0


def test_posterior_mean_names_the_point_evaluation_and_keeps_the_elbo():
    """posterior="mean" changes only the reconstruction: elbo is E_q log p(x|z) - KL under
    both settings (the same draws), and log p(x | posterior mean) is log_px_at_mean. Oracle:
    probabilistic PCA, whose posterior is exact (so the ELBO equals log p(x) per image) and
    whose E_q log p(x|z) = log p(x | mean) - sum_j |W_j|^2 s_j^2 / (2 sigma^2) in closed form."""
    probe, x = LinearGaussianProbe(), images(n=400)
    sample = vp.rate(probe, x, progress=False)
    mean = vp.rate(probe, x, posterior="mean", progress=False)
    for name in ("elbo", "elbo_se", "log_px", "total_rate"):
        assert float(mean[name]) == float(sample[name]), name
    assert "log_px_at_mean" not in sample and "log_px_at_mean" in mean
    exact = probe.exact_log_likelihood(x).numpy()
    se = float(mean["elbo_se"])
    assert 0 < se < 1 and abs(float(mean["elbo"]) - exact.mean()) < 4 * se
    q_mean, q_logstd = probe.posterior(x)
    at_mean = probe.decode(vp.probe.LatentPass([vp.probe.LayerDraw(
        None, None, q_mean[:, :, None, None], None, None, None)], 1)).log_prob(x)
    assert float(mean["log_px_at_mean"]) == pytest.approx(float(at_mean.mean()), rel=1e-9)
    gap = float(((probe.W ** 2).sum(0) * torch.exp(2 * q_logstd[0])).sum()
                / (2 * probe.sigma ** 2))  # log p(x | mean) - E_q log p(x|z), every image
    assert float(mean["log_px_at_mean"] - mean["log_px"]) == pytest.approx(
        gap, abs=4 * float(mean["log_px_se"]))
    assert gap > 10 * float(mean["log_px_se"])  # the two are told apart at this size
    assert "not a term of the ELBO" in mean["log_px_at_mean"].attrs["long_name"]
    assert mean["elbo"].attrs["long_name"].startswith("ELBO: E_q log p(x|z)")
