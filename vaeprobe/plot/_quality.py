from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes


def quality_panels(ds: xr.Dataset) -> list[str]:
    """The metrics of ``ds`` that hold at least one number (one panel each)."""
    return [name for name in ("fid", "kid_mean", "precision", "recall", "lpips",
                              "lpips_diversity") if name in ds and
            np.isfinite(ds[name].values).any()]


def sample_quality(ds: xr.Dataset, axs=None):
    """FID, KID, precision/recall and LPIPS per kind (mean vs stochastic ...), as bars."""
    import matplotlib.pyplot as plt

    panels = quality_panels(ds)
    if axs is None:
        _, axs = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2))
    kinds = [str(k).replace("reconstruction_", "recon. ") for k in ds["kind"].values]
    colours = plt.get_cmap("tab10")(np.arange(len(kinds)))
    for ax, name in zip(np.atleast_1d(axs), panels, strict=True):
        ax = axes(ax)
        errors = ds["kid_std"].values if name == "kid_mean" else None
        ax.bar(range(len(kinds)), ds[name].values, yerr=errors, color=colours)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_title(name)
    if ds.attrs.get("stand_in_network"):
        np.atleast_1d(axs)[0].figure.suptitle("stand-in networks (TEST ONLY): not comparable",
                                              color="red")
    return axs
