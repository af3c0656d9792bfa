"""Closed-form densities and divergences of the latent distributions the Probe contract knows
(Gaussian, categorical), per element, in nats. Re-exported by :mod:`vaeprobe.probe`."""

from __future__ import annotations

import math

import torch


def gaussian_kl(q_mean, q_logstd, p_mean, p_logstd) -> torch.Tensor:
    """KL(N(q_mean, q_std^2) || N(p_mean, p_std^2)) per element, in nats."""
    return (p_logstd - q_logstd
            + (torch.exp(2 * q_logstd) + (q_mean - p_mean) ** 2) / (2 * torch.exp(2 * p_logstd))
            - 0.5)


def gaussian_log_density(z, mean, logstd) -> torch.Tensor:
    """log N(z; mean, std^2) per element, in nats."""
    return -0.5 * ((z - mean) * torch.exp(-logstd)) ** 2 - logstd - 0.5 * math.log(2 * math.pi)


def categorical_kl(q_log_probs, p_log_probs) -> torch.Tensor:
    """KL(q || p) of categoricals over dim 1, per category: q_k (log q_k - log p_k), nats.

    Sums over dim 1 to the KL; a category with q_k = 0 adds 0.
    """
    q = q_log_probs.exp()
    return torch.where(q > 0, q * (q_log_probs - p_log_probs), torch.zeros_like(q))


def categorical_draw(log_probs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """A one-hot draw from categoricals over dim 1 (B, K, ...), by Gumbel-max.

    ``noise`` is standard normal (the layout of :meth:`Probe.noise`, so draws are per image and
    batch-size free), mapped to uniforms by the normal CDF and to Gumbel noise; None: the mode.
    """
    scores = log_probs
    if noise is not None:
        uniform = (0.5 * (1 + torch.erf(noise.double() / math.sqrt(2)))).clamp(1e-300, 1 - 1e-16)
        scores = log_probs.double() - torch.log(-torch.log(uniform))
    index = scores.argmax(dim=1, keepdim=True)
    return torch.zeros_like(log_probs).scatter_(1, index, 1.0)


def categorical_moments(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log std) of a one-hot categorical's components: p and 0.5 log(p (1 - p))."""
    probs = log_probs.exp()
    return probs, 0.5 * (log_probs + torch.log1p(-probs.clamp(max=1 - 1e-12)))
