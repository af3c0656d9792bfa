"""Section 4, latent statistics: per-channel mean and standard deviation of posterior means and
of posterior samples, and the scale (1 / std) and shift (mean) a latent-diffusion model should
apply, beside the checkpoint's own ``scaling_factor`` / ``shift_factor`` where it has them."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vaeprobe._analysis import batches
from vaeprobe.audit._common import evaluation_images, layer_coords, section_attrs
from vaeprobe.probe import Probe

PROTOCOL = ("one posterior pass per image (per-image generators keyed by (seed, index)); "
            "statistics over images and latent positions (and channels for the per-layer ones), "
            "float64, population standard deviation; recommended_scaling_factor = 1 / std and "
            "recommended_shift_factor = mean of posterior samples per layer, so that "
            "(z - shift) * scale has mean 0 and variance 1 (the diffusers convention); "
            "recommended_scaling_factor_unshifted = 1 / sqrt(E z^2), for models that apply no "
            "shift")


class _ChannelMoments:
    """Count, mean and sum of squared deviations per channel, merged batch by batch (Chan et
    al.'s parallel update), float64: stable when the mean is large beside the spread."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def update(self, values: torch.Tensor) -> None:
        """Fold in ``values`` (B, C, h, w): every image and position is one observation."""
        flat = values.detach().double().transpose(0, 1).flatten(1).cpu()  # (C, B*h*w)
        n = flat.shape[1]
        batch_mean = flat.mean(1)
        batch_m2 = ((flat - batch_mean[:, None]) ** 2).sum(1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + batch_m2 + delta ** 2 * self.count * n / total
        self.count = total

    def compute(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, population std, root mean square) per channel."""
        variance = (self.m2 / self.count).clamp(min=0)
        return (self.mean.numpy(), variance.sqrt().numpy(),
                (variance + self.mean ** 2).sqrt().numpy())

    def pooled(self) -> tuple[float, float, float]:
        """(mean, population std, rms) over all channels together (equal counts per channel)."""
        mean = float(self.mean.mean())
        variance = float((self.m2.sum() / self.count + ((self.mean - mean) ** 2).sum())
                         / len(self.mean))
        return mean, max(variance, 0.0) ** 0.5, (max(variance, 0.0) + mean ** 2) ** 0.5


def _factor(value) -> float:
    """A checkpoint's scaling/shift factor as a float (NaN when absent or 'none')."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def latent_statistics(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                      batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """Section 4: per-channel statistics of posterior means and samples; scale and shift.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
    seed : int
    batch_size, progress

    Returns
    -------
    xarray.Dataset
        Dims ``layer`` and ``channel`` (NaN beyond a layer's channels): ``posterior_mean_mean``,
        ``posterior_mean_std``, ``sample_mean``, ``sample_std``, ``channel_scale`` (1 / sample
        std); per layer ``layer_sample_mean``, ``layer_sample_std``,
        ``recommended_scaling_factor``, ``recommended_shift_factor``,
        ``recommended_scaling_factor_unshifted``, ``posterior_std_mean`` (mean posterior
        standard deviation); scalars ``checkpoint_scaling_factor`` and
        ``checkpoint_shift_factor`` (NaN where the checkpoint has none).

    Examples
    --------
    >>> ds = latent_statistics(vp.load("sd-vae/", format="diffusers"), images)  # doctest: +SKIP
    >>> float(ds["recommended_scaling_factor"][0]), float(ds["checkpoint_scaling_factor"])
    ... # doctest: +SKIP
    """
    dataset, indices, _ = evaluation_images(probe, data, n_images, seed)
    n_layers = len(probe.layers)
    means = [_ChannelMoments() for _ in range(n_layers)]
    samples = [_ChannelMoments() for _ in range(n_layers)]
    posterior_std = [_ChannelMoments() for _ in range(n_layers)]
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 "latent statistics"):
        latents = probe.encode(x, 1, generators)
        for index, draw in enumerate(latents.draws):
            samples[index].update(draw.z)
            if draw.q_mean is not None:
                means[index].update(draw.q_mean)
                posterior_std[index].update(draw.q_logstd.exp())
    ds = _dataset(probe, means, samples, posterior_std)
    ds["checkpoint_scaling_factor"] = ((), _factor(probe.source.get("scaling_factor")),
                                       {"units": "1", "long_name": "the checkpoint's own"})
    ds["checkpoint_shift_factor"] = ((), _factor(probe.source.get("shift_factor")),
                                     {"units": "latent units", "long_name": "the checkpoint's own"})
    ds.attrs = section_attrs("latents", dict(n_images=n_images, seed=seed,
                                             batch_size=batch_size),
                             probe, dataset, len(indices), seed, PROTOCOL,
                             checkpoint_has_scaling_factor="scaling_factor" in probe.source)
    return ds


def _dataset(probe, means, samples, posterior_std) -> xr.Dataset:
    width = max(info.channels for info in probe.layers)
    n_layers = len(probe.layers)

    def table(moments, which):
        out = np.full((n_layers, width), np.nan)
        for index, moment in enumerate(moments):
            if moment.mean is not None:
                values = moment.compute()[which]
                out[index, :len(values)] = values
        return out

    def pooled(moments, which):
        return np.array([m.pooled()[which] if m.mean is not None else np.nan for m in moments])

    sample_std = table(samples, 1)
    layer_std, layer_rms = pooled(samples, 1), pooled(samples, 2)
    latent = {"units": "latent units"}
    per_unit = {"units": "1 / latent units"}
    pair = ("layer", "channel")
    with np.errstate(divide="ignore"):
        ds = xr.Dataset(
            {
                "posterior_mean_mean": (pair, table(means, 0), latent),
                "posterior_mean_std": (pair, table(means, 1), latent),
                "sample_mean": (pair, table(samples, 0), latent),
                "sample_std": (pair, sample_std, latent),
                "channel_scale": (pair, 1.0 / sample_std, per_unit),
                "layer_sample_mean": ("layer", pooled(samples, 0), latent),
                "layer_sample_std": ("layer", layer_std, latent),
                "recommended_scaling_factor": ("layer", 1.0 / layer_std, per_unit),
                "recommended_shift_factor": ("layer", pooled(samples, 0), latent),
                "recommended_scaling_factor_unshifted": ("layer", 1.0 / layer_rms, per_unit),
                "posterior_std_mean": ("layer", pooled(posterior_std, 0), latent),
            },
            coords={**layer_coords(probe), "channel": np.arange(width)},
        )
    return ds
