"""Section 3, reconstructions from the posterior mean and from a posterior sample, measured under
a stated protocol: distortion, MSE, PSNR, SSIM (scikit-image), LPIPS and reconstruction FID."""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import similarity
from vaeprobe._analysis import image_dims, squared_error
from vaeprobe.audit._common import (
    LocalHandle,
    NamedData,
    ProbeFacts,
    feature_network,
    fmt,
    lpips_network,
    section_attrs,
)
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import KINDS, run_shared
from vaeprobe.probe import Probe
from vaeprobe.similarity import MSSSIM_MIN_SIDE, MSSSIM_WINDOW, msssim_skip_reason, ssim_window

DATA_RANGE = 255  # PSNR and SSIM compare uint8 images


def protocol_text(height: int, width: int) -> str:
    return (f"images at their native {height}x{width}, no crop or resize; the reconstruction is "
            f"the decoder mean of z = the posterior mean (posterior_mean) or of one posterior "
            f"draw (posterior_sample, per-image generators keyed by (seed, index)); distortion "
            f"(sum) and mse (mean) of squared error on the [0, 1] scale use the float decoder "
            f"mean; PSNR, SSIM, LPIPS and rFID use it quantised by round(clamp(x, 0, 1) * 255), "
            f"as a saved image; PSNR = 10 log10(255^2 / MSE) per image, averaged over images "
            f"(psnr_dataset: from the mean MSE); SSIM as skimage.metrics.structural_similarity "
            f"computes it (vaeprobe.similarity.ssim, float64; data_range=255, channel_axis=0, "
            f"win_size={ssim_window(height, width)}, uniform window, channels averaged); "
            f"MS-SSIM as pytorch_msssim.ms_ssim computes it (vaeprobe.similarity.ms_ssim, "
            f"float32; data_range=255, "
            f"11-px Gaussian window, sigma 1.5, five scales, published weights) where the "
            f"images have at least {MSSSIM_MIN_SIDE} px a side; LPIPS from the lpips package on "
            f"inputs in [-1, 1], "
            f"sides under 32 px bilinearly upsampled to 32; rFID: FID between the reconstructions "
            f"and the same input images")


SSIM_LIBRARY = "vaeprobe.similarity.ssim (as skimage.metrics.structural_similarity, defaults)"
MSSSIM_LIBRARY = "vaeprobe.similarity.ms_ssim (as pytorch_msssim.ms_ssim, defaults)"


class ReconstructionAccumulator:
    """Per-image metrics of both reconstruction kinds, features for rFID, previews."""

    def __init__(self, probe: Probe, context, *, n_preview: int = 8):
        net = context.networks
        self.feature_extractor = net.get("feature_extractor", "inception-v3-compat")
        self.lpips_trunk = net.get("lpips_trunk", "alexnet")
        e, self.rfid_skipped = feature_network(self.feature_extractor, net.get("weights"),
                                               probe.device)
        lp, self.lpips_skipped = lpips_network(self.lpips_trunk, net.get("lpips_weights"),
                                               probe.device)
        if context.n_images < 2 and e is not None:
            e, self.rfid_skipped = None, "FID needs at least 2 images"
        self.nets = LocalHandle((e, lp))  # the networks stay on this rank
        self.networks = dict(
            extractor_name=e.name if e is not None else self.feature_extractor,
            extractor_sha256=e.weights_sha256 if e is not None else "none",
            lpips_sha256=lp.weights_sha256 if lp is not None else "none",
            stand_in=bool((e is not None and e.stand_in) or (lp is not None and lp.stand_in)),
            has_extractor=e is not None)
        self.msssim_skipped = msssim_skip_reason(*probe.image_shape[1:])
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images, self.n_preview = context.seed, context.n_images, n_preview
        self.rows = {kind: {name: [] for name in ROWS} for kind in KINDS}
        self.reference, self.inputs = [], []
        self.previews = {kind: [] for kind in KINDS}
        self.indices = []

    def update(self, batch) -> None:
        """Every metric batched where the images are; only per-image values come back."""
        x = batch.x
        extractor, lpips = self.nets.value
        self.indices.append(batch.indices)
        if extractor is not None:
            self.reference.append(extractor(x).cpu())
        for kind in KINDS:
            mean = batch.decoded[kind].mean
            quantised = vdata.to_uint8(mean).to(x.device)
            row = self.rows[kind]
            row["distortion"].append(squared_error(x, mean).cpu())
            row["psnr"].append(similarity.psnr(x, quantised).cpu())
            row["ssim"].append(similarity.ssim(x, quantised).cpu())
            if not self.msssim_skipped:
                row["msssim"].append(similarity.ms_ssim(x, quantised).cpu())
            if lpips is not None:
                row["lpips"].append(lpips(quantised.to(lpips.device),
                                          x.to(lpips.device)).cpu())
            if extractor is not None:
                row["features"].append(extractor(quantised).cpu())
            if sum(len(p) for p in self.previews[kind]) < self.n_preview:
                self.previews[kind].append(quantised[:self.n_preview].cpu())
        if sum(len(p) for p in self.inputs) < self.n_preview:
            self.inputs.append(x[:self.n_preview].cpu())

    def merge(self, other: ReconstructionAccumulator) -> ReconstructionAccumulator:
        for kind in KINDS:
            for name in ROWS:
                self.rows[kind][name] += other.rows[kind][name]
            self.previews[kind] += other.previews[kind]
        self.reference += other.reference
        self.inputs += other.inputs
        self.indices += other.indices
        return self

    def compute(self) -> xr.Dataset:
        probe, net = self.probe, self.networks
        indices = torch.cat(self.indices)
        ds = _dataset(probe, self.rows, indices, self.reference, self.inputs, self.previews,
                      self.n_preview)
        parameters = dict(n_images=self.n_images, seed=self.seed,
                          feature_extractor=self.feature_extractor,
                          lpips_trunk=self.lpips_trunk, n_preview=self.n_preview)
        height, width = probe.image_shape[1:]
        stand_in = net["stand_in"]
        ds.attrs = section_attrs(
            "reconstructions", parameters, probe, self.data, len(indices), self.seed,
            protocol_text(height, width), resolution=f"{height}x{width}", crop="none",
            psnr_data_range=DATA_RANGE, ssim_data_range=DATA_RANGE,
            ssim_win_size=ssim_window(height, width), ssim_library=SSIM_LIBRARY,
            msssim_library=MSSSIM_LIBRARY, msssim_win_size=MSSSIM_WINDOW,
            msssim_skipped=self.msssim_skipped,
            feature_extractor=net["extractor_name"],
            feature_extractor_weights_sha256=net["extractor_sha256"],
            rfid_reference="the same input images", rfid_skipped=self.rfid_skipped,
            lpips_trunk=self.lpips_trunk, lpips_weights_sha256=net["lpips_sha256"],
            lpips_input_range="[-1, 1]", lpips_skipped=self.lpips_skipped,
            stand_in_network=stand_in,
            warning=("computed with stand-in (randomly initialised) networks: LPIPS and rFID "
                     "are NOT comparable to published figures") if stand_in else "")
        return ds


ROWS = ("distortion", "psnr", "ssim", "msssim", "lpips", "features")


def reconstructions(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                    feature_extractor: str = "inception-v3-compat", weights=None,
                    lpips_trunk: str = "alexnet", lpips_weights=None, batch_size: int = 64,
                    n_preview: int = 8, progress: bool = True) -> xr.Dataset:
    """Section "reconstructions": quality from the posterior mean and a posterior sample.

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
        ``distortion``, ``mse``, ``psnr``, ``ssim``, ``msssim`` (NaN, with
        ``msssim_skipped`` saying why, for images under 161 px a side), ``lpips``; per kind
        ``distortion_mean``, ``distortion_se``, ``mse_mean``, ``psnr_mean``,
        ``psnr_dataset``, ``ssim_mean``, ``msssim_mean``, ``lpips_mean``, ``rfid``;
        ``preview_input`` and ``preview`` (uint8). The protocol (crop, resolution,
        quantisation, SSIM settings, networks and weights hashes) in attrs.

    Examples
    --------
    >>> ds = reconstructions(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds[["psnr_mean", "ssim_mean"]].to_dataframe()  # doctest: +SKIP
    """
    networks = dict(feature_extractor=feature_extractor, weights=weights,
                    lpips_trunk=lpips_trunk, lpips_weights=lpips_weights)
    return run_shared("reconstructions", probe, data, n_images=n_images, seed=seed,
                      batch_size=batch_size, progress=progress, networks=networks,
                      n_preview=n_preview)


def _dataset(probe, rows, indices, reference, inputs, previews, n_preview) -> xr.Dataset:
    dims = image_dims(probe)
    n = len(indices)
    per_image = {name: np.stack([np.concatenate([np.asarray(part) for part in rows[kind][name]])
                                 if rows[kind][name] else np.full(n, np.nan) for kind in KINDS])
                 for name in ("distortion", "psnr", "ssim", "msssim", "lpips")}
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
            "msssim": (pairs, per_image["msssim"], one),
            "lpips": (pairs, per_image["lpips"], one),
            "distortion_mean": ("kind", distortion.mean(1), square),
            "distortion_se": ("kind", distortion.std(1, ddof=1) / math.sqrt(n)
                              if n > 1 else np.full(len(KINDS), np.nan), square),
            "mse_mean": ("kind", mse.mean(1), {"units": "mean square on [0, 1]"}),
            "psnr_mean": ("kind", per_image["psnr"].mean(1), db),
            "psnr_dataset": ("kind", -10 * np.log10(mean_mse_uint8.mean(1)), db),
            "ssim_mean": ("kind", per_image["ssim"].mean(1), one),
            "msssim_mean": ("kind", per_image["msssim"].mean(1), one),
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


def summary(ds: xr.Dataset) -> str:
    a, parts = ds.attrs, []
    for kind in ds["kind"].values:
        cell = ds.sel(kind=kind)
        text = (f"{str(kind).replace('posterior_', '')}: PSNR {fmt(cell['psnr_mean'], 4)} dB, "
                f"SSIM {fmt(cell['ssim_mean'])}")
        if "msssim_mean" in cell and np.isfinite(float(cell["msssim_mean"])):
            text += f", MS-SSIM {fmt(cell['msssim_mean'])}"
        parts.append(text + f", LPIPS {fmt(cell['lpips_mean'])}, rFID {fmt(cell['rfid'], 4)}")
    notes = [f"{m} skipped ({a.get(m + '_skipped')[:60]}...)"
             for m in ("lpips", "rfid", "msssim") if a.get(m + "_skipped")]
    if int(a.get("stand_in_network", 0)):
        notes.append("STAND-IN networks")
    return "; ".join(parts) + (f" [{'; '.join(notes)}]" if notes else "")


SECTION = register(Section(
    name="reconstructions", title="Reconstructions", order=30, summary=summary,
    figure="audit_reconstructions", function=reconstructions,
    accumulator=ReconstructionAccumulator,
    networks=("feature_extractor", "weights", "lpips_trunk", "lpips_weights"),
    options=dict(n_preview=8)))
