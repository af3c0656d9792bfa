"""Where the bits go: rate per latent layer, per resolution and per channel; active units."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vaeprobe import distributed, units
from vaeprobe._analysis import (
    Evaluation,
    batches,
    flag_nonfinite,
    image_dims,
    interpretation_warnings,
    resolve,
    result_attrs,
    squared_error,
    with_warnings,
)
from vaeprobe.accumulate import Reducing
from vaeprobe.arrays import rate_terms
from vaeprobe.probe import NotBinaryError, Probe, check_posterior, encode


class Moments(Reducing):
    """Running sums for a mean and its standard error over images (float64); an
    :class:`~vaeprobe.accumulate.Accumulator`."""

    states = {"n": "sum", "total": "sum", "total_sq": "sum"}

    def __init__(self):
        self.n, self.total, self.total_sq = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:  # values: (images, ...)
        values = values.double().cpu()
        self.n += values.shape[0]
        self.total = self.total + values.sum(0)
        self.total_sq = self.total_sq + (values ** 2).sum(0)

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        variance = (self.total_sq / self.n - mean ** 2).clamp(min=0) * self.n / max(self.n - 1, 1)
        return np.asarray(mean), np.asarray((variance / self.n).sqrt())


class RateTotals(Reducing):
    """Everything :func:`rate` (and the audit's "bits" section) sums over images: moments per
    layer, channel, distortion, total rate, E_q log p(x|z), ELBO and log p(x | posterior
    mean); per-image rates when asked; the per-layer ``kl_analytic`` flags and why log p(x|z)
    is undefined (facts of the model, from the first batch that has them)."""

    states = {"layer": "merge", "channel": "merge", "distortion": "merge", "total": "merge",
              "log_px": "merge", "elbo": "merge", "log_px_at_mean": "merge", "images": "cat",
              "kl_analytic": "first", "said": "first"}

    def __init__(self, n_layers: int, per_image: bool):
        self.layer, self.channel, self.distortion = Moments(), Moments(), Moments()
        self.total, self.log_px, self.elbo = Moments(), Moments(), Moments()
        self.log_px_at_mean = Moments()
        self.per_image, self.kl_analytic, self.said = per_image, None, []
        self.images = [torch.empty(0, n_layers, dtype=torch.float64)]

    def update(self, terms: dict) -> None:
        """Fold in :func:`batch_rate_terms` of one batch."""
        self.kl_analytic = terms["kl_analytic"]
        self.layer.update(terms["layer"])
        self.channel.update(terms["channel"])
        self.distortion.update(terms["distortion"])
        self.total.update(terms["layer"].sum(1))
        if "log_px_undefined" in terms and not self.said:
            self.said = [f"log_px and elbo omitted: {terms['log_px_undefined']}"]
        if "log_px" in terms:
            self.log_px.update(terms["log_px"])
            self.elbo.update(terms["log_px"] - terms["layer"].sum(1).cpu())
        if "log_px_at_mean" in terms:
            self.log_px_at_mean.update(terms["log_px_at_mean"])
        if self.per_image:
            self.images.append(terms["layer"].cpu())


def batch_rate_terms(latents, x: torch.Tensor, mean: torch.Tensor,
                     log_px: torch.Tensor | None = None, log_px_error: str = "") -> dict:
    """The per-image terms :class:`RateTotals` sums, from one posterior draw per image.

    Parameters
    ----------
    latents : LatentPass
        One posterior draw per image (``probe.encode(x, 1, generators)``).
    x : torch.Tensor
        The images, uint8 (B, C, H, W).
    mean : torch.Tensor
        The decoder mean that ``distortion`` measures, on [0, 1] (B, C, H, W).
    log_px : torch.Tensor, optional
        log p(x|z) at the draw (B,), where the probe has a likelihood.
    log_px_error : str
        Why log p(x|z) is undefined for these images ("" when it is not).

    Returns
    -------
    dict
        ``layer`` (B, L) KL per layer, ``channel`` (B, L, C) KL per layer and channel,
        ``distortion`` (B,) sum of squared error on [0, 1], ``kl_analytic`` (per layer);
        ``log_px`` (B, float64 on the CPU) when given, ``log_px_undefined`` when said.
    """
    terms = dict(layer=latents.kl_per_layer().double(),
                 channel=rate_terms([draw.kl for draw in latents.draws])["channel"],
                 distortion=squared_error(x, mean), kl_analytic=latents.kl_analytic)
    if log_px is not None:
        terms["log_px"] = log_px.double().cpu()
    if log_px_error:
        terms["log_px_undefined"] = log_px_error
    return terms


def _rate_terms(probe: Probe, x: torch.Tensor, generators, posterior: str = "sample") -> dict:
    """:func:`batch_rate_terms` of one batch, encoded and decoded here; where the probe has a
    likelihood, ``log_px`` (B,): log p(x|z) at one posterior draw (an unbiased estimate of
    E_q log p(x|z)), and with ``posterior="mean"`` ``log_px_at_mean`` (B,): log p(x |
    posterior mean), which is not a term of the ELBO.

    The KL and ``log_px`` always come from a posterior draw (for hierarchical or sampled-KL
    layers the KL depends on it); ``posterior`` chooses where ``distortion`` decodes from."""
    latents = encode(probe, x, 1, generators, "sample")
    likelihood = probe.decode(latents)
    terms = batch_rate_terms(latents, x, likelihood.mean)
    at_mean = None
    if check_posterior(posterior) == "mean":
        at_mean = probe.decode(encode(probe, x, 1, generators, "mean"))
        terms["distortion"] = squared_error(x, at_mean.mean)
    if probe.likelihood_kind != "none":
        try:
            terms["log_px"] = likelihood.log_prob(x, kind=probe.likelihood_kind,
                                                  generator=generators).double().cpu()
            if at_mean is not None:
                terms["log_px_at_mean"] = at_mean.log_prob(
                    x, kind=probe.likelihood_kind, generator=generators).double().cpu()
        except NotBinaryError as error:  # the rate is defined; log p(x|z) is not
            terms.pop("log_px", None)
            terms["log_px_undefined"] = str(error)
    return terms


def rate(probe: Probe, data, *, n_images: int | None = None, batch_size: int = 64,
         seed: int = 0, active_threshold: float = 0.01, per_image: bool = False,
         posterior: str = "sample", strict_data: bool = False,
         progress: bool = True) -> xr.Dataset:
    """Rate (KL of the posterior from the prior) per latent layer, resolution and channel.

    Parameters
    ----------
    probe : Probe, run directory, checkpoint file or model folder
        Anything :func:`vaeprobe.load` opens (resolved by :func:`vaeprobe.as_probe`).
    data : str, Dataset or uint8 tensor
        Evaluation images, e.g. ``"patches32:test"``.
    n_images : int, optional
        A seeded random subset of this many images (all by default).
    batch_size : int
    seed : int
        Seeds the subset and the posterior draws (per image: batch size does not matter, nor
        does sharding the images across ranks under torchrun, see :mod:`vaeprobe.distributed`).
    active_threshold : float
        A channel is an active unit when its mean KL exceeds this (nats). The channels of a
        categorical layer are its categories, each carrying q_k log(q_k / p_k) of the KL
        (per image it can be negative; its mean over images is the category's share).
    per_image : bool
        Also return ``rate_per_image`` (image, layer).
    posterior : {"sample", "mean"}
        Where the reconstruction behind ``distortion`` decodes from: a posterior sample or the
        posterior mean (recorded). It changes nothing else: the rate, ``log_px`` and ``elbo``
        always use one posterior draw per image (the same draw under both settings), so
        ``elbo`` is the ELBO either way. With ``"mean"``, ``log_px_at_mean`` adds
        log p(x | posterior mean), a point evaluation that is higher than E_q log p(x|z) and is
        no term of any bound. The KL is analytic where the model's posterior and prior are
        Gaussian, else sampled at the draw (``kl_analytic`` per layer says which).
    strict_data : bool
        Refuse data that had to be changed to fit the model (channels converted, images
        resized, levels on the wrong scale: :mod:`vaeprobe.data_checks`) instead of warning.
        Any noun does this inside ``with vp.data_checks.strict_data(): ...``.

    Returns
    -------
    xarray.Dataset
        Dim ``layer`` (coords ``name``, ``layer_resolution`` as "HxW", ``layer_height``,
        ``layer_width``, ``channels``, ``stage``, ``kl_analytic`` 0/1): ``rate``, ``rate_se``,
        ``rate_bpd``, ``rate_fraction``; ``rate_by_resolution`` (dim ``resolution``, labels
        "HxW" from coarse to fine, coords ``resolution_height`` / ``resolution_width``: layers
        are grouped by both height and width); ``rate_per_channel`` and ``active``
        (layer, channel); ``active_units``, ``total_rate``, ``total_rate_se``,
        ``distortion``, ``mse``; where the probe has a likelihood, ``log_px`` (E_q log p(x|z),
        nats per image, estimated with one posterior draw per image), ``elbo``
        (``log_px - total_rate``: E_q log p(x|z) - KL(q || p)), each with ``_se`` (standard
        error over images, which includes the draw's noise), ``_bpd`` and ``_bpd_se``; with
        ``posterior="mean"`` also ``log_px_at_mean`` (log p(x | posterior mean), with the
        same suffixes).

    Examples
    --------
    >>> ds = rate(vp.load("runs/demo"), "patches32:test", n_images=256)  # doctest: +SKIP
    >>> ds["rate_by_resolution"].to_series()  # doctest: +SKIP
    """
    evaluation = resolve(probe, data, n_images=n_images, seed=seed, check=_check,
                         strict_data=strict_data)
    return compute_rate(evaluation, batch_size=batch_size, active_threshold=active_threshold,
                        per_image=per_image, posterior=posterior, progress=progress)


def _check(probe: Probe) -> None:
    probe.require("vp.rate", posterior=True)


def compute_rate(evaluation: Evaluation, *, batch_size: int = 64,
                 active_threshold: float = 0.01, per_image: bool = False,
                 posterior: str = "sample", progress: bool = True) -> xr.Dataset:
    """The core of :func:`rate` on an already resolved model and subset of images.

    Parameters
    ----------
    evaluation : vaeprobe._analysis.Evaluation
        The fitted Probe, the dataset and the seeded subset (:func:`vaeprobe._analysis.resolve`
        makes one from what :func:`rate` takes); its ``seed`` keys the posterior draws and its
        ``n_images`` is recorded.
    batch_size, active_threshold, per_image, posterior, progress
        As in :func:`rate`.

    Returns
    -------
    xarray.Dataset
        What :func:`rate` returns for the same request (the same Dataset).

    Examples
    --------
    >>> from vaeprobe._analysis import resolve  # doctest: +SKIP
    >>> evaluation = resolve("runs/demo", "patches32:test", n_images=64, seed=0)  # doctest: +SKIP
    >>> compute_rate(evaluation)["total_rate"]  # doctest: +SKIP
    """
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    _check(probe)
    totals = RateTotals(len(probe.layers), per_image)
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 "rate", shard=True):
        totals.update(_rate_terms(probe, x, generators, posterior))
    # under torchrun: every rank's totals, merged in rank order (one process: unchanged)
    totals = distributed.merge(totals)
    ds = rate_dataset(probe, totals.layer, totals.channel, totals.distortion, totals.total,
                       active_threshold)
    kl_analytic = totals.kl_analytic or [True] * len(probe.layers)
    ds = ds.assign_coords(kl_analytic=("layer", np.array(kl_analytic, dtype=np.int8)))
    if totals.log_px.n:
        ds = ds.assign(reconstruction_terms(totals.log_px, totals.elbo, image_dims(probe),
                                            probe.likelihood_kind, probe.n_bits))
    if totals.log_px_at_mean.n:
        ds = ds.assign(reconstruction_terms(totals.log_px_at_mean, None, image_dims(probe),
                                            probe.likelihood_kind, probe.n_bits,
                                            name="log_px_at_mean"))
    if per_image:
        ds["rate_per_image"] = (("image", "layer"), torch.cat(totals.images).numpy(),
                                {"units": "nats", "long_name": "KL per image and layer"})
        ds = ds.assign_coords(image=indices.numpy())
    parameters = dict(n_images=n_images, batch_size=batch_size, seed=seed,
                      active_threshold=active_threshold, per_image=per_image,
                      posterior=posterior)
    ds.attrs = result_attrs("rate", parameters, probe, dataset, len(indices), seed,
                            active_threshold=active_threshold, posterior=posterior,
                            likelihood_kind=probe.likelihood_kind)
    bpd = float(ds["elbo_bpd"]) if "elbo_bpd" in ds else None  # when an ELBO is reported
    ds.attrs = with_warnings(ds.attrs, interpretation_warnings(probe, bpd=bpd) + totals.said)
    return flag_nonfinite(ds)


def resolution_label(size: tuple[int, int]) -> str:
    """The label of a latent resolution (H, W): "HxW", e.g. "4x4" or "1x4"."""
    return f"{int(size[0])}x{int(size[1])}"


_DESCRIPTIONS = {
    "log_px": "E_q log p(x|z): reconstruction term, one posterior draw per image",
    "elbo": "ELBO: E_q log p(x|z) - KL(q || p), one posterior draw per image",
    "log_px_at_mean": "log p(x | posterior mean): a point evaluation, not E_q log p(x|z) and "
                      "not a term of the ELBO",
}


def reconstruction_terms(log_px: Moments, elbo: Moments | None, dims: int, kind: str,
                         n_bits: int = 8, name: str = "log_px") -> dict:
    """``name`` (default E_q log p(x|z)) and, when ``elbo`` is given, the ELBO, in nats and
    bits/dim, each with its standard error over images."""
    offset = units.bpd_offset(kind, n_bits)  # a density on [0, 1] data: + n_bits bits/dim
    variables = {}
    pairs = [(name, log_px)] + ([("elbo", elbo)] if elbo is not None else [])
    for name, moments in pairs:
        mean, se = (float(v) for v in moments.compute())
        variables[name] = ((), mean, {"units": "nats", "long_name": _DESCRIPTIONS[name]})
        variables[f"{name}_se"] = ((), se, {"units": "nats"})
        variables[f"{name}_bpd"] = ((), units.nll_bpd(mean, dims, kind, n_bits),
                                    {"units": "bits/dim", "bpd_offset": offset})
        variables[f"{name}_bpd_se"] = ((), units.nats_to_bpd(se, dims), {"units": "bits/dim"})
    return variables


def rate_dataset(probe, layer, channel, distortion, total, threshold) -> xr.Dataset:
    rate_mean, rate_se = layer.compute()
    channel_mean, _ = channel.compute()
    distortion_mean, distortion_se = distortion.compute()
    total_mean, total_se = total.compute()
    dims = image_dims(probe)
    sizes = [tuple(int(v) for v in info.resolution) for info in probe.layers]  # (H, W)
    resolutions = np.array([resolution_label(size) for size in sizes])
    distinct = sorted(set(sizes), key=lambda size: (size[0] * size[1], size))  # coarse first
    labels = np.array([resolution_label(size) for size in distinct])
    by_resolution = np.array([rate_mean[resolutions == label].sum() for label in labels])
    active = np.nan_to_num(channel_mean, nan=-np.inf) > threshold
    nats = {"units": "nats"}
    ds = xr.Dataset(
        {
            "rate": ("layer", rate_mean, {**nats, "long_name": "KL(q || p) per image"}),
            "rate_se": ("layer", rate_se, {**nats, "long_name": "standard error of rate"}),
            "rate_bpd": ("layer", units.nats_to_bpd(rate_mean, dims), {"units": "bits/dim"}),
            "rate_fraction": ("layer", rate_mean / max(total_mean, 1e-300), {"units": "1"}),
            "rate_by_resolution": ("resolution", by_resolution, nats),
            "rate_per_channel": (("layer", "channel"), channel_mean, nats),
            "active": (("layer", "channel"), active.astype(np.int8),
                       {"units": "1", "long_name": "mean KL above active_threshold"}),
            "active_units": ((), int(active.sum()), {"units": "channels"}),
            "total_rate": ((), float(total_mean), nats),
            "total_rate_se": ((), float(total_se), nats),
            "distortion": ((), float(distortion_mean), {"units": "sum of squares on [0, 1]"}),
            "distortion_se": ((), float(distortion_se), {"units": "sum of squares on [0, 1]"}),
            "mse": ((), float(distortion_mean) / dims, {"units": "mean square on [0, 1]"}),
        },
        coords={
            "layer": np.arange(len(probe.layers)),
            "name": ("layer", [info.name for info in probe.layers]),
            "layer_resolution": ("layer", resolutions),
            "layer_height": ("layer", [size[0] for size in sizes]),
            "layer_width": ("layer", [size[1] for size in sizes]),
            "channels": ("layer", [info.channels for info in probe.layers]),
            "stage": ("layer", [info.stage for info in probe.layers]),
            "resolution": labels,
            "resolution_height": ("resolution", [size[0] for size in distinct]),
            "resolution_width": ("resolution", [size[1] for size in distinct]),
            "channel": np.arange(channel_mean.shape[1]),
        },
    )
    if len(set(ds["stage"].values.tolist())) > 1:
        stages = sorted(set(ds["stage"].values.tolist()))
        ds["rate_by_stage"] = ("stage_name", [float(rate_mean[ds["stage"].values == s].sum())
                                              for s in stages], nats)
        ds = ds.assign_coords(stage_name=stages)
    return ds
