"""Sample quality of mean vs stochastic samples and reconstructions, and FID of image sets.

Samples come from :mod:`vaeprobe.sampling`; features from :mod:`~vaeprobe.fidelity.extractors`
(reference features cached by :mod:`~vaeprobe.fidelity.cache`); the metrics from
:mod:`~vaeprobe.fidelity.metrics`; LPIPS from :mod:`~vaeprobe.fidelity.perceptual`.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe import weights as vweights
from vaeprobe._analysis import (
    Evaluation,
    evaluation_of,
    flag_nonfinite,
    progress_bar,
    resolve_source,
    result_attrs,
)
from vaeprobe._deprecate import renamed
from vaeprobe.accumulate import Reducing
from vaeprobe.fidelity.cache import featurise, reference_features
from vaeprobe.fidelity.extractors import Extractor, build_extractor
from vaeprobe.fidelity.metrics import (
    PROTOCOL,
    fid_from_features,
    kid_from_features,
    prc_from_features,
)
from vaeprobe.fidelity.perceptual import LPIPS
from vaeprobe.probe import Probe
from vaeprobe.sampling import KINDS, require, sample_batches
from vaeprobe.validate import temperatures

METRICS = ("fid", "kid", "prc", "lpips")


class _KindAccumulator(Reducing):
    """Features, kept images (previews, diversity pairs) and LPIPS to the inputs, of one kind;
    an :class:`~vaeprobe.accumulate.Accumulator` (images of a merged one count as later)."""

    states = {"features": "cat", "kept": "_merge_kept", "lpips": "cat"}
    must_match = ("settings",)

    def __init__(self, nets: list[Extractor], keep: int, lpips: LPIPS | None = None):
        self.nets, self.keep, self.lpips_net = nets, keep, lpips
        self.settings = (tuple(net.name for net in nets), keep,
                         lpips.trunk if lpips is not None else None)
        self.features = {net.name: [] for net in nets}
        self.kept, self.lpips = [], []

    def update(self, images: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """Fold in uint8 images (B, C, H, W) and, for reconstructions, their inputs."""
        for net in self.nets:
            self.features[net.name].append(net(images))
        self._keep([images])
        if self.lpips_net is not None and real is not None:
            self.lpips.append(self.lpips_net(images, real))

    def _keep(self, parts: list[torch.Tensor]) -> None:
        self.kept = self._merge_kept(self.kept, parts)

    def _merge_kept(self, kept: list, parts: list) -> list:
        """``kept`` topped up to ``keep`` images from ``parts`` (later images)."""
        missing = self.keep - sum(len(k) for k in kept)
        if missing > 0 and parts:
            return kept + [torch.cat(parts)[:missing].cpu()]
        return kept

    def compute(self) -> dict:
        """Features per network (N, F), the kept images (uint8), LPIPS per input (or None)."""
        return dict(features={name: torch.cat(parts) for name, parts in self.features.items()},
                    kept=torch.cat(self.kept),
                    lpips=torch.cat(self.lpips) if self.lpips else None)


def _kind_row(state: dict, references: dict, fid_net, prc_net, lpips, settings: dict) -> dict:
    """The metrics of one kind from its accumulated ``state``."""
    row = dict(fid=np.nan, kid_mean=np.nan, kid_std=np.nan, precision=np.nan,
               recall=np.nan, lpips=np.nan, lpips_diversity=np.nan)
    generated, metrics = state["features"], settings["metrics"]
    if "fid" in metrics:
        row["fid"] = fid_from_features(generated[fid_net.name], references[fid_net.name])
    if "kid" in metrics:
        row["kid_mean"], row["kid_std"], settings["kid_subset_size_used"] = \
            kid_from_features(generated[fid_net.name], references[fid_net.name],
                              settings["kid_subset_size"], settings["kid_subsets"],
                              settings["seed"])
    if "prc" in metrics:
        row["precision"], row["recall"] = prc_from_features(generated[prc_net.name],
                                                            references[prc_net.name])
    if lpips is not None:
        if state["lpips"] is not None:
            row["lpips"] = float(state["lpips"].mean())
        kept = state["kept"]
        pairs = len(kept) // 2
        if pairs:
            row["lpips_diversity"] = float(lpips(kept[0:2 * pairs:2].to(
                lpips.device), kept[1:2 * pairs:2].to(lpips.device)).mean())
    return row


def _require_weights(metrics, feature_extractor, prc_extractor, lpips_trunk, weights,
                     prc_weights, lpips_weights) -> None:
    """Every pretrained file the chosen metrics need, found before any work; all the missing
    ones are named at once (``vaeprobe.weights.MissingWeightsError``)."""
    from vaeprobe.fidelity.extractors import weights_key
    from vaeprobe.fidelity.perceptual import lpips_trunks

    needed = []
    if {"fid", "kid"} & set(metrics) and weights_key(feature_extractor):
        needed.append((weights_key(feature_extractor), weights, "weights"))
    if "prc" in metrics and weights_key(prc_extractor):
        needed.append((weights_key(prc_extractor), prc_weights, "prc_weights"))
    if "lpips" in metrics and lpips_trunks.get(lpips_trunk).weights_key:
        needed.append((lpips_trunks.get(lpips_trunk).weights_key, lpips_weights,
                       "lpips_weights"))
    vweights.require(needed)


@renamed(n="n_images")
def sample_quality(probe: Probe, reference, *, n_images: int = 10000, kinds=KINDS,
                   temperature=1.0, metrics=METRICS,
                   feature_extractor: str = "inception-v3-compat",
                   prc_extractor: str = "vgg16-fc2", lpips_trunk: str = "alexnet",
                   weights=None, prc_weights=None, lpips_weights=None,
                   batch_size: int = 100, n_preview: int = 16, kid_subset_size: int = 1000,
                   kid_subsets: int = 100, n_diversity_pairs: int = 500, seed: int = 0,
                   posterior: str = "sample", progress: bool = True) -> xr.Dataset:
    """FID / KID / precision-recall and LPIPS of mean vs stochastic samples and reconstructions.

    Parameters
    ----------
    probe : Probe, run directory, checkpoint file or model folder
        Anything :func:`vaeprobe.load` opens (resolved by :func:`vaeprobe.as_probe`).
    reference : str, Dataset or uint8 tensor
        Real images (e.g. ``"patches32:test"``); a seeded subset of ``n_images`` is the
        reference set.
    n_images : int
        Images per kind (and reference images, fewer if the reference has fewer). Its old
        name ``n=`` still works (DeprecationWarning).
    kinds : sequence of {"mean", "stochastic", "reconstruction_mean",
        "reconstruction_stochastic"}
    temperature : float or sequence
        Prior temperature (one, or one per latent layer).
    metrics : sequence of {"fid", "kid", "prc", "lpips"}
    feature_extractor, prc_extractor : str
        Registered extractors for FID/KID and precision/recall.
    lpips_trunk : {"alexnet", "random-TEST-ONLY"}
    weights, prc_weights, lpips_weights : path, optional
        Explicit weights files (else ``VAEPROBE_WEIGHTS_DIR``, then the torch hub cache).
    posterior : {"sample", "mean"}
        Reconstruction kinds decode a posterior sample or the posterior mean (the mode, as
        diffusers' autoencoders reconstruct).

    Returns
    -------
    xarray.Dataset
        Dim ``kind``: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``lpips``
        (reconstructions vs their inputs; NaN for prior kinds), ``lpips_diversity`` (mean LPIPS
        of disjoint sample pairs); ``preview`` (kind, image, channel, y, x) uint8.

    Examples
    --------
    >>> ds = sample_quality("runs/demo", "patches32:test", n_images=10000)  # doctest: +SKIP
    >>> ds[["fid", "lpips"]].to_dataframe()  # doctest: +SKIP
    """
    probe = resolve_source(probe)  # a Probe, a run directory, a checkpoint or a model folder
    kinds, metrics = list(kinds), list(metrics)
    _check_request(probe, kinds, metrics, n_images)
    temperatures(temperature)  # finite and > 0: NaN would draw black images
    _require_weights(metrics, feature_extractor, prc_extractor, lpips_trunk, weights,
                     prc_weights, lpips_weights)
    evaluation = evaluation_of(probe, reference, n_images, seed)  # fitted to the data's size
    return compute_sample_quality(
        evaluation, kinds=kinds, temperature=temperature, metrics=metrics,
        feature_extractor=feature_extractor, prc_extractor=prc_extractor,
        lpips_trunk=lpips_trunk, weights=weights, prc_weights=prc_weights,
        lpips_weights=lpips_weights, batch_size=batch_size, n_preview=n_preview,
        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
        n_diversity_pairs=n_diversity_pairs, posterior=posterior, progress=progress)


def compute_sample_quality(evaluation: Evaluation, *, kinds=KINDS, temperature=1.0,
                           metrics=METRICS, feature_extractor: str = "inception-v3-compat",
                           prc_extractor: str = "vgg16-fc2", lpips_trunk: str = "alexnet",
                           weights=None, prc_weights=None, lpips_weights=None,
                           batch_size: int = 100, n_preview: int = 16,
                           kid_subset_size: int = 1000, kid_subsets: int = 100,
                           n_diversity_pairs: int = 500, posterior: str = "sample",
                           progress: bool = True) -> xr.Dataset:
    """The core of :func:`sample_quality` on an already resolved model and reference images.

    Parameters
    ----------
    evaluation : vaeprobe._analysis.Evaluation
        The fitted Probe, the reference dataset and its seeded subset; ``n_images`` (as asked)
        is also the number of images per kind, ``seed`` seeds every sample.
    kinds, temperature, metrics, feature_extractor, prc_extractor, lpips_trunk
        As in :func:`sample_quality`.
    weights, prc_weights, lpips_weights, batch_size, n_preview, kid_subset_size
        As in :func:`sample_quality`.
    kid_subsets, n_diversity_pairs, posterior, progress
        As in :func:`sample_quality`.

    Returns
    -------
    xarray.Dataset
        What :func:`sample_quality` returns for the same request (the same Dataset).
    """
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    kinds, metrics = list(kinds), list(metrics)
    _check_request(probe, kinds, metrics, n_images)
    temperatures(temperature)
    _require_weights(metrics, feature_extractor, prc_extractor, lpips_trunk, weights,
                     prc_weights, lpips_weights)
    fid_net, prc_net, lpips = _networks(metrics, feature_extractor, prc_extractor, lpips_trunk,
                                        weights, prc_weights, lpips_weights, probe.device)
    nets = list({net.name: net for net in (fid_net, prc_net) if net is not None}.values())
    references, from_cache = {}, {}
    for net in nets:
        references[net.name], from_cache[net.name] = reference_features(
            dataset, indices, net, batch_size, probe.device, progress)
    accumulators = {kind: _KindAccumulator(nets, max(n_preview, 2 * n_diversity_pairs), lpips)
                    for kind in kinds}
    states = _sample_states(probe, accumulators, n_images, batch_size, temperature, seed,
                            dataset, indices, posterior, progress)
    settings = dict(metrics=metrics, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                    seed=seed)
    rows = {kind: _kind_row(states[kind], references, fid_net, prc_net, lpips, settings)
            for kind in kinds}
    ds = _quality_dataset(kinds, rows, states, n_preview)
    parameters = dict(n_images=n_images, kinds=kinds, temperature=temperature, metrics=metrics,
                      feature_extractor=feature_extractor, prc_extractor=prc_extractor,
                      lpips_trunk=lpips_trunk, batch_size=batch_size, seed=seed,
                      kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                      posterior=posterior)
    ds.attrs = result_attrs("sample_quality", parameters, probe, dataset, len(indices), seed,
                            n=n_images, temperature=json.dumps(temperature),
                            **_network_facts(fid_net, prc_net, lpips, settings, from_cache))
    measured = {"fid": ["fid"], "kid": ["kid_mean", "kid_std"], "prc": ["precision", "recall"],
                "lpips": ["lpips"]}  # metrics not asked for are NaN by design
    return flag_nonfinite(ds, [name for metric in metrics for name in measured[metric]])


def _sample_states(probe: Probe, accumulators: dict, n_images: int, batch_size: int,
                   temperature, seed: int, dataset, indices, posterior: str,
                   progress: bool) -> dict:
    """Every kind's accumulated features, kept images and LPIPS (this rank's images, merged
    in rank order under torchrun)."""
    kinds = list(accumulators)
    bar = progress_bar(n_images, f"samples ({', '.join(kinds)})", progress, unit="img")
    for rows, batch, inputs in sample_batches(probe, kinds, n_images, batch_size, temperature,
                                              seed, dataset, indices, posterior, shard=True):
        for kind, images in batch.items():
            accumulators[kind].update(images, inputs if kind.startswith("recon") else None)
        bar.update(len(rows))
    bar.close()
    return {kind: distributed.merge(acc).compute() for kind, acc in accumulators.items()}


def _check_request(probe: Probe, kinds: list, metrics: list, n_images) -> None:
    """Refuse unknown kinds or metrics, fewer than 2 images, and kinds the probe cannot give."""
    unknown = (set(kinds) - set(KINDS)) | (set(metrics) - set(METRICS))
    if unknown or not kinds:
        raise ValueError(f"unknown or no kinds/metrics {sorted(unknown)}; kinds: {KINDS}, "
                         f"metrics: {METRICS}")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 2:
        raise ValueError(f"n_images must be an integer >= 2, got {n_images!r}")
    require(probe, "vp.sample_quality", kinds)


def _networks(metrics, feature_extractor, prc_extractor, lpips_trunk, weights, prc_weights,
              lpips_weights, device) -> tuple:
    """(FID/KID network, precision/recall network, LPIPS), None where no metric needs one; one
    network serves both when they are the same."""
    fid_net = build_extractor(feature_extractor, weights, device) \
        if {"fid", "kid"} & set(metrics) else None
    prc_net = build_extractor(prc_extractor, prc_weights, device) if "prc" in metrics else None
    if fid_net is not None and prc_net is not None and prc_net.name == fid_net.name:
        prc_net = fid_net  # one network, featurised once
    lpips = LPIPS(lpips_trunk, lpips_weights, device) if "lpips" in metrics else None
    return fid_net, prc_net, lpips


def _quality_dataset(kinds: list, rows: dict, states: dict, n_preview: int) -> xr.Dataset:
    """The metrics along ``kind`` and the preview images."""
    ds = xr.Dataset(
        {name: ("kind", [rows[k][name] for k in kinds], {"units": "1"})
         for name in ("fid", "kid_mean", "kid_std", "precision", "recall", "lpips",
                      "lpips_diversity")},
        coords={"kind": kinds},
    )
    previews = np.stack([states[k]["kept"][:n_preview].numpy() for k in kinds])
    ds["preview"] = (("kind", "image", "channel", "y", "x"), previews,
                     {"units": "uint8 pixel values"})
    return ds


def _network_facts(fid_net, prc_net, lpips, settings: dict, from_cache: dict) -> dict:
    """Provenance of the networks: names, weights' sha256, stand-ins flagged (with a warning)."""
    stand_in = any(net.stand_in for net in (fid_net, prc_net) if net is not None) or (
        lpips is not None and lpips.stand_in)
    return dict(
        protocol=PROTOCOL,
        feature_extractor=fid_net.name if fid_net else "none",
        feature_extractor_weights_sha256=fid_net.weights_sha256 if fid_net else "none",
        prc_extractor=prc_net.name if prc_net else "none",
        prc_extractor_weights_sha256=prc_net.weights_sha256 if prc_net else "none",
        lpips_trunk=lpips.trunk if lpips else "none",
        lpips_weights_sha256=lpips.weights_sha256 if lpips else "none",
        lpips_min_side=LPIPS.MIN_SIDE,
        kid_subset_size_used=settings.get("kid_subset_size_used", -1),
        reference_from_cache=json.dumps(from_cache),
        stand_in_network=int(stand_in),
        warning=("computed with stand-in (randomly initialised) networks: NOT comparable to "
                 "published FID/KID/LPIPS") if stand_in else "",
    )


def fid(generated, reference, *, feature_extractor: str = "inception-v3-compat", weights=None,
        n_reference: int | None = None, batch_size: int = 100, seed: int = 0, device=None,
        progress: bool = True) -> xr.Dataset:
    """FID between two image sets; the reference features are cached (see module docstring).

    ``generated`` and ``reference`` are anything :func:`vaeprobe.data.as_dataset` takes;
    ``n_reference`` a seeded subset of the reference (all by default).

    Examples
    --------
    >>> images = vdata.load("digits8:test").images
    >>> ds = fid(images, images, feature_extractor="random-convnet-TEST-ONLY", progress=False)
    >>> abs(float(ds["fid"])) < 1e-6
    True
    """
    device = distributed.resolve_device(device)
    generated, reference = vdata.as_dataset(generated), vdata.as_dataset(reference)
    net = build_extractor(feature_extractor, weights, device)
    indices = vdata.select(reference, n_reference, seed)
    reference_set, cached = reference_features(reference, indices, net, batch_size, device,
                                               progress)
    generated_set = featurise(vdata.iterate_batches(generated, batch_size), net, device,
                              progress_bar(len(generated), "generated", progress, unit="img"))
    ds = xr.Dataset({"fid": ((), fid_from_features(generated_set, reference_set), {"units": "1"})})
    ds.attrs = result_attrs(
        "fid", dict(feature_extractor=feature_extractor, n_reference=n_reference,
                    batch_size=batch_size, seed=seed), None, reference, len(indices), seed,
        generated=vdata.dataset_name(generated), n_generated=len(generated), protocol=PROTOCOL,
        feature_extractor=net.name, feature_extractor_weights_sha256=net.weights_sha256,
        reference_from_cache=int(cached), stand_in_network=int(net.stand_in))
    return ds
