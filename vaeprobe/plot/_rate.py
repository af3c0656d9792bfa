from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes, categorical, layer_labels


def rate(ds: xr.Dataset, ax=None, log: bool = False):
    """Rate per latent layer (bars coloured by resolution, standard errors) with per-resolution
    totals; the layer axis is labelled by layer name and resolution."""
    import matplotlib.pyplot as plt

    ax = axes(ax, figsize=(max(5, 0.18 * ds.sizes["layer"] + 3), 3.6))
    positions = np.arange(ds.sizes["layer"])
    resolutions = ds["layer_resolution"].values.astype(str)
    distinct = [str(label) for label in ds["resolution"].values]  # "HxW", coarse to fine
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(distinct)))
    for colour, resolution in zip(colours, distinct, strict=True):
        chosen = resolutions == resolution
        total = float(ds["rate_by_resolution"].sel(resolution=resolution))
        ax.bar(positions[chosen], ds["rate"].values[chosen],
               yerr=ds["rate_se"].values[chosen], color=colour, capsize=1,
               label=f"{resolution}: {total:.1f} nats")
    if "stage" in ds.coords and len(set(ds["stage"].values.tolist())) > 1:
        boundary = int(np.argmax(ds["stage"].values != ds["stage"].values[0]))
        ax.axvline(boundary - 0.5, color="k", lw=0.8, ls="--")
    if log:
        ax.set_yscale("log")
    categorical(ax, layer_labels(ds), rotation=45 if len(positions) > 4 else 0)
    ax.set_xlabel("latent layer (top to bottom)")
    ax.set_ylabel("rate [nats / image]")
    ax.set_title(f"total {float(ds['total_rate']):.1f} nats, distortion "
                 f"{float(ds['distortion']):.2f}")
    ax.legend(title="resolution: total", fontsize=8)
    return ax


def iwae_convergence(ds: xr.Dataset, ax=None):
    """The importance-weighted bound (bits/dim) against K, with the ELBO for reference."""
    ax = axes(ax)
    ks = ds["k"].values
    ax.plot(ks, ds["bpd_by_k"].values, marker="o", label="IWAE bound $L_K$")
    ax.axhline(float(ds["elbo_bpd_mean"]), color="grey", ls="--", label="ELBO")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("importance samples K [samples per image]")
    ax.set_ylabel("-log p(x) bound [bits / dim]")
    ax.set_title(f"K={ks[-1]}: {float(ds['bpd_mean']):.3f} ± {float(ds['bpd_se']):.3f} bpd "
                 f"({ds.attrs.get('likelihood_kind', '')})")
    ax.legend()
    return ax
