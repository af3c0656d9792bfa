"""A plain PyTorch VAE as a Probe: ``encode(x) -> (mean, logvar)``, ``decode(z) -> mean``.

The common single-latent VAE written in twenty lines becomes a Probe through
``vp.Probe.from_module(model, image_shape=...)``: one latent layer (a flat latent of D units is
the layer (D, 1, 1)), a diagonal Gaussian posterior, the prior N(0, I). The pixel scale the
model expects is an option (uint8 0 -> low, 255 -> high), and so is its decoder likelihood:

- ``"none"`` (default): the decoder gives a mean image only; IWAE and stochastic samples are
  undefined and refuse;
- ``"gaussian"``: a Gaussian of standard deviation ``sigma`` (on the model's output scale)
  around the mean, discretized over the 256 levels (a proper PMF; ``sigma=1`` on a [0, 1]
  scale is the usual "MSE VAE");
- ``"bernoulli"``: for binary images (levels 0 and 255 only): the mean is the probability of 255.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaeprobe.adapters._common import MeanOnly
from vaeprobe.models.likelihoods import DiscretizedGaussian
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerDraw,
    LayerInfo,
    RepeatedRows,
    SharedEncoderProbe,
    gaussian_kl,
)
from vaeprobe.random import per_row_random

LIKELIHOODS = ("none", "gaussian", "bernoulli")


class Bernoulli:
    """Independent Bernoulli pixels for binary images: level 255 with probability ``mean``."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean.clamp(0, 1)  # (B, C, H, W)

    def sample(self, generator=None) -> torch.Tensor:
        uniform = per_row_random(torch.rand, self.mean.shape, generator, self.mean.device)
        return ((uniform < self.mean).to(torch.uint8) * 255)

    def log_prob(self, x: torch.Tensor, kind: str = "discretized",
                 generator=None) -> torch.Tensor:
        if kind != "discretized":
            raise ValueError("a Bernoulli likelihood is a PMF: kind must be 'discretized'")
        if ((x != 0) & (x != 255)).any():
            raise ValueError("a Bernoulli likelihood needs binary images (levels 0 and 255 "
                             "only); use likelihood='gaussian' for grey levels")
        p = self.mean.double().clamp(1e-12, 1 - 1e-12)
        log_p = torch.where(x == 255, torch.log(p), torch.log1p(-p))
        return log_p.flatten(1).sum(1)


class ModuleProbe(SharedEncoderProbe):
    """Probe over a user's ``nn.Module`` with ``encode(x) -> (mean, logvar)`` and
    ``decode(z) -> mean``; see :meth:`vaeprobe.Probe.from_module`."""

    def __init__(self, model: nn.Module, image_shape, *, pixel_range=(0.0, 1.0),
                 output_range=None, likelihood: str = "none", sigma: float | None = None,
                 device=None, source: dict | None = None):
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        for name in ("encode", "decode"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"{type(model).__name__} has no {name}() method; expected "
                                f"encode(x) -> (mean, logvar) and decode(z) -> mean")
        self.pixel_range = _check_range(pixel_range, "pixel_range")
        self.output_range = _check_range(output_range or pixel_range, "output_range")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if (sigma is not None) != (likelihood == "gaussian") or (sigma is not None and not (
                isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0)):
            raise ValueError("likelihood='gaussian' needs sigma > 0 and finite (the decoder's "
                             "standard deviation on its output scale); other likelihoods take "
                             "no sigma")
        self.likelihood, self.sigma = likelihood, sigma
        self.likelihood_kind = "none" if likelihood == "none" else "discretized"
        super().__init__({"checkpoint": "in-memory model", "format": "module",
                          "module": type(model).__name__, **(source or {})})
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        with torch.no_grad():  # one dry run tells the latent shape
            mean, _ = self._moments(torch.zeros((1, *self.image_shape), dtype=torch.uint8,
                                                device=self.device))
        channels, height, width = mean.shape[1:]
        self.layers = [LayerInfo("z", (height, width), channels)]

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logstd) as (B, c, h, w): a flat (B, D) latent becomes (B, D, 1, 1)."""
        low, high = self.pixel_range
        out = self.model.encode(x.float() * ((high - low) / 255.0) + low)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"{type(self.model).__name__}.encode(x) must return (mean, logvar), "
                            f"got {type(out).__name__}")
        mean, logvar = out
        if mean.shape != logvar.shape or mean.ndim not in (2, 4):
            raise ValueError(f"encode(x) must return mean and logvar of one shape, (B, D) or "
                             f"(B, C, H, W); got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        if mean.ndim == 2:
            mean, logvar = mean[:, :, None, None], logvar[:, :, None, None]
        return mean.float(), 0.5 * logvar.float()

    def _shared(self, x):
        return RepeatedRows(list(self._moments(x)))  # the module's encoder, once per image

    def _draw(self, moments, k: int, noise) -> LatentPass:
        mean, logstd = moments.rows(k)
        z = mean + logstd.exp() * noise[0]
        zeros = torch.zeros_like(mean)
        return LatentPass([LayerDraw(p_mean=zeros, p_logstd=zeros, z=z, q_mean=mean,
                                     q_logstd=logstd, kl=gaussian_kl(mean, logstd, zeros, zeros))],
                          k)

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        z = latents.draws[0].z
        flat = self.layers[0].resolution == (1, 1)
        out = self.model.decode(z.flatten(1) if flat else z).float()
        low, high = self.output_range
        mean = ((out.reshape(z.shape[0], *self.image_shape) - low) / (high - low))
        if self.likelihood == "gaussian":
            log_sigma = torch.tensor(math.log(self.sigma / (high - low)), device=mean.device)
            return DiscretizedGaussian(mean, log_sigma, "fixed")
        if self.likelihood == "bernoulli":
            return Bernoulli(mean)
        return MeanOnly(mean.clamp(0, 1), self.name)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        noise = self.noise(n, 1, generator)[0] * float(temperature)
        zeros = torch.zeros_like(noise)
        return LatentPass([LayerDraw(p_mean=zeros, p_logstd=zeros, z=noise)], 1)


def _check_range(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (low, high), e.g. (0, 1) or (-1, 1); got "
                         f"{value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"{name} must be finite with high > low, got {value!r}")
    return low, high


def from_module(model: nn.Module, image_shape, *, pixel_range=(0.0, 1.0), output_range=None,
                likelihood: str = "none", sigma: float | None = None, device=None
                ) -> ModuleProbe:
    """A Probe over a plain single-latent VAE module.

    Parameters
    ----------
    model : nn.Module
        With ``encode(x) -> (mean, logvar)`` (each (B, D) or (B, C, h, w)) and
        ``decode(z) -> mean`` (reshapeable to (B, *image_shape)).
    image_shape : (C, H, W)
    pixel_range : (low, high)
        The scale the model's input is on: uint8 0 maps to ``low``, 255 to ``high``.
    output_range : (low, high), optional
        The scale of ``decode``'s output; default ``pixel_range``.
    likelihood : {"none", "gaussian", "bernoulli"}
        The decoder likelihood; ``"none"`` makes IWAE and stochastic samples refuse.
    sigma : float, optional
        The Gaussian's standard deviation on the output scale (``likelihood="gaussian"``).
    device : str or torch.device, optional

    Examples
    --------
    >>> import torch, vaeprobe as vp
    >>> class TinyVAE(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.enc, self.dec = torch.nn.Linear(64, 2 * 3), torch.nn.Linear(3, 64)
    ...     def encode(self, x):
    ...         return self.enc(x.flatten(1)).chunk(2, dim=1)
    ...     def decode(self, z):
    ...         return torch.sigmoid(self.dec(z))
    >>> probe = vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), device="cpu")
    >>> probe.layers[0].channels, probe.layers[0].resolution, probe.likelihood_kind
    (3, (1, 1), 'none')
    """
    return ModuleProbe(model, image_shape, pixel_range=pixel_range, output_range=output_range,
                       likelihood=likelihood, sigma=sigma, device=device)
