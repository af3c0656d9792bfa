"""What a training pass of one of our models reports about itself: the terms every objective
is made of, per image.

Units: rate in nats per image (KL of the trained stage's posterior draws to their priors);
distortion = per-image sum of squared error on the [0, 1] scale (the paper's gamma); log p(x|z)
in nats per image on uniformly dequantized data (Appendix B.1 of the paper: noise on the pixels
for the likelihood term only; the inference network sees the clean image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Terms:
    """One posterior pass over a batch: the decoder likelihood, the draws, and per-image terms.

    ``rate``, ``distortion`` and ``log_px`` are ``(B,)`` tensors. ``stage_rates`` names the
    rate of every stage of a multi-stage model (``{"secondary": ..., "primary": ...}``, the
    trained stage first), empty for a single-stage model; ``rate`` is the trained stage's.
    """

    likelihood: object  # the decoder's distribution p(x | z): .mean, .log_prob, .sample
    draws: list  # LayerDraw per latent layer of the trained stage, top to bottom
    rate: torch.Tensor  # (B,) nats
    distortion: torch.Tensor  # (B,) sum of squares on [0, 1]
    log_px: torch.Tensor  # (B,) nats, dequantized
    stage_rates: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) nats each

    @property
    def sigma(self) -> torch.Tensor:
        """The decoder's mean sigma (a scalar, no gradient); NaN for heads without one."""
        if not hasattr(self.likelihood, "log_sigma"):
            return torch.full((), float("nan"), device=self.rate.device)
        return self.likelihood.log_sigma.float().mean().exp().detach()


def layer_rate(draws) -> torch.Tensor:
    """Per-image KL (nats) summed over the layers of ``draws``: ``(B,)``."""
    return sum(d.kl.float().flatten(1).sum(1) for d in draws)


def terms(likelihood, draws, x: torch.Tensor, generator=None, dtype=torch.float32,
          **stage_rates) -> Terms:
    """The :class:`Terms` of a pass that gave ``likelihood`` and ``draws`` for uint8 ``x``.

    ``generator``: for the dequantization noise; one, a list with one per image, or the
    uniform draws themselves (shaped like ``x``). Computed outside any autocast region, in
    ``dtype`` (float32: a bf16 pass still gets float32 loss terms; float64 is not needed for a
    training loss and is slow on GPUs).
    """
    with torch.autocast(x.device.type, enabled=False):
        rate = layer_rate(draws)
        # Gaussian heads: the unclamped loc, so the gradient does not vanish outside [0, 1]
        prediction = likelihood.loc if hasattr(likelihood, "loc") else likelihood.mean
        distortion = ((x.to(dtype) / 255.0 - prediction.to(dtype)) ** 2).flatten(1).sum(1)
        log_px = likelihood.log_prob(x, kind="dequantized", generator=generator, dtype=dtype)
    return Terms(likelihood, draws, rate, distortion, log_px, stage_rates)
