"""The Bernoulli decoder likelihood of binary images, and why it refuses grey or colour ones.

A decoder trained with binary cross-entropy (disentangling-vae, JointVAE, many hobbyist
VAEs) is a likelihood only on binary images (levels 0 and 255). On other images
:class:`~vaeprobe.probe.NotBinaryError` says what it got (grey levels or RGB colour) and the
two ways on: binarize the data, or evaluate with a Gaussian, named as the model's own option
(``gaussian_hint``: ``from_module``'s, or the format's ``likelihood="gaussian", sigma=S``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaeprobe.probe import NotBinaryError
from vaeprobe.random import per_row_random

BINARIZE_HINT = ("binarize the data first: vp.data.binarize(data, 'threshold') (level >= 128 "
                 "-> 255) or vp.data.binarize(data, 'dynamic') (255 with probability "
                 "grey / 255, seeded per image), on the command line --data NAME,binarize="
                 "dynamic")
FROM_MODULE_GAUSSIAN = ("vp.Probe.from_module(model, ..., likelihood='gaussian', sigma=S) with S "
                        "the decoder's standard deviation on its output scale")


def not_binary_message(x: torch.Tensor, gaussian_hint: str = FROM_MODULE_GAUSSIAN) -> str:
    """Why a Bernoulli likelihood refuses ``x`` (grey levels, or colour images) and the two
    fixes: binarize the data, or evaluate with a Gaussian (``gaussian_hint`` says how for this
    model: the option of its format or of ``from_module``)."""
    colour = x.ndim == 4 and x.shape[1] == 3
    got = ("RGB colour images with levels other than 0 and 255 (binarizing colour photographs "
           "changes them beyond recognition: prefer the Gaussian)" if colour else
           "grey levels (levels other than 0 and 255)")
    return (f"a Bernoulli likelihood needs binary images (levels 0 and 255 only), got {got}; "
            f"either {BINARIZE_HINT}; or evaluate {'colour' if colour else 'grey'} levels with a "
            f"Gaussian decoder likelihood: {gaussian_hint} (a choice of yours: a decoder "
            f"trained with binary cross-entropy has no sigma, and the bound depends on it)")


class Bernoulli:
    """Independent Bernoulli pixels for binary images: level 255 with probability ``mean``.

    Built from probabilities, or from ``logits`` (then log-probabilities are exact in the
    tails: log sigmoid, not the log of a rounded probability).
    """

    def __init__(self, mean: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                 gaussian_hint: str = FROM_MODULE_GAUSSIAN):
        self.logits, self.gaussian_hint = logits, gaussian_hint
        self.mean = (torch.sigmoid(logits) if logits is not None else mean).clamp(0, 1)

    def sample(self, generator=None) -> torch.Tensor:
        uniform = per_row_random(torch.rand, self.mean.shape, generator, self.mean.device)
        return ((uniform < self.mean).to(torch.uint8) * 255)

    def log_prob(self, x: torch.Tensor, kind: str = "discretized",
                 generator=None) -> torch.Tensor:
        if kind != "discretized":
            raise ValueError("a Bernoulli likelihood is a PMF: kind must be 'discretized'")
        if ((x != 0) & (x != 255)).any():
            raise NotBinaryError(not_binary_message(x, self.gaussian_hint))
        if self.logits is not None:
            logits = self.logits.double()
            log_p = torch.where(x == 255, F.logsigmoid(logits), F.logsigmoid(-logits))
        else:
            p = self.mean.double().clamp(1e-12, 1 - 1e-12)
            log_p = torch.where(x == 255, torch.log(p), torch.log1p(-p))
        return log_p.flatten(1).sum(1)


__all__ = ["BINARIZE_HINT", "FROM_MODULE_GAUSSIAN", "Bernoulli", "not_binary_message"]
