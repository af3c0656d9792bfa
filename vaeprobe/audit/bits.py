"""Section "bits", where the bits go: rate per layer / resolution / channel (vp.rate's maths on
the shared pass), active units, collapsed layers, and for one-layer models with few dimensions
the rate of every latent dimension (sorted, active ones counted)."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from vaeprobe._analysis import image_dims, interpretation_warnings, squared_error, with_warnings
from vaeprobe.accumulate import check_mergeable
from vaeprobe.arrays import rate_terms
from vaeprobe.audit._common import NamedData, ProbeFacts, per_dimension, section_attrs
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import run_shared
from vaeprobe.probe import Probe
from vaeprobe.rate import Moments, rate_dataset, reconstruction_terms

PROTOCOL = ("vp.rate's estimator on the audit's shared pass: KL(q(z_l | x, z_<l) || p(z_l | "
            "z_<l)) per image in nats, one posterior draw per image (per-image generators keyed "
            "by (seed, index)), averaged over the evaluation images; a channel (and, for "
            "one-layer models of at most 512 dims, a latent dimension) is active when its mean "
            "KL exceeds active_threshold nats; a layer is collapsed when its mean KL is below "
            "collapse_threshold nats")


class BitsAccumulator:
    """vp.rate's running sums over the shared pass (+ per-dimension KL for flat models)."""

    def __init__(self, probe: Probe, context, *, active_threshold: float = 0.01,
                 collapse_threshold: float = 0.1):
        probe.require("vp.rate", posterior=True)
        if not collapse_threshold >= 0:
            raise ValueError(f"collapse_threshold must be >= 0 nats, got {collapse_threshold}")
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images = context.seed, context.n_images
        self.active_threshold, self.collapse_threshold = active_threshold, collapse_threshold
        self.moments = {name: Moments() for name in ("layer", "channel", "distortion", "total",
                                                      "log_px", "elbo", "dim")}
        self.kl_analytic, self.per_dim = None, per_dimension(probe)
        self.log_px_skipped = ""

    def update(self, batch) -> None:
        latents, x = batch.sample, batch.x
        per_channel = rate_terms([draw.kl for draw in latents.draws])["channel"].cpu()
        layer = latents.kl_per_layer().double().cpu()
        m = self.moments
        m["layer"].update(layer)
        m["channel"].update(per_channel)
        m["distortion"].update(squared_error(x, batch.decoded["posterior_sample"].mean))
        m["total"].update(layer.sum(1))
        self.log_px_skipped = self.log_px_skipped or batch.log_px_error
        if batch.log_px is not None:
            m["log_px"].update(batch.log_px)
            m["elbo"].update(batch.log_px - layer.sum(1))
        if self.per_dim:
            m["dim"].update(latents.draws[0].kl.double().flatten(1).cpu())
        self.kl_analytic = latents.kl_analytic

    def merge(self, other: BitsAccumulator) -> BitsAccumulator:
        check_mergeable(self, other, "active_threshold", "collapse_threshold")
        for name, moments in self.moments.items():
            if other.moments[name].n:
                if moments.n:
                    moments.merge(other.moments[name])
                else:
                    self.moments[name] = other.moments[name]
        self.kl_analytic = self.kl_analytic or other.kl_analytic
        self.log_px_skipped = self.log_px_skipped or other.log_px_skipped
        return self

    def compute(self) -> xr.Dataset:
        m, probe = self.moments, self.probe
        ds = rate_dataset(probe, m["layer"], m["channel"], m["distortion"], m["total"],
                           self.active_threshold)
        kl_analytic = self.kl_analytic or [True] * len(probe.layers)
        ds = ds.assign_coords(kl_analytic=("layer", np.array(kl_analytic, dtype=np.int8)))
        if m["log_px"].n:
            ds = ds.assign(reconstruction_terms(m["log_px"], m["elbo"], image_dims(probe),
                                                 probe.likelihood_kind, probe.n_bits))
        collapsed = (ds["rate"].values < self.collapse_threshold).astype(np.int8)
        ds["collapsed"] = ("layer", collapsed, {"units": "1", "long_name":
                                                "mean KL below collapse_threshold"})
        ds["active_fraction"] = ("layer", ds["active"].sum("channel").values
                                 / ds["channels"].values,
                                 {"units": "1", "long_name": "share of the layer's channels "
                                  "active"})
        ds["n_collapsed"] = ((), int(collapsed.sum()), {"units": "layers"})
        if m["dim"].n:
            ds = ds.assign(_per_dimension(m["dim"], self.active_threshold))
        names = ds["name"].values[collapsed == 1].tolist()
        parameters = dict(active_threshold=self.active_threshold,
                          collapse_threshold=self.collapse_threshold)
        ds.attrs = section_attrs("bits", parameters, probe, self.data, self.n_images, self.seed,
                                 PROTOCOL, computed_by="vp.rate's estimator (shared pass)",
                                 collapse_threshold=self.collapse_threshold,
                                 active_threshold=self.active_threshold,
                                 collapsed_layers=json.dumps(names), posterior="sample",
                                 likelihood_kind=probe.likelihood_kind,
                                 per_dimension=int(bool(m["dim"].n)),
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
        ``dim_by_rank``; and ``n_active_dims``.

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
    text = (f"total rate {_fmt(ds['total_rate'], 4)} nats/image "
            f"({_fmt(ds['rate_bpd'].sum(), 3)} bits/dim); active units "
            f"{int(ds['active_units'])}/{int(ds['channels'].sum())}; collapsed layers "
            f"(< {a.get('collapse_threshold')} nats): {len(collapsed)}"
            + (f" ({', '.join(collapsed[:6])}{' ...' if len(collapsed) > 6 else ''})"
               if collapsed else ""))
    if "n_active_dims" in ds:
        text += (f"; active dimensions {int(ds['n_active_dims'])}/{ds.sizes['dim']} "
                 f"(> {a.get('active_threshold')} nats)")
    return text


def _fmt(value, digits: int = 3) -> str:
    value = float(value)
    return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"


SECTION = register(Section(
    name="bits", title="Where the bits go", order=20, summary=summary, figure="audit_bits",
    accumulator=BitsAccumulator,
    options=dict(active_threshold=0.01, collapse_threshold=0.1)))
