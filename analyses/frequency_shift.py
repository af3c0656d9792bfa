"""Do reconstructions shift from high to low frequencies over training at the same distortion?

``python -m analyses.frequency_shift`` (Section 5, Figures 9-10 of "Mind Your Bits and Errors").
With no arguments it trains (or reuses, or resumes) the demo-cpu distortion-targeted run on
patches32, then writes results/frequency_shift.nc and results/frequency_shift.png:
(a) distortion and rate against step; (b) the data beside reconstructions at an early and a late
checkpoint of the same distortion; (c) reconstruction spectra relative to the data, one curve
per step; (d) the high-frequency fraction against step, with the PCA top-k reconstruction at
the same distortion as a reference. ``--run DIR`` analyses an existing run instead.

The run (its checkpoints, stored config, distortion target and training log) is read through
``vaeprobe.Run``; the figure is drawn with the public ``vaeprobe.plot`` functions.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import vaeprobe as vp
from vaeprobe import io
from vaeprobe._threads import apply_threads
from vaeprobe.io import provenance
from vaeprobe.pca import gaussian_rate_distortion
from vaeprobe.run import CONFIG_NAME, Run

# distortions (sum of squares on [0, 1]) at which the PCA's components are counted; the run's
# own target (or, without one, its late distortion) is added
PCA_TARGETS = (1, 2, 4, 8, 16, 32, 64)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.frequency_shift",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="analyse this existing run (no training)")
    parser.add_argument("--data", default=None,
                        help="dataset name (default: the run's, or patches32 for the demo)")
    parser.add_argument("--root", default="", help="directory of a torchvision dataset (svhn)")
    parser.add_argument("--out", default="results", help="directory for the .nc and .png")
    parser.add_argument("--train-dir", default="runs/demo", help="where the demo run lives")
    parser.add_argument("--preset", default="demo-cpu", help="model preset of the demo run")
    parser.add_argument("--gamma", type=float, default=8.0, help="distortion target of the demo")
    parser.add_argument("--steps", type=int, default=None, help="demo training steps")
    spectrum = inspect.signature(vp.spectrum).parameters  # one source of defaults: the API's
    parser.add_argument("--n-images", type=int, default=spectrum["n_images"].default,
                        help="evaluation images (default: %(default)s)")
    parser.add_argument("--pca-images", type=int, default=10000,
                        help="images for the PCA (default: %(default)s)")
    parser.add_argument("--cutoff", type=float, default=spectrum["cutoff"].default,
                        help="high-frequency fraction: power above this many cycles/pixel "
                        "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: "
                        "OMP_NUM_THREADS when set, else the usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    return parser.parse_args(argv)


def ensure_demo_run(args) -> Path:
    """Train the demo run, resume it if it was interrupted, or reuse it if complete."""
    from trainers.config import make
    from trainers.train import train

    run = Path(args.train_dir)
    values = dict(preset=args.preset, objective="distortion", gamma=args.gamma,
                  data=args.data or "patches32", out=str(run), seed=args.seed,
                  threads=args.threads)
    if args.steps is not None:
        values["steps"] = args.steps
    config = make(**values)
    stored = Run(run).config
    if stored is not None:
        changed = config.differs_from(stored)
        if changed:
            raise SystemExit(f"{run} holds a different run ({json.dumps(changed)}); pass "
                             f"--train-dir elsewhere or --run {run} to analyse it as it is")
        found = vp.checkpoints(run)
        if found and found[-1][0] >= config.steps:
            print(f"reusing the finished run in {run}")
            return run
        print(f"resuming the run in {run}")
        return train(make(**values, resume=True))
    print(f"training {args.preset} (gamma={args.gamma:g}) on {config.data} into {run}")
    return train(config)


def gamma_text(ds: xr.Dataset) -> str:
    gamma = float(ds.attrs["gamma"])
    return f"gamma = {gamma:g}" if np.isfinite(gamma) else "no distortion target"


def reference_distortion(gamma: float | None, ds: xr.Dataset) -> float:
    """The distortion the PCA's component counts are reported at: the run's target, or its
    late checkpoint's distortion when it has none."""
    return float(gamma) if gamma is not None else float(ds["distortion"].values[-1])


def analyse(run: Run, data: str, args) -> xr.Dataset:
    """Spectra over the run's checkpoints, the PCA reference, and the training log."""
    root = getattr(args, "root", "") or None  # a torchvision dataset's directory (svhn ...)
    test, train = (f"{data}:{split}" if root is None else
                   vp.data.load(data, split=split, root=root) for split in ("test", "train"))
    spectra = vp.spectrum(str(run.path), test, n_images=args.n_images,
                          cutoff=args.cutoff, seed=args.seed, device=args.device)
    late_distortion = float(spectra["distortion"].values[-1])
    gamma = run.gamma
    targets = sorted(set(PCA_TARGETS) | {reference_distortion(gamma, spectra)})
    pca = vp.pca_baseline(train, n_images=args.pca_images, targets=targets,
                          spectrum_distortion=late_distortion, cutoff=args.cutoff,
                          seed=args.seed, device=args.device)
    keep = ["eigenvalues", "distortion", "components_needed", "rd_rate", "total_variance",
            "power_pca", "high_frequency_fraction_pca", "pca_k", "pca_spectrum_distortion"]
    pca = pca[keep].rename(distortion="pca_distortion")
    log = run.training_log()
    # "override": each variable keeps its own units; the Dataset attrs are set below
    ds = xr.merge([spectra, pca] + ([log] if log.data_vars else []), combine_attrs="override")
    ds["rate_bound"] = ("step", gaussian_rate_distortion(ds["eigenvalues"].values,
                                                         ds["distortion"].values),
                        {"units": "nats", "long_name": "Gaussian R(D) at each step's distortion"})
    ds.attrs = provenance("frequency_shift", dict(n_images=args.n_images, cutoff=args.cutoff,
                                                  pca_images=args.pca_images, seed=args.seed),
                          run=str(run.path), dataset=f"{data}:test",
                          gamma=float("nan") if gamma is None else gamma,
                          seed=args.seed, n_images=args.n_images, cutoff=args.cutoff,
                          window=spectra.attrs["window"])
    return ds


def early_and_late(ds: xr.Dataset, tolerance: float = 0.25) -> tuple[int, int]:
    """The last step, and the earliest step whose distortion is within tolerance of it."""
    distortion, steps = ds["distortion"].values, ds["step"].values
    close = np.nonzero(np.abs(distortion - distortion[-1]) <= tolerance * distortion[-1])[0]
    return int(steps[close[0]]), int(steps[-1])


def figure(ds: xr.Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    early, late = early_and_late(ds)
    # constrained layout leaves room for the legends below each panel
    fig, axs = plt.subplots(2, 2, figsize=(12, 10), layout="constrained")
    gamma = float(ds.attrs["gamma"])
    vp.plot.training_curves(ds, ax=axs[0, 0], gamma=gamma if np.isfinite(gamma) else None)
    axs[0, 0].set_title("(a) distortion and rate over training")
    rows = np.concatenate([ds["preview_data"].values[:8],
                           ds["preview_reconstruction"].sel(step=early).values[:8],
                           ds["preview_reconstruction"].sel(step=late).values[:8]])
    vp.plot.image_grid(rows, ax=axs[0, 1], columns=8)
    d_early, d_late = (float(ds["distortion"].sel(step=s)) for s in (early, late))
    axs[0, 1].set_title(f"(b) rows: data; step {early} (D={d_early:.2f}); step {late} "
                        f"(D={d_late:.2f})")
    vp.plot.spectrum(ds, ax=axs[1, 0])
    axs[1, 0].set_title("(c) reconstruction power / data power")
    vp.plot.high_frequency(ds, ax=axs[1, 1])
    axs[1, 1].set_title("(d) high-frequency fraction of reconstructions")
    fig.suptitle(f"Frequency shift: {ds.attrs['run']} on {ds.attrs['dataset']}, "
                 f"{gamma_text(ds)}")
    vp.plot.save_figure(fig, path)
    plt.close(fig)


def summary(ds: xr.Dataset) -> str:
    early, late = early_and_late(ds)
    hff = ds["high_frequency_fraction"]
    gamma = float(ds.attrs["gamma"])
    reference = reference_distortion(gamma if np.isfinite(gamma) else None, ds)
    needed = ds["components_needed"].sel(target=reference, method="nearest")
    lines = [
        f"{gamma_text(ds)}; {ds.sizes['step']} checkpoints, "
        f"{ds.attrs['n_images']} test images",
        f"early step {early}: distortion {float(ds.distortion.sel(step=early)):.3f}, "
        f"rate {float(ds.rate.sel(step=early)):.1f} nats, high-frequency fraction "
        f"{float(hff.sel(step=early)):.4f}",
        f"late  step {late}: distortion {float(ds.distortion.sel(step=late)):.3f}, "
        f"rate {float(ds.rate.sel(step=late)):.1f} nats, high-frequency fraction "
        f"{float(hff.sel(step=late)):.4f}",
        f"data high-frequency fraction {float(ds.high_frequency_fraction_data):.4f}; PCA top-"
        f"{int(ds.pca_k)} at distortion {float(ds.pca_spectrum_distortion):.3f}: "
        f"{float(ds.high_frequency_fraction_pca):.4f}",
        f"rate vs Gaussian R(D) bound at the late distortion: {float(ds.rate.sel(step=late)):.1f}"
        f" vs {float(ds.rate_bound.sel(step=late)):.1f} nats",
        f"PCA components to reach distortion {float(needed.target):g}: top "
        f"{int(needed.sel(order='top'))}, bottom {int(needed.sel(order='bottom'))}",
    ]
    lines.append(verdict(ds, early, late))
    return "\n".join(lines)


# the shift is "seen" when the high-frequency fraction falls by more than this many standard
# errors of the difference between the two checkpoints
SHIFT_THRESHOLD_SE = 2.0


def shift_test(ds: xr.Dataset, early: int, late: int) -> tuple[bool | None, str]:
    """Whether the high-frequency fraction fell between ``early`` and ``late`` by more than
    SHIFT_THRESHOLD_SE standard errors of the difference (None: not testable, one checkpoint),
    and the measured numbers as text.

    The standard error of the difference treats the two checkpoints' errors as independent;
    they are measured on the same images and positively correlated, so this overstates it
    and the test is conservative.
    """
    hff, se = ds["high_frequency_fraction"], ds["high_frequency_fraction_se"]
    fall = float(hff.sel(step=early)) - float(hff.sel(step=late))
    se_fall = float(np.hypot(se.sel(step=early), se.sel(step=late)))
    threshold = SHIFT_THRESHOLD_SE * se_fall
    measured = (f"the high-frequency fraction fell by {fall:.4f} (standard error {se_fall:.4f}; "
                f"threshold {SHIFT_THRESHOLD_SE:g} se = {threshold:.4f})")
    if early == late or not np.isfinite([fall, threshold]).all():
        return None, measured
    return bool(fall > threshold), measured


def verdict(ds: xr.Dataset, early: int, late: int) -> str:
    """The :func:`shift_test` as a sentence."""
    seen, measured = shift_test(ds, early, late)
    if seen is None:
        return "shift NOT tested: no earlier checkpoint reached about the late distortion"
    if seen:
        return f"shift seen: {measured} at about the same distortion"
    return f"shift NOT seen between steps {early} and {late}: {measured}"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    results, picture = out / "frequency_shift.nc", out / "frequency_shift.png"
    try:  # before any training or analysis: a read-only --out would waste all of it
        for path in (results, picture):
            io.check_writable(path, "--out")
    except io.OutputError as error:
        print(f"frequency_shift: error: {error}", file=sys.stderr)
        return 2
    print(f"frequency_shift: {apply_threads(args.threads)[1]}", file=sys.stderr)
    run = Run(args.run if args.run else ensure_demo_run(args))
    if run.data is None and args.data is None:
        raise SystemExit(f"{run.path} has no {CONFIG_NAME}: pass --data")
    data = args.data or run.data
    ds = analyse(run, data, args)
    print(summary(ds))  # first: the result is shown even if writing it fails
    failed = []
    for path, write in ((results, lambda: vp.save(ds, results)),
                        (picture, lambda: figure(ds, picture))):
        try:
            write()
            print(f"wrote {path}")
        except OSError as error:
            failed.append(path)
            print(f"frequency_shift: error: {error}", file=sys.stderr)
    if failed:
        print(f"frequency_shift: could not write {', '.join(map(str, failed))}; the summary "
              f"above is the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
