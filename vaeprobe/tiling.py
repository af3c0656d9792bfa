"""What tiled encoding and decoding change: tiled against untiled reconstructions.

A convolutional probe that can tile (``probe.with_tiling(tile_size)``: diffusers'
``AutoencoderKL`` opened with ``tile_size=``, see :mod:`vaeprobe.adapters._tiling`) encodes and
decodes large images in overlapping tiles so that memory follows the tile. Tiles have their
own GroupNorm statistics and attention context, so the result differs from one pass over the
whole image. :func:`tiling_error` measures that difference on images where both passes fit.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vaeprobe._analysis import Evaluation, batches, resolve, result_attrs
from vaeprobe.probe import Probe, UndefinedAnalysisError, check_posterior, encode


def tiling_error(probe, data, *, tile_size: int | None = None, n_images: int | None = 4,
                 seed: int = 0, posterior: str = "mean", batch_size: int = 1,
                 progress: bool = False) -> xr.Dataset:
    """Tiled against untiled reconstructions of the same images, per image.

    Parameters
    ----------
    probe : Probe or model path
        A probe that tiles (``with_tiling``), e.g. ``vp.load("sd-vae/", tile_size=512)``.
    data : str, Dataset or uint8 tensor
        Images small enough for the untiled pass, larger than the tile (else nothing is tiled).
    tile_size : int, optional
        Tile side in pixels; default the probe's own ``tile_size``.
    n_images : int, optional
        A seeded subset (None: all).
    seed : int
    posterior : {"mean", "sample"}
        Reconstruct from the posterior mean (diffusers' default) or a seeded sample (the same
        noise in both passes).
    batch_size : int
        Images per pass (1 keeps the untiled pass's memory at one image).
    progress : bool

    Returns
    -------
    xarray.Dataset
        Dim ``image``: ``max_abs_difference`` (largest absolute difference of the two
        reconstructions, on the [0, 1] scale), ``psnr`` (dB, peak 1, of the tiled against the
        untiled reconstruction; inf when identical), ``latent_max_abs_difference`` (of the
        posterior means, latent units); scalars ``max_abs_difference_max``, ``psnr_min`` and
        ``psnr_mean`` (of the per-image MSE pooled over images); attrs ``tile_size``,
        ``tile_overlap``, ``n_tiles`` (per image) and the probe's provenance.

    Examples
    --------
    >>> probe = vp.load("sd-vae/", tile_size=512)  # doctest: +SKIP
    >>> err = vp.tiling_error(probe, "folder:kodak,resize=none,orient=landscape")  # doctest: +SKIP
    >>> float(err.psnr_min), float(err.max_abs_difference_max)  # doctest: +SKIP
    """
    check_posterior(posterior)
    evaluation = resolve(probe, data, n_images=n_images, seed=seed, check=_check_tiles)
    return compute_tiling_error(evaluation, tile_size=tile_size, posterior=posterior,
                                batch_size=batch_size, progress=progress)


def _check_tiles(probe: Probe) -> None:
    if not hasattr(probe, "with_tiling"):
        raise UndefinedAnalysisError(
            f"tiling_error is undefined for {probe.name}: {type(probe).__name__} does not tile "
            f"(no with_tiling); open a diffusers AutoencoderKL with tile_size=...")


def compute_tiling_error(evaluation: Evaluation, *, tile_size: int | None = None,
                         posterior: str = "mean", batch_size: int = 1,
                         progress: bool = False) -> xr.Dataset:
    """The core of :func:`tiling_error` on an already resolved model and subset of images.

    Parameters
    ----------
    evaluation : vaeprobe._analysis.Evaluation
        A tiling Probe fitted to the images, the dataset and the seeded subset
        (:func:`vaeprobe._analysis.resolve` makes one from what :func:`tiling_error` takes).
    tile_size, posterior, batch_size, progress
        As in :func:`tiling_error`.

    Returns
    -------
    xarray.Dataset
        What :func:`tiling_error` returns for the same request (the same Dataset).
    """
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    check_posterior(posterior)
    _check_tiles(probe)
    tile_size = int(tile_size or getattr(probe, "tile_size", 0))
    if tile_size <= 0:
        raise ValueError("tile_size is needed: the probe does not tile (tile_size=0); pass "
                         "tile_size=, e.g. 512 for Stable Diffusion's VAE")
    tiled, whole = probe.with_tiling(tile_size), probe.with_tiling(0)
    rows = [_compare(tiled, whole, x, generators, posterior)
            for x, generators in batches(dataset, indices, batch_size, evaluation.seed,
                                         probe.device, progress, "tiling error")]
    values = {key: torch.cat([row[key] for row in rows]).numpy() for key in rows[0]}
    return _dataset(values, indices, tiled, probe, dataset, evaluation.n_images,
                    evaluation.seed, posterior)


def _compare(tiled: Probe, whole: Probe, x, generators, posterior: str) -> dict:
    state = generators.get_state()
    latents = [encode(tiled, x, 1, generators, posterior)]
    generators.set_state(state)  # the same noise in both passes
    latents.append(encode(whole, x, 1, generators, posterior))
    means = [p.decode(lat).mean.double() for p, lat in zip((tiled, whole), latents, strict=True)]
    difference = (means[0] - means[1]).flatten(1)
    latent = (latents[0].draws[0].q_mean - latents[1].draws[0].q_mean).flatten(1)
    return dict(max_abs=difference.abs().max(1).values.cpu(),
                mse=(difference ** 2).mean(1).cpu(),
                latent_max_abs=latent.abs().max(1).values.double().cpu())


def _psnr(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10 * np.log10(np.maximum(mse, 1e-300)), np.inf)


def _dataset(values: dict, indices, tiled: Probe, probe: Probe, dataset, n_images, seed: int,
             posterior: str) -> xr.Dataset:
    from vaeprobe.adapters._tiling import OVERLAP, count_tiles

    height, width = tiled.padded_size if hasattr(tiled, "padded_size") else tiled.image_shape[1:]
    db = {"units": "dB (peak 1, tiled against untiled reconstruction)"}
    ds = xr.Dataset(
        {"max_abs_difference": ("image", values["max_abs"], {"units": "[0, 1] pixel scale"}),
         "psnr": ("image", _psnr(values["mse"]), db),
         "latent_max_abs_difference": ("image", values["latent_max_abs"],
                                       {"units": "latent units (posterior mean)"}),
         "max_abs_difference_max": ((), float(values["max_abs"].max()),
                                    {"units": "[0, 1] pixel scale"}),
         "psnr_min": ((), float(_psnr(values["mse"]).min()), db),
         "psnr_mean": ((), float(_psnr(np.array([values["mse"].mean()]))[0]), db)},
        coords={"image": indices.numpy()})
    ds.attrs = result_attrs(
        "tiling_error", dict(tile_size=tiled.tile_size, n_images=n_images, seed=seed,
                             posterior=posterior), probe, dataset, len(indices), seed,
        n_tiles=count_tiles(height, width, tiled.tile_size),
        image_height=int(tiled.image_shape[1]), image_width=int(tiled.image_shape[2]))
    ds.attrs.update(tile_size=int(tiled.tile_size), tile_overlap=OVERLAP)
    return ds


__all__ = ["compute_tiling_error", "tiling_error"]
