"""Plots of vp.information, vp.compress and vp.compare results (Datasets in, Axes out)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes, categorical, channel_labels


def information(ds: xr.Dataset, ax=None):
    """Per layer, the rate split into I(x; z_l | z_<l) and the marginal KL, stacked, with the
    log N ceiling on I(x; z) in the title."""
    ax = axes(ax, figsize=(max(5, 0.3 * ds.sizes["layer"] + 3), 3.6))
    layers = ds["layer"].values
    info = ds["mutual_information"].values
    mkl = ds["marginal_kl"].values
    ax.bar(layers, info, yerr=ds["mutual_information_se"].values, capsize=1,
           color="tab:blue", label="I(x; z_l | z_<l)")
    ax.bar(layers, mkl, bottom=np.clip(info, 0, None), yerr=ds["marginal_kl_se"].values,
           capsize=1, color="tab:orange", label="KL(q(z_l | z_<l) || p(z_l | z_<l))")
    ax.plot(layers, ds["rate"].values, "k_", markersize=14, label="rate (analytic KL)")
    ax.set_xticks(layers)
    ax.set_xticklabels([str(name) for name in ds["name"].values], rotation=60, fontsize=7)
    ax.set_ylabel("nats / image")
    ceiling = float(ds.attrs.get("log_n_ceiling", math.nan))
    title = (f"I(x; z) {float(ds['total_mutual_information']):.2f} (log N = {ceiling:.2f}), "
             f"marginal KL {float(ds['total_marginal_kl']):.2f} nats")
    if "total_correlation" in ds:
        title += (f"\nTC {float(ds['total_correlation']):.2f}, dimension-wise KL "
                  f"{float(ds['dimension_wise_kl']):.2f}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def compress(ds: xr.Dataset, ax=None):
    """Coded bits/dim beside the -ELBO at the same discretization (its pixel and latent
    terms stacked), with the chain's overhead and the initial bits in the title."""
    ax = axes(ax, figsize=(4.5, 3.6))
    dims = float(ds["elbo_bits"].mean()) / float(ds["elbo_bpd"])
    pixel = float(ds["pixel_bits"].mean()) / dims
    latent = float(ds["layer_bits"].sum("layer").mean()) / dims
    ax.bar([0], [pixel], color="tab:blue", label="-log2 p(x | z)")
    ax.bar([0], [latent], bottom=[pixel], color="tab:orange", label="latent KL (bins)")
    ax.bar([1], [float(ds["coded_bpd"])], yerr=[float(ds["coded_bpd_se"])], capsize=3,
           color="tab:green", label="coded (ANS stack growth)")
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["-ELBO", "coded"])
    ax.set_ylabel("bits / dim")
    ax.set_title(f"overhead {100 * float(ds['overhead_fraction']):+.2f}%, round trip "
                 f"{'exact' if int(ds.attrs.get('round_trip', 0)) else 'not verified'}\n"
                 f"initial bits {int(ds['initial_bits'])}, "
                 f"{int(ds.attrs.get('n_images', ds.sizes['image']))} images", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def rate_distortion_models(ds: xr.Dataset, ax=None):
    """The models of a vp.compare table on the rate-distortion plane; a vaeprobe run's gamma
    (its distortion target) as a tick on the distortion axis joined to its point."""
    ax = axes(ax, figsize=(5, 4))
    for index, label in enumerate(ds["model"].values):
        row = ds.sel(model=label)
        rate, distortion = float(row["rate"]), float(row["distortion"])
        colour = f"C{index % 10}"
        ax.plot(distortion, rate, "o", color=colour, label=str(label))
        ax.annotate(str(label), (distortion, rate), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
        gamma = float(row["gamma"])
        if math.isfinite(gamma):
            ax.plot([gamma, distortion], [rate, rate], ":", color=colour)
            ax.plot(gamma, rate, "|", color=colour, markersize=12)
            ax.annotate(f"γ={gamma:g}", (gamma, rate), fontsize=7, xytext=(0, -10),
                        textcoords="offset points", ha="center")
    ax.set_xlabel("distortion D [sum of squares on [0, 1] per image]")
    ax.set_ylabel("rate R [nats / image]")
    ax.set_title("models on the rate-distortion plane (| = gamma target)", fontsize=9)
    return ax


def compare_page(ds: xr.Dataset):
    """One page for vp.compare: the rate-distortion plane, the information split per model,
    the rate per channel side by side (models of one latent layout) and the quality columns
    (PSNR, SSIM, LPIPS, bits/dim) that are defined."""
    import matplotlib.pyplot as plt

    extras = [name for name in ("psnr", "ssim", "lpips", "bpd", "elbo_bpd",
                                "latent_scaling_factor")
              if np.isfinite(ds[name].values).any()]
    channels = "rate_per_channel" in ds
    panels = 2 + channels + len(extras)
    columns = min(4, panels)
    rows = math.ceil(panels / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows),
                             layout="constrained", squeeze=False)
    grid = grid.flatten()
    for ax in grid[panels:]:
        ax.set_visible(False)
    grid = grid[:panels]
    rate_distortion_models(ds, ax=grid[0])
    labels = [str(label) for label in ds["model"].values]
    positions = np.arange(len(labels))
    info = np.nan_to_num(ds["mutual_information"].values)
    grid[1].bar(positions, info, color="tab:blue", label="I(x; z)")
    grid[1].bar(positions, np.nan_to_num(ds["marginal_kl"].values), bottom=info,
                color="tab:orange", label="KL(q(z) || p(z))")
    grid[1].plot(positions, ds["rate"].values, "k_", markersize=14, label="rate")
    grid[1].set_ylabel("nats / image")
    grid[1].set_title("rate = information + marginal KL", fontsize=9)
    grid[1].legend(fontsize=7)
    for ax, name in zip(grid[2 + channels:], extras, strict=True):
        ax.bar(positions, ds[name].values, color="tab:grey")
        ax.set_title(f"{name} [{ds[name].attrs.get('units', '')}]", fontsize=9)
    for ax in [grid[1], *grid[2 + channels:]]:
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("model")
    if channels:
        rate_per_channel_models(ds, ax=grid[2])
    return fig


def rate_per_channel_models(ds: xr.Dataset, ax=None):
    """The rate of each latent channel, the models' bars side by side (models of one latent
    layout: a vp.compare table with ``rate_per_channel``), with standard errors."""
    ax = axes(ax, figsize=(5, 3.8))
    models = [str(label) for label in ds["model"].values]
    count = ds.sizes["channel"]
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        row = ds.sel(model=model)
        ax.bar(np.arange(count) + (index - (len(models) - 1) / 2) * width,
               row["rate_per_channel"].values, width, yerr=row["rate_per_channel_se"].values,
               capsize=1, label=model)
    categorical(ax, channel_labels(count), rotation=45 if count > 12 else 0)
    ax.set_xlabel("latent channel")
    ax.set_ylabel("rate [nats / image]")
    ax.set_title("rate per channel, models side by side", fontsize=9)
    ax.legend(fontsize=7)
    return ax
