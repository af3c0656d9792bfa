"""Section 5, progressive coding: the first k latent layers from the posterior, the rest from the
prior given them; distortion against k and against the cumulative rate of those k layers."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import Evaluation, batches, evaluation_of, image_dims, squared_error
from vaeprobe.audit._common import fmt, section_attrs
from vaeprobe.audit.registry import Section, register
from vaeprobe.probe import Probe, UndefinedAnalysisError, encode
from vaeprobe.random import image_streams

KINDS = ("mean", "sample")
PRIOR_STREAM = 2  # image_streams stream of the prior draws of the later layers

PROTOCOL = ("for k in a set of at most max_points values (0, L, every resolution boundary, then "
            "log-spaced; coord k): layers 1..k from the posterior given the image, layers k+1..L "
            "from "
            "the prior given the layers above (Probe.sample_prior_given); kind 'mean': posterior "
            "means for the first k layers and conditional prior means (temperature 0) for the "
            "rest; kind 'sample': one posterior draw (generator (seed, index)) and prior draws "
            "at temperature 1 (generator (seed, index, stream 2)), the same noise for every k; "
            "distortion = per-image sum of squared error of the decoder mean on [0, 1]; "
            "cumulative_rate(k) = mean KL of the first k layers of the posterior draw")


def progressive_points(layers, max_points: int = 8) -> list[int]:
    """The k of progressive coding: 0 and L, every resolution boundary (the first layer of each
    finer resolution), then log-spaced k, at most ``max_points`` in all (sorted).

    Examples
    --------
    >>> from vaeprobe.probe import LayerInfo
    >>> layers = [LayerInfo(f"z{i}", (r, r), 4) for i, r in enumerate([1, 1, 4, 4, 4, 8, 8])]
    >>> progressive_points(layers, 5)
    [0, 1, 2, 5, 7]
    """
    n_layers = len(layers)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (k = 0 and k = L), got {max_points}")
    ends = {0, n_layers}
    boundaries = [k for k in range(1, n_layers) if layers[k].resolution != layers[k - 1].resolution]
    room = max_points - len(ends)
    if len(boundaries) > room:  # evenly spread over the boundaries
        picks = np.unique(np.round(np.linspace(0, len(boundaries) - 1, room)).astype(int))
        boundaries = [boundaries[i] for i in picks]
    points = ends | set(boundaries)
    for count in range(2, 4 * n_layers + 2):  # fill with log-spaced k until max_points
        if len(points) >= min(max_points, n_layers + 1):
            break
        spaced = np.unique(np.round(np.geomspace(1, n_layers, count)).astype(int))
        for k in spaced:
            if len(points) < max_points:
                points.add(int(k))
    return sorted(points)


def progressive_pass(probe: Probe, x: torch.Tensor, generators, prior_generators, kind: str,
                     points: list[int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """For one batch: distortion per image and k (B, len(points)), KL per image and layer
    (B, L), and the decoder means (B, C, H, W) at every k of ``points`` (default all k)."""
    latents = encode(probe, x, 1, generators, "mean" if kind == "mean" else "sample")
    temperature = 0.0 if kind == "mean" else 1.0
    distortion, means = [], []
    points = range(len(probe.layers) + 1) if points is None else points
    for k in points:
        mixed = probe.sample_prior_given(latents, k, temperature=temperature,
                                         generator=prior_generators)
        mean = probe.decode(mixed).mean
        distortion.append(squared_error(x, mean).cpu())
        means.append(mean)
    return torch.stack(distortion, 1), latents.kl_per_layer().double().cpu(), means


def check(probe: Probe) -> None:
    """UndefinedAnalysisError unless the probe is a hierarchy with a generative prior that
    implements sample_prior_given."""
    if len(probe.layers) < 2:
        raise UndefinedAnalysisError(
            f"progressive coding is undefined for {probe.name}: it needs a hierarchy of >= 2 "
            f"latent layers, this model has {len(probe.layers)}")
    probe.require("progressive coding", prior=True)
    if type(probe).sample_prior_given is Probe.sample_prior_given:
        probe.sample_prior_given(None, 0)  # the base class's refusal, with its reason


def progressive_coding(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                       max_points: int = 8, batch_size: int = 64, n_preview: int = 6,
                       progress: bool = True) -> xr.Dataset:
    """Section 5: distortion when the first k layers come from the posterior, the rest from the
    prior (mean and sample), against k and against the cumulative rate.

    Parameters
    ----------
    probe : Probe
        A hierarchical model (>= 2 latent layers) with a generative prior that implements
        :meth:`~vaeprobe.probe.Probe.sample_prior_given`; else
        :class:`~vaeprobe.probe.UndefinedAnalysisError`.
    data : str, Dataset or uint8 tensor
    n_images : int, optional
    seed : int
    max_points : int
        Evaluate at most this many k (:func:`progressive_points`: 0, L, every resolution
        boundary, then log-spaced); each costs one top-down pass and one decode per image and
        kind. ``sample_prior_given`` reruns the whole top-down pass for each k (no probe
        shares the posterior prefix between k yet).
    batch_size, n_preview, progress

    Returns
    -------
    xarray.Dataset
        Dims ``kind`` (mean, sample) and ``k`` (the evaluated numbers of layers from the
        posterior; coord ``last_layer``, the name of layer k): ``distortion``,
        ``distortion_se``, ``mse``,
        ``psnr`` (from the mean MSE on [0, 1]); ``cumulative_rate`` (k, nats) and
        ``cumulative_rate_fraction``; ``preview`` (kind, k, preview_image, channel, y, x) and
        ``preview_input`` uint8.

    Examples
    --------
    >>> ds = progressive_coding(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["distortion"].sel(kind="mean").to_series()  # doctest: +SKIP
    """
    check(probe)  # before any image is read
    return progressive_core(evaluation_of(probe, data, n_images, seed), max_points=max_points,
                            batch_size=batch_size, n_preview=n_preview, progress=progress)


def progressive_core(evaluation: Evaluation, *, max_points: int = 8, batch_size: int = 64,
                     n_preview: int = 6, progress: bool = True) -> xr.Dataset:
    """:func:`progressive_coding` on images already chosen (``evaluation.indices`` of
    ``evaluation.dataset``: what the audit calls, with its own images)."""
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    check(probe)
    points = progressive_points(probe.layers, max_points)
    distortion = {kind: [] for kind in KINDS}
    previews = {kind: [] for kind in KINDS}
    rates, inputs, start = [], [], 0
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 "progressive coding"):
        rows = indices[start:start + len(x)].tolist()
        start += len(x)
        for kind in KINDS:
            prior = image_streams(seed, rows, probe.device, stream=PRIOR_STREAM)
            per_k, kl, means = progressive_pass(probe, x, generators, prior, kind, points)
            distortion[kind].append(per_k)
            if kind == "sample":
                rates.append(kl)
            if sum(len(p) for p in previews[kind]) < n_preview:
                previews[kind].append(torch.stack([vdata.to_uint8(m[:n_preview]).cpu()
                                                   for m in means]))  # (K, b, C, H, W)
        if sum(len(p) for p in inputs) < n_preview:
            inputs.append(x[:n_preview].cpu())
    ds = _dataset(probe, distortion, torch.cat(rates), previews, inputs, n_preview, points)
    ds.attrs = section_attrs("progressive", dict(n_images=n_images, seed=seed,
                                                 max_points=max_points, batch_size=batch_size,
                                                 n_preview=n_preview),
                             probe, dataset, len(indices), seed, PROTOCOL,
                             prior_stream=PRIOR_STREAM, points=json.dumps(points),
                             prefix_reuse="none: sample_prior_given reruns the top-down pass "
                             "for each k")
    return ds


def _dataset(probe, distortion, kl, previews, inputs, n_preview, points) -> xr.Dataset:
    per_image = np.stack([torch.cat(distortion[kind]).numpy() for kind in KINDS])  # (2, N, K)
    n = per_image.shape[1]
    mean = per_image.mean(1)
    se = per_image.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    mse = mean / image_dims(probe)
    rate_per_layer = kl.mean(0).numpy()
    cumulative = np.concatenate([[0.0], np.cumsum(rate_per_layer)])[points]
    square = {"units": "sum of squares on [0, 1]"}
    preview = np.stack([torch.cat(previews[kind], 1)[:, :n_preview].numpy() for kind in KINDS])
    with np.errstate(divide="ignore"):
        psnr = -10 * np.log10(mse)
    return xr.Dataset(
        {
            "distortion": (("kind", "k"), mean, square),
            "distortion_se": (("kind", "k"), se, square),
            "mse": (("kind", "k"), mse, {"units": "mean square on [0, 1]"}),
            "psnr": (("kind", "k"), psnr, {"units": "dB", "long_name": "from the mean MSE"}),
            "cumulative_rate": ("k", cumulative, {"units": "nats"}),
            "cumulative_rate_fraction": ("k", cumulative / max(cumulative[-1], 1e-300),
                                         {"units": "1"}),
            "preview": (("kind", "k", "preview_image", "channel", "y", "x"), preview,
                        {"units": "uint8 pixel values"}),
            "preview_input": (("preview_image", "channel", "y", "x"),
                              torch.cat(inputs)[:n_preview].numpy(),
                              {"units": "uint8 pixel values"}),
        },
        coords={"kind": list(KINDS), "k": np.asarray(points, dtype=np.int64),
                "last_layer": ("k", [([""] + [info.name for info in probe.layers])[k]
                                     for k in points])},
    )


def cost(probe, n_images: int, options: dict) -> float:
    """Floor multiples (one encode + decode of one image) of the section on ``n_images``:
    two encodes, and a top-down pass and decode per k and kind."""
    points = len(progressive_points(probe.layers, options.get("max_points", 8)))
    return n_images * (2 + 2 * points)


def summary(ds: xr.Dataset) -> str:
    mean = ds["distortion"].sel(kind="mean").values
    k = ds["k"].values
    half = k[int(np.argmax(mean <= (mean[0] + mean[-1]) / 2))]
    return (f"distortion (means) from {fmt(mean[0], 4)} at k=0 to {fmt(mean[-1], 4)} at "
            f"k={int(k[-1])}; half of the drop by k={int(half)} ({len(k)} points, "
            f"{int(ds.attrs.get('n_images', 0))} images)")


SECTION = register(Section(
    name="progressive", title="Progressive coding", order=50, summary=summary,
    figure="audit_progressive", compute=progressive_coding, core=progressive_core, cost=cost,
    check=check,
    image_limit=128,
    options=dict(max_points=8, n_preview=6, budget=8.0),
    quick=dict(max_points=4, budget=1.0)))
