"""Importance-weighted ELBO (Burda et al. 2016) in nats and bits per dimension.

log p(x) >= L_K = logsumexp_k(log w_k) - log K,  log w = log p(x|z) + log p(z) - log q(z|x),
accumulated in float64. The K draws come in chunks that share the probe's encoder work.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import distributed, units
from vaeprobe._analysis import (
    batches,
    flag_nonfinite,
    image_dims,
    interpretation_warnings,
    resolve,
    result_attrs,
    with_warnings,
)
from vaeprobe.accumulate import Reducing
from vaeprobe.arrays import ess, iwae_bound
from vaeprobe.probe import Probe, RepeatedRows
from vaeprobe.random import image_streams

DEQUANTIZE_STREAM = 1  # image_streams stream of the dequantisation noise
PLAN_STREAM = 100  # throwaway streams of the pass that measures memory per row


class _LogWeights(Reducing):
    """Per-image log weights (B, K) and E_q log p(x|z) (B,), in image order; an
    :class:`~vaeprobe.accumulate.Accumulator` (a later rank's images come after)."""

    states = {"log_w": "cat", "log_px": "cat"}

    def __init__(self, k: int):
        self.log_w = [torch.empty(0, k, dtype=torch.float64)]
        self.log_px = [torch.empty(0, dtype=torch.float64)]

    def update(self, log_w: torch.Tensor, log_px: torch.Tensor) -> None:
        self.log_w.append(log_w)
        self.log_px.append(log_px)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.log_w), torch.cat(self.log_px)


def _log_weights(probe: Probe, x: torch.Tensor, k: int, chunk: int, generators,
                 kind: str, dequantize_generators=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log w, log p(x|z)) for K draws per image: (B, K) float64 each (rows image-major).

    ``generators`` feed the latent noise and ``dequantize_generators`` (an independent stream
    per image) the dequantisation noise: each consumed draw by draw, so L_K does not depend on
    ``chunk`` or on the batch. A pass takes ``chunk`` draws of at most
    ``probe.rows_per_pass() // chunk`` images.
    """
    step = max(1, probe.rows_per_pass() // chunk)  # images per pass (CPU: within the caches)
    if len(x) > step and hasattr(generators, "subset"):
        parts = [_log_weights(probe, x[first:first + step], k, chunk,
                              generators.subset(slice(first, first + step)), kind,
                              _subset(dequantize_generators, slice(first, first + step)))
                 for first in range(0, len(x), step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    parts, reconstruction, images = [], [], RepeatedRows([x])
    for latents in probe.encode_chunks(x, k, chunk, generators):
        n = latents.n_samples
        log_px = probe.decode(latents).log_prob(images.rows(n)[0], kind=kind,
                                                generator=dequantize_generators)
        log_w = log_px.double() + latents.log_p().double() - latents.log_q().double()
        parts.append(log_w.reshape(x.shape[0], n).cpu())
        reconstruction.append(log_px.double().reshape(x.shape[0], n).cpu())
    return torch.cat(parts, dim=1), torch.cat(reconstruction, dim=1)


def _subset(generators, rows):
    return generators.subset(rows) if hasattr(generators, "subset") else generators


def _plan_chunk(probe: Probe, x: torch.Tensor, k: int, batch_size: int, kind: str,
                max_memory) -> int:
    """Draws per image per pass for batches of ``batch_size``: one draw of every image of
    ``x`` measured (with throwaway streams: the evaluation's own draws are untouched)."""
    from vaeprobe.chunking import plan_draws

    def one_draw():
        streams = image_streams(0, range(len(x)), probe.device, stream=PLAN_STREAM)
        dequantize = image_streams(0, range(len(x)), probe.device, stream=PLAN_STREAM + 1)
        _log_weights(probe, x, 1, 1, streams, kind, dequantize)

    with torch.no_grad():
        preference = probe.rows_per_pass()
        per_pass = batch_size if probe.device.type == "cuda" else min(batch_size, preference)
        chunk, _ = plan_draws(one_draw, len(x), per_pass, k, probe.device, preference,
                              max_memory)
    return chunk


def _nested_ks(k: int) -> list[int]:
    ks, value = [], 1
    while value < k:
        ks.append(value)
        value *= 2
    return ks + [k]


def iwae(probe: Probe, data, *, k: int = 1000, n_images: int | None = None,
         chunk: int | None = None, batch_size: int = 16, seed: int = 0,
         kind: str | None = None, progress: bool = True, max_memory=None) -> xr.Dataset:
    """Importance-weighted bound on log p(x) per image, in nats and bits/dim.

    Parameters
    ----------
    probe : Probe, run directory, checkpoint file or model folder
        Anything :func:`vaeprobe.load` opens (resolved by :func:`vaeprobe.as_probe`).
    data : str, Dataset or uint8 tensor
    k : int
        Importance samples per image (K).
    n_images : int, optional
        A seeded random subset of this many images.
    chunk : int, optional
        Draws per image per pass; memory grows with batch_size * chunk rows. Default: from
        the memory per row measured on one draw of the first batch and the memory a pass may
        use (:mod:`vaeprobe.chunking`: a share of the free CUDA memory, or ``max_memory``),
        on CPU at most ``probe.rows_per_pass()`` rows (bigger passes are slower per row
        there). Recorded in ``attrs["chunk_used"]``; the numbers do not depend on it.
    max_memory : int or str, optional
        Bytes one pass may use (e.g. ``"8GB"``); default ``$VAEPROBE_MAX_MEMORY``, else half
        the available memory (CPU) or a share of the free device memory (CUDA).
    batch_size : int
        Images per pass.
    seed : int
        Every image's draws come from its own streams keyed by (seed, dataset index), in a
        fixed layout: the result is identical (bit for bit) for any ``batch_size`` and
        ``chunk``, and under torchrun (images sharded across ranks, :mod:`vaeprobe.distributed`)
        equal to one process up to the float rounding of other batch compositions.
    kind : {"discretized", "dequantized"}, optional
        How log p(x|z) is evaluated; default the probe's ``likelihood_kind``. Dequantized
        densities on [0, 1] get log2(256) bits/dim added (recorded in attrs).

    Returns
    -------
    xarray.Dataset
        ``log_likelihood``, ``elbo``, ``bpd``, ``elbo_bpd``, ``ess`` (image);
        ``log_likelihood_by_k`` (image, k) and ``bpd_by_k`` (k) from nested subsets of the same
        draws; ``bpd_mean``, ``bpd_se``, ``elbo_bpd_mean``, ``elbo_bpd_se``,
        ``log_likelihood_mean``, ``log_likelihood_se`` (se = sd / sqrt(N)); the ELBO's two
        terms over the same draws: ``log_px`` (E_q log p(x|z)) and ``rate`` (E_q log q/p),
        per image, with ``log_px_mean``, ``log_px_se``, ``log_px_bpd_mean``,
        ``log_px_bpd_se``, ``rate_mean``, ``rate_se``. ``attrs["warning"]`` says when bits/dim
        are worse than uniform (8), when the mean ESS is tiny next to K, and when a
        fixed-sigma decoder makes bits/dim meaningless ("" otherwise).

    Examples
    --------
    >>> ds = iwae(vp.load("runs/demo"), "patches32:test", k=1000, n_images=100)  # doctest: +SKIP
    >>> float(ds["bpd_mean"]), float(ds["bpd_se"])  # doctest: +SKIP
    """
    evaluation = resolve(probe, data, n_images=n_images, seed=seed, check=lambda model:
                         _check_request(model, k, chunk, batch_size, kind))  # before the data
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    chunk, kind = _check_request(probe, k, chunk, batch_size, kind)
    # a density on [0, 1] data -> a bound on the PMF over 2^n_bits levels: + n_bits bits/dim
    offset = units.offset_nats(image_dims(probe), kind, probe.n_bits)
    local = distributed.shard(indices, probe.device)  # the images ``batches`` gives this rank
    weights, start, requested = _LogWeights(k), 0, chunk
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 f"iwae K={k}", shard=True):
        rows = local[start:start + len(x)].tolist()
        start += len(x)
        dequantize = image_streams(seed, rows, probe.device, stream=DEQUANTIZE_STREAM)
        if chunk is None:  # from the memory one draw of this first batch takes
            chunk = _plan_chunk(probe, x, k, batch_size, kind, max_memory)
        log_w, log_px = _log_weights(probe, x, k, chunk, generators, kind, dequantize)
        weights.update(log_w - offset, log_px.mean(1) - offset)  # E_q log p(x|z) over K
    # every rank's images, in the subset's order (one process: unchanged)
    log_w, log_px = distributed.merge(weights).compute()
    ds = _iwae_dataset(log_w, image_dims(probe), indices)
    ds = ds.assign(_reconstruction_dataset(log_px, ds["elbo"].values, image_dims(probe)))
    parameters = dict(k=k, n_images=n_images, chunk=requested, batch_size=batch_size, seed=seed,
                      kind=kind)
    ds.attrs = result_attrs("iwae", parameters, probe, dataset, len(indices), seed,
                            likelihood_kind=kind,
                            bpd_offset=units.bpd_offset(kind, probe.n_bits),
                            n_bits=int(probe.n_bits), chunk_used=int(chunk or 0))
    said = interpretation_warnings(probe, bpd=float(ds["bpd_mean"]),
                                   ess_mean=float(ds["ess"].mean()), k=k)
    ds.attrs = with_warnings(ds.attrs, said)
    return flag_nonfinite(ds)


def _check_request(probe: Probe, k, chunk: int | None, batch_size: int,
                   kind: str | None) -> tuple[int, str]:
    """(chunk, kind) of a valid request: the probe has a likelihood and a posterior, K >= 1,
    chunk (default from the probe's rows per pass) in 1..K, kind a likelihood kind."""
    probe.require("vp.iwae", likelihood=True, posterior=True)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (importance samples) must be an integer >= 1, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (images per pass) must be an integer >= 1, got "
                         f"{batch_size!r}")
    if chunk is not None:
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1 (draws per image per pass), got "
                             f"{chunk!r}; or None to size it from the measured memory")
        chunk = min(k, chunk)
    kind = kind or probe.likelihood_kind
    if kind not in ("discretized", "dequantized"):
        raise ValueError(f"kind must be 'discretized' or 'dequantized', got {kind!r}")
    return chunk, kind


def _iwae_dataset(log_w: torch.Tensor, dims: int, indices: torch.Tensor) -> xr.Dataset:
    to_bpd = -units.nats_to_bpd(1.0, dims)  # log-likelihoods with the offset applied, in nats
    ks = _nested_ks(log_w.shape[1])
    by_k = torch.stack([iwae_bound(log_w[:, :n]) for n in ks], dim=1).numpy()
    log_likelihood = by_k[:, -1]
    elbo = log_w.mean(1).numpy()
    n = len(log_likelihood)

    def se(values):
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    nats, bpd = {"units": "nats"}, {"units": "bits/dim"}
    return xr.Dataset(
        {
            "log_likelihood": ("image", log_likelihood, {**nats, "long_name": "L_K"}),
            "elbo": ("image", elbo, {**nats, "long_name": "mean single-sample bound"}),
            "bpd": ("image", log_likelihood * to_bpd, bpd),
            "elbo_bpd": ("image", elbo * to_bpd, bpd),
            "ess": ("image", ess(log_w).numpy(), {"units": "samples"}),
            "log_likelihood_by_k": (("image", "k"), by_k, nats),
            "bpd_by_k": ("k", by_k.mean(0) * to_bpd, bpd),
            "log_likelihood_mean": ((), float(log_likelihood.mean()), nats),
            "log_likelihood_se": ((), se(log_likelihood), nats),
            "bpd_mean": ((), float(log_likelihood.mean() * to_bpd), bpd),
            "bpd_se": ((), se(log_likelihood * to_bpd), bpd),
            "elbo_bpd_mean": ((), float(elbo.mean() * to_bpd), bpd),
            "elbo_bpd_se": ((), se(elbo * to_bpd), bpd),
        },
        coords={"image": indices.numpy(), "k": np.array(ks)},
    )


def _reconstruction_dataset(log_px: torch.Tensor, elbo: np.ndarray, dims: int) -> xr.Dataset:
    """The ELBO's terms per image: E_q log p(x|z) and the sampled rate E_q log q/p (nats)."""
    log_px = log_px.numpy()
    rate = log_px - elbo
    n = len(log_px)

    def se(values):
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    to_bpd = -units.nats_to_bpd(1.0, dims)  # log-likelihoods with the offset applied, in nats
    nats, bpd = {"units": "nats"}, {"units": "bits/dim"}
    return xr.Dataset({
        "log_px": ("image", log_px, {**nats, "long_name": "E_q log p(x|z)"}),
        "rate": ("image", rate, {**nats, "long_name": "E_q [log q(z|x) - log p(z)]"}),
        "log_px_mean": ((), float(log_px.mean()), nats),
        "log_px_se": ((), se(log_px), nats),
        "log_px_bpd_mean": ((), float(log_px.mean() * to_bpd), bpd),
        "log_px_bpd_se": ((), se(log_px * to_bpd), bpd),
        "rate_mean": ((), float(rate.mean()), nats),
        "rate_se": ((), se(rate), nats),
    })
