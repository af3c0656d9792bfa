"""How much rate does each distortion cost, and which rate does the ELBO favour?

``python -m analyses.rate_distortion`` (Section 3.2, Figures 4, 5 and 6 of "Mind Your Bits and
Errors"). Trains (or reuses, or resumes) one distortion-targeted VAE per gamma in the cache of
runs, evaluates each on test images (rate, distortion, E log p(x|z), ELBO and IWAE bound, with
standard errors; the decoder evaluated at its optimal sigma, sigma^2 = MSE), and writes
results/rate_distortion.nc and results/rate_distortion.png: (a) rate against distortion with
the Gaussian R(D) bound of the data's PCA; (b) -E log p(x|z) and (c) the ELBO and IWAE bound in
bits/dim against distortion; (d) the data and its reconstructions per gamma (Figure 4); (e) mean
samples per gamma (Figure 5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import vaeprobe as vp
from analyses._claims import Claim, fmt, strictly_monotone
from analyses._common import (
    Job,
    Setup,
    add_setup_arguments,
    ensure_runs,
    evaluate,
    figure_axes,
    finish_figure,
    image_variable,
    jobs_of,
    publish,
    setup_from_args,
    tail_mean,
    variables_along,
)
from vaeprobe.io import provenance
from vaeprobe.pca import gaussian_rate_distortion
from vaeprobe.run import Run

GAMMAS = {"quick": (0.5, 1.0, 2.0), "default": (2.0, 8.0, 16.0, 64.0)}
CONVERGED = 0.10  # distortion targeting converges: training distortion within 10% of gamma
SCALARS = ("rate", "distortion", "mse", "log_px", "log_px_bpd", "elbo", "iwae", "bpd",
           "elbo_bpd", "decoder_sigma", "checkpoint_step", "train_distortion_final")


def run_name(gamma: float) -> str:
    """The cache name of the distortion-targeted run at ``gamma``."""
    return f"distortion-gamma{gamma:g}"


def run_configs(setup: Setup, gammas) -> dict[str, dict]:
    """Trainer configs of the sweep: one distortion-targeted run per gamma, evaluated with the
    optimal decoder sigma (the Lagrangian never reads sigma: it changes no weight)."""
    return {run_name(g): setup.train_values(run_name(g), objective="distortion", gamma=float(g),
                                            likelihood="optimal") for g in gammas}


def jobs(setup: Setup, gammas) -> list[Job]:
    return jobs_of(run_configs(setup, gammas))


def analyse(setup: Setup, gammas, paths: dict[str, Path]) -> xr.Dataset:
    """Evaluate every run of the sweep and the data's PCA: one Dataset along ``gamma``."""
    test = setup.load("test")
    rows, samples, reconstructions, sources = [], [], [], None
    for gamma in gammas:
        path = paths[run_name(gamma)]
        probe = vp.load(path, device=setup.device_or_none)
        print(f"  evaluating {path}", flush=True)
        row = evaluate(probe, test, setup)
        row["train_distortion_final"] = tail_mean(Run(path).training_log(), "train_distortion")
        rows.append(row)
        samples.append(vp.samples(probe, setup.n_show, kind="mean", seed=setup.seed,
                                  progress=False)["images"].values)
        recon = vp.samples(probe, setup.n_show, kind="reconstruction_mean", data=test,
                           seed=setup.seed, progress=False)
        reconstructions.append(recon["images"].values)
        sources = recon["source_index"].values
    data_images = vp.data.gather(vp.data.as_dataset(test), sources).numpy()
    pca = vp.pca_baseline(setup.load("train"), n_images=setup.pca_images,
                          targets=sorted(float(g) for g in gammas), seed=setup.seed,
                          device=setup.device_or_none, progress=setup.progress)
    return assemble(rows, gammas, pca, np.stack(samples), np.stack(reconstructions),
                    data_images, setup)


def assemble(rows: list[dict], gammas, pca: xr.Dataset, samples, reconstructions, data_images,
             setup: Setup) -> xr.Dataset:
    """The sweep's Dataset from per-run rows (pure: tests build it from synthetic rows)."""
    ds = xr.Dataset(variables_along("gamma", rows, SCALARS),
                    coords={"gamma": np.asarray(gammas, dtype=np.float64)})
    ds["gamma"].attrs["units"] = "sum of squares on [0, 1]"
    ds["rd_bound"] = ("gamma", gaussian_rate_distortion(pca["eigenvalues"].values,
                                                        ds["distortion"].values),
                      {"units": "nats", "long_name": "Gaussian R(D) at each run's distortion"})
    ds["rd_rate"] = pca["rd_rate"]
    ds["components_needed"] = pca["components_needed"]
    ds["total_variance"] = pca["total_variance"]
    ds["samples"] = image_variable(samples, ("gamma",))
    ds["reconstructions"] = image_variable(reconstructions, ("gamma",))
    ds["data_images"] = image_variable(data_images, ())
    ds = ds.assign_coords(image=np.arange(ds.sizes["image"]),
                          channel=np.arange(ds.sizes["channel"]), y=np.arange(ds.sizes["y"]),
                          x=np.arange(ds.sizes["x"]))
    ds.attrs = provenance("rate_distortion", setup.parameters(), dataset=f"{setup.data}:test",
                          n_images=setup.n_images, seed=setup.seed, k=setup.k,
                          gammas=[float(g) for g in gammas], runs=setup.runs)
    return ds


def figure(ds: xr.Dataset, path: Path) -> None:
    fig, axs = figure_axes(2, 3)
    vp.plot.rate_distortion(ds, ax=axs[0, 0])
    axs[0, 0].set_title("(a) rate vs distortion (Figure 6)")
    vp.plot.against_distortion(ds, ["log_px_bpd"], ax=axs[0, 1],
                               labels=["-E log p(x|z)"], ylabel="bits / dim")
    axs[0, 1].set_title("(b) reconstruction term")
    vp.plot.against_distortion(ds, ["bpd", "elbo_bpd"], ax=axs[0, 2],
                               labels=["-IWAE bound", "-ELBO"], ylabel="bits / dim")
    axs[0, 2].set_title("(c) negative bounds (lower is better)")
    data_row = ds["data_images"].expand_dims(row=["data"])
    recon = ds["reconstructions"].rename(gamma="row")
    recon = recon.assign_coords(row=[f"gamma {g:g}, R={r:.3g}" for g, r in
                                     zip(ds.gamma.values, ds.rate.values, strict=True)])
    vp.plot.image_rows(xr.concat([data_row, recon], dim="row"), ax=axs[1, 0])
    axs[1, 0].set_title("(d) data and reconstructions (Figure 4)")
    samples = ds["samples"].rename(gamma="row").assign_coords(row=recon.row.values)
    vp.plot.image_rows(samples, ax=axs[1, 1])
    axs[1, 1].set_title("(e) mean samples (Figure 5)")
    axs[1, 2].set_axis_off()
    axs[1, 2].text(0, 0.5, summary(ds), fontsize=7, family="monospace", va="center")
    finish_figure(fig, path, f"Rate-distortion on {ds.attrs['dataset']}")


def summary(ds: xr.Dataset) -> str:
    lines = ["gamma   D (test)  rate[nats]  R(D) bound  ELBO bpd  IWAE bpd"]
    for g in ds.gamma.values:
        one = ds.sel(gamma=g)
        lines.append(f"{g:<7g} {float(one.distortion):<9.3f} {float(one.rate):<11.1f} "
                     f"{float(one.rd_bound):<11.1f} {float(one.elbo_bpd):<9.3f} "
                     f"{float(one.bpd):.3f}")
    return "\n".join(lines)


# ---- claims ----------------------------------------------------------------------------------
def claims(ds: xr.Dataset) -> list[Claim]:
    return [claim_converges(ds), claim_rate_falls(ds), claim_elbo_favours_rate(ds),
            claim_pca(ds)]


def claim_converges(ds: xr.Dataset) -> Claim:
    gammas = ds.gamma.values
    final = ds["train_distortion_final"].values
    gap = np.abs(final - gammas) / gammas
    evidence = "; ".join(f"gamma {g:g}: training D {fmt(d)} ({100 * e:+.1f}%), test D "
                         f"{fmt(t)}" for g, d, e, t in zip(gammas, final, (final - gammas) /
                                                          gammas, ds.distortion.values,
                                                          strict=True))
    return Claim("distortion_targeting_converges",
                 "Distortion targeting converges: each run reaches its target distortion",
                 f"training distortion (mean of the last 10% of logged steps) within "
                 f"{100 * CONVERGED:g}% of gamma for every run", evidence,
                 bool(np.all(gap <= CONVERGED)) if np.isfinite(gap).all() else None)


def claim_rate_falls(ds: xr.Dataset) -> Claim:
    order = np.argsort(ds.gamma.values)
    rates = ds.rate.values[order]
    evidence = ", ".join(f"gamma {g:g}: {fmt(r)} +- {fmt(s, 2)} nats" for g, r, s in
                         zip(ds.gamma.values[order], rates, ds.rate_se.values[order],
                             strict=True))
    return Claim("rate_falls_with_gamma", "Rate falls as the distortion target gamma grows",
                 "test rate strictly decreasing in gamma", evidence,
                 strictly_monotone(rates, increasing=False))


def claim_elbo_favours_rate(ds: xr.Dataset) -> Claim:
    order = np.argsort(ds.gamma.values)
    bpd, elbo_bpd = ds.bpd.values[order], ds.elbo_bpd.values[order]
    best = int(np.nanargmin(bpd)) if np.isfinite(bpd).any() else -1
    highest_rate = int(np.nanargmax(ds.rate.values[order]))
    evidence = ", ".join(
        f"gamma {g:g} (rate {fmt(r)}): IWAE {b:.3f} +- {s:.3f}, ELBO {e:.3f} bpd, sigma "
        f"{fmt(sig, 3)}" for g, r, b, s, e, sig in
        zip(ds.gamma.values[order], ds.rate.values[order], bpd, ds.bpd_se.values[order],
            elbo_bpd, ds.decoder_sigma.values[order], strict=True))
    holds = best == highest_rate and strictly_monotone(bpd, increasing=True)
    return Claim("elbo_favours_high_rate",
                 "The ELBO favours high-rate models (Figure 6)",
                 "IWAE bits/dim strictly increasing in gamma, so the best bound belongs to the "
                 "highest-rate model", evidence, holds if best >= 0 else None)


def claim_pca(ds: xr.Dataset) -> Claim:
    needed = ds["components_needed"]
    targets = needed["target"].values
    top, bottom = needed.sel(order="top").values, needed.sel(order="bottom").values
    evidence = "; ".join(f"D <= {t:g}: top-{int(a)} vs bottom-{int(b)}" for t, a, b in
                         zip(targets, top, bottom, strict=True)) + \
        f" (of {int(ds.sizes.get('component', 0)) or 'D'} components)"
    below = targets < float(ds["total_variance"])  # above it, zero components suffice
    holds = bool(np.all((top[below] >= 0) & (top[below] < bottom[below]))) if below.any() \
        else None
    return Claim("pca_top_beats_bottom",
                 "PCA: the top-k components reach a distortion with far fewer components than "
                 "the bottom-k", "components needed by top-k < by bottom-k at every gamma below "
                 "the data's total variance", evidence, holds)


def run(setup: Setup, out: Path, gammas) -> xr.Dataset:
    """Train or reuse the sweep, evaluate it, write rate_distortion.nc and .png."""
    print(f"rate_distortion: runs in {setup.runs}", flush=True)
    paths = ensure_runs(setup, run_configs(setup, gammas))
    ds = analyse(setup, gammas, paths)
    return publish(ds, out, "rate_distortion", figure, summary)


def default_gammas(quick: bool) -> tuple[float, ...]:
    return GAMMAS["quick" if quick else "default"]


def main(argv=None) -> int:
    args = parse_args(argv)
    run(setup_from_args(args), Path(args.out), tuple(args.gammas or default_gammas(args.quick)))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.rate_distortion",
                                     description=__doc__.split("\n\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--gammas", type=float, nargs="+", default=None,
                        help=f"distortion targets (default {GAMMAS['default']}; quick "
                             f"{GAMMAS['quick']})")
    parser.add_argument("--out", default="results", help="directory for the .nc and .png")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
