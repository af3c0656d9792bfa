"""Does a secondary VAE on a low-rate primary recover the likelihood without changing samples?

``python -m analyses.two_stage`` (Section 4, Figures 7 and 8 of "Mind Your Bits and Errors").
Trains (or reuses) a distortion-targeted primary at gamma, a two-stage secondary on it at a
smaller gamma', and, for comparison, a single-stage VAE targeting gamma' directly (the primary
and the direct run are the rate-distortion sweep's, shared through the cache). Evaluates all
three on the same test images (IWAE and ELBO bits/dim with standard errors, the paired gain of
the two-stage model over its primary, rate by stage) and draws mean prior samples: the
primary's x_hat beside the two-stage sample of the same latents (``vp.samples(...,
return_primary=True)``), and the direct run's. Writes results/two_stage.nc and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import vaeprobe as vp
from analyses import rate_distortion
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
    jobs_of,
    publish,
    setup_from_args,
    variables_along,
)
from vaeprobe.io import provenance

GAMMAS = {"quick": (2.0, 0.5), "default": (8.0, 2.0)}  # (primary gamma, secondary gamma')
MODELS = ("primary", "two-stage", "direct")
SCALARS = ("rate", "distortion", "log_px_bpd", "bpd", "elbo_bpd", "decoder_sigma",
           "checkpoint_step")
SIGNIFICANT = 2.0  # the gain must exceed this many paired standard errors


def run_name(primary_gamma: float, gamma: float) -> str:
    return f"two-stage-gamma{gamma:g}-on-gamma{primary_gamma:g}"


def jobs(setup: Setup, primary_gamma: float, gamma: float) -> list[Job]:
    """The primary and the direct run (the sweep's configs, so the cache is shared), and the
    secondary on the primary once it is trained."""
    configs = rate_distortion.run_configs(setup, [primary_gamma, gamma])
    primary = rate_distortion.run_name(primary_gamma)
    name = run_name(primary_gamma, gamma)
    secondary = setup.train_values(name, objective="two-stage", gamma=float(gamma),
                                   primary=configs[primary]["out"], likelihood="optimal")
    return jobs_of(configs) + [Job(name, secondary, needs=(primary,))]


def analyse(setup: Setup, primary_gamma: float, gamma: float, paths: dict[str, Path]
            ) -> xr.Dataset:
    test = setup.load("test")
    order = [rate_distortion.run_name(primary_gamma), run_name(primary_gamma, gamma),
             rate_distortion.run_name(gamma)]
    rows, images = [], {}
    for model, name in zip(MODELS, order, strict=True):
        probe = vp.load(paths[name], device=setup.device_or_none)
        print(f"  evaluating {model}: {paths[name]}", flush=True)
        rows.append(evaluate(probe, test, setup))
        two_stage = model == "two-stage"
        drawn = vp.samples(probe, setup.n_show, kind="mean", seed=setup.seed,
                           return_primary=two_stage, progress=False)
        images[model] = drawn["images"].values
        if two_stage:
            images["x_hat"] = drawn["primary_mean"].values
    return assemble(rows, images, primary_gamma, gamma, setup)


def sample_change(x_hat: np.ndarray, refined: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over images of the sum of squared differences on [0, 1]
    between the primary's x_hat and the two-stage sample of the same latents."""
    diff = ((refined.astype(np.float64) - x_hat.astype(np.float64)) / 255.0) ** 2
    per_image = diff.reshape(len(diff), -1).sum(1)
    se = per_image.std(ddof=1) / np.sqrt(len(per_image)) if len(per_image) > 1 else np.nan
    return float(per_image.mean()), float(se)


def paired_gain(primary_bpd: np.ndarray, two_stage_bpd: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-image bits/dim gain (primary - two-stage) on the
    same images: the paired difference cancels the images' shared variance."""
    gain = np.asarray(primary_bpd) - np.asarray(two_stage_bpd)
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.nan
    return float(gain.mean()), float(se)


def assemble(rows: list[dict], images: dict, primary_gamma: float, gamma: float,
             setup: Setup) -> xr.Dataset:
    """The comparison's Dataset along ``model`` (pure: tests build it from synthetic rows)."""
    ds = xr.Dataset(variables_along("model", rows, SCALARS), coords={"model": list(MODELS)})
    stages = ["primary", "secondary"]
    ds["stage_rate"] = (("model", "stage"), [[row["stage_rate"].get(s, np.nan) for s in stages]
                                             for row in rows],
                        {"units": "nats", "long_name": "rate of each stage's latents"})
    ds = ds.assign_coords(stage=stages)
    gain, gain_se = paired_gain(rows[0]["bpd_per_image"], rows[1]["bpd_per_image"])
    ds["bpd_gain"] = ((), gain, {"units": "bits/dim",
                                 "long_name": "IWAE bits/dim of the primary minus the two-stage "
                                              "model's, paired over the same images"})
    ds["bpd_gain_se"] = ((), gain_se, {"units": "bits/dim"})
    change, change_se = sample_change(images["x_hat"], images["two-stage"])
    ds["sample_change"] = ((), change, {"units": "sum of squares on [0, 1]",
                                        "long_name": "two-stage mean sample vs the primary's "
                                                     "x_hat of the same latents"})
    ds["sample_change_se"] = ((), change_se, {"units": "sum of squares on [0, 1]"})
    rows_of_images = [images["x_hat"], images["two-stage"], images["direct"]]
    ds["samples"] = image_variable(np.stack(rows_of_images), ("sample_row",))
    ds = ds.assign_coords(sample_row=["primary x_hat", "two-stage", "direct"],
                          image=np.arange(ds.sizes["image"]),
                          channel=np.arange(ds.sizes["channel"]), y=np.arange(ds.sizes["y"]),
                          x=np.arange(ds.sizes["x"]))
    ds.attrs = provenance("two_stage", setup.parameters(), dataset=f"{setup.data}:test",
                          n_images=setup.n_images, seed=setup.seed, k=setup.k,
                          primary_gamma=float(primary_gamma), gamma=float(gamma),
                          runs=setup.runs)
    return ds


def figure(ds: xr.Dataset, path: Path) -> None:
    fig, axs = figure_axes(2, 2, size=(5.2, 3.8))
    vp.plot.bits_by_stage(ds, ax=axs[0, 0])
    axs[0, 0].set_title(f"(a) bits/dim (Figure 8); gain {float(ds.bpd_gain):.3f} +- "
                        f"{float(ds.bpd_gain_se):.3f}", fontsize=9)
    vp.plot.rate_by_stage(ds, ax=axs[0, 1])
    axs[0, 1].set_title("(b) rate by stage", fontsize=9)
    labels = [f"primary x_hat (gamma {ds.attrs['primary_gamma']:g})",
              f"two-stage (gamma' {ds.attrs['gamma']:g})",
              f"direct (gamma {ds.attrs['gamma']:g})"]
    vp.plot.image_rows(ds["samples"], ax=axs[1, 0], row_labels=labels)
    axs[1, 0].set_title(f"(c) mean samples (Figure 7); x_hat -> two-stage change "
                        f"{float(ds.sample_change):.3g}", fontsize=9)
    axs[1, 1].set_axis_off()
    axs[1, 1].text(0, 0.5, summary(ds), fontsize=7, family="monospace", va="center")
    finish_figure(fig, path, f"Two-stage training on {ds.attrs['dataset']}")


def summary(ds: xr.Dataset) -> str:
    lines = ["model       rate[nats]  D (test)  ELBO bpd        IWAE bpd        sigma"]
    for model in ds.model.values:
        one = ds.sel(model=model)
        lines.append(f"{model:<11} {float(one.rate):<11.1f} {float(one.distortion):<9.3f} "
                     f"{float(one.elbo_bpd):.3f}+-{float(one.elbo_bpd_se):.3f}   "
                     f"{float(one.bpd):.3f}+-{float(one.bpd_se):.3f}   "
                     f"{float(one.decoder_sigma):.3g}")
    lines.append(f"paired IWAE gain of two-stage over primary: {float(ds.bpd_gain):.3f} +- "
                 f"{float(ds.bpd_gain_se):.3f} bits/dim")
    lines.append(f"sample change x_hat -> two-stage: {float(ds.sample_change):.3f} +- "
                 f"{float(ds.sample_change_se):.3f} (primary's test distortion "
                 f"{float(ds.distortion.sel(model='primary')):.3f})")
    return "\n".join(lines)


def claims(ds: xr.Dataset) -> list[Claim]:
    gain, gain_se = float(ds.bpd_gain), float(ds.bpd_gain_se)
    change = float(ds.sample_change)
    primary_d = float(ds.distortion.sel(model="primary"))
    bpd = {str(m): (float(ds.bpd.sel(model=m)), float(ds.bpd_se.sel(model=m)))
           for m in ds.model.values}
    evidence = (f"IWAE bits/dim primary {bpd['primary'][0]:.3f} +- {bpd['primary'][1]:.3f}, "
                f"two-stage {bpd['two-stage'][0]:.3f} +- {bpd['two-stage'][1]:.3f}, direct "
                f"(gamma {ds.attrs['gamma']:g}) {bpd['direct'][0]:.3f} +- "
                f"{bpd['direct'][1]:.3f}; paired gain {gain:.3f} +- {gain_se:.3f} bits/dim "
                f"({gain / gain_se if gain_se > 0 else float('nan'):.1f} se); sample change "
                f"x_hat -> two-stage {fmt(change)} vs the primary's test distortion "
                f"{fmt(primary_d)}; secondary rate "
                f"{fmt(float(ds.stage_rate.sel(model='two-stage', stage='secondary')))} nats")
    measured = np.isfinite([gain, gain_se, change, primary_d]).all()
    holds = gain > SIGNIFICANT * gain_se and change < primary_d
    return [Claim("two_stage_recovers_likelihood",
                  "Two-stage training improves the likelihood of its primary with near-identical "
                  "samples (Figures 7-8)",
                  f"paired IWAE gain > {SIGNIFICANT:g} standard errors, and the two-stage mean "
                  f"sample differs from the primary's x_hat of the same latents by less than the "
                  f"primary's own test distortion", evidence,
                  bool(holds) if measured else None)]


def run(setup: Setup, out: Path, primary_gamma: float, gamma: float) -> xr.Dataset:
    """Train or reuse the three runs, evaluate them, write two_stage.nc and .png."""
    print(f"two_stage: runs in {setup.runs}", flush=True)
    ds = analyse(setup, primary_gamma, gamma, ensure_runs(setup, jobs(setup, primary_gamma,
                                                                          gamma)))
    return publish(ds, out, "two_stage", figure, summary)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.two_stage",
                                     description=__doc__.split("\n\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--primary-gamma", type=float, default=None,
                        help=f"the primary's target (default {GAMMAS['default'][0]:g}; quick "
                             f"{GAMMAS['quick'][0]:g})")
    parser.add_argument("--gamma", type=float, default=None,
                        help=f"the secondary's target gamma' (default {GAMMAS['default'][1]:g}; "
                             f"quick {GAMMAS['quick'][1]:g})")
    parser.add_argument("--out", default="results", help="directory for the .nc and .png")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    defaults = GAMMAS["quick" if args.quick else "default"]
    run(setup_from_args(args), Path(args.out), args.primary_gamma or defaults[0],
        args.gamma or defaults[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
