"""The two-stage model of Section 4: a frozen primary VAE and a secondary VAE on its output.

The secondary has the primary's depth structure. Its inference side sees [x, x_hat]; its
generative side receives x_hat at every resolution through a U-Net-style encoder of x_hat; its
decoder predicts a residual added to x_hat, initialised to zero, so an untrained secondary
reproduces x_hat exactly. x_hat = mu(z) is the primary's mean decoding of its latents z.
Sampling: z ~ p(z) -> x_hat = mu(z) -> z' ~ p(z' | x_hat) -> mu'(z', x_hat).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vaeprobe.models.hvae import HVAE, HVAEConfig


def secondary_config(primary: HVAEConfig, **overrides) -> HVAEConfig:
    """The secondary's config: the primary's structure, conditioned on x_hat, residual output."""
    values = dict(condition_channels=primary.image_channels, residual=True)
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

    def train(self, mode: bool = True):
        super().train(mode)
        self.primary.eval()  # the frozen primary always runs in evaluation mode
        return self

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Primary then secondary latent shapes (c, h, w)."""
        return self.primary.latent_shapes() + self.secondary.latent_shapes()

    @torch.no_grad()
    def primary_mean(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        """x_hat = mu(z), z ~ q(z | x): the primary's mean decoding of x (no gradient)."""
        likelihood, _ = self.primary(x, noise=noise)
        return likelihood.mean

    def forward(self, x: torch.Tensor, noise=None):
        """Training pass of the secondary: (likelihood, secondary draws, x_hat).

        ``noise``: per-layer standard normal draws, primary layers first (latent_shapes()).
        """
        n_primary = len(self.primary.decoder_layers)
        noise = [None] * len(self.latent_shapes()) if noise is None else noise
        x_hat = self.primary_mean(x, noise[:n_primary])
        likelihood, draws = self.secondary(x, condition=x_hat, noise=noise[n_primary:])
        return likelihood, draws, x_hat
