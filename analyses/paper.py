"""Every figure of "Mind Your Bits and Errors" and a table of its claims, from one command.

``python -m analyses.paper`` trains (or reuses, or resumes) every run the analyses need in one
cache (``runs/paper``; ``runs/paper-quick`` with ``--quick``), independent runs side by side,
then runs ``analyses.rate_distortion`` (Figures 4-6), ``analyses.two_stage`` (Figures 7-8),
``analyses.mean_vs_stochastic`` (Figure 3), ``analyses.stability`` (Figures 1-2) and
``analyses.frequency_shift`` (Figures 9-10) on them, and writes ``results/*.nc``,
``results/*.png`` and ``results/claims.md``: each claim with its measured numbers and whether it
holds, by a test fixed in the code beforehand.

Modes: the default is patches32 with the demo-cpu model (2 CPU cores); ``--quick`` is a
CI-sized run (tiny-8 on digits8, 150 steps per run); ``--data svhn --root DIR --preset
paper-svhn --steps N`` is the paper's scale, on a GPU. Threads: on CPU each training process
gets cores / ``--workers`` intra-op threads unless OMP_NUM_THREADS is set (oversubscribed
threads made training 12x slower when processes shared the cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import xarray as xr

import vaeprobe as vp
from analyses import frequency_shift, mean_vs_stochastic, rate_distortion, stability, two_stage
from analyses._claims import Claim, fmt, markdown
from analyses._common import Setup, add_setup_arguments, ensure_runs, setup_from_args
from vaeprobe.io import atomic_path

FIGURES = ("rate_distortion", "two_stage", "mean_vs_stochastic", "stability", "frequency_shift")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.paper",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(parser)
    parser.add_argument("--out", default="results", help="directory for the .nc, .png and "
                                                         "claims.md")
    return parser.parse_args(argv)


def plan(setup: Setup, quick: bool) -> dict:
    """The gammas of every analysis: the sweep holds the runs the others reuse."""
    mode = "quick" if quick else "default"
    primary_gamma, secondary_gamma = two_stage.GAMMAS[mode]
    return dict(sweep=rate_distortion.GAMMAS[mode], primary_gamma=primary_gamma,
                secondary_gamma=secondary_gamma, mean_gamma=mean_vs_stochastic.GAMMA[mode])


def all_jobs(setup: Setup, gammas: dict) -> list:
    """Every run, once, those that unlock others first (the two-stage primary, the ELBO run)."""
    jobs = (two_stage.jobs(setup, gammas["primary_gamma"], gammas["secondary_gamma"])
            + stability.jobs(setup)
            + rate_distortion.jobs(setup, gammas["sweep"])
            + mean_vs_stochastic.jobs(setup, gammas["mean_gamma"]))
    needed = {need for job in jobs for need in job.needs}
    unique = list({job.name: job for job in reversed(jobs)}.values())[::-1]
    return sorted(unique, key=lambda job: job.name not in needed)


def claim_frequency_shift(ds: xr.Dataset) -> Claim:
    """Later checkpoints at about the same distortion carry less high-frequency power: the
    same test as ``python -m analyses.frequency_shift``'s verdict (a fall of more than
    SHIFT_THRESHOLD_SE standard errors)."""
    early, late = frequency_shift.early_and_late(ds)
    hff = ds["high_frequency_fraction"]
    seen, measured = frequency_shift.shift_test(ds, early, late)
    evidence = (f"step {early}: distortion {fmt(float(ds.distortion.sel(step=early)))}, rate "
                f"{fmt(float(ds.rate.sel(step=early)))} nats, high-frequency fraction "
                f"{fmt(float(hff.sel(step=early)))}; step {late}: distortion "
                f"{fmt(float(ds.distortion.sel(step=late)))}, rate "
                f"{fmt(float(ds.rate.sel(step=late)))} nats, high-frequency fraction "
                f"{fmt(float(hff.sel(step=late)))}; {measured} (data "
                f"{fmt(float(ds.high_frequency_fraction_data))}, PCA top-{int(ds.pca_k)} "
                f"{fmt(float(ds.high_frequency_fraction_pca))})")
    return Claim("frequency_shift",
                 "Later checkpoints at the same distortion carry less high-frequency power "
                 "(Figures 9-10)",
                 f"the last checkpoint's reconstructions have a high-frequency fraction more "
                 f"than {frequency_shift.SHIFT_THRESHOLD_SE:g} standard errors below that of "
                 f"the earliest checkpoint within 25% of its distortion (a different step)",
                 evidence, seen)


def ordered_claims(results: dict[str, xr.Dataset]) -> list[Claim]:
    """Every claim, in the order of the brief: training, rate, likelihood, samples, spectra,
    PCA, sigma-VAE, stability."""
    rd = {claim.key: claim for claim in rate_distortion.claims(results["rate_distortion"])}
    st = {claim.key: claim for claim in stability.claims(results["stability"])}
    return [rd["distortion_targeting_converges"], rd["rate_falls_with_gamma"],
            rd["elbo_favours_high_rate"], *two_stage.claims(results["two_stage"]),
            *mean_vs_stochastic.claims(results["mean_vs_stochastic"]),
            claim_frequency_shift(results["frequency_shift"]), rd["pca_top_beats_bottom"],
            st["learned_sigma_matches_mse"], st["distortion_targeting_is_stable"]]


def preamble(setup: Setup, gammas: dict, seconds: float, quick: bool) -> str:
    return (f"Data {setup.data} (test split for evaluation), preset {setup.preset}, "
            f"{setup.steps} steps per run{' (--quick)' if quick else ''}; {setup.n_images} test "
            f"images, IWAE K = {setup.k}, PCA on {setup.pca_images} training images; runs in "
            f"`{setup.runs}`; sweep gammas {list(gammas['sweep'])}, two-stage gamma "
            f"{gammas['primary_gamma']:g} -> gamma' {gammas['secondary_gamma']:g}, mean vs "
            f"stochastic at gamma {gammas['mean_gamma']:g}. Wall time {seconds / 60:.1f} min "
            f"(including any training). Each test is fixed in `analyses/` beforehand; a claim "
            f"that fails it is reported as not holding.")


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    setup = setup_from_args(args)
    gammas = plan(setup, args.quick)
    out = Path(args.out)
    print(f"paper: every run in {setup.runs} ({setup.workers} at a time)", flush=True)
    paths = ensure_runs(setup, all_jobs(setup, gammas))
    results = {
        "rate_distortion": rate_distortion.run(setup, out, gammas["sweep"]),
        "two_stage": two_stage.run(setup, out, gammas["primary_gamma"],
                                   gammas["secondary_gamma"]),
        "mean_vs_stochastic": mean_vs_stochastic.run(setup, out, gammas["mean_gamma"]),
        "stability": stability.run(setup, out),
    }
    primary = paths[rate_distortion.run_name(gammas["primary_gamma"])]
    frequency_shift.main(["--run", str(primary), "--data", setup.data, "--out", str(out),
                          "--n-images", str(setup.spectrum_images), "--pca-images",
                          str(setup.pca_images), "--seed", str(setup.seed)]
                         + (["--device", setup.device] if setup.device else [])
                         + (["--root", setup.root] if setup.root else []))
    results["frequency_shift"] = vp.open_results(out / "frequency_shift.nc")
    claims = ordered_claims(results)
    text = markdown(claims, "Claims of Mind Your Bits and Errors (and sigma-VAE), measured",
                    preamble(setup, gammas, time.perf_counter() - start, args.quick))
    with atomic_path(out / "claims.md") as tmp:
        tmp.write_text(text)
    print(text)
    print(f"wrote {', '.join(f'{name}.nc/.png' for name in FIGURES)} and claims.md in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
