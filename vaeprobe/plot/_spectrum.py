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


def legend_outside(ax, handles=None, labels=None, columns: int = 2):
    """A legend below the Axes, so that it never covers the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=columns, fontsize=8, frameon=False)


def _source_title(ds: xr.Dataset) -> str:
    """"<run or checkpoint> on <dataset>" from a result's provenance, when it has one."""
    source = ds.attrs.get("run") or ds.attrs.get("checkpoint") or ""
    dataset = ds.attrs.get("dataset", "")
    return " on ".join(str(part) for part in (source, dataset) if part)


def spectrum(ds: xr.Dataset, ax=None, relative: bool = True, title: str | None = None):
    """Reconstruction spectra per checkpoint (relative to the data's by default), log scale.

    Several steps are coloured by step (log colour bar); a single step is one labelled line.
    ``title``: default, what was measured and on what (from the provenance attrs).
    """
    ax = axes(ax)
    variable = "relative_power" if relative else "power_reconstruction"
    frequency = ds["frequency"].values
    if "step" in ds.dims and ds.sizes["step"] > 1:
        colours, mappable = _step_colours(ds["step"].values)
        for colour, step in zip(colours, ds["step"].values, strict=True):
            ax.plot(frequency, ds[variable].sel(step=step).values, color=colour)
        ax.figure.colorbar(mappable, ax=ax, label="training step")
    elif "step" in ds.dims:  # one step: a legend entry, not a colour bar of one value
        step = int(ds["step"].values[0])
        ax.plot(frequency, ds[variable].sel(step=step).values, color="C1",
                label=f"reconstructions, step {step}")
    if not relative and "power_data" in ds:
        ax.plot(frequency, ds["power_data"].values, color="k", lw=2, label="data")
    if relative:
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="data (ratio 1)")
    if "power_pca" in ds and relative:
        distortion = float(ds["pca_spectrum_distortion"]) if "pca_spectrum_distortion" in ds \
            else float("nan")
        ax.plot(frequency, ds["power_pca"].values / ds["power_data"].values, color="k", ls="--",
                label=f"PCA top-{int(ds['pca_k'])} (distortion {distortion:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency [cycles / pixel]")
    ax.set_ylabel("reconstruction / data power" if relative else "power")
    if title is None:
        what = "reconstruction power / data power" if relative else "reconstruction power"
        title = f"{what}\n{_source_title(ds)}" if _source_title(ds) else what
    ax.set_title(title, fontsize=9)
    legend_outside(ax)
    return ax


def high_frequency(ds: xr.Dataset, ax=None):
    """High-frequency fraction of reconstructions against step, with data and PCA references."""
    ax = axes(ax)
    steps = ds["step"].values
    if "high_frequency_fraction_se" in ds:
        ax.errorbar(steps, ds["high_frequency_fraction"].values,
                    yerr=ds["high_frequency_fraction_se"].values, marker="o", capsize=2,
                    label="VAE reconstruction (± se)")
    else:
        ax.plot(steps, ds["high_frequency_fraction"].values, marker="o",
                label="VAE reconstruction")
    if "high_frequency_fraction_pca" in ds:
        ax.axhline(float(ds["high_frequency_fraction_pca"]), color="k", ls="--",
                   label=f"PCA top-{int(ds['pca_k'])} (same distortion)")
    ax.axhline(float(ds["high_frequency_fraction_data"]), color="grey", ls=":", label="data")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"power above {ds.attrs.get('cutoff', 0.25)} cycles/pixel")
    legend_outside(ax)
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
        twin.plot(ds["step"].values, ds["rate"].values, "s-", color="C3",
                  label="rate, evaluation images")
    if "train_distortion" in ds:
        ax.plot([], [], color="C0", label="distortion, training batches", **faint)
        ax.plot([], [], color="C3", label="rate, training batches", **faint)
    if gamma is not None:
        ax.axhline(gamma, color="C0", ls="--", lw=0.8, label=f"gamma = {gamma:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    twin.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("distortion [sum of squares]", color="C0")
    twin.set_ylabel("rate [nats]", color="C3")
    # one legend for both axes (the rate lives on the twin), below the data
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    legend_outside(ax, handles + twin_handles, labels + twin_labels)
    return ax


def pca(ds: xr.Dataset, ax=None, title: str | None = None):
    """PCA baseline: distortion of the top-k and bottom-k reconstructions against k (log k).

    With ``--distortion`` (``pca_spectrum_distortion`` in ``ds``) the chosen k is marked.
    """
    ax = axes(ax)
    ks = ds["k"].values
    shown = ks > 0  # log k axis: k = 0 (nothing kept) is the total variance, drawn as a line
    for order, style in (("top", "-"), ("bottom", "--")):
        ax.plot(ks[shown], ds["distortion"].sel(order=order).values[shown], style,
                label=f"PCA {order}-k components")
    ax.axhline(float(ds["total_variance"]), color="grey", lw=0.8, ls=":",
               label="total variance (k = 0)")
    if "pca_k" in ds:
        k, distortion = int(ds["pca_k"]), float(ds["pca_spectrum_distortion"])
        ax.plot([k], [distortion], marker="o", color="C3", ls="none",
                label=f"top-{k}: distortion {distortion:.2f} (--distortion)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-4 * float(ds["total_variance"]))  # not down to round-off at k = dims
    ax.set_xlabel("components kept k")
    ax.set_ylabel("distortion [sum of squares on [0, 1]]")
    if title is None:
        title = f"PCA baseline on {ds.attrs.get('dataset', 'the data')} " \
                f"({ds.attrs.get('n_images', '?')} images)"
    ax.set_title(title, fontsize=9)
    legend_outside(ax)
    return ax
