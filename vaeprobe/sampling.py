"""Samples of a Probe as a Dataset: decoder means or likelihood draws, of prior draws or of
reconstructions.

Kinds: ``mean`` decodes prior latents and quantises the decoder mean by
round(clamp(x, 0, 1) * 255); ``stochastic`` draws pixels from the decoder likelihood of the
same latents; ``reconstruction_mean`` and ``reconstruction_stochastic`` do the same for one
posterior draw given each input image. Randomness is per image, keyed by (seed, image): the
latents (prior or posterior draw) of image i come from stream (seed, i) and its pixel noise from
stream (seed + 1, i), so samples do not depend on the batch size, and the mean and stochastic
samples of one seed share their latents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe._analysis import Evaluation, evaluation_of, progress_bar, resolve_source, result_attrs
from vaeprobe._deprecate import renamed
from vaeprobe.probe import Probe, encode
from vaeprobe.random import image_streams
from vaeprobe.validate import temperatures

KINDS = ("mean", "stochastic", "reconstruction_mean", "reconstruction_stochastic")
PRIOR_KINDS = ("mean", "stochastic")
PRIMARY = "primary_mean"  # two-stage: the primary's x_hat, kept in LatentPass.context["x_hat"]


@renamed(n="n_images")
def samples(probe: Probe, n_images: int, *, kind: str = "mean", temperature=1.0, seed: int = 0,
            data=None, batch_size: int = 100, return_primary: bool = False,
            progress: bool = True) -> xr.Dataset:
    """``n_images`` uint8 samples of one kind: prior samples or reconstructions, means or draws.

    Parameters
    ----------
    probe : Probe, run directory, checkpoint file or model folder
        Anything :func:`vaeprobe.load` opens (resolved by :func:`vaeprobe.as_probe`).
    n_images : int
        Number of images (its old name ``n=`` still works, with a DeprecationWarning).
    kind : {"mean", "stochastic", "reconstruction_mean", "reconstruction_stochastic"}
        ``mean``: the decoder mean of prior latents, quantised by round(clamp(x, 0, 1) * 255);
        ``stochastic``: a draw from the decoder likelihood of the same latents; the
        ``reconstruction_*`` kinds do the same for one posterior draw given an input image.
    temperature : float or sequence
        Prior temperature (one, or one per latent layer); prior kinds only.
    seed : int
        Image i's latents come from the stream (seed, i), its pixel noise from (seed + 1, i):
        the batch size does not matter, and ``mean`` and ``stochastic`` share latents.
    data : str, Dataset or uint8 tensor, optional
        Input images of the reconstruction kinds (a seeded subset of ``n_images``, cycled if
        fewer).
    batch_size : int
        Images per model pass (memory only; results do not depend on it). Under torchrun each
        rank draws a contiguous block of the images; every rank returns all ``n_images``.
    return_primary : bool
        Two-stage models only: also return ``primary_mean``, the primary's mean decoding
        x_hat = mu(z) of the same latents (the image the secondary refines), quantised like
        ``mean``.

    Returns
    -------
    xarray.Dataset
        ``images`` (image, channel, y, x) uint8; reconstruction kinds add the coordinate
        ``source_index`` (image): the input's index in ``data``; ``return_primary`` adds
        ``primary_mean`` (image, channel, y, x) uint8. Attrs give the kind, temperature, seed
        and checkpoint.

    Examples
    --------
    >>> import vaeprobe as vp
    >>> ds = vp.samples("runs/demo", 64, kind="mean", temperature=0.8)  # doctest: +SKIP
    >>> ds["images"].dtype  # doctest: +SKIP
    dtype('uint8')
    """
    probe = resolve_source(probe)  # a Probe, a run directory, a checkpoint or a model folder
    _check_request(kind, n_images, data)
    temperatures(temperature)  # finite and > 0, before any work
    require(probe, "vp.samples", [kind])
    # n_images above the dataset's size is no mistake here: row i reconstructs image i % size
    images = None if data is None else evaluation_of(probe, data, n_images, seed, cycle=True)
    return compute_samples(probe if images is None else images.probe, n_images, kind=kind,
                           temperature=temperature, seed=seed, images=images,
                           batch_size=batch_size, return_primary=return_primary,
                           progress=progress)


def compute_samples(probe: Probe, n_images: int, *, kind: str = "mean", temperature=1.0,
                    seed: int = 0, images: Evaluation | None = None, batch_size: int = 100,
                    return_primary: bool = False, progress: bool = True) -> xr.Dataset:
    """The core of :func:`samples` on an already resolved model (and input images).

    Parameters
    ----------
    probe : Probe
        A resolved Probe (for the reconstruction kinds, the one fitted to the images:
        ``images.probe``).
    n_images, kind, temperature, seed, batch_size, return_primary, progress
        As in :func:`samples`.
    images : vaeprobe._analysis.Evaluation, optional
        The reconstruction kinds' inputs: the dataset and the seeded subset (row i
        reconstructs ``images.indices[i % len(indices)]``); None for the prior kinds.

    Returns
    -------
    xarray.Dataset
        What :func:`samples` returns for the same request (the same Dataset).
    """
    _check_request(kind, n_images, images)
    temperatures(temperature)
    require(probe, "vp.samples", [kind])
    dataset, indices = (None, None) if images is None else (images.dataset, images.indices)
    parts = [torch.empty(0, dtype=torch.uint8)]
    primary = [torch.empty(0, dtype=torch.uint8)]
    bar = progress_bar(len(distributed.shard(torch.arange(n_images), probe.device)),
                       f"samples ({kind})", progress, unit="img")
    for rows, drawn, _ in sample_batches(probe, [kind], n_images, batch_size, temperature, seed,
                                         dataset, indices, return_primary=return_primary,
                                         shard=True):
        parts.append(drawn[kind].cpu())
        if return_primary:
            primary.append(drawn[PRIMARY].cpu())
        bar.update(len(rows))
    bar.close()
    drawn = distributed.cat(torch.cat(parts[1:]) if len(parts) > 1 else parts[0])
    parameters = dict(n_images=n_images, kind=kind, temperature=temperature, seed=seed,
                      batch_size=batch_size, return_primary=return_primary)
    ds = _samples_dataset(probe, drawn.numpy(), kind, temperature, seed, dataset, indices,
                          parameters)
    if return_primary:
        primary = distributed.cat(torch.cat(primary[1:]) if len(primary) > 1 else primary[0])
        ds[PRIMARY] = (("image", "channel", "y", "x"), primary.numpy(),
                       {"units": "uint8 pixel values",
                        "long_name": "the primary's mean decoding x_hat of the same latents"})
    return ds


def _check_request(kind: str, n_images, data) -> None:
    """Refuse unknown kinds, reconstructions without input images, inputs without
    reconstructions, and a bad ``n_images``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if kind not in PRIOR_KINDS and data is None:
        raise ValueError(f"kind {kind!r} reconstructs input images: pass data= "
                         f"(e.g. 'patches32:test')")
    if kind in PRIOR_KINDS and data is not None:
        raise ValueError(f"data= is used only by reconstruction kinds, not by {kind!r}; "
                         f"drop it or ask for kind='reconstruction_{kind}'")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")


def require(probe: Probe, analysis: str, kinds: Sequence[str]) -> None:
    """Refuse kinds the probe cannot give: prior kinds need a generative prior, stochastic kinds
    a decoder likelihood (:meth:`Probe.require` raises, naming the model and the reason)."""
    prior = any(k in PRIOR_KINDS for k in kinds)
    likelihood = any(k.endswith("stochastic") for k in kinds)
    if prior or likelihood:
        probe.require(analysis, likelihood=likelihood, prior=prior)


def sample_batches(probe: Probe, kinds: Sequence[str], n: int, batch_size: int, temperature,
                   seed: int, dataset=None, indices: torch.Tensor | None = None,
                   posterior: str = "sample", *, return_primary: bool = False,
                   shard: bool = False
                   ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor | None]]:
    """Yield (rows, kind -> uint8 images, input images or None), all on the probe's device,
    for ``n`` images per kind, ``batch_size`` at a time.

    Prior kinds share their latents; reconstruction kinds take the images of ``dataset`` at
    ``indices`` (cycled if ``n`` exceeds them: row i reconstructs ``indices[i % len]``),
    decoding a posterior sample or, with ``posterior="mean"``, the posterior mean.
    ``return_primary`` (one kind only) adds ``primary_mean``: a two-stage model's x_hat.
    ``shard``: under torchrun only this rank's contiguous block of the ``n`` rows
    (:func:`vaeprobe.distributed.shard`; each row's randomness is keyed by the row).
    """
    if return_primary and len(kinds) != 1:
        raise ValueError(f"return_primary needs exactly one kind, got {list(kinds)}")
    temperatures(temperature)  # each finite and > 0: NaN would draw black images
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    positions = torch.arange(n)
    if shard:
        positions = distributed.shard(positions, probe.device)
    for start in range(0, len(positions), batch_size):
        rows = positions[start:start + batch_size].tolist()
        inputs = None
        if any(k not in PRIOR_KINDS for k in kinds):
            inputs = vdata.gather(dataset, indices[torch.tensor(rows) % len(indices)])
            inputs = inputs.to(probe.device)
        yield rows, _draw(probe, kinds, rows, temperature, seed, inputs, posterior,
                          return_primary), inputs


@torch.no_grad()
def _draw(probe: Probe, kinds: Sequence[str], rows: list[int], temperature, seed: int,
          inputs: torch.Tensor | None, posterior: str = "sample",
          return_primary: bool = False) -> dict[str, torch.Tensor]:
    """uint8 images (B, C, H, W) of each kind for the sample positions ``rows`` (and the
    primary's x_hat of the latents as ``primary_mean`` when asked)."""
    out = {}
    prior = [k for k in kinds if k in PRIOR_KINDS]
    if prior:
        latents = probe.sample_prior(len(rows), temperature=temperature,
                                     generator=image_streams(seed, rows, probe.device))
        out.update(_pixels(probe.decode(latents), prior, rows, seed, probe.device))
    reconstructions = [k for k in kinds if k not in PRIOR_KINDS]
    if reconstructions:
        latents = encode(probe, inputs, 1, image_streams(seed, rows, probe.device), posterior)
        out.update(_pixels(probe.decode(latents), reconstructions, rows, seed, probe.device))
    if return_primary:
        out[PRIMARY] = vdata.to_uint8(_primary_mean(probe, latents))
    return out


def _primary_mean(probe: Probe, latents) -> torch.Tensor:
    """A two-stage model's x_hat = mu(z) of these latents (LatentPass.context["x_hat"])."""
    x_hat = latents.context.get("x_hat")
    if x_hat is None:
        raise ValueError(f"return_primary=True needs a two-stage model, whose latents carry the "
                         f"primary's mean decoding in LatentPass.context['x_hat']; "
                         f"{type(probe).__name__} ({probe.source.get('checkpoint', 'model')}) "
                         f"has none: drop return_primary")
    return x_hat


def _pixels(likelihood, kinds, rows, seed, device) -> dict[str, torch.Tensor]:
    """The quantised mean and/or a draw (pixel noise from the streams (seed + 1, row))."""
    out = {}
    for kind in kinds:
        if kind.endswith("mean"):
            out[kind] = vdata.to_uint8(likelihood.mean, clip=True)
        else:
            out[kind] = likelihood.sample(image_streams(seed + 1, rows, device))
    return out


def _samples_dataset(probe, images: np.ndarray, kind, temperature, seed, dataset, indices,
                     parameters) -> xr.Dataset:
    _, channels, height, width = images.shape
    ds = xr.Dataset(
        {"images": (("image", "channel", "y", "x"), images, {"units": "uint8 pixel values"})},
        coords={"image": np.arange(len(images)), "channel": np.arange(channels),
                "y": np.arange(height), "x": np.arange(width)},
    )
    if dataset is not None:
        sources = indices[torch.arange(len(images)) % len(indices)]
        ds = ds.assign_coords(source_index=("image", sources.numpy()))
    prior = kind in PRIOR_KINDS
    ds.attrs = result_attrs(
        "samples", parameters, probe, dataset, len(images) if prior else len(indices), seed,
        kind=kind, temperature=json.dumps(temperature),
        latents="prior" if prior else "posterior draw given the input image",
        pixels=("decoder mean, round(clamp(x, 0, 1) * 255)" if kind.endswith("mean")
                else "draw from the decoder likelihood"),
        randomness="per image: latents from generator (seed, image), pixel noise from "
                   "(seed + 1, image)")
    return ds
