"""Sample quality of mean vs stochastic samples: FID / KID / precision-recall and LPIPS.

Protocol: images are quantised with round(clamp(x, 0, 1) * 255), grey is repeated to three
channels, features come from torch-fidelity's extractors (FID as torch-fidelity computes it,
TTUR-compatible Inception), and the metrics from torch-fidelity's functions
(features -> statistics -> metric). LPIPS from the ``lpips`` package, inputs in [-1, 1].
Reference features are cached under a key of the reference images' hash, n, resolution,
extractor and weights hash, so a stale entry can never be returned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from vaeprobe import data as vdata
from vaeprobe import weights as vweights
from vaeprobe._analysis import evaluation_set, progress_bar, result_attrs
from vaeprobe.io import atomic_path, sha256_file
from vaeprobe.probe import Probe, encode
from vaeprobe.random import image_generators
from vaeprobe.registry import Registry

PROTOCOL = ("torch-fidelity 0.4 statistics and metrics; uint8 via round(clamp(x, 0, 1) * 255); "
            "grey repeated to 3 channels; extractor resizes internally")
KINDS = ("mean", "stochastic", "reconstruction_mean", "reconstruction_stochastic")
METRICS = ("fid", "kid", "prc", "lpips")
extractors = Registry("feature extractor")


@dataclass
class Extractor:
    """A feature network: uint8 (N, 3, H, W) -> float64 features (N, F)."""

    name: str
    network: nn.Module
    weights_sha256: str
    stand_in: bool = False  # True: NOT a pretrained network; results are not comparable

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(to_rgb(images))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.double().flatten(1).cpu()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) with C in (1, 3) -> uint8 (N, 3, H, W)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _torch_fidelity_extractor(network_class, name: str, layer: str, weights_key: str,
                              weights, device) -> Extractor:
    """One of torch-fidelity's feature networks, with verified weights found by vaeprobe."""
    path = vweights.resolve(weights_key, weights)
    vweights.load_state_dict(path)  # refuses files that would execute code
    network = network_class(name, [layer], feature_extractor_weights_path=str(path))
    return Extractor(name, network.to(device), sha256_file(path))


@extractors.register("inception-v3-compat")
def _inception(weights=None, device="cpu") -> Extractor:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return _torch_fidelity_extractor(FeatureExtractorInceptionV3, "inception-v3-compat", "2048",
                                     "inception-v3-compat", weights, device)


@extractors.register("vgg16-fc2")
def _vgg16(weights=None, device="cpu") -> Extractor:
    from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

    return _torch_fidelity_extractor(FeatureExtractorVGG16, "vgg16-fc2", "fc2_relu", "vgg16",
                                     weights, device)


class _RandomConvNet(nn.Module):
    """A small randomly initialised conv net (seed 0): a stand-in for tests only."""

    def __init__(self, features: int = 64):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(0)
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, features))

    def forward(self, x):
        return self.body(x.float() / 127.5 - 1)


@extractors.register("random-convnet-TEST-ONLY")
def _random_convnet(weights=None, device="cpu") -> Extractor:
    return Extractor("random-convnet-TEST-ONLY", _RandomConvNet().to(device).eval(),
                     "random-init-seed-0", stand_in=True)


class _Pixels(nn.Module):
    def forward(self, x):
        return x.double().flatten(1)


@extractors.register("pixels-TEST-ONLY")
def _pixels(weights=None, device="cpu") -> Extractor:
    return Extractor("pixels-TEST-ONLY", _Pixels(), "identity", stand_in=True)


def build_extractor(name: str, weights=None, device="cpu") -> Extractor:
    return extractors.get(name)(weights=weights, device=device)


# ---------------------------------------------------------------------------------------------
# LPIPS


class LPIPS:
    """LPIPS distance on uint8 images, checked inputs in [-1, 1].

    ``trunk="alexnet"`` loads pretrained AlexNet weights (see :mod:`vaeprobe.weights`);
    ``trunk="random-TEST-ONLY"`` keeps a randomly initialised trunk (tests; marked in attrs).
    """

    def __init__(self, trunk: str = "alexnet", weights=None, device="cpu"):
        import warnings

        import lpips

        self.device = device
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's pretrained= notice
            torch.manual_seed(0)  # the random trunk (tests) is the same on every build
            self.model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        self.model = self.model.to(device).eval()
        self.stand_in = trunk != "alexnet"
        if trunk == "alexnet":
            path = vweights.resolve("alexnet", weights)
            self._load_trunk(vweights.load_state_dict(path))
            self.weights_sha256 = sha256_file(path)
        elif trunk == "random-TEST-ONLY":
            self.weights_sha256 = "random-init"
        else:
            raise ValueError(f"trunk must be 'alexnet' or 'random-TEST-ONLY', got {trunk!r}")
        self.trunk = trunk

    def _load_trunk(self, state: dict) -> None:
        """Map torchvision's ``features.<i>.<param>`` onto lpips' ``slice<k>.<i>.<param>``."""
        mapped = {}
        for name, _ in self.model.net.named_parameters():
            _, index, param = name.split(".")
            mapped[name] = state[f"features.{index}.{param}"]
        self.model.net.load_state_dict(mapped)

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS of float images already in [-1, 1] (N, 3, H, W)."""
        for image in (a, b):
            if image.dtype == torch.uint8 or float(image.min()) < -1 or float(image.max()) > 1:
                raise ValueError(
                    f"LPIPS expects float images in [-1, 1], got {image.dtype} in "
                    f"[{float(image.min()):g}, {float(image.max()):g}]; convert uint8 with "
                    f"x / 127.5 - 1 (or use LPIPS.__call__ on uint8)")
        return self.model(a, b).flatten().double().cpu()

    MIN_SIDE = 32  # AlexNet's pooling needs at least this; smaller images are upsampled

    def __call__(self, a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
        """LPIPS of uint8 images; sides below MIN_SIDE are bilinearly upsampled to it."""
        def scale(x):
            x = to_rgb(x).float() / 127.5 - 1
            if min(x.shape[-2:]) < self.MIN_SIDE:
                x = torch.nn.functional.interpolate(x, size=(self.MIN_SIDE, self.MIN_SIDE),
                                                    mode="bilinear", align_corners=False)
            return x.clamp(-1, 1)
        return self.distance(scale(a_uint8), scale(b_uint8))


# ---------------------------------------------------------------------------------------------
# metrics on features (torch-fidelity's functions)


def fid_from_features(generated: torch.Tensor, reference: torch.Tensor) -> float:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_from_statistics(fid_features_to_statistics(generated.cpu()),
                               fid_features_to_statistics(reference.cpu()))


def fid_from_statistics(generated: dict, reference: dict) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(generated, reference, verbose=False)[KEY_METRIC_FID])


def kid_from_features(generated, reference, subset_size=1000, subsets=100, seed=0):
    """(mean, std, subset size used): the subset adapts down to the smaller set (recorded)."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    smallest = min(len(generated), len(reference))
    if smallest < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {smallest}")
    size = min(subset_size, smallest)
    out = kid_features_to_metric(generated.cpu(), reference.cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False, rng_seed=seed)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size


def prc_from_features(generated, reference, neighborhood=3) -> tuple[float, float]:
    from torch_fidelity.metric_prc import (
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    if min(len(generated), len(reference)) <= neighborhood:
        raise ValueError(f"precision/recall needs more than {neighborhood} images per set")
    out = prc_features_to_metric(generated.float().cpu(), reference.float().cpu(),
                                 prc_neighborhood=neighborhood, prc_batch_size=10000,
                                 save_cpu_ram=False, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


# ---------------------------------------------------------------------------------------------
# reference feature cache


def reference_key(identity: str, indices: torch.Tensor, n: int, resolution, extractor: str,
                  weights_sha256: str) -> str:
    """Cache key: changes with the images, n, resolution, extractor or weights."""
    digest = hashlib.sha256(json.dumps(dict(
        identity=identity, n=int(n), resolution=list(resolution), extractor=extractor,
        weights=weights_sha256, protocol=PROTOCOL), sort_keys=True).encode())
    digest.update(indices.numpy().tobytes())
    return digest.hexdigest()[:32]


def _cache_path(key: str) -> Path:
    return vdata.cache_dir() / "fidelity" / f"reference-{key}.pt"


def reference_features(dataset, indices, extractor: Extractor, batch_size: int, device,
                       progress: bool) -> tuple[torch.Tensor, bool]:
    """(features, came_from_cache) of the reference images, cached by :func:`reference_key`."""
    identity = vdata.dataset_identity(dataset)
    key = reference_key(identity, indices, len(indices), tuple(dataset[0].shape[1:]),
                        extractor.name, extractor.weights_sha256)
    path = _cache_path(key)
    if path.exists():
        try:
            return torch.load(path, weights_only=True)["features"], True
        except (RuntimeError, OSError, KeyError, EOFError):
            pass  # damaged entry: recompute
    features = featurise(vdata.iterate_batches(dataset, batch_size, indices), extractor, device,
                         progress_bar(len(indices), f"reference {extractor.name}", progress))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"features": features}, tmp)
    return features, False


def featurise(batches, extractor: Extractor, device, bar) -> torch.Tensor:
    """Features of every batch; ``bar`` (see _analysis.progress_bar) counts the images."""
    parts = []
    for x in batches:
        parts.append(extractor(x.to(device)))
        bar.update(len(x))
    bar.close()
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# generation


def _generate(probe: Probe, kinds, dataset, indices, n: int, batch_size: int,
              temperature, seed: int, posterior: str = "sample"):
    """Yield (kind -> uint8 batch, reference batch or None) for ``n`` images per kind.

    Prior kinds share z: mean and stochastic samples of the same draws. Reconstruction kinds
    use the reference images at ``indices`` (cycled if n exceeds them).
    """
    prior = [k for k in kinds if k in ("mean", "stochastic")]
    recon = [k for k in kinds if k.startswith("reconstruction_")]
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        out, reference = {}, None
        generators = image_generators(seed, rows, probe.device)
        if prior:
            latents = probe.sample_prior(len(rows), temperature=temperature,
                                         generator=generators)
            likelihood = probe.decode(latents)
            if "mean" in prior:
                out["mean"] = vdata.to_uint8(likelihood.mean)
            if "stochastic" in prior:
                out["stochastic"] = likelihood.sample(
                    image_generators(seed + 1, rows, probe.device))
        if recon:
            chosen = indices[torch.tensor(rows) % len(indices)]
            reference = vdata.gather(dataset, chosen).to(probe.device)
            likelihood = probe.decode(encode(probe, reference, 1, generators, posterior))
            if "reconstruction_mean" in recon:
                out["reconstruction_mean"] = vdata.to_uint8(likelihood.mean)
            if "reconstruction_stochastic" in recon:
                out["reconstruction_stochastic"] = likelihood.sample(
                    image_generators(seed + 1, rows, probe.device))
        yield out, reference


class _KindAccumulator:
    """Features, kept images (previews, diversity pairs) and LPIPS of one kind, per batch."""

    def __init__(self, nets: list[Extractor], keep: int):
        self.nets, self.keep = nets, keep
        self.features = {net.name: [] for net in nets}
        self.kept, self.lpips = [], []

    def update(self, images: torch.Tensor, lpips: LPIPS | None, real) -> None:
        for net in self.nets:
            self.features[net.name].append(net(images))
        missing = self.keep - sum(len(k) for k in self.kept)
        if missing > 0:
            self.kept.append(images[:missing].cpu())
        if lpips is not None and real is not None:
            self.lpips.append(lpips(images, real))

    def compute(self, references: dict, fid_net, prc_net, lpips, settings: dict) -> dict:
        row = dict(fid=np.nan, kid_mean=np.nan, kid_std=np.nan, precision=np.nan,
                   recall=np.nan, lpips=np.nan, lpips_diversity=np.nan)
        generated = {name: torch.cat(parts) for name, parts in self.features.items()}
        metrics = settings["metrics"]
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
            if self.lpips:
                row["lpips"] = float(torch.cat(self.lpips).mean())
            kept = torch.cat(self.kept)
            pairs = len(kept) // 2
            if pairs:
                row["lpips_diversity"] = float(lpips(kept[0:2 * pairs:2].to(
                    lpips.device), kept[1:2 * pairs:2].to(lpips.device)).mean())
        return row


def _require_kinds(probe: Probe, kinds) -> None:
    """Refuse kinds the probe does not define: prior samples need a generative prior,
    stochastic samples a decoder likelihood."""
    prior = [kind for kind in kinds if kind in ("mean", "stochastic")]
    stochastic = [kind for kind in kinds if kind.endswith("stochastic")]
    if prior:
        probe.require(f"vp.sample_quality(kinds={prior})", prior=True)
    if stochastic:
        probe.require(f"vp.sample_quality(kinds={stochastic})", likelihood=True)


def sample_quality(probe: Probe, reference, *, n: int = 10000, kinds=KINDS,
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
    probe : Probe
    reference : str, Dataset or uint8 tensor
        Real images (e.g. ``"patches32:test"``); a seeded subset of ``n`` is the reference set.
    n : int
        Images per kind (and reference images, fewer if the reference has fewer).
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
    >>> ds = sample_quality(vp.load("runs/demo"), "patches32:test", n=10000)  # doctest: +SKIP
    >>> ds[["fid", "lpips"]].to_dataframe()  # doctest: +SKIP
    """
    kinds, metrics = list(kinds), list(metrics)
    unknown = (set(kinds) - set(KINDS)) | (set(metrics) - set(METRICS))
    if unknown or not kinds:
        raise ValueError(f"unknown or no kinds/metrics {sorted(unknown)}; kinds: {KINDS}, "
                         f"metrics: {METRICS}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    _require_kinds(probe, kinds)
    device = probe.device
    dataset, indices = evaluation_set(probe, reference, n, seed)
    fid_net = build_extractor(feature_extractor, weights, device) \
        if {"fid", "kid"} & set(metrics) else None
    prc_net = build_extractor(prc_extractor, prc_weights, device) if "prc" in metrics else None
    if fid_net is not None and prc_net is not None and prc_net.name == fid_net.name:
        prc_net = fid_net  # one network, featurised once
    nets = list({net.name: net for net in (fid_net, prc_net) if net is not None}.values())
    lpips = LPIPS(lpips_trunk, lpips_weights, device) if "lpips" in metrics else None
    references, from_cache = {}, {}
    for net in nets:
        references[net.name], from_cache[net.name] = reference_features(
            dataset, indices, net, batch_size, device, progress)
    keep = max(n_preview, 2 * n_diversity_pairs)
    accumulators = {kind: _KindAccumulator(nets, keep) for kind in kinds}
    bar = progress_bar(n, f"samples ({', '.join(kinds)})", progress, unit="img")
    for batch, real in _generate(probe, kinds, dataset, indices, n, batch_size, temperature,
                                 seed, posterior):
        for kind, images in batch.items():
            accumulators[kind].update(images, lpips, real if kind.startswith("recon") else None)
        bar.update(len(next(iter(batch.values()))))
    bar.close()
    settings = dict(metrics=metrics, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                    seed=seed)
    rows = {kind: acc.compute(references, fid_net, prc_net, lpips, settings)
            for kind, acc in accumulators.items()}
    previews = np.stack([torch.cat(accumulators[k].kept)[:n_preview].numpy() for k in kinds])
    ds = xr.Dataset(
        {name: ("kind", [rows[k][name] for k in kinds], {"units": units})
         for name, units in (("fid", "1"), ("kid_mean", "1"), ("kid_std", "1"),
                             ("precision", "1"), ("recall", "1"), ("lpips", "1"),
                             ("lpips_diversity", "1"))},
        coords={"kind": kinds},
    )
    ds["preview"] = (("kind", "image", "channel", "y", "x"), previews,
                     {"units": "uint8 pixel values"})
    stand_in = any(net.stand_in for net in nets) or (lpips is not None and lpips.stand_in)
    parameters = dict(n=n, kinds=kinds, temperature=temperature, metrics=metrics,
                      feature_extractor=feature_extractor, prc_extractor=prc_extractor,
                      lpips_trunk=lpips_trunk, batch_size=batch_size, seed=seed,
                      kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                      posterior=posterior)
    ds.attrs = result_attrs(
        "sample_quality", parameters, probe, dataset, len(indices), seed, n=n,
        temperature=json.dumps(temperature), protocol=PROTOCOL,
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
    return ds


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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
