"""Section 3, reconstructions from the posterior mean and from a posterior sample, measured under
a stated protocol: distortion, MSE, PSNR, SSIM (scikit-image), LPIPS and reconstruction FID."""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import batches, image_dims, squared_error
from vaeprobe.audit._common import (
    evaluation_images,
    feature_network,
    lpips_network,
    section_attrs,
)
from vaeprobe.probe import Probe, encode

KINDS = ("posterior_mean", "posterior_sample")
DATA_RANGE = 255  # PSNR and SSIM compare uint8 images
SSIM_WINDOW = 7  # scikit-image's default side of the uniform window


def _psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image PSNR in dB: 10 log10(data_range^2 / MSE), MSE over every pixel and channel
    (inf for identical images)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).numpy()
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range ** 2 / mse)


def ssim_window(height: int, width: int) -> int:
    """scikit-image's 7-pixel window, shrunk to the largest odd side that fits the image."""
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 else side - 1


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) by scikit-image's ``structural_similarity``, channels
    averaged, uniform window (:func:`ssim_window`), sample covariance: its defaults."""
    from skimage.metrics import structural_similarity

    window = ssim_window(*x.shape[-2:])
    a, b = x.double().cpu().numpy(), y.double().cpu().numpy()
    return np.array([structural_similarity(a[i], b[i], data_range=data_range, channel_axis=0,
                                           win_size=window) for i in range(len(a))])


def protocol_text(height: int, width: int) -> str:
    return (f"images at their native {height}x{width}, no crop or resize; the reconstruction is "
            f"the decoder mean of z = the posterior mean (posterior_mean) or of one posterior "
            f"draw (posterior_sample, per-image generators keyed by (seed, index)); distortion "
            f"(sum) and mse (mean) of squared error on the [0, 1] scale use the float decoder "
            f"mean; PSNR, SSIM, LPIPS and rFID use it quantised by round(clamp(x, 0, 1) * 255), "
            f"as a saved image; PSNR = 10 log10(255^2 / MSE) per image, averaged over images "
            f"(psnr_dataset: from the mean MSE); SSIM by skimage.metrics.structural_similarity "
            f"(data_range=255, channel_axis=0, win_size={ssim_window(height, width)}, uniform "
            f"window, channels averaged); LPIPS from the lpips package on inputs in [-1, 1], "
            f"sides under 32 px bilinearly upsampled to 32; rFID: FID between the reconstructions "
            f"and the same input images")


def reconstructions(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                    feature_extractor: str = "inception-v3-compat", weights=None,
                    lpips_trunk: str = "alexnet", lpips_weights=None, batch_size: int = 64,
                    n_preview: int = 8, progress: bool = True) -> xr.Dataset:
    """Section 3: reconstruction quality from the posterior mean and a posterior sample.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
        A seeded random subset of this many images (the rFID reference set too).
    seed : int
    feature_extractor : str
        The rFID network (a registered extractor; ``"random-convnet-TEST-ONLY"`` is a stand-in,
        flagged ``stand_in_network=1``).
    weights, lpips_weights : path, optional
        Weights files; by default found as :mod:`vaeprobe.weights` says. Without them the
        metric is NaN and the named-file error is its skip reason (``rfid_skipped``,
        ``lpips_skipped``).
    lpips_trunk : {"alexnet", "random-TEST-ONLY"}
    batch_size, n_preview, progress

    Returns
    -------
    xarray.Dataset
        Dims ``kind`` (posterior_mean, posterior_sample) and ``image``: per image
        ``distortion``, ``mse``, ``psnr``, ``ssim``, ``lpips``; per kind ``distortion_mean``,
        ``distortion_se``, ``mse_mean``, ``psnr_mean``, ``psnr_dataset``, ``ssim_mean``,
        ``lpips_mean``, ``rfid``; ``preview_input`` and ``preview`` (uint8). The protocol
        (crop, resolution, quantisation, SSIM settings, networks and weights hashes) in attrs.

    Examples
    --------
    >>> ds = reconstructions(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds[["psnr_mean", "ssim_mean"]].to_dataframe()  # doctest: +SKIP
    """
    dataset, indices, _ = evaluation_images(probe, data, n_images, seed)
    extractor, rfid_skipped = feature_network(feature_extractor, weights, probe.device)
    lpips, lpips_skipped = lpips_network(lpips_trunk, lpips_weights, probe.device)
    if len(indices) < 2 and extractor is not None:
        extractor, rfid_skipped = None, "FID needs at least 2 images"
    rows = {kind: {"distortion": [], "psnr": [], "ssim": [], "lpips": [], "features": []}
            for kind in KINDS}
    inputs, previews, reference = [], {kind: [] for kind in KINDS}, []
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 "reconstructions"):
        x_cpu = x.cpu()
        if extractor is not None:
            reference.append(extractor(x))
        for kind in KINDS:
            latents = encode(probe, x, 1, generators, kind.removeprefix("posterior_"))
            mean = probe.decode(latents).mean
            quantised = vdata.to_uint8(mean).cpu()
            row = rows[kind]
            row["distortion"].append(squared_error(x, mean).cpu())
            row["psnr"].append(_psnr(x_cpu, quantised))
            row["ssim"].append(_ssim(x_cpu, quantised))
            if lpips is not None:
                row["lpips"].append(lpips(quantised.to(lpips.device), x.to(lpips.device)))
            if extractor is not None:
                row["features"].append(extractor(quantised.to(probe.device)))
            previews[kind].append(quantised[:n_preview])
        inputs.append(x_cpu[:n_preview])
    ds = _dataset(probe, rows, indices, reference, inputs, previews, n_preview)
    stand_in = bool((extractor is not None and extractor.stand_in)
                    or (lpips is not None and lpips.stand_in))
    parameters = dict(n_images=n_images, seed=seed, feature_extractor=feature_extractor,
                      lpips_trunk=lpips_trunk, batch_size=batch_size, n_preview=n_preview)
    height, width = probe.image_shape[1:]
    ds.attrs = section_attrs(
        "reconstructions", parameters, probe, dataset, len(indices), seed,
        protocol_text(height, width), resolution=f"{height}x{width}", crop="none",
        psnr_data_range=DATA_RANGE, ssim_data_range=DATA_RANGE,
        ssim_win_size=ssim_window(height, width), ssim_library=_skimage_version(),
        feature_extractor=extractor.name if extractor is not None else feature_extractor,
        feature_extractor_weights_sha256=extractor.weights_sha256 if extractor else "none",
        rfid_reference="the same input images", rfid_skipped=rfid_skipped,
        lpips_trunk=lpips_trunk, lpips_weights_sha256=lpips.weights_sha256 if lpips else "none",
        lpips_input_range="[-1, 1]", lpips_skipped=lpips_skipped,
        stand_in_network=stand_in,
        warning=("computed with stand-in (randomly initialised) networks: LPIPS and rFID are "
                 "NOT comparable to published figures") if stand_in else "")
    return ds


def _skimage_version() -> str:
    import skimage

    return f"scikit-image {skimage.__version__}"


def _dataset(probe, rows, indices, reference, inputs, previews, n_preview) -> xr.Dataset:
    dims = image_dims(probe)
    n = len(indices)
    per_image = {name: np.stack([np.concatenate([np.asarray(part) for part in rows[kind][name]])
                                 if rows[kind][name] else np.full(n, np.nan) for kind in KINDS])
                 for name in ("distortion", "psnr", "ssim", "lpips")}
    distortion = per_image["distortion"]
    mse = distortion / dims
    rfid = [np.nan] * len(KINDS)
    if reference:
        from vaeprobe.fidelity import fid_from_features

        reference_features = torch.cat(reference)
        rfid = [fid_from_features(torch.cat(rows[kind]["features"]), reference_features)
                for kind in KINDS]
    mean_mse_uint8 = 10 ** (-per_image["psnr"] / 10)  # (MSE / 255^2) per image
    square, one, db = ({"units": "sum of squares on [0, 1]"}, {"units": "1"}, {"units": "dB"})
    pairs = ("kind", "image")
    ds = xr.Dataset(
        {
            "distortion": (pairs, distortion, square),
            "mse": (pairs, mse, {"units": "mean square on [0, 1]"}),
            "psnr": (pairs, per_image["psnr"], db),
            "ssim": (pairs, per_image["ssim"], one),
            "lpips": (pairs, per_image["lpips"], one),
            "distortion_mean": ("kind", distortion.mean(1), square),
            "distortion_se": ("kind", distortion.std(1, ddof=1) / math.sqrt(n)
                              if n > 1 else np.full(len(KINDS), np.nan), square),
            "mse_mean": ("kind", mse.mean(1), {"units": "mean square on [0, 1]"}),
            "psnr_mean": ("kind", per_image["psnr"].mean(1), db),
            "psnr_dataset": ("kind", -10 * np.log10(mean_mse_uint8.mean(1)), db),
            "ssim_mean": ("kind", per_image["ssim"].mean(1), one),
            "lpips_mean": ("kind", per_image["lpips"].mean(1), one),
            "rfid": ("kind", np.asarray(rfid, dtype=np.float64), one),
            "preview_input": (("preview_image", "channel", "y", "x"),
                              torch.cat(inputs)[:n_preview].numpy(),
                              {"units": "uint8 pixel values"}),
            "preview": (("kind", "preview_image", "channel", "y", "x"),
                        np.stack([torch.cat(previews[kind])[:n_preview].numpy()
                                  for kind in KINDS]), {"units": "uint8 pixel values"}),
        },
        coords={"kind": list(KINDS), "image": indices.numpy()},
    )
    return ds
