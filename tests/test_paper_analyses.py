"""The paper's analyses: their pure cores on tiny synthetic inputs, the claims table, the run
cache, vp.samples(return_primary=True), the paper figures' plot functions, and one end-to-end
run of ``python -m analyses.paper --quick``."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import vaeprobe as vp
from analyses import mean_vs_stochastic, paper, rate_distortion, stability, two_stage
from analyses._claims import Claim, markdown, strictly_monotone
from analyses._common import Job, Setup, command_line, ensure_runs, run_state, thread_count
from vaeprobe.random import image_streams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = Setup(data="digits8", preset="tiny-8", steps=40, n_images=16, k=4, pca_images=300,
              n_show=4, runs="unused")


def images(n=4, value=0, shape=(1, 8, 8)):
    return np.full((n, *shape), value, dtype=np.uint8)


# ---- the claims table ----------------------------------------------------------------------
def test_markdown_reports_every_verdict_as_measured():
    claims = [Claim("a", "A holds", "x > 0", "x = 1", True),
              Claim("b", "B fails", "y > 0", "y = -1", False),
              Claim("c", "C missing", "z > 0", "z = nan", None)]
    text = markdown(claims, "Claims", "pre")
    assert "| A holds | **holds** |" in text and "| B fails | **does not hold** |" in text
    assert "| C missing | **not measured** |" in text
    assert "- measured: y = -1" in text and "1 of 3 claims hold." in text
    assert strictly_monotone([3, 2, 1], increasing=False)
    assert not strictly_monotone([3, 3, 1], increasing=False)
    assert not strictly_monotone([1, float("nan"), 3], increasing=True)


# ---- rate_distortion -------------------------------------------------------------------------
def sweep(rates, bpd, train_distortion, gammas=(1.0, 2.0, 4.0)):
    rows = [dict(rate=r, rate_se=0.1, distortion=g, distortion_se=0.01, mse=g / 64,
                 log_px=-10.0, log_px_se=0.1, log_px_bpd=1.0, log_px_bpd_se=0.01, elbo=-20.0,
                 elbo_se=0.1, iwae=-19.0, iwae_se=0.1, bpd=b, bpd_se=0.01, elbo_bpd=b + 0.1,
                 elbo_bpd_se=0.01, decoder_sigma=0.1, checkpoint_step=40,
                 train_distortion_final=d)
            for r, b, d, g in zip(rates, bpd, train_distortion, gammas, strict=True)]
    eigenvalues = np.array([2.0, 1.0, 0.5, 0.25, 0.125])
    pca = xr.Dataset({"eigenvalues": ("component", eigenvalues),
                      "rd_rate": ("rd_distortion", [3.0, 1.0, 0.1], {"units": "nats"}),
                      "components_needed": (("order", "target"), [[1, 2, 3], [4, 5, 5]],
                                            {"units": "components"}),
                      "total_variance": ((), float(eigenvalues.sum()))},
                     coords={"rd_distortion": [0.1, 1.0, 3.0], "order": ["top", "bottom"],
                             "target": list(gammas), "component": np.arange(5)})
    n = len(gammas)
    return rate_distortion.assemble(rows, gammas, pca, np.stack([images()] * n),
                                    np.stack([images(value=9)] * n), images(value=200), SETUP)


def test_rate_distortion_dataset_has_units_and_provenance():
    ds = sweep([30.0, 10.0, 1.0], [5.0, 6.0, 7.0], [1.0, 2.0, 4.0])
    assert ds["samples"].dims == ("gamma", "image", "channel", "y", "x")
    assert ds["samples"].dtype == np.uint8
    for name in ("rate", "rate_se", "bpd", "log_px_bpd", "rd_bound", "rd_rate"):
        assert ds[name].attrs["units"], name
    assert all(dim in ds.coords for dim in ds.dims)
    assert ds.attrs["analysis"] == "rate_distortion" and ds.attrs["n_images"] == 16
    # the Gaussian R(D) bound at each run's distortion is reverse water-filling's
    from vaeprobe.pca import gaussian_rate_distortion
    np.testing.assert_allclose(ds["rd_bound"], gaussian_rate_distortion(
        [2.0, 1.0, 0.5, 0.25, 0.125], [1.0, 2.0, 4.0]))


def test_rate_distortion_claims_hold_or_not_by_their_numbers():
    good = {c.key: c for c in rate_distortion.claims(sweep([30.0, 10.0, 1.0], [5.0, 6.0, 7.0],
                                                           [1.05, 1.9, 4.2]))}
    assert all(c.holds for c in good.values()), [c for c in good.values() if not c.holds]
    bad = {c.key: c for c in rate_distortion.claims(sweep([30.0, 40.0, 1.0], [7.0, 6.0, 5.0],
                                                          [1.5, 2.0, 4.0]))}
    assert bad["rate_falls_with_gamma"].holds is False
    assert bad["elbo_favours_high_rate"].holds is False
    assert bad["distortion_targeting_converges"].holds is False  # 1.5 is 50% above gamma 1
    assert "gamma 1: training D 1.5 (+50.0%)" in bad["distortion_targeting_converges"].evidence


# ---- two_stage -------------------------------------------------------------------------------
def comparison(primary_bpd, two_stage_bpd, refined_value):
    rows = []
    for model, bpd in zip(two_stage.MODELS, (primary_bpd, two_stage_bpd, two_stage_bpd),
                          strict=True):
        rows.append(dict(rate=5.0, rate_se=0.1, distortion=2.0, distortion_se=0.1,
                         log_px_bpd=1.0, log_px_bpd_se=0.1, bpd=float(np.mean(bpd)),
                         bpd_se=0.05, elbo_bpd=float(np.mean(bpd)) + 0.1, elbo_bpd_se=0.05,
                         decoder_sigma=0.1, checkpoint_step=40, bpd_per_image=np.asarray(bpd),
                         stage_rate={"primary": 5.0} if model != "two-stage" else
                         {"primary": 5.0, "secondary": 20.0}))
    x_hat = images(value=100)
    found = dict(x_hat=x_hat, **{"two-stage": images(value=refined_value), "direct": x_hat})
    return two_stage.assemble(rows, found, 2.0, 0.5, SETUP)


def test_paired_gain_and_sample_change_against_hand_computed_values():
    gain, se = two_stage.paired_gain([3.0, 4.0, 5.0], [2.0, 3.5, 4.0])
    assert gain == pytest.approx(np.mean([1.0, 0.5, 1.0]))
    assert se == pytest.approx(np.std([1.0, 0.5, 1.0], ddof=1) / np.sqrt(3))
    change, _ = two_stage.sample_change(images(value=100), images(value=110))
    assert change == pytest.approx(64 * (10 / 255) ** 2)


def test_two_stage_claim_needs_a_significant_gain_and_small_changes():
    rng = np.random.default_rng(0)
    primary = 3.0 + rng.normal(0, 0.5, 50)
    ds = comparison(primary, primary - 0.3 + rng.normal(0, 0.01, 50), 101)
    assert ds["stage_rate"].sel(model="two-stage", stage="secondary") == 20.0
    assert np.isnan(ds["stage_rate"].sel(model="primary", stage="secondary"))
    assert two_stage.claims(ds)[0].holds is True
    noise = comparison(primary, primary + rng.normal(0, 0.5, 50), 101)  # no real gain
    assert two_stage.claims(noise)[0].holds is False
    moved = comparison(primary, primary - 0.3, 200)  # the samples change by more than D
    assert two_stage.claims(moved)[0].holds is False


# ---- mean_vs_stochastic ----------------------------------------------------------------------
def test_total_variation_and_high_frequency_closed_forms():
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[None, None]
    assert mean_vs_stochastic.total_variation(images(2, 7)) == pytest.approx([0.0, 0.0])
    assert mean_vs_stochastic.total_variation(checker)[0] == pytest.approx(1.0)
    ramp = np.tile(np.linspace(0, 255, 8).astype(np.uint8), (8, 1))[None, None]
    noise = np.random.default_rng(0).integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    assert mean_vs_stochastic.high_frequency(ramp) < mean_vs_stochastic.high_frequency(noise)


def test_mean_vs_stochastic_claim_follows_the_measures():
    rng = np.random.default_rng(1)
    smooth = np.tile(np.linspace(50, 200, 8).astype(np.uint8), (6, 1, 8, 1))
    noisy = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)
    ds = mean_vs_stochastic.assemble(dict(mean=smooth, stochastic=noisy, data=smooth), 1.0,
                                     SETUP, "run")
    assert ds["preview"].dims == ("kind", "image", "channel", "y", "x")
    assert ds["total_variation"].attrs["units"] and ds.attrs["gamma"] == 1.0
    assert mean_vs_stochastic.claims(ds)[0].holds is True
    swapped = mean_vs_stochastic.assemble(dict(mean=noisy, stochastic=smooth), 1.0, SETUP, "r")
    assert mean_vs_stochastic.claims(swapped)[0].verdict == "does not hold"


# ---- stability -------------------------------------------------------------------------------
def training_log(grad_norm, skipped, sigma, mse):
    steps = np.arange(1, len(grad_norm) + 1) * 10
    units = {"units": "1"}
    return xr.Dataset({"train_grad_norm": ("train_step", np.asarray(grad_norm, float), units),
                       "train_skipped": ("train_step", np.asarray(skipped, float), units),
                       "train_sigma": ("train_step", np.full(len(steps), sigma), units),
                       "train_mse": ("train_step", np.full(len(steps), mse), units),
                       "train_distortion": ("train_step", np.full(len(steps), 64 * mse), units),
                       "train_elbo_bpd": ("train_step", np.full(len(steps), 5.0), units)},
                      coords={"train_step": steps})


def test_spikes_count_norms_far_above_the_median_and_non_finite_ones():
    assert stability.spikes([1.0, 1.1, 0.9, 50.0, float("inf"), float("nan")]) == 3
    assert stability.spikes([1.0, 2.0, 3.0]) == 0


@pytest.mark.parametrize("sigma, holds", [(0.1 * np.sqrt(1.1), True), (0.1 * np.sqrt(1.5),
                                                                       False)])
def test_stability_claims(sigma, holds):
    unstable = training_log([1, 1, 30, 1, 1, 1], [0, 0, 1, 1, 2, 2], sigma, 0.01)
    stable = training_log([1, 1, 1, 1], [0, 0, 0, 0], 0.1, 0.01)
    log = stability.combined_log([unstable, stable])
    assert log.sizes["train_step"] == 6 and np.isnan(log["train_grad_norm"].values[1, -1])
    rows = [dict(rate=1.0, rate_se=0.1, distortion=0.64, distortion_se=0.01, mse=0.01,
                 bpd=5.0, bpd_se=0.1, elbo_bpd=5.1, elbo_bpd_se=0.1, decoder_sigma=sigma,
                 checkpoint_step=60)] * 2
    ds = stability.assemble(rows, np.stack([images(), images()]), log, 0.64, SETUP)
    assert list(ds["grad_skipped"].values) == [2, 0] and list(ds["grad_spikes"].values) == [1, 0]
    found = {c.key: c for c in stability.claims(ds)}
    assert found["distortion_targeting_is_stable"].holds is True
    assert found["learned_sigma_matches_mse"].holds is holds
    assert stability.matched_gamma(unstable) == pytest.approx(0.64)


# ---- frequency shift claim -------------------------------------------------------------------
@pytest.mark.parametrize("late_hf, se, holds", [
    (0.1, 0.01, True),    # fell by 0.1, 2 se of the difference = 0.028
    (0.3, 0.01, False),   # rose
    (0.17, 0.02, False),  # fell by 0.03, within 2 se = 0.057: the frequency_shift verdict's test
])
def test_frequency_shift_claim(late_hf, se, holds):
    ds = xr.Dataset({"distortion": ("step", [20.0, 8.2, 8.0, 7.9]),
                     "rate": ("step", [500.0, 300.0, 200.0, 150.0]),
                     "high_frequency_fraction": ("step", [0.4, 0.2, 0.15, late_hf]),
                     "high_frequency_fraction_se": ("step", [se] * 4),
                     "high_frequency_fraction_data": ((), 0.3),
                     "high_frequency_fraction_pca": ((), 0.05), "pca_k": ((), 10)},
                    coords={"step": [100, 200, 400, 800]})
    claim = paper.claim_frequency_shift(ds)
    assert claim.holds is holds and "step 200" in claim.evidence  # the earliest close step
    assert "standard error" in claim.evidence and "2 standard errors" in claim.criterion


# ---- the run cache ---------------------------------------------------------------------------
def tiny_values(tiny_run, **changes):
    values = dict(preset="tiny-8", data="digits8", objective="distortion", gamma=2.0, steps=40,
                  ckpt_every=10, log_every=10, progress=False, out=str(tiny_run), seed=0)
    values.update(changes)
    return values


def test_cache_reuses_a_finished_run_and_refuses_a_different_one(tiny_run, tmp_path):
    assert run_state(tiny_values(tiny_run)) == "reuse"
    assert run_state(tiny_values(tiny_run, steps=80)) == "resume"
    assert run_state(tiny_values(tiny_run, out=str(tmp_path / "new"))) == "train"
    with pytest.raises(SystemExit, match="holds a different run"):
        run_state(tiny_values(tiny_run, gamma=3.0))
    setup = Setup(runs=str(tmp_path), workers=2)
    calls = []

    def later():
        calls.append(1)
        return tiny_values(tiny_run)

    paths = ensure_runs(setup, [Job("second", later, needs=("first",)),
                                Job("first", tiny_values(tiny_run))])
    assert paths == {"first": tiny_run, "second": tiny_run} and calls == [1]
    with pytest.raises(ValueError, match="need runs"):
        ensure_runs(setup, [Job("orphan", tiny_values(tiny_run), needs=("missing",))])


def test_command_line_and_threads():
    assert command_line(dict(gamma=2.0, progress=False, resume=True, out="r")) == [
        "--gamma", "2.0", "--no-progress", "--resume", "--out", "r"]
    assert thread_count(2, {"OMP_NUM_THREADS": "3"}) == 3
    assert thread_count(4, {}) >= 1
    jobs = paper.all_jobs(SETUP, paper.plan(SETUP, quick=True))
    names = [job.name for job in jobs]
    assert len(names) == len(set(names))  # shared runs appear once
    assert names.index("distortion-gamma2") < names.index("two-stage-gamma0.5-on-gamma2")


# ---- vp.samples(return_primary=True) ---------------------------------------------------------
def test_samples_return_the_primary_x_hat_of_a_two_stage_model(tiny_run):
    from vaeprobe.adapters.native import probe_for
    from vaeprobe.models import TwoStageVAE, secondary_config

    primary = vp.load(tiny_run, device="cpu")
    torch.manual_seed(0)
    model = TwoStageVAE(primary.model.config, secondary_config(primary.model.config))
    model.primary.load_state_dict(primary.model.state_dict())
    probe = probe_for(model, device="cpu")
    ds = vp.samples(probe, 5, kind="mean", seed=3, batch_size=2, return_primary=True,
                    progress=False)
    assert ds["primary_mean"].dims == ("image", "channel", "y", "x")
    assert ds["primary_mean"].dtype == np.uint8 and ds["primary_mean"].attrs["units"]
    latents = probe.sample_prior(5, generator=image_streams(3, range(5)))
    np.testing.assert_array_equal(ds["primary_mean"].values,
                                  vp.data.to_uint8(latents.context["x_hat"]).numpy())
    # the primary's own samples of the same seed: the same latents, so the same x_hat
    alone = vp.samples(primary, 5, kind="mean", seed=3, progress=False)
    np.testing.assert_array_equal(ds["primary_mean"].values, alone["images"].values)
    recon = vp.samples(probe, 3, kind="reconstruction_mean", data="digits8:test",
                       return_primary=True, progress=False)
    assert recon["primary_mean"].shape == recon["images"].shape
    with pytest.raises(ValueError, match="two-stage"):
        vp.samples(primary, 2, kind="mean", return_primary=True, progress=False)


# ---- plot functions --------------------------------------------------------------------------
def test_paper_plot_functions_draw_from_datasets(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd = sweep([30.0, 10.0, 1.0], [5.0, 6.0, 7.0], [1.0, 2.0, 4.0])
    fig, axs = plt.subplots(2, 4)
    assert vp.plot.rate_distortion(rd, ax=axs[0, 0]) is axs[0, 0]
    assert len(axs[0, 0].lines) >= 2  # the runs and the R(D) curve
    vp.plot.against_distortion(rd, ["bpd", "elbo_bpd"], ax=axs[0, 1])
    vp.plot.image_rows(rd["samples"], ax=axs[0, 2])
    ts = comparison(np.full(4, 3.0), np.full(4, 2.0), 101)
    vp.plot.bits_by_stage(ts, ax=axs[0, 3])
    vp.plot.rate_by_stage(ts, ax=axs[1, 0])
    vp.plot.bars(ts, "rate", ax=axs[1, 1])
    log = stability.combined_log([training_log([1, 2, 30], [0, 1, 1], 0.1, 0.01),
                                  training_log([1, 1, 1], [0, 0, 0], 0.1, 0.01)])
    vp.plot.training_comparison(log, "train_grad_norm", ax=axs[1, 2])
    assert len(axs[1, 2].get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match="row, image"):
        vp.plot.image_rows(rd["data_images"])
    vp.plot.save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_quick_writes_every_figure_and_the_claims(tmp_path):
    """``python -m analyses.paper --quick``: every run trained once, every figure, claims.md;
    a module run afterwards reuses the cached run."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "analyses.paper", "--quick", "--out", "out", "--runs",
               "runs"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in paper.FIGURES:
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert vp.open_results(tmp_path / "out" / f"{name}.nc").attrs["analysis"] == name
    claims = (tmp_path / "out" / "claims.md").read_text()
    for key in ("Distortion targeting converges", "Rate falls", "ELBO favours",
                "Two-stage training", "Mean samples", "high-frequency power", "PCA",
                "sigma^2", "less stably"):
        assert key in claims, key
    assert claims.count("- verdict: **") == 9
    two = vp.open_results(tmp_path / "out" / "two_stage.nc")
    assert np.isfinite(float(two["bpd_gain"])) and two["samples"].sizes["sample_row"] == 3
    # a module on its own shares the cache: nothing is trained again
    again = subprocess.run([sys.executable, "-m", "analyses.mean_vs_stochastic", "--quick",
                            "--out", "again", "--runs", "runs"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the finished run" in again.stdout and ": train\n" not in again.stdout
    assert (tmp_path / "again" / "mean_vs_stochastic.png").exists()
