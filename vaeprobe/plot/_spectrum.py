from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes


def _step_colours(steps: np.ndarray):
    """Colours on a log-step scale, and the matching ScalarMappable for a colourbar."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    low, high = max(int(steps.min()), 1), max(int(steps.max()), 2)
    norm = LogNorm(low, high) if high > low else Normalize(low - 1, high)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap="plasma")
    return [mappable.to_rgba(max(int(s), 1)) for s in steps], mappable


def spectrum(ds: xr.Dataset, ax=None, relative: bool = True):
    """Reconstruction spectra per checkpoint (relative to the data's by default), log scale."""
    ax = axes(ax)
    variable = "relative_power" if relative else "power_reconstruction"
    frequency = ds["frequency"].values
    if "step" in ds.dims:
        colours, mappable = _step_colours(ds["step"].values)
        for colour, step in zip(colours, ds["step"].values, strict=True):
            ax.plot(frequency, ds[variable].sel(step=step).values, color=colour)
        ax.figure.colorbar(mappable, ax=ax, label="training step")
    if not relative and "power_data" in ds:
        ax.plot(frequency, ds["power_data"].values, color="k", lw=2, label="data")
    if relative:
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
    if "power_pca" in ds and relative:
        ax.plot(frequency, ds["power_pca"].values / ds["power_data"].values, color="k", ls="--",
                label="PCA top-k")
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency [cycles / pixel]")
    ax.set_ylabel("reconstruction / data power" if relative else "power")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


def high_frequency(ds: xr.Dataset, ax=None):
    """High-frequency fraction of reconstructions against step, with data and PCA references."""
    ax = axes(ax)
    steps = ds["step"].values
    ax.plot(steps, ds["high_frequency_fraction"].values, marker="o", label="VAE reconstruction")
    if "high_frequency_fraction_pca" in ds:
        ax.axhline(float(ds["high_frequency_fraction_pca"]), color="k", ls="--",
                   label=f"PCA top-{int(ds['pca_k'])} (same distortion)")
    ax.axhline(float(ds["high_frequency_fraction_data"]), color="grey", ls=":", label="data")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"power above {ds.attrs.get('cutoff', 0.25)} cycles/pixel")
    ax.legend(fontsize=8)
    return ax


def training_curves(ds: xr.Dataset, ax=None, gamma: float | None = None):
    """Distortion and rate against step (Figure 9), on log scales.

    ``ds``: a training log (``vaeprobe.Run(...).training_log()``: ``train_distortion``,
    ``train_rate`` along ``train_step``), checkpoint evaluations (``distortion``, ``rate``
    along ``step``, e.g. from ``vp.spectrum``), or both merged. ``gamma``: the distortion
    target to mark; by default the log's ``gamma`` attr when it is a number.
    """
    ax = axes(ax)
    twin = ax.twinx()
    evaluated = "distortion" in ds and "step" in ds.dims
    if gamma is None and np.isfinite(float(ds.attrs.get("gamma", np.nan))):
        gamma = float(ds.attrs["gamma"])
    if "train_distortion" in ds:
        faint = dict(alpha=0.35, lw=0.8) if evaluated else dict(lw=1.0)
        ax.plot(ds["train_step"].values, ds["train_distortion"].values, color="C0", **faint)
        twin.plot(ds["train_step"].values, ds["train_rate"].values, color="C3", **faint)
    if evaluated:
        ax.plot(ds["step"].values, ds["distortion"].values, "o-", color="C0",
                label="distortion, evaluation images")
        twin.plot(ds["step"].values, ds["rate"].values, "s-", color="C3", label="rate")
    if "train_distortion" in ds:
        ax.plot([], [], color="C0", label="training batches", **faint)
    if gamma is not None:
        ax.axhline(gamma, color="C0", ls="--", lw=0.8, label=f"gamma = {gamma:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    twin.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("distortion [sum of squares]", color="C0")
    twin.set_ylabel("rate [nats]", color="C3")
    ax.legend(loc="upper right", fontsize=8)
    return ax
