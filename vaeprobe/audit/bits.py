"""Section 2, where the bits go: vp.rate per layer / resolution / channel, active units, and
the layers that collapsed (rate under a recorded threshold)."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from vaeprobe.audit._common import restamp
from vaeprobe.probe import Probe
from vaeprobe.rate import rate

PROTOCOL = ("vp.rate: KL(q(z_l | x, z_<l) || p(z_l | z_<l)) per image in nats, one posterior "
            "draw per image (per-image generators keyed by (seed, index)), averaged over the "
            "evaluation images; a channel is active when its mean KL exceeds active_threshold "
            "nats; a layer is collapsed when its mean KL is below collapse_threshold nats")


def where_bits_go(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                  active_threshold: float = 0.01, collapse_threshold: float = 0.1,
                  batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """Section 2: rate per layer, resolution and channel; active units; collapsed layers.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
        A seeded random subset of this many images.
    seed : int
    active_threshold : float
        A channel is an active unit when its mean KL exceeds this many nats.
    collapse_threshold : float
        A layer is collapsed when its mean KL is below this many nats per image.
    batch_size : int
    progress : bool

    Returns
    -------
    xarray.Dataset
        Everything :func:`vaeprobe.rate` returns, plus ``collapsed`` (layer, 0/1),
        ``active_fraction`` (layer), ``n_collapsed`` (scalar); attrs ``collapse_threshold``,
        ``collapsed_layers`` (JSON list of names).

    Examples
    --------
    >>> ds = where_bits_go(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["name"].values[ds["collapsed"].values == 1]  # doctest: +SKIP
    """
    if not collapse_threshold >= 0:
        raise ValueError(f"collapse_threshold must be >= 0 nats, got {collapse_threshold}")
    ds = rate(probe, data, n_images=n_images, batch_size=batch_size, seed=seed,
              active_threshold=active_threshold, progress=progress)
    collapsed = (ds["rate"].values < collapse_threshold).astype(np.int8)
    channels = ds["channels"].values
    ds["collapsed"] = ("layer", collapsed, {"units": "1", "long_name":
                                            "mean KL below collapse_threshold"})
    ds["active_fraction"] = ("layer", ds["active"].sum("channel").values / channels,
                             {"units": "1", "long_name": "share of the layer's channels active"})
    ds["n_collapsed"] = ((), int(collapsed.sum()), {"units": "layers"})
    names = ds["name"].values[collapsed == 1].tolist()
    return restamp(ds, "bits", dict(collapse_threshold=collapse_threshold), PROTOCOL,
                   collapse_threshold=collapse_threshold, active_threshold=active_threshold,
                   collapsed_layers=json.dumps(names))
