"""Sections 7 and 8, the model as a generative model: IWAE likelihood with its convergence in K
and effective sample size, and prior samples (mean and stochastic) at several temperatures."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import Evaluation, evaluation_of, progress_bar
from vaeprobe.audit._common import feature_network, fmt, restamp, section_attrs
from vaeprobe.audit.registry import Section, register
from vaeprobe.chunking import images_per_pass
from vaeprobe.likelihood import compute_iwae, iwae
from vaeprobe.probe import Probe
from vaeprobe.sampling import sample_batches

LIKELIHOOD_PROTOCOL = ("vp.iwae: L_K = logsumexp_k log w_k - log K per image, K posterior draws "
                       "per image (counter-based streams keyed by (seed, index)), per-pixel "
                       "log-probabilities in float32, their sums and log w in float64, bits/dim "
                       "from nats; bpd_by_k from nested subsets of the same draws; ESS = 1 / sum "
                       "of squared normalised weights")

SAMPLES_PROTOCOL = ("vp.samples' protocol: prior latents of sample i from generator (seed, i) "
                    "at each temperature "
                    "(the same noise at every temperature); kind 'mean': the decoder mean "
                    "quantised by round(clamp(x, 0, 1) * 255); 'stochastic': a draw from the "
                    "decoder likelihood of the same latents (pixel noise from (seed + 1, i)); "
                    "fid against the evaluation images with the named extractor")


def likelihood(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0, k: int = 64,
               batch_size: int = 16, progress: bool = True) -> xr.Dataset:
    """Section 7: IWAE bits/dim, its convergence in K and the effective sample size.

    Parameters
    ----------
    probe : Probe
        Needs a decoder likelihood (else :class:`~vaeprobe.probe.UndefinedAnalysisError`).
    data : str, Dataset or uint8 tensor
    n_images : int, optional
    seed : int
    k : int
        Importance samples per image.
    batch_size, progress

    Returns
    -------
    xarray.Dataset
        What :func:`vaeprobe.iwae` returns, plus ``ess_mean`` and ``ess_fraction`` (ESS / K,
        mean over images) and ``bound_gap_bpd`` (ELBO minus L_K, bits/dim).

    Examples
    --------
    >>> ds = likelihood(vp.load("runs/demo"), "patches32:test", k=64)  # doctest: +SKIP
    >>> ds["bpd_by_k"].to_series()  # doctest: +SKIP
    """
    return _with_ess(iwae(probe, data, k=k, n_images=n_images, batch_size=batch_size, seed=seed,
                          progress=progress), k)


def likelihood_core(evaluation: Evaluation, *, k: int = 64, batch_size: int = 16,
                    progress: bool = True) -> xr.Dataset:
    """:func:`likelihood` on images already chosen (what the audit calls, with its own images:
    :func:`vaeprobe.likelihood.compute_iwae`, the core under ``vp.iwae``)."""
    return _with_ess(compute_iwae(evaluation, k=k, batch_size=batch_size, progress=progress), k)


def _with_ess(ds: xr.Dataset, k: int) -> xr.Dataset:
    ds["ess_mean"] = ((), float(ds["ess"].mean()), {"units": "samples"})
    ds["ess_fraction"] = ((), float(ds["ess"].mean()) / k, {"units": "1"})
    ds["bound_gap_bpd"] = ((), float(ds["elbo_bpd_mean"] - ds["bpd_mean"]),
                           {"units": "bits/dim"})
    return restamp(ds, "likelihood", dict(k=k), LIKELIHOOD_PROTOCOL)


def _draw(probe: Probe, kinds: list[str], n: int, temperature: float, seed: int,
          batch_size: int) -> dict[str, torch.Tensor]:
    """uint8 prior samples (n, C, H, W) of each kind, as :func:`vaeprobe.samples` draws them
    (the kinds share their latents)."""
    parts = {kind: [] for kind in kinds}
    batch_size = images_per_pass(probe, batch_size)
    for _, images, _ in sample_batches(probe, kinds, n, batch_size, temperature, seed):
        for kind in kinds:
            parts[kind].append(images[kind].cpu())
    return {kind: torch.cat(chunks) for kind, chunks in parts.items()}


def samples(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
            temperatures=(1.0, 0.8, 0.6), n_grid: int = 32, metrics: bool = True,
            feature_extractor: str = "inception-v3-compat", weights=None,
            batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """Section 8: mean and stochastic prior samples at several temperatures, as grids and FID.

    Parameters
    ----------
    probe : Probe
        Needs a generative prior; stochastic samples also need a decoder likelihood (without
        one only ``mean`` is drawn, and ``kinds_skipped`` says why).
    data : str, Dataset or uint8 tensor
        The reference images of the FID (a seeded subset of ``n_images``); as many samples are
        drawn per temperature and kind.
    n_images : int, optional
    seed : int
    temperatures : sequence of float
    n_grid : int
        Samples kept per temperature and kind for the figure.
    metrics : bool
        Compute FID against ``data`` with ``feature_extractor`` (NaN, with the reason in
        ``fid_skipped``, where its weights are missing).
    feature_extractor, weights, batch_size, progress

    Returns
    -------
    xarray.Dataset
        Dims ``temperature`` and ``kind``: ``images`` (temperature, kind, image, channel, y, x)
        uint8, ``fid``, ``pixel_mean``, ``pixel_std`` (samples, [0, 1] scale), and
        ``data_pixel_mean`` / ``data_pixel_std`` of the reference images.

    Examples
    --------
    >>> ds = samples(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["fid"].to_series()  # doctest: +SKIP
    """
    probe.require("prior samples", prior=True)  # before any image is read
    return samples_core(evaluation_of(probe, data, n_images, seed), temperatures=temperatures,
                        n_grid=n_grid, metrics=metrics, feature_extractor=feature_extractor,
                        weights=weights, batch_size=batch_size, progress=progress)


def samples_core(evaluation: Evaluation, *, temperatures=(1.0, 0.8, 0.6), n_grid: int = 32,
                 metrics: bool = True, feature_extractor: str = "inception-v3-compat",
                 weights=None, batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """:func:`samples` on images already chosen: ``evaluation.indices`` of
    ``evaluation.dataset`` are the FID's reference images, and as many samples are drawn
    (what the audit calls, with its own images)."""
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    probe.require("prior samples", prior=True)
    kinds, kinds_skipped = ["mean"], ""
    try:
        probe.require("stochastic samples", likelihood=True)
        kinds.append("stochastic")
    except ValueError as error:
        kinds_skipped = f"stochastic: {error}"
    reference_images = vdata.gather(dataset, indices)
    n = len(indices)
    extractor, fid_skipped = (feature_network(feature_extractor, weights, probe.device)
                              if metrics else (None, "metrics=False"))
    if extractor is not None and n < 2:
        extractor, fid_skipped = None, "FID needs at least 2 images"
    reference = None
    if extractor is not None:
        reference = torch.cat([extractor(batch.to(probe.device)) for batch in
                               vdata.iterate_batches(vdata.as_dataset(reference_images),
                                                     batch_size)])
    temperatures = [float(t) for t in temperatures]
    shape = (len(temperatures), len(kinds))
    fid, pixel_mean, pixel_std = np.full(shape, np.nan), np.zeros(shape), np.zeros(shape)
    grids = np.zeros((*shape, min(n_grid, n), *probe.image_shape), dtype=np.uint8)
    bar = progress_bar(len(temperatures), "samples", progress, unit="temperature")
    for row, temperature in enumerate(temperatures):
        drawn = _draw(probe, kinds, n, temperature, seed, batch_size)
        for column, kind in enumerate(kinds):
            images = drawn[kind]
            grids[row, column] = images[:n_grid].numpy()
            pixel_mean[row, column], pixel_std[row, column] = _pixel_moments(images)
            if reference is not None:
                from vaeprobe.fidelity import fid_from_features

                features = torch.cat([extractor(part.to(probe.device))
                                      for part in images.split(batch_size)])
                fid[row, column] = fid_from_features(features, reference)
        bar.update(1)
    bar.close()
    data_mean, data_std = _pixel_moments(reference_images)
    one = {"units": "1"}
    ds = xr.Dataset(
        {
            "images": (("temperature", "kind", "image", "channel", "y", "x"), grids,
                       {"units": "uint8 pixel values"}),
            "fid": (("temperature", "kind"), fid, one),
            "pixel_mean": (("temperature", "kind"), pixel_mean, {"units": "[0, 1] scale"}),
            "pixel_std": (("temperature", "kind"), pixel_std, {"units": "[0, 1] scale"}),
            "data_pixel_mean": ((), data_mean, {"units": "[0, 1] scale"}),
            "data_pixel_std": ((), data_std, {"units": "[0, 1] scale"}),
        },
        coords={"temperature": np.asarray(temperatures), "kind": kinds,
                "image": np.arange(grids.shape[2])},
    )
    parameters = dict(n_images=n_images, seed=seed, temperatures=temperatures, n_grid=n_grid,
                      metrics=metrics, feature_extractor=feature_extractor,
                      batch_size=batch_size)
    ds.attrs = section_attrs(
        "samples", parameters, probe, dataset, n, seed, SAMPLES_PROTOCOL,
        n_samples=n, kinds=json.dumps(kinds), kinds_skipped=kinds_skipped,
        feature_extractor=extractor.name if extractor is not None else feature_extractor,
        feature_extractor_weights_sha256=extractor.weights_sha256 if extractor else "none",
        fid_skipped=fid_skipped if extractor is None else "",
        stand_in_network=bool(extractor is not None and extractor.stand_in),
        warning=("FID with a stand-in (randomly initialised) network: NOT comparable to "
                 "published figures") if extractor is not None and extractor.stand_in else "")
    return ds


def _pixel_moments(images: torch.Tensor) -> tuple[float, float]:
    """(mean, sample standard deviation) of uint8 images on the [0, 1] scale, from the counts
    of the 256 levels (one pass over the bytes, no float copy)."""
    counts = torch.bincount(images.reshape(-1).to(torch.int64) if images.dtype != torch.uint8
                            else images.reshape(-1), minlength=256).double().cpu()
    levels = torch.arange(counts.numel(), dtype=torch.float64) / 255.0
    n = float(counts.sum())
    mean = float((counts * levels).sum()) / n
    squares = float((counts * (levels - mean) ** 2).sum())
    return mean, math.sqrt(squares / (n - 1)) if n > 1 else float("nan")


def likelihood_cost(probe, n_images: int, options: dict) -> float:
    """Floor multiples of IWAE on ``n_images``: one encode, then K draws (each a top-down
    pass, a decode and a likelihood) per image."""
    return n_images * (1 + options.get("k", 64))


def samples_cost(probe, n_images: int, options: dict) -> float:
    """Floor multiples of prior sampling: a prior pass and decode per sample and
    temperature (both kinds share them)."""
    return n_images * len(options.get("temperatures", (1.0, 0.8, 0.6)))


def likelihood_summary(ds: xr.Dataset) -> str:
    return (f"IWAE K={int(ds['k'].values[-1])} on {int(ds.attrs.get('n_images', 0))} images: "
            f"{fmt(ds['bpd_mean'], 5)} ± {fmt(ds['bpd_se'], 2)} bits/dim (ELBO "
            f"{fmt(ds['elbo_bpd_mean'], 5)}); ESS/K {fmt(ds['ess_fraction'])}")


def samples_summary(ds: xr.Dataset) -> str:
    a, fid = ds.attrs, ds["fid"]
    text = f"{ds.sizes['temperature']} temperatures x {', '.join(map(str, ds['kind'].values))}"
    if np.isfinite(fid.values).any():
        text += "; FID " + ", ".join(f"T={float(t):g} {fmt(fid.sel(temperature=t).min(), 4)}"
                                     for t in ds["temperature"].values)
    elif a.get("fid_skipped"):
        text += f"; FID skipped ({a.get('fid_skipped')[:60]}...)"
    return text


LIKELIHOOD = register(Section(
    name="likelihood", title="Likelihood", order=70, summary=likelihood_summary,
    figure="iwae_convergence", compute=likelihood, core=likelihood_core, cost=likelihood_cost,
    image_limit=32,
    check=lambda probe: probe.require("vp.iwae", likelihood=True),
    options=dict(k=64, budget=16.0), quick=dict(k=16, budget=2.0)))
SAMPLES = register(Section(
    name="samples", title="Samples", order=80, summary=samples_summary,
    figure="audit_samples", compute=samples, core=samples_core, cost=samples_cost,
    image_limit=256,
    check=lambda probe: probe.require("prior samples", prior=True),
    networks=("feature_extractor", "weights"),
    options=dict(temperatures=(1.0, 0.8, 0.6), n_grid=32), quick=dict(temperatures=(1.0,))))
