"""Training objectives. Each returns dict(loss=, elbo=, rate=, distortion=, mse=) (batch means).

Units: rate R = KL in nats per image; distortion D = per-image sum of squared error on the
[0, 1] scale (the paper's gamma); mse = D / dimensions; elbo in nats per image on dequantized
data (Appendix B.1: uniform noise on the pixels for the likelihood term only; the inference
network sees the clean image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vaeprobe.registry import Registry


def rate_and_distortion(likelihood, draws, x: torch.Tensor, generator=None) -> dict:
    """Per-image rate (nats), distortion (sum of squares on [0, 1]) and log p(x|z) (nats).

    ``generator``: for the dequantization noise; one, or a list with one per image.
    """
    rate = sum(d.kl.flatten(1).sum(1) for d in draws)
    # Gaussian heads: the unclamped loc, so the gradient does not vanish outside [0, 1]
    prediction = likelihood.loc if hasattr(likelihood, "loc") else likelihood.mean
    distortion = ((x.float() / 255.0 - prediction) ** 2).flatten(1).sum(1)
    log_px = likelihood.log_prob(x, kind="dequantized", generator=generator)
    return dict(rate=rate, distortion=distortion, log_px=log_px)


def _summary(parts: dict, loss: torch.Tensor, dims: int) -> dict:
    elbo = (parts["log_px"] - parts["rate"]).mean()
    return dict(loss=loss, elbo=elbo, elbo_bpd=-elbo / (dims * math.log(2)) + 8.0,
                rate=parts["rate"].mean(), distortion=parts["distortion"].mean(),
                mse=parts["distortion"].mean() / dims)


def elbo_loss(parts: dict, dims: int, beta: float = 1.0) -> dict:
    """Negative ELBO per dimension (beta-weighted KL for comparison runs)."""
    loss = (beta * parts["rate"] - parts["log_px"]).mean() / dims
    return _summary(parts, loss, dims)


def lagrangian_loss(parts: dict, dims: int, lam: torch.Tensor) -> dict:
    """Eq. 9: (1 - lambda) R + lambda D, lambda held fixed (it has its own update, Eq. 10).

    Divided by the dimensions: Adam's steps do not change, gradient norms (clipping, skipping)
    become comparable across image sizes.
    """
    lam = lam.detach()
    loss = ((1 - lam) * parts["rate"] + lam * parts["distortion"]).mean() / dims
    return _summary(parts, loss, dims)


def lambda_step(lam: torch.Tensor, optimizer: torch.optim.Optimizer, distortion: torch.Tensor,
                gamma: float, low: float = 1e-4, high: float = 0.9999) -> None:
    """Eq. 10: gradient ascent on lambda (D - gamma), projected into [low, high]."""
    optimizer.zero_grad(set_to_none=True)
    (-(lam * (distortion.detach() - gamma))).backward()
    optimizer.step()
    with torch.no_grad():
        lam.clamp_(low, high)


@dataclass(frozen=True)
class Objective:
    """A training objective: ``loss(parts, dims, lam=, beta=)`` and how it is driven.

    ``lagrangian``: lambda follows Eq. 10 towards ``--gamma`` (and the decoder sigma, which its
    loss never uses, defaults to the analytic optimum); ``needs_primary``: trains a secondary
    on a frozen primary run (``--primary``).
    """

    loss: Callable[..., dict]
    lagrangian: bool
    needs_primary: bool
    help: str


def _check_objective(name: str, objective) -> None:
    if not isinstance(objective, Objective):
        raise TypeError(f"objective {name!r} must be registered as an Objective, got "
                        f"{type(objective).__name__}")
    if objective.needs_primary and not objective.lagrangian:
        raise ValueError(f"objective {name!r}: a secondary is trained towards a distortion "
                         f"target (lagrangian=True)")


objectives = Registry("objective", check=_check_objective)
objectives.register("elbo", Objective(
    lambda parts, dims, lam, beta: elbo_loss(parts, dims, beta), lagrangian=False,
    needs_primary=False, help="the ELBO (beta-weighted KL with --beta)"))
objectives.register("distortion", Objective(
    lambda parts, dims, lam, beta: lagrangian_loss(parts, dims, lam), lagrangian=True,
    needs_primary=False, help="Lagrangian towards --gamma (Appendix B.2)"))
objectives.register("two-stage", Objective(
    lambda parts, dims, lam, beta: lagrangian_loss(parts, dims, lam), lagrangian=True,
    needs_primary=True, help="a secondary on a frozen --primary run, towards --gamma"))
