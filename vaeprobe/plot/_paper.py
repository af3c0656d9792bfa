"""The multi-run figures of *Mind Your Bits and Errors* (Figures 1, 3-8): each takes a Dataset."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes
from vaeprobe.plot._images import tile


def _errorbar(ax, ds: xr.Dataset, x: str, variable: str, **style):
    se = ds[f"{variable}_se"].values if f"{variable}_se" in ds else None
    return ax.errorbar(ds[x].values, ds[variable].values, yerr=se, capsize=2, **style)


def _annotate_points(ax, ds: xr.Dataset, x: str, y: str, dim: str) -> None:
    for xv, yv, label in zip(ds[x].values, ds[y].values, ds[dim].values, strict=True):
        if np.isfinite(xv) and np.isfinite(yv):
            ax.annotate(f"{dim} {label:g}" if np.isreal(label) else str(label), (xv, yv),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)


def _log_distortion_axis(ax) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel("distortion [sum of squares on [0, 1]]")


def rate_distortion(ds: xr.Dataset, ax=None, dim: str = "gamma"):
    """Rate against distortion, one point per run along ``dim`` (Figure 6, left), with the
    Gaussian R(D) bound of the data's PCA (``rd_rate`` along ``rd_distortion``) as a curve.

    ``ds``: ``rate`` (and ``rate_se``), ``distortion`` along ``dim``, in nats and sums of
    squares on [0, 1]; optionally ``rd_rate``.
    """
    ax = axes(ax)
    _errorbar(ax, ds, "distortion", "rate", marker="o", ls="-", color="C3", label="VAE (test)")
    _annotate_points(ax, ds, "distortion", "rate", dim)
    if "rd_rate" in ds:
        keep = ds["rd_rate"].values > 0
        ax.plot(ds["rd_distortion"].values[keep], ds["rd_rate"].values[keep], color="k", ls="--",
                label="Gaussian R(D) of the data's PCA")
    _log_distortion_axis(ax)
    ax.set_yscale("log")
    ax.set_ylabel("rate [nats / image]")
    ax.legend(fontsize=8)
    return ax


def against_distortion(ds: xr.Dataset, variables, ax=None, dim: str = "gamma",
                       labels=None, ylabel: str | None = None):
    """Variables (with ``<name>_se`` error bars where present) against ``distortion``, one
    point per run along ``dim``: e.g. E log p(x|z) and the ELBO / IWAE bound (Figure 6)."""
    ax = axes(ax)
    labels = list(labels or [ds[v].attrs.get("long_name", v) for v in variables])
    for index, (variable, label) in enumerate(zip(variables, labels, strict=True)):
        _errorbar(ax, ds, "distortion", variable, marker="os^v"[index % 4], ls="-",
                  color=f"C{index}", label=label)
    _log_distortion_axis(ax)
    ax.set_ylabel(ylabel or ds[variables[0]].attrs.get("units", ""))
    ax.legend(fontsize=8)
    return ax


def image_rows(images: xr.DataArray, ax=None, columns: int | None = None, row_labels=None,
               title: str | None = None):
    """uint8 images with dims (row, image, channel, y, x) as one grid, a labelled row each
    (e.g. samples per gamma, Figures 4-5; primary vs two-stage, Figure 7)."""
    if images.ndim != 5:
        raise ValueError(f"expected images (row, image, channel, y, x), got dims {images.dims}")
    row_dim = images.dims[0]
    n_rows, n_images, _, height, _ = images.shape
    columns = min(columns or n_images, n_images)
    values = np.asarray(images.values)[:, :columns].reshape(-1, *images.shape[2:])
    mosaic = tile(values.astype(np.uint8), columns)
    ax = axes(ax, figsize=(columns * 0.8 + 1, n_rows * 0.8))
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0,
              vmax=255, interpolation="nearest")
    labels = row_labels if row_labels is not None else [
        f"{row_dim} {value:g}" if isinstance(value, (int, float, np.number)) else str(value)
        for value in images[row_dim].values]
    ax.set_yticks([1 + (height + 1) * (r + 0.5) for r in range(n_rows)], labels, fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def bars(ds: xr.Dataset, variable: str, ax=None, dim: str | None = None, title: str | None = None):
    """``variable`` per entry of its one dim (e.g. ``kind`` or ``model``), with ``<variable>_se``
    error bars where present."""
    ax = axes(ax, figsize=(3.2, 3.2))
    dim = dim or ds[variable].dims[0]
    labels = [str(v) for v in ds[dim].values]
    se = ds[f"{variable}_se"].values if f"{variable}_se" in ds else None
    ax.bar(range(len(labels)), ds[variable].values, yerr=se, capsize=3,
           color=[f"C{i}" for i in range(len(labels))])
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ds[variable].attrs.get("units", ""))
    ax.set_title(title or ds[variable].attrs.get("long_name", variable), fontsize=9)
    return ax


def bits_by_stage(ds: xr.Dataset, ax=None):
    """Figure 8 as bars: IWAE and ELBO bits/dim of the primary vs the two-stage model, with
    standard errors (``bpd``, ``bpd_se``, ``elbo_bpd``, ``elbo_bpd_se`` along ``model``)."""
    ax = axes(ax)
    models = [str(m) for m in ds["model"].values]
    x, width = np.arange(len(models)), 0.38
    for offset, (variable, label) in zip((-width / 2, width / 2), (("bpd", "IWAE bound"),
                                                                   ("elbo_bpd", "ELBO")),
                                         strict=True):
        values = ds[variable].values
        ax.bar(x + offset, values, width, yerr=ds[f"{variable}_se"].values, capsize=3,
               label=label)
        for xv, v in zip(x + offset, values, strict=True):
            ax.annotate(f"{v:.3f}", (xv, v), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7)
    low = float(np.nanmin(ds["bpd"].values))
    ax.set_ylim(bottom=max(0.0, low - 1.0))
    ax.set_xticks(x, models)
    ax.set_ylabel("bits / dim (lower is better)")
    ax.legend(fontsize=8)
    return ax


def rate_by_stage(ds: xr.Dataset, ax=None):
    """Rate of each stage, stacked, per model (``stage_rate`` (model, stage), nats)."""
    ax = axes(ax, figsize=(3.4, 3.4))
    models = [str(m) for m in ds["model"].values]
    bottom = np.zeros(len(models))
    for index, stage in enumerate(ds["stage"].values):
        values = np.nan_to_num(ds["stage_rate"].sel(stage=stage).values)
        ax.bar(range(len(models)), values, bottom=bottom, color=f"C{index + 2}",
               label=f"{stage} latents")
        bottom += values
    ax.set_xticks(range(len(models)), models)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("rate [nats / image]")
    ax.legend(fontsize=8)
    return ax


def training_comparison(ds: xr.Dataset, variable: str, ax=None, log: bool = True,
                        dim: str = "run", title: str | None = None):
    """One training-log variable against ``train_step``, a line per run along ``dim``
    (Figure 1); steps where updates were skipped (``train_skipped`` rises) are marked x."""
    ax = axes(ax)
    for index, run in enumerate(ds[dim].values):
        one = ds.sel({dim: run})
        values = one[variable].values
        steps = ds["train_step"].values
        keep = np.isfinite(values)
        ax.plot(steps[keep], values[keep], color=f"C{index}", lw=0.9, label=str(run))
        if "train_skipped" in one:
            skipped = np.nan_to_num(one["train_skipped"].values)
            rose = np.nonzero(np.diff(skipped, prepend=0) > 0)[0]
            if len(rose):
                ax.plot(steps[rose], values[rose], "x", color=f"C{index}", ms=6)
    if log and np.nanmin(ds[variable].values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{variable.removeprefix('train_')} [{ds[variable].attrs.get('units', '')}]")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return ax
