"""The audit's panels of where the bits go and of the latent statistics: per channel for
one-layer models (a latent-diffusion autoencoder's 4 .. 32 channels), per layer for hierarchical
models, and the rate map (KL per latent position) beside one image's own map over its thumbnail.

Every categorical axis (channels, layers) is labelled by its categories, never by a number line,
and every axis says its units."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes, categorical, channel_labels, layer_labels, needs
from vaeprobe.plot._rate import rate


def one_layer_grid(ds: xr.Dataset) -> bool:
    """One latent layer laid out on a grid of positions (per-channel panels apply)."""
    if ds.sizes.get("layer", 0) != 1:
        return False
    height, width = (int(v) for v in str(ds["layer_resolution"].values[0]).split("x"))
    return height * width > 1


def rate_per_channel(ds: xr.Dataset, ax=None):
    """Rate of each channel of a one-layer model (bars, standard errors), the active threshold
    drawn and the channels above it counted."""
    ax = axes(ax, figsize=(6.5, 4.2))
    channels = int(ds["channels"].values[0])
    values = ds["rate_per_channel"].values[0, :channels]
    se = ds["rate_per_channel_se"].values[0, :channels] if "rate_per_channel_se" in ds else None
    threshold = float(ds.attrs.get("active_threshold", 0.01))
    active = values > threshold
    ax.bar(np.arange(channels), values, yerr=se, capsize=2,
           color=np.where(active, "C0", "0.7"), label="mean KL ± s.e.")
    ax.axhline(threshold, color="C3", lw=1, ls="--", label=f"active threshold {threshold:g} nats")
    categorical(ax, channel_labels(channels), rotation=45 if channels > 12 else 0)
    ax.set_xlabel("latent channel")
    ax.set_ylabel("rate [nats / image]")
    ax.set_title(f"rate per channel: {int(active.sum())} of {channels} active, total "
                 f"{float(ds['total_rate']):.4g} nats / image", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def rate_per_dimension(ds: xr.Dataset, ax=None):
    """Latent dimensions of a flat one-layer model sorted by rate, labelled by dimension, with
    the active threshold and the count of active dimensions."""
    ax = axes(ax, figsize=(6.5, 4.2))
    values = ds["rate_per_dim_sorted"].values
    threshold = float(ds.attrs.get("active_threshold", 0.01))
    active = values > threshold
    se = ds["rate_per_dim_se"].values[ds["dim_by_rank"].values] if "rate_per_dim_se" in ds \
        else None
    ax.bar(np.arange(len(values)), values, yerr=se if len(values) <= 64 else None, capsize=1,
           color=np.where(active, "C0", "0.7"))
    ax.axhline(threshold, color="C3", lw=1, ls="--", label=f"active threshold {threshold:g} nats")
    categorical(ax, [f"d{d}" for d in ds["dim_by_rank"].values],
                rotation=45 if len(values) > 12 else 0)
    ax.set_xlabel("latent dimension (sorted by rate)")
    ax.set_ylabel("rate [nats / image]")
    ax.set_title(f"rate per dimension: {int(ds['n_active_dims'])} of {len(values)} active",
                 fontsize=9)
    ax.legend(fontsize=7)
    return ax


def audit_bits(ds: xr.Dataset, ax=None):
    """The bits section's main panel: for one-layer models the rate per dimension, sorted (flat
    latents of at most 512 dims), else per channel; for hierarchical models per layer."""
    ax = axes(ax, figsize=(6.5, 4.2))
    if "rate_per_dim_sorted" in ds and not one_layer_grid(ds):
        return rate_per_dimension(ds, ax=ax)
    if ds.sizes.get("layer", 0) == 1:
        return rate_per_channel(ds, ax=ax)
    rate(ds, ax=ax)
    ax.set_title(f"rate per layer: total {float(ds['total_rate']):.4g} nats / image", fontsize=9)
    if ax.get_legend() is not None:
        ax.get_legend().set_visible(len(ds["resolution"]) <= 6)
    return ax


def _grid_axes(ax, ds: xr.Dataset) -> None:
    ax.set_xlabel("latent x [latent position]")
    ax.set_ylabel("latent y [latent position]")
    ax.set_aspect("equal")


@needs("rate_map")
def audit_rate_map(ds: xr.Dataset, ax=None):
    """Where in the image the bits go: the KL per latent position (summed over channels, mean
    over the audited images) as a heatmap, nats per position."""
    ax = axes(ax, figsize=(5, 4.2))
    rate = ds["rate_map"].values
    height, width = rate.shape
    image = ax.imshow(rate, cmap="magma", interpolation="nearest", vmin=0,
                      extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03,
                       label="KL [nats / position]")
    _grid_axes(ax, ds)
    se = ds["rate_map_se"].values if "rate_map_se" in ds else np.full_like(rate, np.nan)
    ax.set_title(f"mean KL per latent position, {ds.attrs.get('n_images', '?')} images\n"
                 f"sum {rate.sum():.4g} nats / image; median s.e. {np.median(se):.2g}",
                 fontsize=9)
    return ax


@needs("rate_map_example", "example_thumbnail")
def audit_rate_map_example(ds: xr.Dataset, ax=None):
    """One image's own KL per latent position over a grey thumbnail of that image: the more
    nats a position costs, the redder and the more opaque its cell."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ax = axes(ax, figsize=(5, 4.2))
    rate = ds["rate_map_example"].values
    height, width = rate.shape
    grey = ds["example_thumbnail"].values.astype(np.float64).mean(0)  # (h, w) 0 .. 255
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="bilinear")
    norm, cmap = Normalize(0, max(float(rate.max()), 1e-12)), plt.get_cmap("autumn_r")
    colours = cmap(norm(rate))
    colours[..., 3] = 0.9 * np.clip(norm(rate), 0, 1) ** 0.7  # cheap positions let it show
    ax.imshow(colours, extent=extent, interpolation="nearest")
    ax.figure.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.046, pad=0.03,
                       label="KL [nats / position]")
    _grid_axes(ax, ds)
    index = int(ds["example_image"]) if "example_image" in ds else "?"
    ax.set_title(f"image {index}: its own KL per position ({rate.sum():.4g} nats / image)\n"
                 f"over the image (opaque: costly)", fontsize=9)
    return ax


def latents_per_channel(ds: xr.Dataset, ax=None):
    """Per channel of a one-layer model: mean and std of the posterior means, beside the mean
    and std the checkpoint's scaling_factor / shift_factor (or per-channel latents_mean /
    latents_std) assume."""
    ax = axes(ax, figsize=(6.5, 4.2))
    channels = int(ds["channels"].values[0])
    positions = np.arange(channels)
    width = 0.38
    for offset, name, label, colour, mark in (
            (-width / 2, "posterior_mean_mean", "mean", "C0", "navy"),
            (width / 2, "posterior_mean_std", "std", "C1", "darkred")):
        ax.bar(positions + offset, ds[name].values[0, :channels], width, color=colour,
               label=f"{label} of posterior means")
        target = f"checkpoint_channel_{label}"
        if target in ds and np.isfinite(ds[target].values[:channels]).any():
            ax.plot(positions + offset, ds[target].values[:channels], "_", color=mark,
                    markersize=16, mew=2.5, label=f"{label} the checkpoint assumes")
    ax.axhline(0, color="0.5", lw=0.6)
    categorical(ax, channel_labels(channels), rotation=45 if channels > 12 else 0)
    ax.set_xlabel("latent channel")
    ax.set_ylabel("mean, std over images and positions [latent units]", fontsize=8)
    ax.set_title("posterior means per channel against the checkpoint's factors\n"
                 + _factors_title(ds), fontsize=9)
    ax.legend(fontsize=7)
    return ax


def _factors_title(ds: xr.Dataset) -> str:
    scale = ds["recommended_scaling_factor"].values
    own = float(ds["checkpoint_scaling_factor"])
    shift = float(ds["checkpoint_shift_factor"]) if "checkpoint_shift_factor" in ds else np.nan
    title = (f"recommended scaling_factor 1/std {scale[0]:.4g}" if len(scale) == 1 else
             f"recommended scaling_factor 1/std {np.nanmin(scale):.3g} .. {np.nanmax(scale):.3g}")
    if np.isfinite(own):
        title += f"\ncheckpoint: scaling_factor {own:.5g}"
        title += f", shift_factor {shift:.4g}" if np.isfinite(shift) else ", no shift_factor"
    return title


def latents_per_layer(ds: xr.Dataset, ax=None):
    """Per layer (labelled by name and resolution): the std of posterior samples and the mean
    posterior std."""
    ax = axes(ax, figsize=(6.5, 4.2))
    positions = np.arange(ds.sizes["layer"])
    width = 0.4
    ax.bar(positions - width / 2, ds["layer_sample_std"].values, width, label="std of samples")
    ax.bar(positions + width / 2, ds["posterior_std_mean"].values, width,
           label="mean posterior std")
    categorical(ax, layer_labels(ds), rotation=45 if len(positions) > 4 else 0)
    ax.set_xlabel("latent layer (top to bottom)")
    ax.set_ylabel("std [latent units]")
    ax.set_title("spread of the latents per layer\n" + _factors_title(ds), fontsize=9)
    ax.legend(fontsize=7)
    return ax


def audit_latents(ds: xr.Dataset, ax=None):
    """The latents section's panel: per channel for one-layer models, else per layer."""
    if ds.sizes.get("layer", 0) == 1:
        return latents_per_channel(ds, ax=ax)
    return latents_per_layer(ds, ax=ax)
