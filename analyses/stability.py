"""Is a learned-variance ELBO VAE harder to train than a distortion-targeted one at its MSE?

``python -m analyses.stability`` (Section 2, Figures 1 and 2 of "Mind Your Bits and Errors";
and the sigma-VAE claim that a learned shared sigma^2 converges to the MSE). Trains (or reuses)
an ELBO VAE with a learned decoder sigma, then a distortion-targeted VAE whose gamma is the
ELBO run's final training distortion (the same MSE). Reads both training logs through
``vaeprobe.Run``: MSE, ELBO and gradient norm over training, skipped updates and gradient-norm
spikes; evaluates both on test images; draws mean samples of both. Writes results/stability.nc
and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import vaeprobe as vp
from analyses._claims import Claim, fmt
from analyses._common import (
    Job,
    Setup,
    add_setup_arguments,
    ensure_runs,
    evaluate,
    figure_axes,
    finish_figure,
    image_variable,
    publish,
    setup_from_args,
    tail_mean,
    variables_along,
)
from vaeprobe.io import provenance
from vaeprobe.run import Run

ELBO_RUN = "elbo-learned-sigma"
MATCHED_RUN = "distortion-matched-to-elbo"  # gamma: the ELBO run's final training distortion
RUNS = ("elbo, learned sigma", "distortion-targeted")
LOGGED = ("train_mse", "train_distortion", "train_elbo_bpd", "train_rate", "train_grad_norm",
          "train_skipped", "train_sigma", "train_lambda")
SPIKE = 10.0  # a gradient-norm spike: a logged norm above 10x the run's median
SIGMA_TOLERANCE = 0.20  # learned sigma^2 within 20% of the MSE
SCALARS = ("rate", "distortion", "mse", "bpd", "elbo_bpd", "decoder_sigma", "checkpoint_step")


def jobs(setup: Setup) -> list[Job]:
    """The ELBO run with a learned sigma, then the distortion-targeted run at its distortion."""
    def matched() -> dict:
        gamma = matched_gamma(Run(setup.run_dir(ELBO_RUN)).training_log())
        print(f"  the ELBO run's final training distortion is {gamma:g}: the target of "
              f"{MATCHED_RUN}", flush=True)
        return setup.train_values(MATCHED_RUN, objective="distortion", gamma=gamma,
                                  likelihood="optimal")

    return [Job(ELBO_RUN, setup.train_values(ELBO_RUN, objective="elbo", likelihood="learned")),
            Job(MATCHED_RUN, matched, needs=(ELBO_RUN,))]


def matched_gamma(log: xr.Dataset) -> float:
    """The ELBO run's final training distortion (last 10% of logged steps), to 3 significant
    digits: the distortion-targeted run's gamma."""
    value = tail_mean(log, "train_distortion")
    if not np.isfinite(value) or value <= 0:
        raise SystemExit(f"the ELBO run's training log has no usable distortion ({value}); "
                         f"retrain it")
    return float(f"{value:.3g}")


def combined_log(logs: list[xr.Dataset]) -> xr.Dataset:
    """Training logs side by side along ``run`` (outer join on ``train_step``)."""
    kept = [log[[v for v in LOGGED if v in log]] for log in logs]
    ds = xr.concat(kept, dim="run", join="outer", combine_attrs="drop_conflicts")
    return ds.assign_coords(run=list(RUNS[:len(logs)]))


def spikes(grad_norm: np.ndarray, factor: float = SPIKE) -> int:
    """Logged steps whose gradient norm exceeds ``factor`` times the run's median (NaN and
    infinite norms count as spikes)."""
    values = np.asarray(grad_norm, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return int(len(values))
    return int((~np.isfinite(values)).sum() + (finite > factor * np.median(finite)).sum())


def instability(log: xr.Dataset) -> dict:
    """Skipped updates, gradient-norm spikes and the largest norm relative to the median, per
    run of a combined log."""
    out = {}
    for run in log.run.values:
        one = log.sel(run=run)
        norms = one["train_grad_norm"].values
        norms = norms[~np.isnan(norms)]
        skipped = one["train_skipped"].values
        skipped = skipped[np.isfinite(skipped)]
        finite = norms[np.isfinite(norms)]
        out[str(run)] = dict(
            skipped=int(skipped[-1]) if len(skipped) else 0, spikes=spikes(norms),
            max_over_median=float(finite.max() / np.median(finite)) if len(finite) else np.nan)
    return out


def analyse(setup: Setup, paths: dict[str, Path]) -> xr.Dataset:
    test = setup.load("test")
    names = [ELBO_RUN, MATCHED_RUN]
    gamma = Run(paths[MATCHED_RUN]).gamma
    rows, samples, logs = [], [], []
    for name in names:
        probe = vp.load(paths[name], device=setup.device_or_none)
        print(f"  evaluating {paths[name]}", flush=True)
        rows.append(evaluate(probe, test, setup))
        samples.append(vp.samples(probe, setup.n_show, kind="mean", seed=setup.seed,
                                  progress=False)["images"].values)
        logs.append(Run(paths[name]).training_log())
    return assemble(rows, np.stack(samples), combined_log(logs), gamma, setup)


def assemble(rows: list[dict], samples: np.ndarray, log: xr.Dataset, gamma: float,
             setup: Setup) -> xr.Dataset:
    """The Dataset along ``run`` (pure: tests build it from synthetic logs and rows)."""
    ds = xr.Dataset(variables_along("run", rows, SCALARS), coords={"run": list(log.run.values)})
    ds = xr.merge([ds, log], combine_attrs="override")
    measures = instability(log)
    for name, units in (("skipped", "updates"), ("spikes", "logged steps"),
                        ("max_over_median", "1")):
        ds[f"grad_{name}"] = ("run", [measures[str(r)][name] for r in ds.run.values],
                              {"units": units, "long_name": f"gradient {name.replace('_', ' ')}"
                                                            f" (spike: > {SPIKE:g}x median)"})
    elbo_log = log.sel(run=RUNS[0])
    ds["sigma_squared_final"] = ((), tail_mean(elbo_log, "train_sigma") ** 2,
                                 {"units": "mean square on [0, 1]",
                                  "long_name": "learned sigma^2, last 10% of logged steps"})
    ds["mse_final"] = ((), tail_mean(elbo_log, "train_mse"),
                       {"units": "mean square on [0, 1]",
                        "long_name": "training MSE, last 10% of logged steps"})
    ds["samples"] = image_variable(samples, ("run",))
    ds = ds.assign_coords(image=np.arange(ds.sizes["image"]),
                          channel=np.arange(ds.sizes["channel"]), y=np.arange(ds.sizes["y"]),
                          x=np.arange(ds.sizes["x"]))
    ds.attrs = provenance("stability", setup.parameters(), dataset=f"{setup.data}:test",
                          n_images=setup.n_images, seed=setup.seed, k=setup.k,
                          gamma=float(gamma), runs=setup.runs)
    return ds


def figure(ds: xr.Dataset, path: Path) -> None:
    fig, axs = figure_axes(2, 3, size=(4.4, 3.6))
    for ax, variable, title in ((axs[0, 0], "train_mse", "(a) mean squared error"),
                                (axs[0, 1], "train_elbo_bpd", "(b) negative ELBO"),
                                (axs[0, 2], "train_grad_norm", "(c) gradient norm (x: skipped)")):
        vp.plot.training_comparison(ds, variable, ax=ax, title=title)
    vp.plot.training_comparison(ds, "train_sigma", ax=axs[1, 0],
                                title="(d) decoder sigma (learned vs optimal)")
    samples = ds["samples"].rename(run="row")
    vp.plot.image_rows(samples, ax=axs[1, 1])
    axs[1, 1].set_title("(e) mean samples (Figure 2)", fontsize=9)
    axs[1, 2].set_axis_off()
    axs[1, 2].text(0, 0.5, summary(ds), fontsize=7, family="monospace", va="center")
    finish_figure(fig, path, f"Stability (Figure 1): ELBO with learned sigma vs distortion "
                             f"target gamma = {ds.attrs['gamma']:g}, {ds.attrs['dataset']}")


def summary(ds: xr.Dataset) -> str:
    lines = []
    for run in ds.run.values:
        one = ds.sel(run=run)
        lines.append(f"{run}: test MSE {float(one.mse):.5f}, ELBO {float(one.elbo_bpd):.3f} "
                     f"bpd, rate {float(one.rate):.1f} nats")
        lines.append(f"  skipped {int(one.grad_skipped)}, gradient spikes "
                     f"{int(one.grad_spikes)}, max/median norm "
                     f"{float(one.grad_max_over_median):.3g}")
    lines.append(f"learned sigma^2 {float(ds.sigma_squared_final):.5f} vs training MSE "
                 f"{float(ds.mse_final):.5f}")
    return "\n".join(lines)


def claims(ds: xr.Dataset) -> list[Claim]:
    elbo, target = (ds.sel(run=r) for r in ds.run.values[:2])

    def counts(one):
        return int(one.grad_skipped) + int(one.grad_spikes)

    evidence = "; ".join(
        f"{r}: {int(one.grad_skipped)} skipped updates, {int(one.grad_spikes)} gradient-norm "
        f"spikes, max/median norm {fmt(float(one.grad_max_over_median), 3)}, test MSE "
        f"{fmt(float(one.mse), 3)}" for r, one in zip(ds.run.values, (elbo, target),
                                                      strict=True))
    stability = Claim(
        "distortion_targeting_is_stable",
        "A learned-variance ELBO VAE trains less stably than a distortion-targeted VAE at the "
        "same MSE (Figure 1)",
        f"skipped updates + gradient-norm spikes (> {SPIKE:g}x the run's median) more frequent "
        f"in the ELBO run", evidence, counts(elbo) > counts(target))
    sigma2, mse = float(ds.sigma_squared_final), float(ds.mse_final)
    ratio = sigma2 / mse if mse > 0 else float("nan")
    checkpoint_sigma = float(elbo.decoder_sigma)
    evidence = (f"learned sigma^2 {fmt(sigma2)} vs training MSE {fmt(mse)} (ratio "
                f"{fmt(ratio, 3)}), both means of the last 10% of logged steps; checkpoint "
                f"sigma^2 {fmt(checkpoint_sigma ** 2)} vs test MSE {fmt(float(elbo.mse))}")
    sigma = Claim("learned_sigma_matches_mse",
                  "sigma-VAE: a learned shared decoder sigma^2 converges to the MSE",
                  f"|sigma^2 / MSE - 1| <= {SIGMA_TOLERANCE:g}", evidence,
                  bool(abs(ratio - 1) <= SIGMA_TOLERANCE) if np.isfinite(ratio) else None)
    return [stability, sigma]


def run(setup: Setup, out: Path) -> xr.Dataset:
    """Train or reuse both runs, compare them, write stability.nc and .png."""
    print(f"stability: runs in {setup.runs}", flush=True)
    ds = analyse(setup, ensure_runs(setup, jobs(setup)))
    return publish(ds, out, "stability", figure, summary)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.stability",
                                     description=__doc__.split("\n\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--out", default="results", help="directory for the .nc and .png")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run(setup_from_args(args), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
