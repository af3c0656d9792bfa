"""PCA baselines: top-k vs bottom-k reconstructions and the Gaussian rate-distortion bound.

The paper's analogy (Section 5): the top-k principal components reach a distortion with far
fewer components than the bottom-k. Reverse water-filling gives R(D) of a Gaussian source with
the data's covariance: for squared error no source with this covariance needs more rate, so it
is the yardstick for a VAE's (distortion, rate) point.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe._analysis import flag_nonfinite, progress_bar, result_attrs
from vaeprobe.accumulate import Reducing
from vaeprobe.spectrum import SpectrumAccumulator, high_frequency_fraction
from vaeprobe.validate import finite


class _Covariance(Reducing):
    """Streaming mean and covariance of flattened [0, 1] images: memory D x D, not N x D.

    Keeps the count, the mean and the co-moment sum_i (x_i - mean)(x_i - mean)^T in float64;
    batches and other accumulators combine by Chan, Golub & LeVeque's parallel update (exact
    up to rounding, and free of the cancellation of E[x x^T] - mean mean^T). An
    :class:`~vaeprobe.accumulate.Accumulator`.
    """

    states = {("n", "mean", "comoment"): "chan"}

    def __init__(self):
        self.n, self.mean, self.comoment = 0, None, None

    @classmethod
    def of(cls, flat: torch.Tensor) -> _Covariance:
        """The accumulator of one batch of flat float64 rows (N, D)."""
        one = cls()
        one.n, one.mean = flat.shape[0], flat.mean(0)
        centred = flat - one.mean
        one.comoment = centred.T @ centred
        return one

    def update(self, x: torch.Tensor) -> None:  # x: uint8 (N, C, H, W)
        if len(x):
            self.merge(_Covariance.of(x.double().flatten(1) / 255.0))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.comoment / self.n  # population covariance


def _eigen(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns)."""
    values, vectors = torch.linalg.eigh(covariance)
    return values.flip(0).clamp(min=0), vectors.flip(1)


def pca_distortion(eigenvalues: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Expected per-image squared error keeping the top-k or the bottom-k components: (k, 2)."""
    tail = np.concatenate([np.cumsum(eigenvalues[::-1])[::-1], [0.0]])  # tail[k] = sum_{i>=k}
    head = np.concatenate([[0.0], np.cumsum(eigenvalues)])  # head[j] = sum_{i<j}
    dims = len(eigenvalues)
    return np.stack([tail[ks], head[dims - ks]], axis=1)


def components_needed(distortion_by_k: np.ndarray, ks: np.ndarray, targets) -> np.ndarray:
    """Fewest components whose distortion is <= each target: (order, target)."""
    result = np.full((distortion_by_k.shape[1], len(targets)), -1, dtype=np.int64)
    for order in range(distortion_by_k.shape[1]):
        for j, target in enumerate(targets):
            reached = np.nonzero(distortion_by_k[:, order] <= target)[0]
            result[order, j] = ks[reached[0]] if len(reached) else -1
    return result


def water_filling(eigenvalues: np.ndarray, distortion) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian R(D) by reverse water-filling, in nats: (rate, water level theta).

    D = sum_i min(lambda_i, theta), R = sum_i max(0, 1/2 ln(lambda_i / theta)).
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    positive = eigenvalues[eigenvalues > 0]
    targets = np.atleast_1d(np.asarray(distortion, dtype=np.float64))
    if (targets <= 0).any():
        raise ValueError("distortion must be > 0 (R(D) is infinite at D = 0)")
    low = np.zeros_like(targets)
    high = np.full_like(targets, positive.max())
    for _ in range(200):  # bisection on theta: D(theta) is increasing
        theta = 0.5 * (low + high)
        achieved = np.minimum(positive[None, :], theta[:, None]).sum(1)
        low, high = np.where(achieved < targets, theta, low), np.where(achieved < targets,
                                                                       high, theta)
    theta = 0.5 * (low + high)
    total = positive.sum()
    theta = np.where(targets >= total, positive.max(), theta)
    rate = np.maximum(0.0, 0.5 * np.log(positive[None, :] / theta[:, None])).sum(1)
    return np.where(targets >= total, 0.0, rate), theta


def gaussian_rate_distortion(eigenvalues, distortion) -> np.ndarray:
    """R(D) in nats per image of a Gaussian source with these covariance eigenvalues."""
    return water_filling(eigenvalues, distortion)[0]


def pca_baseline(data, *, n_images: int | None = None, ks=None, targets=(1, 2, 4, 8, 16, 32, 64),
                 spectrum_distortion: float | None = None, n_spectrum_images: int = 512,
                 window: str = "hann", cutoff: float = 0.25, batch_size: int = 1024,
                 seed: int = 0, device=None, progress: bool = True) -> xr.Dataset:
    """PCA of the data: top-k vs bottom-k distortion, components needed, Gaussian R(D).

    Parameters
    ----------
    data : str, Dataset, uint8 tensor, or a model source
        Images (a dataset name, a Dataset or a uint8 tensor). A model source (a run
        directory, a checkpoint file, a model folder or a Probe, see :func:`vaeprobe.as_probe`)
        stands for the training split of the data it was trained on, where its run records
        one (``"patches32:train"`` for a run trained on patches32); otherwise it is an error
        that asks for images.
    n_images : int, optional
        A seeded random subset for the covariance.
    ks : sequence of int, optional
        Numbers of components (default all, 0..D).
    targets : sequence of float
        Distortions (per-image sum of squares on [0, 1]) for ``components_needed``.
    spectrum_distortion : float, optional
        Also give the spectrum of top-k reconstructions with the fewest components reaching this
        distortion (to compare with a VAE's reconstructions at the same distortion).

    Returns
    -------
    xarray.Dataset
        ``eigenvalues`` (component); ``distortion`` (k, order: top/bottom);
        ``components_needed`` (order, target); ``rd_rate`` (rd_distortion), the Gaussian R(D)
        bound in nats; ``total_variance``; with ``spectrum_distortion``: ``power_pca``
        (frequency) and ``high_frequency_fraction_pca``.

    Examples
    --------
    >>> ds = pca_baseline("digits8:test", progress=False)
    >>> int(ds.components_needed.sel(order="top", target=2)) < int(
    ...     ds.components_needed.sel(order="bottom", target=2))
    True
    """
    _check_targets(targets, spectrum_distortion)
    dataset = vdata.as_dataset(_training_data(data))  # the edge: images resolved once, here
    return compute_pca(dataset, vdata.select(dataset, n_images, seed), n_images=n_images,
                       ks=ks, targets=targets, spectrum_distortion=spectrum_distortion,
                       n_spectrum_images=n_spectrum_images, window=window, cutoff=cutoff,
                       batch_size=batch_size, seed=seed, device=device, progress=progress)


def _check_targets(targets, spectrum_distortion) -> None:
    for target in np.atleast_1d(np.asarray(targets, dtype=object)):
        finite(target, "targets (distortions, sums of squares on [0, 1])", low=0)
    if spectrum_distortion is not None:
        finite(spectrum_distortion, "spectrum_distortion", low=0, low_open=True)


def compute_pca(dataset, indices: torch.Tensor, *, n_images: int | None = None, ks=None,
                targets=(1, 2, 4, 8, 16, 32, 64), spectrum_distortion: float | None = None,
                n_spectrum_images: int = 512, window: str = "hann", cutoff: float = 0.25,
                batch_size: int = 1024, seed: int = 0, device=None,
                progress: bool = True) -> xr.Dataset:
    """The core of :func:`pca_baseline` on already resolved images.

    Parameters
    ----------
    dataset : Dataset
        The images (uint8 ``(C, H, W)`` items, e.g. from :func:`vaeprobe.data.as_dataset`).
    indices : torch.Tensor
        The dataset indices of the covariance's images (sharded across ranks under torchrun).
    n_images : int, optional
        The subset's size as it was asked for (recorded in provenance; it selects nothing).
    ks, targets, spectrum_distortion, n_spectrum_images, window, cutoff, batch_size, seed,
    device, progress
        As in :func:`pca_baseline` (``seed`` draws the spectrum's images).

    Returns
    -------
    xarray.Dataset
        What :func:`pca_baseline` returns for the same request (the same Dataset).
    """
    _check_targets(targets, spectrum_distortion)
    if len(indices) < 2:
        raise ValueError(f"pca_baseline needs at least 2 images for a covariance, got "
                         f"{len(indices)} (n_images={n_images}); use more images")
    device = distributed.resolve_device(device)
    covariance = _Covariance()
    local = distributed.shard(indices, device)  # this rank's block under torchrun
    bar = progress_bar(len(local), "pca: covariance", progress, unit="img")
    for x in vdata.iterate_batches(dataset, batch_size, local, device=device):
        covariance.update(x.to(device))
        bar.update(len(x))
    bar.close()
    mean, cov = (part.to(device) for part in distributed.merge(covariance).compute())
    eigenvalues, eigenvectors = _eigen(cov)
    values = eigenvalues.cpu().numpy()
    dims = len(values)
    ks = np.arange(dims + 1) if ks is None else np.asarray(sorted(set(int(k) for k in ks)))
    if ks.min() < 0 or ks.max() > dims:
        raise ValueError(f"ks must lie in 0..{dims} (the data's dimensions), got {ks.min()}.."
                         f"{ks.max()}")
    ds = _pca_dataset(values, ks, targets)
    if spectrum_distortion is not None:
        ds = ds.merge(_top_k_spectrum(dataset, seed, mean, eigenvectors, values,
                                      spectrum_distortion, n_spectrum_images, window, cutoff,
                                      batch_size, device))
    parameters = dict(n_images=n_images, targets=list(targets), seed=seed, window=window,
                      cutoff=cutoff, spectrum_distortion=spectrum_distortion,
                      n_spectrum_images=n_spectrum_images)
    ds.attrs = result_attrs("pca_baseline", parameters, None, dataset, len(indices), seed)
    return flag_nonfinite(ds)


def _pca_dataset(values: np.ndarray, ks: np.ndarray, targets) -> xr.Dataset:
    """Eigenvalues, top/bottom-k distortion, components needed per target, Gaussian R(D)."""
    dims = len(values)
    distortion = pca_distortion(values, ks)
    total = float(values.sum())
    rd_grid = np.geomspace(max(total * 1e-4, 1e-12), max(total, 1e-12), 64)  # 0: constant
    return xr.Dataset(
        {
            "eigenvalues": ("component", values, {"units": "variance on [0, 1]"}),
            "distortion": (("k", "order"), distortion, {"units": "sum of squares on [0, 1]"}),
            "components_needed": (("order", "target"), components_needed(
                np.asarray(distortion), ks, targets), {"units": "components"}),
            "rd_rate": ("rd_distortion", gaussian_rate_distortion(values, rd_grid),
                        {"units": "nats", "long_name": "Gaussian R(D), reverse water-filling"}),
            "total_variance": ((), total, {"units": "sum of squares on [0, 1]"}),
        },
        coords={"component": np.arange(dims), "k": ks, "order": ["top", "bottom"],
                "target": np.asarray(targets, dtype=np.float64), "rd_distortion": rd_grid},
    )


def _training_data(source):
    """``source`` itself when it is data; for a model source, the training split of the data
    its run was trained on."""
    from pathlib import Path

    from vaeprobe.probe import Probe
    from vaeprobe.run import Run

    if isinstance(source, Probe):
        path = source.source.get("checkpoint")
    elif isinstance(source, (str, Path)) and Path(source).exists() \
            and not str(source).startswith(("folder:", "npz:")):
        path = source
    else:
        return source  # a dataset name, a Dataset or a tensor
    trained_on = Run.of(path).data if path and Path(path).exists() else None
    if trained_on is None:
        raise ValueError(f"pca_baseline needs images: {source} is a model whose training data "
                         f"is not recorded; pass data (e.g. 'patches32:train', 'folder:PATH')")
    return f"{trained_on}:train"


def _top_k_spectrum(dataset, seed, mean, vectors, values, target, n_images, window, cutoff,
                    batch_size, device) -> xr.Dataset:
    """Spectrum of top-k reconstructions with the fewest k reaching ``target`` distortion."""
    tail = pca_distortion(values, np.arange(len(values) + 1))[:, 0]  # top-k, every k
    k = int(np.nonzero(tail <= target)[0][0])
    basis = vectors[:, :k]  # (D, k)
    accumulator = SpectrumAccumulator(window, "per_channel")
    indices = distributed.shard(vdata.select(dataset, n_images, seed), device)
    for x in vdata.iterate_batches(dataset, batch_size, indices, device=device):
        flat = x.to(device).double().flatten(1) / 255.0 - mean
        reconstruction = (flat @ basis @ basis.T + mean).reshape(x.shape)
        accumulator.update(reconstruction)
    frequency, power, n_modes = distributed.merge(accumulator).compute()
    hff = high_frequency_fraction(power[1:], n_modes[1:], frequency[1:], cutoff)
    return xr.Dataset(
        {"power_pca": ("frequency", power[1:], {"units": "mean |FFT|^2 per mode"}),
         "high_frequency_fraction_pca": ((), float(hff), {"units": "1"}),
         "pca_k": ((), k, {"units": "components", "long_name": "top-k at spectrum_distortion"}),
         "pca_spectrum_distortion": ((), float(tail[k]), {"units": "sum of squares on [0, 1]"})},
        coords={"frequency": frequency[1:]},
    )
