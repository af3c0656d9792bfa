"""Decoder likelihoods on 8-bit images.

A decoder head turns the top-down features into a distribution object with
- ``.mean``: the decoder mean mu(z) in [0, 1], ``(B, C, H, W)``;
- ``.sample(generator)``: uint8 images drawn from the discretized distribution;
- ``.log_prob(x_uint8, kind)``: per-image log-likelihood in nats, either
  ``"discretized"`` (a proper PMF over the 256 levels; the edge bins take the tails) or
  ``"dequantized"`` (a density on y = (x + u) / 256, u ~ U(0, 1), on the [0, 1] scale:
  its bits/dim add log2(256) = 8 to become a bound on the discrete likelihood).

Gaussian heads: ``fixed`` sigma (1.0 is the usual "MSE VAE"), ``learned`` shared sigma
(sigma-VAE), ``optimal`` sigma (sigma^2 = batch mean squared error, the analytic optimum; a
running estimate is kept for evaluation so results do not depend on the batch), ``per_pixel``
sigma. ``dmol``: a discretized mixture of logistics (PixelCNN++ / VDVAE) on the [-1, 1] scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaeprobe.models.gaussian_bins import (  # noqa: F401 (re-exported)
    CENTRAL,
    log_bin_probability,
    log_bin_series,
    log_bins,
    log_normal_interval,
    series_log_prob,
)
from vaeprobe.random import per_row_random
from vaeprobe.registry import Registry


@dataclass(frozen=True)
class HeadKind:
    """What a likelihood head needs from its kind.

    ``outputs(channels, n_mixtures)``: the 1x1 conv's output channels; ``sigma``: where the
    Gaussian sigma comes from (``"fixed"`` buffer, ``"parameter"`` learned, ``"running"``
    analytic optimum, ``"predicted"`` per pixel) or, for ``"mixture"``, the head is a
    discretized logistic mixture with its own scales.
    """

    outputs: Callable[[int, int], int]
    sigma: str
    help: str


SIGMA_SOURCES = ("fixed", "parameter", "running", "predicted", "mixture")


def _check_kind(name: str, kind) -> None:
    if not isinstance(kind, HeadKind):
        raise TypeError(f"likelihood {name!r} must be registered as a HeadKind, got "
                        f"{type(kind).__name__}")
    if kind.sigma not in SIGMA_SOURCES:
        raise ValueError(f"likelihood {name!r}: sigma must be one of {SIGMA_SOURCES}, got "
                         f"{kind.sigma!r}")


likelihoods = Registry("likelihood", check=_check_kind)
likelihoods.register("fixed", HeadKind(lambda c, m: c, "fixed", "Gaussian, sigma fixed"))
likelihoods.register("learned", HeadKind(lambda c, m: c, "parameter",
                                         "Gaussian, one learned sigma (sigma-VAE)"))
likelihoods.register("optimal", HeadKind(lambda c, m: c, "running",
                                         "Gaussian, sigma^2 = MSE (analytic optimum)"))
likelihoods.register("per_pixel", HeadKind(lambda c, m: 2 * c, "predicted",
                                           "Gaussian, sigma predicted per pixel"))
likelihoods.register("dmol", HeadKind(lambda c, m: m * (1 + 2 * c + (3 if c == 3 else 0)),
                                      "mixture", "discretized mixture of logistics"))
LIKELIHOODS = tuple(likelihoods)  # in registration order (the CLI's choices)
LOG_SIGMA_MIN = -6.0  # sigma-VAE's soft lower bound on log sigma
HALF_BIN = 0.5 / 255.0  # half a quantisation bin on the [0, 1] scale


def softclip_min(x: torch.Tensor, minimum: float) -> torch.Tensor:
    """Smoothly bound ``x`` from below: ``minimum + softplus(x - minimum)``."""
    return minimum + F.softplus(x - minimum)


def _quantise(x01: torch.Tensor) -> torch.Tensor:
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


class DiscretizedGaussian:
    """Gaussian on the [0, 1] scale, ``loc`` (B, C, H, W), ``log_sigma`` broadcastable."""

    def __init__(self, loc: torch.Tensor, log_sigma: torch.Tensor, kind: str):
        self.loc, self.log_sigma, self.kind = loc, log_sigma.expand_as(loc), kind
        self._log_sigma = log_sigma  # as given (a scalar sigma stays one number)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)

    def sample(self, generator=None) -> torch.Tensor:
        """uint8 draws; ``generator``: one, or a list with one per image."""
        noise = per_row_random(torch.randn, self.loc.shape, generator, self.loc.device,
                               self.loc.dtype)
        return _quantise(self.loc + self.log_sigma.exp() * noise)

    def log_prob(self, x: torch.Tensor, kind: str = "discretized",
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
        """Nats per image, float64 unless ``dtype`` says otherwise.

        ``dtype=None`` (evaluation): per-pixel log-probabilities in float32, their sum over
        the pixels accumulated in float64: a bin narrow against sigma by its series
        (:func:`log_bin_series`), the others (the edge bins, which take the tails to -inf /
        inf, and bins wider than half a sigma) by :func:`log_bin_probability`. Against
        float64 throughout (``dtype=torch.float64``) that moves log p(x) by under 1e-6
        relative (measured in tests/test_likelihoods.py). ``dtype`` given: every step in that
        dtype (the trainer's float32 loss). ``"dequantized"``: a density on the dequantised
        images.
        """
        pixel = torch.float32 if dtype is None else dtype
        total = torch.float64 if dtype is None else dtype
        if kind == "dequantized":
            loc, log_sigma = self.loc.to(pixel), self.log_sigma.to(pixel)
            y = _dequantise(x, generator).to(pixel)
            log_density = (-0.5 * ((y - loc) / log_sigma.exp()) ** 2 - log_sigma
                           - 0.5 * math.log(2 * math.pi))
            return log_density.flatten(1).sum(1, dtype=total)
        _check_log_prob_kind(kind)
        loc = self.loc.to(pixel)
        inv_sigma = torch.exp(-self._log_sigma.to(loc.device, pixel))
        centre = (x.to(pixel).div_(255.0) - loc).mul_(inv_sigma)  # standardised bin centre
        half = HALF_BIN * inv_sigma  # as sigma: one number, or one per pixel
        if pixel == torch.float64:
            return log_bins(x, centre, half.expand_as(centre)).flatten(1).sum(1, dtype=total)
        return series_log_prob(x.expand_as(centre), centre, half)


def _check_log_prob_kind(kind: str) -> None:
    if kind not in ("discretized", "dequantized"):
        raise ValueError(f"likelihood kind must be 'discretized' or 'dequantized', got {kind!r}")


def _dequantise(x: torch.Tensor, generator) -> torch.Tensor:
    """y = (x + u) / 256 with u ~ U(0, 1): uniform dequantisation onto [0, 1].

    ``generator``: one, a list with one per image, or the draws u themselves (a float tensor
    shaped like ``x``: the trainer draws them for its whole global batch at once).
    """
    if isinstance(generator, torch.Tensor):
        if generator.shape != x.shape:
            raise ValueError(f"dequantisation noise must be shaped like the images "
                             f"{tuple(x.shape)}, got {tuple(generator.shape)}")
        return (x.float() + generator) / 256.0
    return (x.float() + per_row_random(torch.rand, x.shape, generator, x.device)) / 256.0


class DiscretizedLogisticMixture:
    """Mixture of discretized logistics (PixelCNN++/VDVAE) with RGB channel coefficients.

    ``params`` (B, M * (1 + 2C + (3 if C == 3 else 0)), H, W), on the [-1, 1] scale, laid out
    (``layout="vaeprobe"``) as [logits (M), means (C*M), log_scales (C*M), coeffs (3*M, RGB
    only)], or (``layout="vdvae"``, RGB only) as openai/vdvae's out_conv channels: [logits (M),
    then per colour channel: means (M), log_scales (M), coeffs (M)].

    ``n_bits`` < 8 models the data quantised to 2^n_bits levels the way VDVAE does (uint8 x ->
    level floor(x / 2^(8 - n_bits)), value level * 2^(8 - n_bits)): a proper PMF over those
    levels (bins between midpoints, edge bins take the tails); ``log_prob`` quantises its input.
    """

    kind = "dmol"

    def __init__(self, params: torch.Tensor, channels: int, n_mixtures: int, *,
                 layout: str = "vaeprobe", n_bits: int = 8):
        m, c = n_mixtures, channels
        self.channels, self.n_mixtures, self.n_bits = c, m, n_bits
        if not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
        batch, _, height, width = params.shape
        self.logits = params[:, :m]  # (B, M, H, W)
        if layout == "vdvae":
            if c != 3:
                raise ValueError(f"the vdvae layout is RGB only, got {c} channels")
            per_channel = params[:, m:].reshape(batch, c, 3, m, height, width)
            self.means, self.log_scales, coeffs = per_channel.unbind(2)  # (B, C, M, H, W) each
            self.coeffs = torch.tanh(coeffs)
        elif layout == "vaeprobe":
            self.means = params[:, m:m + c * m].reshape(batch, c, m, height, width)
            self.log_scales = params[:, m + c * m:m + 2 * c * m].reshape(
                batch, c, m, height, width)
            self.coeffs = (torch.tanh(params[:, m + 2 * c * m:]).reshape(
                batch, 3, m, height, width) if c == 3 else None)
        else:
            raise ValueError(f"layout must be 'vaeprobe' or 'vdvae', got {layout!r}")
        self.log_scales = self.log_scales.clamp(min=-7.0)

    def _channel_means(self, x11: torch.Tensor) -> torch.Tensor:
        """Per-channel component means, the RGB ones shifted by earlier channels' values."""
        if self.coeffs is None:
            return self.means
        red, green = x11[:, 0:1], x11[:, 1:2]  # (B, 1, H, W) broadcast over components
        mean_g = self.means[:, 1] + self.coeffs[:, 0] * red
        mean_b = self.means[:, 2] + self.coeffs[:, 1] * red + self.coeffs[:, 2] * green
        return torch.stack([self.means[:, 0], mean_g, mean_b], dim=1)

    @property
    def mean(self) -> torch.Tensor:
        weights = torch.softmax(self.logits, dim=1)  # (B, M, H, W)
        component = self.means
        if self.coeffs is not None:  # E[G | k] = m_G + a E[R | k], and so on
            red = self.means[:, 0]
            green = self.means[:, 1] + self.coeffs[:, 0] * red
            blue = self.means[:, 2] + self.coeffs[:, 1] * red + self.coeffs[:, 2] * green
            component = torch.stack([red, green, blue], dim=1)
        mean11 = (component * weights[:, None]).sum(2)
        return ((mean11 + 1) / 2).clamp(0, 1)

    def _log_component(self, x: torch.Tensor, kind: str, generator,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Per-pixel log-probability of every component, summed over channels: (B, M, H, W)."""
        if kind == "dequantized":
            if self.n_bits != 8:
                raise ValueError(f"a {self.n_bits}-bit likelihood is a PMF over "
                                 f"{2 ** self.n_bits} levels: use kind='discretized'")
            y11 = (_dequantise(x, generator) * 2 - 1).to(dtype)[:, :, None]
            centred = y11 - self._channel_means(y11[:, :, 0]).to(dtype)
            log_scales = self.log_scales.to(dtype)
            scaled = centred * torch.exp(-log_scales)
            log_pdf = -scaled - log_scales - 2 * F.softplus(-scaled) + math.log(2)  # on [0, 1]
            return log_pdf.sum(1)
        _check_log_prob_kind(kind)
        step = 2 ** (8 - self.n_bits)  # uint8 values per level
        level = torch.div(x, step, rounding_mode="floor")
        x11 = ((level * step).double() / 127.5 - 1)[:, :, None]  # (B, C, 1, H, W)
        centred = x11 - self._channel_means(x11[:, :, 0]).double()
        inv_scale = torch.exp(-self.log_scales.double())
        half = step / 255  # half a bin on the [-1, 1] scale
        plus_in, minus_in = inv_scale * (centred + half), inv_scale * (centred - half)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in)
        log_one_minus_cdf_min = -F.softplus(minus_in)
        # log(sigmoid(b) - sigmoid(a)) = log sigmoid(b) + log(1 - exp(a - b)) + log sigmoid(-a)
        log_mid = (log_cdf_plus + torch.log(-torch.expm1((minus_in - plus_in).clamp(max=-1e-12)))
                   - F.softplus(minus_in))
        levels = level[:, :, None].expand_as(log_mid)
        log_p = torch.where(levels == 0, log_cdf_plus,
                            torch.where(levels == 2 ** self.n_bits - 1, log_one_minus_cdf_min,
                                        log_mid))
        return log_p.sum(1)

    def log_prob(self, x: torch.Tensor, kind: str = "discretized",
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Per-image log-likelihood in nats; ``dtype``: the precision of a dequantized
        density (the trainer's float32); the discretized PMF is always float64."""
        dtype = dtype if kind == "dequantized" else torch.float64
        log_weights = torch.log_softmax(self.logits.to(dtype), dim=1)
        log_p = torch.logsumexp(self._log_component(x, kind, generator, dtype) + log_weights,
                                dim=1)
        return log_p.flatten(1).sum(1)

    def sample(self, generator=None) -> torch.Tensor:
        """uint8 draws; ``generator``: one, or a list with one per image."""
        device = self.logits.device
        gumbel = -torch.log(-torch.log(per_row_random(
            torch.rand, self.logits.shape, generator, device).clamp(1e-5, 1 - 1e-5)))
        choice = F.one_hot((self.logits + gumbel).argmax(1), self.n_mixtures)
        choice = choice.permute(0, 3, 1, 2)[:, None].to(self.means.dtype)  # (B, 1, M, H, W)
        means, log_scales = (self.means * choice).sum(2), (self.log_scales * choice).sum(2)
        uniform = per_row_random(torch.rand, means.shape, generator, device).clamp(1e-5, 1 - 1e-5)
        x11 = means + log_scales.exp() * (torch.log(uniform) - torch.log1p(-uniform))
        if self.coeffs is not None:
            coeffs = (self.coeffs * choice).sum(2)
            red = x11[:, 0].clamp(-1, 1)
            green = (x11[:, 1] + coeffs[:, 0] * red).clamp(-1, 1)
            blue = (x11[:, 2] + coeffs[:, 1] * red + coeffs[:, 2] * green).clamp(-1, 1)
            x11 = torch.stack([red, green, blue], dim=1)
        if self.n_bits == 8:
            return _quantise((x11 + 1) / 2)
        step = 2 ** (8 - self.n_bits)  # nearest of the 2^n_bits levels, as uint8 values
        level = ((x11 + 1) * (127.5 / step)).round().clamp(0, 2 ** self.n_bits - 1)
        return (level * step).to(torch.uint8)


class LikelihoodHead(nn.Module):
    """The decoder's last layer: features -> a likelihood distribution.

    ``residual_base`` (the two-stage secondary's x_hat) is added to the predicted Gaussian mean;
    with ``zero_init`` the head starts at exactly that base (and sends no gradient to the
    features: the latents of a zero-initialised residual head collapse, see two_stage.py).
    """

    def __init__(self, kind: str, width: int, channels: int, *, sigma: float = 1.0,
                 n_mixtures: int = 10, zero_init: bool = False):
        super().__init__()
        if kind not in likelihoods:
            raise ValueError(f"likelihood must be one of {tuple(likelihoods)}, got {kind!r}")
        if kind == "fixed" and not sigma > 0:
            raise ValueError(f"a fixed decoder sigma must be > 0, got {sigma}")
        self.kind, self.channels, self.n_mixtures = kind, channels, n_mixtures
        self.sigma_source = likelihoods.get(kind).sigma
        self.out_conv = nn.Conv2d(width, likelihoods.get(kind).outputs(channels, n_mixtures), 1)
        if zero_init:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)
        # log sigma: a parameter for "learned", a running estimate for "optimal", fixed otherwise
        initial = torch.tensor(math.log(sigma) if self.sigma_source == "fixed" else 0.0)
        if self.sigma_source == "parameter":
            self.log_sigma = nn.Parameter(initial)
        else:
            self.register_buffer("log_sigma", initial)

    def forward(self, features: torch.Tensor, residual_base: torch.Tensor | None = None,
                target: torch.Tensor | None = None, residual_scale: float = 1.0):
        """``target`` (uint8) is needed only while training the ``optimal`` head.

        With ``residual_base``, the mean is ``residual_base + residual_scale * output``.
        """
        params = self.out_conv(features)
        if self.sigma_source == "mixture":
            return DiscretizedLogisticMixture(params, self.channels, self.n_mixtures)
        loc = params[:, :self.channels]
        if residual_base is not None:
            loc = loc * residual_scale + residual_base
        if self.sigma_source == "predicted":
            log_sigma = softclip_min(params[:, self.channels:], LOG_SIGMA_MIN)
        elif self.sigma_source == "running" and target is not None:
            log_sigma = self.optimal_log_sigma(loc, target)
            with torch.no_grad():  # running estimate used when no target is given; a
                #                    non-finite batch (a skipped update) leaves it as it is
                estimate = log_sigma.detach()
                self.log_sigma.lerp_(torch.where(torch.isfinite(estimate), estimate,
                                                 self.log_sigma), 0.01)
        elif self.sigma_source == "parameter":
            log_sigma = softclip_min(self.log_sigma, LOG_SIGMA_MIN)
        else:
            log_sigma = self.log_sigma
        return DiscretizedGaussian(loc, log_sigma.to(loc.dtype), self.kind)

    def shared_sigma(self) -> float:
        """The sigma (on [0, 1]) the head evaluates with, NaN when it is not one shared value."""
        if self.sigma_source in ("predicted", "mixture"):
            return float("nan")
        log_sigma = self.log_sigma
        if self.sigma_source == "parameter":
            log_sigma = softclip_min(log_sigma, LOG_SIGMA_MIN)
        return float(log_sigma.detach().exp())

    @staticmethod
    def optimal_log_sigma(loc: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log sqrt(batch mean squared error): the sigma that maximises the Gaussian likelihood.

        Exact (no soft clip, which would bias it); floored at LOG_SIGMA_MIN for a perfect fit.
        """
        mse = ((target.float() / 255.0 - loc) ** 2).mean()
        return (0.5 * torch.log(mse)).clamp(min=LOG_SIGMA_MIN)
