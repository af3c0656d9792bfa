"""Section 4, latent statistics: per-channel mean and standard deviation of posterior means and
of posterior samples, and the scale (1 / std) and shift (mean) a latent-diffusion model should
apply, beside the checkpoint's own ``scaling_factor`` / ``shift_factor`` where it has them."""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr

from vaeprobe.audit._common import (
    NamedData,
    ProbeFacts,
    fmt,
    layer_coords,
    per_dimension,
    section_attrs,
)
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import run_shared
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
        batch_mean = flat.mean(1)
        self._fold(flat.shape[1], batch_mean, ((flat - batch_mean[:, None]) ** 2).sum(1))

    def merge(self, other: _ChannelMoments) -> _ChannelMoments:
        """Fold in another accumulator's moments (a later rank's images); return self."""
        if other.mean is not None:
            self._fold(other.count, other.mean, other.m2)
        return self

    def _fold(self, n: int, batch_mean: torch.Tensor, batch_m2: torch.Tensor) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = n, batch_mean.clone(), batch_m2.clone()
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


class LatentAccumulator:
    """Channel moments of posterior draws, posterior means and posterior stds per layer; for
    one-layer models of few dims, the same per latent dimension."""

    def __init__(self, probe: Probe, context):
        n_layers = len(probe.layers)
        self.means = [_ChannelMoments() for _ in range(n_layers)]
        self.samples = [_ChannelMoments() for _ in range(n_layers)]
        self.posterior_std = [_ChannelMoments() for _ in range(n_layers)]
        self.per_dim = per_dimension(probe)
        self.dim_means, self.dim_var = _ChannelMoments(), _ChannelMoments()
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images = context.seed, context.n_images

    def update(self, batch) -> None:
        for index, draw in enumerate(batch.sample.draws):
            self.samples[index].update(draw.z)
            if draw.q_mean is not None:
                self.means[index].update(draw.q_mean)
                self.posterior_std[index].update(draw.q_logstd.exp())
        draw = batch.sample.draws[0]
        if self.per_dim and draw.q_mean is not None:  # one observation per image and dim
            self.dim_means.update(draw.q_mean.flatten(1)[:, :, None, None])
            self.dim_var.update((2 * draw.q_logstd).exp().flatten(1)[:, :, None, None])

    def merge(self, other: LatentAccumulator) -> LatentAccumulator:
        for mine, theirs in ((self.means, other.means), (self.samples, other.samples),
                             (self.posterior_std, other.posterior_std)):
            for a, b in zip(mine, theirs, strict=True):
                a.merge(b)
        self.dim_means.merge(other.dim_means)
        self.dim_var.merge(other.dim_var)
        return self

    def compute(self) -> xr.Dataset:
        probe = self.probe
        ds = _dataset(probe, self.means, self.samples, self.posterior_std)
        ds["checkpoint_scaling_factor"] = ((), _factor(probe.source.get("scaling_factor")),
                                           {"units": "1", "long_name": "the checkpoint's own"})
        ds["checkpoint_shift_factor"] = ((), _factor(probe.source.get("shift_factor")),
                                         {"units": "latent units",
                                          "long_name": "the checkpoint's own"})
        ds = ds.assign(_checkpoint_targets(probe.source, ds.sizes["channel"]))
        if self.dim_means.mean is not None:
            ds = ds.assign(_per_dimension(self.dim_means, self.dim_var))
        ds.attrs = section_attrs("latents", dict(n_images=self.n_images, seed=self.seed),
                                 probe, self.data, self.n_images, self.seed, PROTOCOL,
                                 checkpoint_has_scaling_factor="scaling_factor" in probe.source,
                                 per_dimension=int(self.dim_means.mean is not None))
        return ds


def _checkpoint_targets(source: dict, width: int) -> dict:
    """Per channel, the latent mean and std the checkpoint's factors assume (NaN where it
    declares none): ``latents_mean`` (else ``shift_factor``) and ``latents_std / scaling_factor``
    (else ``1 / scaling_factor``), as diffusers maps z to ``(z - mean) * scaling_factor / std``."""
    scale, shift = _factor(source.get("scaling_factor")), _factor(source.get("shift_factor"))
    mean, std = np.full(width, shift), np.full(width, 1.0 / scale if scale else np.nan)
    declared = {}
    for key in ("latents_mean", "latents_std"):
        if source.get(key):
            values = np.asarray(json.loads(source[key]), dtype=np.float64)
            if values.shape != (width,):
                raise ValueError(f"the checkpoint's {key} has {values.size} values for "
                                 f"{width} latent channels; it must have one per channel")
            declared[key] = values
    if "latents_mean" in declared:
        mean = declared["latents_mean"]
    if "latents_std" in declared:
        std = declared["latents_std"] / (scale if np.isfinite(scale) else 1.0)
    latent = {"units": "latent units"}
    return {
        "checkpoint_channel_mean": ("channel", mean, {
            **latent, "long_name": "mean the checkpoint assumes: latents_mean, else "
            "shift_factor"}),
        "checkpoint_channel_std": ("channel", std, {
            **latent, "long_name": "std the checkpoint assumes: latents_std / scaling_factor, "
            "else 1 / scaling_factor"}),
    }


def _per_dimension(means: _ChannelMoments, variances: _ChannelMoments) -> xr.Dataset:
    """Per latent dimension: the posterior's own std (root mean posterior variance), the spread
    of the posterior means over images, and the aggregate posterior's std (both combined:
    Var q(z_d) = Var_x E[z_d | x] + E_x Var[z_d | x])."""
    _, mean_spread, _ = means.compute()
    mean_variance = variances.compute()[0]  # E_x sigma_d^2(x)
    latent = {"units": "latent units"}
    return xr.Dataset(
        {
            "posterior_std_per_dim": ("dim", np.sqrt(mean_variance), {
                **latent, "long_name": "root mean posterior variance over images"}),
            "posterior_mean_std_per_dim": ("dim", mean_spread, {
                **latent, "long_name": "std over images of the posterior mean"}),
            "aggregate_std_per_dim": ("dim", np.sqrt(mean_spread ** 2 + mean_variance), {
                **latent, "long_name": "std of the aggregate posterior q(z)"}),
        },
        coords={"dim": np.arange(len(mean_variance))},
    )


def latent_statistics(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
                      batch_size: int = 64, progress: bool = True) -> xr.Dataset:
    """Section "latents": per-channel statistics of posterior means and samples; scale and
    shift; per latent dimension for one-layer models of at most 512 dims.

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
        ``checkpoint_shift_factor`` (NaN where the checkpoint has none); per channel
        ``checkpoint_channel_mean`` and ``checkpoint_channel_std``, the latent mean and std the
        checkpoint's factors assume (its per-channel ``latents_mean`` / ``latents_std`` where it
        declares them, else ``shift_factor`` and ``1 / scaling_factor``). One-layer models of
        at most 512 dims also get, over ``dim``: ``posterior_std_per_dim``,
        ``posterior_mean_std_per_dim``, ``aggregate_std_per_dim``.

    Examples
    --------
    >>> ds = latent_statistics(vp.load("sd-vae/", format="diffusers"), images)  # doctest: +SKIP
    >>> float(ds["recommended_scaling_factor"][0]), float(ds["checkpoint_scaling_factor"])
    ... # doctest: +SKIP
    """
    return run_shared("latents", probe, data, n_images=n_images, seed=seed,
                      batch_size=batch_size, progress=progress)


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


def summary(ds: xr.Dataset) -> str:
    scale, shift = ds["recommended_scaling_factor"].values, ds["recommended_shift_factor"].values
    own, own_shift = float(ds["checkpoint_scaling_factor"]), float(ds["checkpoint_shift_factor"])
    text = (f"scale 1/std {fmt(scale[0], 5)}, shift {fmt(shift[0], 4)}" if len(scale) == 1
            else f"scale 1/std per layer {fmt(np.nanmin(scale))} .. {fmt(np.nanmax(scale))}")
    if np.isfinite(own):
        text += f" (checkpoint: scaling_factor {fmt(own, 5)}" + (
            f", shift_factor {fmt(own_shift, 5)})" if np.isfinite(own_shift) else ")")
    if "posterior_std_per_dim" in ds:
        std = ds["posterior_std_per_dim"].values
        text += (f"; posterior std per dim {fmt(std.min())} .. {fmt(std.max())} over "
                 f"{len(std)} dims")
    return text


SECTION = register(Section(
    name="latents", title="Latent statistics", order=40, summary=summary,
    figure="audit_latents", function=latent_statistics, accumulator=LatentAccumulator))
