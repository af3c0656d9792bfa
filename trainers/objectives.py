"""Training objectives: one registry entry each, its loss written on the model's own terms.

A model's forward pass reports per-image terms (:class:`vaeprobe.models.terms.Terms`): ``rate``
R (KL, nats per image), ``distortion`` D (sum of squared error per image on [0, 1], the paper's
gamma) and ``log_px`` (log p(x|z), nats per image, on dequantized data). An
:class:`Objective` turns them into a scalar loss and declares what it needs from the config:

- ``fields``: the :class:`~trainers.config.TrainConfig` fields it reads (its hyperparameters);
  the trainer passes each by name to ``loss``;
- ``target``: the config field of a distortion target, or None. With a target the trainer
  keeps a Lagrange multiplier ``lam`` that follows Eq. 10 towards it (passed to ``loss`` as
  ``lam``), the run records the target (``Run.gamma`` reads it from ``config.json``), and the
  decoder head defaults to ``decoder``;
- ``decoder``: the decoder head when ``--likelihood`` is empty ("" the preset's);
- ``needs_primary``: it trains a secondary on a frozen primary run (``--primary``).

Adding an objective is one ``objectives.register(name, Objective(...))`` (a new
hyperparameter is one more TrainConfig field, which the CLI then offers); the trainer, the
config and the run directory ask the entry. The declarations live here, in trainers/, because
vaeprobe never imports trainers/: what the library needs from an objective (the target) is
written into the run's ``config.json`` by the trainer.

The trainer divides the loss by the dimensions of an image: Adam's steps do not change, and
gradient norms (clipping, skipping) become comparable across image sizes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vaeprobe.registry import Registry


def lambda_step(lam: torch.Tensor, optimizer: torch.optim.Optimizer, distortion: torch.Tensor,
                gamma: float, low: float = 1e-4, high: float = 0.9999) -> None:
    """Eq. 10: gradient ascent on lambda (D - gamma), projected into [low, high].

    All on the device, with no host read: ``optimizer`` is a fused Adam, whose ``found_inf``
    leaves lambda (and its moments) as they are when D is not finite (NaN would poison it).
    """
    distortion = distortion.detach()
    finite = torch.isfinite(distortion)
    lam.grad = torch.where(finite, gamma - distortion, 0.0).to(lam.dtype).reshape(lam.shape)
    optimizer.found_inf = (~finite).float()
    optimizer.step()
    with torch.no_grad():
        lam.clamp_(low, high)


@dataclass(frozen=True)
class Objective:
    """A training objective: ``loss(terms, **values)`` -> a scalar (mean over the batch), and
    what it declares (see the module docstring)."""

    loss: Callable[..., torch.Tensor]
    help: str
    fields: tuple[str, ...] = ()  # TrainConfig fields passed to loss by name
    target: str | None = None  # the TrainConfig field of a distortion target (lam follows it)
    decoder: str = ""  # the decoder head when --likelihood is empty ("": the preset's)
    needs_primary: bool = False  # a secondary on a frozen --primary run

    def arguments(self, config) -> dict:
        """The keyword arguments of ``loss`` taken from ``config``: its declared fields."""
        return {name: getattr(config, name) for name in self.fields}


def _check_objective(name: str, objective) -> None:
    if not isinstance(objective, Objective):
        raise TypeError(f"objective {name!r} must be registered as an Objective, got "
                        f"{type(objective).__name__}")
    if objective.needs_primary and objective.target is None:
        raise ValueError(f"objective {name!r}: a secondary is trained towards a distortion "
                         f"target (target='gamma')")
    parameters = inspect.signature(objective.loss).parameters
    wanted = set(objective.fields) | ({"lam"} if objective.target else set())
    missing = sorted(wanted - set(parameters))
    if missing:
        raise TypeError(f"objective {name!r}: its loss(terms, ...) must take {missing} by "
                        f"name (its declared fields, and lam when it has a target)")


def elbo(terms, beta: float) -> torch.Tensor:
    """Negative ELBO (beta-weighted KL for comparison runs), nats per image."""
    return (beta * terms.rate - terms.log_px).mean()


def lagrangian(terms, lam: torch.Tensor) -> torch.Tensor:
    """Eq. 9: (1 - lambda) R + lambda D, lambda held fixed (it has its own update, Eq. 10)."""
    lam = lam.detach()
    return ((1 - lam) * terms.rate + lam * terms.distortion).mean()


objectives = Registry("objective", check=_check_objective)
objectives.register("elbo", Objective(
    elbo, "the ELBO (beta-weighted KL with --beta)", fields=("beta",)))
objectives.register("distortion", Objective(
    lagrangian, "Lagrangian towards --gamma (Appendix B.2)", target="gamma",
    decoder="optimal"))
objectives.register("two-stage", Objective(
    lagrangian, "a secondary on a frozen --primary run, towards --gamma", target="gamma",
    decoder="optimal", needs_primary=True))
