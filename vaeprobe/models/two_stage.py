"""The two-stage model of Section 4: a frozen primary VAE and a secondary VAE on its output.

The secondary has the primary's depth structure. Its inference side sees x_hat and the residual
x - x_hat (the same information as the paper's [x, x_hat]); its generative side receives x_hat
at every resolution through a U-Net-style encoder of x_hat; its decoder predicts a residual
added to x_hat. x_hat = mu(z) is the primary's mean decoding of its latents z.
Sampling: z ~ p(z) -> x_hat = mu(z) -> z' ~ p(z' | x_hat) -> mu'(z', x_hat).

Why the residual head is NOT initialised to zero (it was, and the secondary did not learn): a
zero head reproduces x_hat exactly but sends no distortion gradient to the latents, and while it
stays small the decoder ignores z, so the head's own gradient is noise and it stays small. Adam
is scale-free, so the rate term (weight 1 - lambda = 1e-4) then moves the posterior at the full
learning rate: the rate collapsed (704 -> 23 nats in 50 steps) and D stayed at the x_hat level.
An ordinarily initialised head makes the decoder depend on z from the first step; predicting the
residual at an image's scale (``residual_gain``: mean = x_hat + output / gain) keeps its
initial excess distortion small (+35 on 32x32x3, gone in ~25 steps, instead of +3300).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vaeprobe.models.hvae import HVAE, HVAEConfig
from vaeprobe.models.terms import Terms, terms

RESIDUAL_GAIN = 10.0  # ~ 0.5 / RMS(x - x_hat): a primary at gamma ~ 8 on 32x32x3 leaves ~0.05


def secondary_config(primary: HVAEConfig, **overrides) -> HVAEConfig:
    """The secondary's config: the primary's structure, conditioned on x_hat, residual output.

    The residual x - x_hat is ~10x smaller than an image; ``residual_gain`` puts it at an
    image's scale on both sides (the encoder's input and the head's output).
    """
    values = dict(condition_channels=primary.image_channels, residual=True,
                  residual_gain=RESIDUAL_GAIN)
    values.update(overrides)
    return dataclasses.replace(primary, **values)


class TwoStageVAE(nn.Module):
    def __init__(self, primary: HVAEConfig, secondary: HVAEConfig):
        super().__init__()
        if secondary.condition_channels != primary.image_channels or not secondary.residual:
            raise ValueError("the secondary must be conditioned on the primary's image "
                             "(condition_channels = image_channels) with residual=True; "
                             "build it with secondary_config(primary)")
        if (secondary.image_channels, secondary.image_size) != (primary.image_channels,
                                                                primary.image_size):
            raise ValueError("primary and secondary must model images of the same shape")
        self.primary = HVAE(primary)
        self.secondary = HVAE(secondary)
        self.primary.requires_grad_(False)  # frozen: only the secondary trains

    @property
    def config(self) -> dict:
        return dict(primary=self.primary.config.to_dict(),
                    secondary=self.secondary.config.to_dict())

    @property
    def head(self):
        """The likelihood head of p(x | z, z'): the secondary's."""
        return self.secondary.head

    def train(self, mode: bool = True):
        super().train(mode)
        self.primary.eval()  # the frozen primary always runs in evaluation mode
        return self

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Primary then secondary latent shapes (c, h, w)."""
        return self.primary.latent_shapes() + self.secondary.latent_shapes()

    def posterior_pass(self, x: torch.Tensor, noise=None):
        """(the secondary's likelihood, its draws) given x_hat of the primary's posterior pass.

        ``noise``: per-layer standard normal draws, primary layers first (latent_shapes()).
        """
        likelihood, draws, _ = self._stages(x, noise)
        return likelihood, draws

    def forward(self, x: torch.Tensor, noise=None, generator=None) -> Terms:
        """Training pass of the secondary: its :class:`~vaeprobe.models.terms.Terms` (the rate
        is the secondary's; ``stage_rates`` has both stages', the frozen primary's from the
        pass that gives x_hat anyway). ``noise`` as for :meth:`posterior_pass`."""
        likelihood, draws, primary_draws = self._stages(x, noise)
        with torch.no_grad():
            primary_rate = sum(d.kl.float().flatten(1).sum(1) for d in primary_draws)
        result = terms(likelihood, draws, x, generator)
        result.stage_rates = dict(secondary=result.rate, primary=primary_rate)
        return result

    def _stages(self, x: torch.Tensor, noise=None):
        """(secondary likelihood, secondary draws, primary draws); the primary without
        gradient."""
        n_primary = len(self.primary.decoder_layers)
        noise = [None] * len(self.latent_shapes()) if noise is None else noise
        with torch.no_grad():
            primary, primary_draws = self.primary.posterior_pass(x, noise=noise[:n_primary])
        likelihood, draws = self.secondary.posterior_pass(x, condition=primary.mean,
                                                          noise=noise[n_primary:])
        return likelihood, draws, primary_draws
