"""Section "bits", where the bits go: rate per layer / resolution / channel (vp.rate's maths on
the shared pass), active units, collapsed layers; for one-layer models with few dimensions the
rate of every latent dimension (sorted, active ones counted), and for one-layer models with a
spatial latent grid (latent-diffusion autoencoders) the rate map: KL per latent position."""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr

from vaeprobe._analysis import image_dims, interpretation_warnings, with_warnings
from vaeprobe.accumulate import check_mergeable
from vaeprobe.audit._common import NamedData, ProbeFacts, fmt, per_dimension, section_attrs
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import run_shared
from vaeprobe.probe import Probe
from vaeprobe.rate import (
    Moments,
    RateTotals,
    batch_rate_terms,
    rate_dataset,
    reconstruction_terms,
)

PROTOCOL = ("vp.rate's estimator on the audit's shared pass: KL(q(z_l | x, z_<l) || p(z_l | "
            "z_<l)) per image in nats, one posterior draw per image (per-image generators keyed "
            "by (seed, index)), averaged over the evaluation images; a channel (and, for "
            "one-layer models of at most 512 dims, a latent dimension) is active when its mean "
            "KL exceeds active_threshold nats; a layer is collapsed when its mean KL is below "
            "collapse_threshold nats; for one-layer models with a spatial latent grid, the rate "
            "map is the KL summed over channels at each latent position, averaged over the "
            "images (its standard error over images), and the first evaluation image's own map")
THUMBNAIL = 256  # the example image's thumbnail: at most this many pixels along each side


class BitsAccumulator:
    """vp.rate's running sums over the shared pass (its :class:`~vaeprobe.rate.RateTotals` of
    :func:`~vaeprobe.rate.batch_rate_terms`), + per-dimension KL for flat models."""

    def __init__(self, probe: Probe, context, *, active_threshold: float = 0.01,
                 collapse_threshold: float = 0.1):
        probe.require("vp.rate", posterior=True)
        if not collapse_threshold >= 0:
            raise ValueError(f"collapse_threshold must be >= 0 nats, got {collapse_threshold}")
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images = context.seed, context.n_images
        self.active_threshold, self.collapse_threshold = active_threshold, collapse_threshold
        self.totals = RateTotals(len(probe.layers), per_image=False)
        self.dims, self.per_dim = Moments(), per_dimension(probe)
        self.rate_map = RateMap() if spatial_map(probe) else None
        self.log_px_skipped = ""

    def update(self, batch) -> None:
        latents, x = batch.sample, batch.x
        self.totals.update(batch_rate_terms(latents, x, batch.decoded["posterior_sample"].mean,
                                            batch.log_px, batch.log_px_error))
        self.log_px_skipped = self.log_px_skipped or batch.log_px_error
        if self.per_dim:
            self.dims.update(latents.draws[0].kl.double().flatten(1).cpu())
        if self.rate_map is not None:
            self.rate_map.update(latents.draws[0].kl, x, batch.positions, batch.indices)

    def merge(self, other: BitsAccumulator) -> BitsAccumulator:
        check_mergeable(self, other, "active_threshold", "collapse_threshold")
        self.totals.merge(other.totals)
        if other.dims.n:
            self.dims = self.dims.merge(other.dims) if self.dims.n else other.dims
        if self.rate_map is not None:
            self.rate_map.merge(other.rate_map)
        self.log_px_skipped = self.log_px_skipped or other.log_px_skipped
        return self

    def compute(self) -> xr.Dataset:
        totals, probe = self.totals, self.probe
        ds = rate_dataset(probe, totals.layer, totals.channel, totals.distortion, totals.total,
                          self.active_threshold)
        kl_analytic = totals.kl_analytic or [True] * len(probe.layers)
        ds = ds.assign_coords(kl_analytic=("layer", np.array(kl_analytic, dtype=np.int8)))
        ds["rate_per_channel_se"] = (("layer", "channel"), totals.channel.compute()[1], {
            "units": "nats", "long_name": "standard error of rate_per_channel over images"})
        if totals.log_px.n:
            ds = ds.assign(reconstruction_terms(totals.log_px, totals.elbo, image_dims(probe),
                                                 probe.likelihood_kind, probe.n_bits))
        collapsed = (ds["rate"].values < self.collapse_threshold).astype(np.int8)
        ds["collapsed"] = ("layer", collapsed, {"units": "1", "long_name":
                                                "mean KL below collapse_threshold"})
        ds["active_fraction"] = ("layer", ds["active"].sum("channel").values
                                 / ds["channels"].values,
                                 {"units": "1", "long_name": "share of the layer's channels "
                                  "active"})
        ds["n_collapsed"] = ((), int(collapsed.sum()), {"units": "layers"})
        if self.dims.n:
            ds = ds.assign(_per_dimension(self.dims, self.active_threshold))
        if self.rate_map is not None and self.rate_map.moments.n:
            ds = ds.assign(self.rate_map.compute(probe))
        names = ds["name"].values[collapsed == 1].tolist()
        parameters = dict(active_threshold=self.active_threshold,
                          collapse_threshold=self.collapse_threshold)
        ds.attrs = section_attrs("bits", parameters, probe, self.data, self.n_images, self.seed,
                                 PROTOCOL, computed_by="vp.rate's estimator (shared pass)",
                                 collapse_threshold=self.collapse_threshold,
                                 active_threshold=self.active_threshold,
                                 collapsed_layers=json.dumps(names), posterior="sample",
                                 likelihood_kind=probe.likelihood_kind,
                                 per_dimension=int(bool(self.dims.n)),
                                 rate_map=int("rate_map" in ds),
                                 log_px_skipped=self.log_px_skipped)
        bpd = float(ds["elbo_bpd"]) if "elbo_bpd" in ds else None
        ds.attrs = with_warnings(ds.attrs, interpretation_warnings(probe, bpd=bpd))
        return ds


def _per_dimension(moments: Moments, threshold: float) -> xr.Dataset:
    """Rate per latent dimension, its standard error, sorted order and active flags."""
    rate, se = moments.compute()
    order = np.argsort(-rate, kind="stable")
    active = (rate > threshold).astype(np.int8)
    nats = {"units": "nats"}
    return xr.Dataset(
        {
            "rate_per_dim": ("dim", rate, {**nats, "long_name": "mean KL per latent dimension"}),
            "rate_per_dim_se": ("dim", se, nats),
            "active_dim": ("dim", active, {"units": "1", "long_name": "mean KL above "
                                           "active_threshold"}),
            "rate_per_dim_sorted": ("rank", rate[order], nats),
            "dim_by_rank": ("rank", order.astype(np.int64), {"units": "1", "long_name":
                                                             "latent dimension of each rank"}),
            "n_active_dims": ((), int(active.sum()), {"units": "dimensions"}),
        },
        coords={"dim": np.arange(len(rate)), "rank": np.arange(len(rate))},
    )


def spatial_map(probe) -> bool:
    """The rate map applies: one latent layer laid out on a grid of more than one position."""
    return len(probe.layers) == 1 and int(np.prod(probe.layers[0].resolution)) > 1


class RateMap:
    """Running sums of the KL per latent position (summed over channels), and the first
    evaluation image's own map with a thumbnail of that image."""

    def __init__(self):
        self.moments = Moments()
        self.example = None  # (dataset index, KL map (h, w), thumbnail uint8 (C, h', w'))

    def update(self, kl: torch.Tensor, x: torch.Tensor, positions, indices) -> None:
        """Fold in one batch: ``kl`` (B, C, h, w) nats, images ``x`` uint8 (B, C, H, W)."""
        per_position = kl.detach().double().sum(1)  # (B, h, w) on the model's device
        moments = self.moments  # Moments.update's sums, reduced on the device: two maps leave it
        moments.n += per_position.shape[0]
        moments.total = moments.total + per_position.sum(0).cpu()
        moments.total_sq = moments.total_sq + (per_position ** 2).sum(0).cpu()
        first = (positions == 0).nonzero().flatten().tolist()
        if first:
            i = first[0]
            self.example = (int(indices[i]), per_position[i].cpu().numpy(), thumbnail(x[i]))

    def merge(self, other: RateMap) -> RateMap:
        if other.moments.n:
            if self.moments.n:
                self.moments.merge(other.moments)
            else:
                self.moments = other.moments
        self.example = self.example if self.example is not None else other.example
        return self

    def compute(self, probe) -> xr.Dataset:
        """``rate_map`` / ``rate_map_se`` (latent_y, latent_x), the example's map and
        thumbnail; nats per position."""
        rate, se = self.moments.compute()
        height, width = rate.shape
        per_position = {"units": "nats per position"}
        variables = {
            "rate_map": (("latent_y", "latent_x"), rate, {
                **per_position, "long_name": "KL per latent position (summed over channels), "
                "mean over images; sums to total_rate"}),
            "rate_map_se": (("latent_y", "latent_x"), se, {
                **per_position, "long_name": "standard error of rate_map over images"}),
        }
        if self.example is not None:
            index, example, image = self.example
            variables["rate_map_example"] = (("latent_y", "latent_x"), example, {
                **per_position, "long_name": "KL per latent position of one image"})
            variables["example_thumbnail"] = (("thumbnail_channel", "thumbnail_y",
                                               "thumbnail_x"), image, {
                "units": "8-bit level", "long_name": "the example image, downsampled"})
            variables["example_image"] = ((), index, {
                "units": "1", "long_name": "dataset index of the example image"})
        image_height, image_width = probe.image_shape[1:]
        position = "latent position"
        coords = {
            "latent_y": ("latent_y", np.arange(height), {
                "units": position, "long_name": f"latent row ({image_height / height:g} "
                "image rows each)"}),
            "latent_x": ("latent_x", np.arange(width), {
                "units": position, "long_name": f"latent column ({image_width / width:g} "
                "image columns each)"}),
        }
        if self.example is not None:
            channels, rows, columns = self.example[2].shape
            coords.update(thumbnail_channel=np.arange(channels), thumbnail_y=np.arange(rows),
                          thumbnail_x=np.arange(columns))
        return xr.Dataset(variables, coords=coords)


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (C, h, w), area-averaged to at most ``size`` along each side."""
    height, width = image.shape[1:]
    step = max(1, -(-max(height, width) // size))  # an integer factor: pixels stay aligned
    if step == 1:
        return image.cpu().numpy()
    small = torch.nn.functional.avg_pool2d(image[None].float(), step, ceil_mode=True)[0]
    return small.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def where_bits_go(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                  active_threshold: float = 0.01, collapse_threshold: float = 0.1,
                  batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """Section "bits": rate per layer, resolution and channel; active units; collapsed layers.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
        A seeded random subset of this many images.
    seed : int
    active_threshold : float
        A channel (or latent dimension) is active when its mean KL exceeds this many nats.
    collapse_threshold : float
        A layer is collapsed when its mean KL is below this many nats per image.
    batch_size : int
    progress : bool

    Returns
    -------
    xarray.Dataset
        Everything :func:`vaeprobe.rate` returns, plus ``collapsed`` (layer, 0/1),
        ``active_fraction`` (layer), ``n_collapsed`` (scalar); attrs ``collapse_threshold``,
        ``collapsed_layers`` (JSON list of names). For one-layer models of at most 512 latent
        dimensions also, over dim ``dim``: ``rate_per_dim``, ``rate_per_dim_se``,
        ``active_dim``; over ``rank`` (largest rate first): ``rate_per_dim_sorted``,
        ``dim_by_rank``; and ``n_active_dims``. ``rate_per_channel_se`` (layer, channel):
        the standard error of ``rate_per_channel`` over images. For one-layer models with a
        spatial latent grid (a latent-diffusion autoencoder's (C, H/8, W/8) latents), over dims
        ``latent_y``, ``latent_x`` (latent rows and columns, coordinates 0 ..): ``rate_map``
        (KL summed over channels at each position, mean over images, nats per position; it
        sums to ``total_rate``) with ``rate_map_se``, and the first evaluation image's own map
        ``rate_map_example``, its dataset index ``example_image`` and its thumbnail
        ``example_thumbnail`` (uint8, dims ``thumbnail_channel``, ``thumbnail_y``,
        ``thumbnail_x``, at most 256 pixels a side).

    Examples
    --------
    >>> ds = where_bits_go(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["name"].values[ds["collapsed"].values == 1]  # doctest: +SKIP
    """
    return run_shared("bits", probe, data, n_images=n_images, seed=seed, batch_size=batch_size,
                      progress=progress, active_threshold=active_threshold,
                      collapse_threshold=collapse_threshold)


def summary(ds: xr.Dataset) -> str:
    a = ds.attrs
    collapsed = json.loads(a.get("collapsed_layers", "[]"))
    text = (f"total rate {fmt(ds['total_rate'], 4)} nats/image "
            f"({fmt(ds['rate_bpd'].sum(), 3)} bits/dim); active units "
            f"{int(ds['active_units'])}/{int(ds['channels'].sum())}; collapsed layers "
            f"(< {a.get('collapse_threshold')} nats): {len(collapsed)}"
            + (f" ({', '.join(collapsed[:6])}{' ...' if len(collapsed) > 6 else ''})"
               if collapsed else ""))
    if "n_active_dims" in ds:
        text += (f"; active dimensions {int(ds['n_active_dims'])}/{ds.sizes['dim']} "
                 f"(> {a.get('active_threshold')} nats)")
    if "rate_map" in ds:
        text += "; " + _map_line(ds["rate_map"].values)
    return text


def _map_line(rate: np.ndarray) -> str:
    """How concentrated the rate map is: the share of the rate in the costliest tenth of the
    latent positions."""
    ordered = np.sort(rate.ravel())[::-1]
    top = max(1, round(0.1 * len(ordered)))
    share = ordered[:top].sum() / ordered.sum() if ordered.sum() > 0 else np.nan
    return (f"rate map {rate.shape[0]}x{rate.shape[1]}: the costliest {top} of {len(ordered)} "
            f"positions carry {fmt(100 * share, 3)}% of the rate")


SECTION = register(Section(
    name="bits", title="Where the bits go", order=20, summary=summary,
    figure=("audit_bits", "audit_rate_map", "audit_rate_map_example"),
    function=where_bits_go, accumulator=BitsAccumulator,
    options=dict(active_threshold=0.01, collapse_threshold=0.1)))
