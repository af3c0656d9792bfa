"""Are mean samples less noisy than samples drawn from the decoder likelihood?

``python -m analyses.mean_vs_stochastic`` (Section 3.1, Figure 3 of "Mind Your Bits and
Errors"). Takes (trains or reuses) the distortion-targeted run at gamma from the rate-distortion
sweep's cache and draws prior samples two ways from the same latents: the decoder mean
mu(z) ("mean sampling") and a draw from p(x|z) ("standard sampling"). Measures their noise
beside the data's: total variation (mean absolute difference of neighbouring pixels on [0, 1])
and the high-frequency fraction of their power spectrum (share of non-DC power above ``cutoff``
cycles/pixel). Writes results/mean_vs_stochastic.nc and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import vaeprobe as vp
from analyses import rate_distortion
from analyses._claims import Claim, fmt
from analyses._common import (
    Job,
    Setup,
    add_setup_arguments,
    ensure_runs,
    figure_axes,
    finish_figure,
    image_variable,
    publish,
    setup_from_args,
)
from vaeprobe.io import provenance
from vaeprobe.spectrum import high_frequency_fraction, power_2d, radial_profile

GAMMA = {"quick": 1.0, "default": 16.0}  # the paper's Figure 3 uses gamma = 16 on SVHN
KINDS = ("mean", "stochastic", "data")
CUTOFF = 0.25  # cycles/pixel


def total_variation(images: np.ndarray) -> np.ndarray:
    """Per image: mean absolute difference of horizontally and vertically neighbouring pixels
    on the [0, 1] scale (uint8 (N, C, H, W) in; (N,) out). A flat image has 0; a 0/255
    checkerboard has 1."""
    x = np.asarray(images, dtype=np.float64) / 255.0
    horizontal = np.abs(np.diff(x, axis=3)).reshape(len(x), -1).mean(1)
    vertical = np.abs(np.diff(x, axis=2)).reshape(len(x), -1).mean(1)
    return 0.5 * (horizontal + vertical)


def high_frequency(images: np.ndarray, cutoff: float = CUTOFF) -> float:
    """Share of the images' non-DC power above ``cutoff`` cycles/pixel (Hann-windowed,
    per-image mean removed; vaeprobe.spectrum's estimator)."""
    x = torch.as_tensor(np.asarray(images))
    power = power_2d(x, window="hann" if min(x.shape[-2:]) > 2 else "none")
    frequency, profile, counts = radial_profile(power / (x.shape[0] * x.shape[1]))
    return float(high_frequency_fraction(profile[1:], counts[1:], frequency[1:], cutoff))


def noise_measures(images_by_kind: dict[str, np.ndarray], cutoff: float = CUTOFF) -> dict:
    """Total variation (mean and standard error) and high-frequency fraction per kind."""
    out = {}
    for kind, images in images_by_kind.items():
        tv = total_variation(images)
        se = tv.std(ddof=1) / np.sqrt(len(tv)) if len(tv) > 1 else np.nan
        out[kind] = dict(total_variation=float(tv.mean()), total_variation_se=float(se),
                         high_frequency_fraction=high_frequency(images, cutoff))
    return out


def jobs(setup: Setup, gamma: float) -> list[Job]:
    return rate_distortion.jobs(setup, [gamma])


def analyse(setup: Setup, gamma: float, path: Path, n: int, cutoff: float = CUTOFF
            ) -> xr.Dataset:
    probe = vp.load(path, device=setup.device_or_none)
    images = {kind: vp.samples(probe, n, kind=kind, seed=setup.seed, progress=False)
              ["images"].values for kind in ("mean", "stochastic")}
    test = vp.data.as_dataset(setup.load("test"))
    images["data"] = vp.data.gather(test, vp.data.select(test, n, setup.seed)).numpy()
    return assemble(images, gamma, setup, str(path), cutoff)


def assemble(images: dict[str, np.ndarray], gamma: float, setup: Setup, run: str,
             cutoff: float = CUTOFF) -> xr.Dataset:
    """The Dataset along ``kind`` from images per kind (pure: tests pass synthetic images)."""
    measures = noise_measures(images, cutoff)
    kinds = [k for k in KINDS if k in images]

    def along(name, units, long_name):
        return ("kind", [measures[k][name] for k in kinds], {"units": units,
                                                             "long_name": long_name})

    ds = xr.Dataset({
        "total_variation": along("total_variation", "[0, 1] scale",
                                 "mean |difference| of neighbouring pixels"),
        "total_variation_se": along("total_variation_se", "[0, 1] scale",
                                    "standard error of total_variation"),
        "high_frequency_fraction": along("high_frequency_fraction", "1",
                                         f"share of non-DC power above {cutoff:g} "
                                         f"cycles/pixel"),
        "preview": image_variable(np.stack([images[k][:setup.n_show] for k in kinds]),
                                  ("kind",)),
    }, coords={"kind": kinds})
    ds = ds.assign_coords(image=np.arange(ds.sizes["image"]),
                          channel=np.arange(ds.sizes["channel"]), y=np.arange(ds.sizes["y"]),
                          x=np.arange(ds.sizes["x"]))
    n = len(next(iter(images.values())))
    ds.attrs = provenance("mean_vs_stochastic", setup.parameters(), run=run,
                          dataset=f"{setup.data}:test", n_images=n, seed=setup.seed,
                          gamma=float(gamma), cutoff=cutoff)
    return ds


def figure(ds: xr.Dataset, path: Path) -> None:
    fig, axs = figure_axes(1, 4, size=(3.4, 3.4))
    vp.plot.image_grid(ds["preview"].sel(kind="stochastic"), ax=axs[0, 0], columns=4,
                       title="(a) standard sampling x ~ p(x|z)")
    vp.plot.image_grid(ds["preview"].sel(kind="mean"), ax=axs[0, 1], columns=4,
                       title="(b) mean sampling mu(z)")
    vp.plot.bars(ds, "total_variation", ax=axs[0, 2], title="total variation")
    vp.plot.bars(ds, "high_frequency_fraction", ax=axs[0, 3],
                 title=f"power above {ds.attrs['cutoff']:g} cycles/pixel")
    finish_figure(fig, path, f"Mean vs standard sampling (Figure 3): gamma = "
                             f"{ds.attrs['gamma']:g}, {ds.attrs['dataset']}")


def summary(ds: xr.Dataset) -> str:
    return "\n".join(f"{kind:<11} total variation {float(ds.total_variation.sel(kind=kind)):.4f}"
                     f" +- {float(ds.total_variation_se.sel(kind=kind)):.4f}, high-frequency "
                     f"fraction {float(ds.high_frequency_fraction.sel(kind=kind)):.4f}"
                     for kind in ds.kind.values)


def claims(ds: xr.Dataset) -> list[Claim]:
    tv, hff = ds["total_variation"], ds["high_frequency_fraction"]
    mean_tv, stoch_tv = float(tv.sel(kind="mean")), float(tv.sel(kind="stochastic"))
    mean_hf, stoch_hf = (float(hff.sel(kind=k)) for k in ("mean", "stochastic"))
    evidence = (f"total variation mean {fmt(mean_tv)} vs stochastic {fmt(stoch_tv)}; "
                f"high-frequency fraction mean {fmt(mean_hf)} vs stochastic {fmt(stoch_hf)}")
    if "data" in ds.kind.values:
        evidence += (f" (data: {fmt(float(tv.sel(kind='data')))}, "
                     f"{fmt(float(hff.sel(kind='data')))})")
    measured = np.isfinite([mean_tv, stoch_tv, mean_hf, stoch_hf]).all()
    return [Claim("mean_samples_less_noisy",
                  "Mean samples are less noisy than samples from the decoder likelihood "
                  "(Figure 3)",
                  "both total variation and high-frequency fraction lower for mean samples "
                  "than for stochastic samples of the same latents", evidence,
                  bool(mean_tv < stoch_tv and mean_hf < stoch_hf) if measured else None)]


def run(setup: Setup, out: Path, gamma: float, n: int | None = None) -> xr.Dataset:
    """Train or reuse the run at gamma, measure, write mean_vs_stochastic.nc and .png."""
    print(f"mean_vs_stochastic: runs in {setup.runs}", flush=True)
    paths = ensure_runs(setup, jobs(setup, gamma))
    ds = analyse(setup, gamma, paths[rate_distortion.run_name(gamma)], n or setup.n_images)
    return publish(ds, out, "mean_vs_stochastic", figure, summary)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analyses.mean_vs_stochastic",
                                     description=__doc__.split("\n\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--gamma", type=float, default=None,
                        help=f"distortion target of the run (default {GAMMA['default']:g}; "
                             f"quick {GAMMA['quick']:g})")
    parser.add_argument("--out", default="results", help="directory for the .nc and .png")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run(setup_from_args(args), Path(args.out),
        args.gamma or GAMMA["quick" if args.quick else "default"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
