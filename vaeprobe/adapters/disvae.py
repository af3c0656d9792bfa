"""A disentangling-vae results folder (YannDubs/disentangling-vae) as a Probe.

The folder holds ``specs.json`` (``model_type``, ``img_size``, ``latent_dim``, ``rec_dist``, the
loss and its hyperparameters) and ``model.pt`` (a plain state dict, read with
``torch.load(weights_only=True)``). The network is the Burgess et al. (2018) encoder/decoder,
written here with the same state-dict keys (``encoder.conv1..3``, ``conv_64`` at 64x64,
``lin1``, ``lin2``, ``mu_logvar_gen``; ``decoder.lin1..3``, ``convT_64``, ``convT1..3``):

- encoder: 4x4 stride-2 convolutions of 32 channels (three at 32x32, four at 64x64) with ReLU,
  two 256-unit ReLU layers, and one linear layer giving mean and log-variance **interleaved**
  (``view(-1, latent_dim, 2).unbind(-1)``);
- decoder: the mirror image, ending in a sigmoid.

It opens through :class:`~vaeprobe.adapters.module.ModuleProbe` with
``encoder_output="interleaved"``, ``scale="logvar"``, inputs on [0, 1]. The decoder likelihood
is the format's option ``likelihood`` (``vp.load(path, likelihood="gaussian", sigma=0.1)``,
command line ``--option likelihood=gaussian --option sigma=0.1``); by default it follows the
loss the model was trained with (``rec_dist``):

- ``"bernoulli"`` (binary cross-entropy): a Bernoulli likelihood with the sigmoid output as the
  probability of level 255. These models are usually trained on grey-level images, where BCE is
  not a likelihood: evaluate IWAE on binarized data (``vp.data.binarize``), and say which
  protocol (threshold or dynamic);
- ``"gaussian"`` (its loss is sum((255 (x_hat - x))^2) / 255 = 255 * SSE on [0, 1]): a Gaussian
  of sigma = sqrt(1 / 510) on [0, 1];
- ``"laplace"``: no Laplace likelihood here, so ``likelihood_kind="none"`` (IWAE refuses).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from vaeprobe.adapters._common import (
    check_size,
    choose_likelihood,
    file_source,
    gaussian_hint,
    read_specs,
    read_tensors,
    sniff_specs,
    spec_int,
)
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.adapters.module import ModuleProbe
from vaeprobe.io import check_state_dict

HIDDEN_CHANNELS, KERNEL, HIDDEN_UNITS = 32, 4, 256  # Burgess et al.'s sizes
SIZES = ((32, 32), (64, 64))  # the only image sizes the architecture has
GAUSSIAN_SIGMA = math.sqrt(1 / 510)  # disvae's "gaussian" loss is 255 * SSE on [0, 1]


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=1)


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, KERNEL, stride=2, padding=1)


class BurgessEncoder(nn.Module):
    """Image (B, C, H, W) on [0, 1] -> (B, 2 * latent_dim): mean and logvar interleaved."""

    def __init__(self, image_shape: tuple, latent_dim: int):
        super().__init__()
        channels, width = image_shape[0], HIDDEN_CHANNELS
        self.is_64 = tuple(image_shape[1:]) == (64, 64)
        self.conv1, self.conv2, self.conv3 = (_conv(channels, width), _conv(width, width),
                                              _conv(width, width))
        if self.is_64:
            self.conv_64 = _conv(width, width)
        self.lin1 = nn.Linear(width * KERNEL * KERNEL, HIDDEN_UNITS)
        self.lin2 = nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS)
        self.mu_logvar_gen = nn.Linear(HIDDEN_UNITS, 2 * latent_dim)

    def forward(self, x):
        convs = [self.conv1, self.conv2, self.conv3] + ([self.conv_64] if self.is_64 else [])
        for conv in convs:
            x = torch.relu(conv(x))
        hidden = torch.relu(self.lin2(torch.relu(self.lin1(x.flatten(1)))))
        return self.mu_logvar_gen(hidden)  # (B, 2 * latent_dim), pairs (mean, logvar)


class BurgessDecoder(nn.Module):
    """z (B, latent_dim) -> Bernoulli probabilities / means (B, C, H, W) on [0, 1]."""

    def __init__(self, image_shape: tuple, latent_dim: int):
        super().__init__()
        channels, width = image_shape[0], HIDDEN_CHANNELS
        self.is_64 = tuple(image_shape[1:]) == (64, 64)
        self.lin1 = nn.Linear(latent_dim, HIDDEN_UNITS)
        self.lin2 = nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS)
        self.lin3 = nn.Linear(HIDDEN_UNITS, width * KERNEL * KERNEL)
        if self.is_64:
            self.convT_64 = _deconv(width, width)
        self.convT1, self.convT2 = _deconv(width, width), _deconv(width, width)
        self.convT3 = _deconv(width, channels)

    def forward(self, z):
        hidden = torch.relu(self.lin3(torch.relu(self.lin2(torch.relu(self.lin1(z))))))
        x = hidden.reshape(z.shape[0], HIDDEN_CHANNELS, KERNEL, KERNEL)
        for deconv in ([self.convT_64] if self.is_64 else []) + [self.convT1, self.convT2]:
            x = torch.relu(deconv(x))
        return torch.sigmoid(self.convT3(x))


class BurgessVAE(nn.Module):
    """``encode`` / ``decode`` over the Burgess encoder and decoder (disvae's key names)."""

    def __init__(self, image_shape: tuple, latent_dim: int):
        super().__init__()
        self.encoder = BurgessEncoder(image_shape, latent_dim)
        self.decoder = BurgessDecoder(image_shape, latent_dim)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def sniff(path: Path) -> bool:
    """A folder (or its ``model.pt``) with a disvae ``specs.json``: model_type + rec_dist."""
    specs = sniff_specs(path)
    return specs is not None and "model_type" in specs and "rec_dist" in specs


def _likelihood(rec_dist: str, likelihood: str | None, sigma) -> dict:
    """ModuleProbe's likelihood options: as trained (``rec_dist``) unless chosen."""
    trained = {"bernoulli": "bernoulli", "gaussian": "gaussian", "laplace": "none"}.get(rec_dist)
    if trained is None:
        raise ValueError(f"specs.json rec_dist must be 'bernoulli', 'gaussian' or 'laplace', "
                         f"got {rec_dist!r}")
    chosen, sigma = choose_likelihood(likelihood, sigma, trained, GAUSSIAN_SIGMA)
    return dict(likelihood=chosen, sigma=sigma)


def _check_specs(specs: dict, path: Path) -> tuple[tuple[int, int, int], int]:
    if str(specs.get("model_type", "")).lower() != "burgess":
        raise ValueError(f"{path}: model_type {specs.get('model_type')!r} is not supported; "
                         f"disentangling-vae's only architecture is 'Burgess'")
    size = specs.get("img_size")
    image_shape = tuple(spec_int(v, "img_size", path) for v in size) \
        if isinstance(size, list) and len(size) == 3 else ()
    if len(image_shape) != 3 or image_shape[0] > 4 or image_shape[1:] not in SIZES:
        raise ValueError(f"{path}: img_size must be (C, 32, 32) or (C, 64, 64) (the Burgess "
                         f"architecture's sizes, C at most 4), got {size!r}")
    latent_dim = spec_int(specs.get("latent_dim"), "latent_dim", path)
    check_size(lambda: BurgessVAE(image_shape, latent_dim), 8 * math.prod(image_shape)
               + 4 * latent_dim + 4 * HIDDEN_UNITS, path, "latent_dim")
    return image_shape, latent_dim


def open_disvae(path: Path, *, likelihood: str | None = None, sigma: float | None = None,
                device=None) -> ModuleProbe:
    """Open a disentangling-vae results folder (``specs.json`` + ``model.pt``) as a Probe.

    Parameters
    ----------
    path : Path
        The folder (e.g. ``results/btcvae_mnist``) or its ``model.pt``.
    likelihood : {None, "bernoulli", "gaussian", "none"}
        The decoder likelihood. None (default): as trained, from ``rec_dist`` (bernoulli:
        Bernoulli, binary images only; gaussian: a Gaussian of sigma sqrt(1/510) on [0, 1];
        laplace: none). ``"gaussian"`` evaluates grey levels with a discretized Gaussian around
        the decoder's output; ``"bernoulli"`` treats it as the probability of level 255.
    sigma : float, optional
        The Gaussian's standard deviation on [0, 1]; required with ``likelihood="gaussian"``
        unless the model was trained with ``rec_dist="gaussian"`` (its own sigma). A choice:
        the bound depends on it.
    device : str or torch.device, optional

    Examples
    --------
    >>> probe = vp.load("results/btcvae_mnist")  # doctest: +SKIP
    >>> probe.layers[0].channels, probe.likelihood_kind  # doctest: +SKIP
    (10, 'discretized')
    >>> grey = vp.load("results/btcvae_mnist", likelihood="gaussian", sigma=0.1)  # doctest: +SKIP
    """
    specs_path, weights_path, specs = read_specs(path, "a disentangling-vae results folder")
    image_shape, latent_dim = _check_specs(specs, specs_path)
    chosen = _likelihood(specs.get("rec_dist"), likelihood, sigma)
    model = BurgessVAE(image_shape, latent_dim)
    state = read_tensors(weights_path)
    check_state_dict(model, state, weights_path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    source = file_source(weights_path, [specs_path, weights_path])
    source.update(rec_dist=str(specs["rec_dist"]), loss=str(specs.get("loss", "")),
                  likelihood_choice=chosen["likelihood"])
    if chosen["likelihood"] == "gaussian":  # a fixed sigma: interpretation warnings say so
        source.update(decoder_likelihood="fixed", decoder_sigma=chosen["sigma"])
    probe = ModuleProbe(model, image_shape, encoder_output="interleaved", scale="logvar",
                        decoder_output="probabilities", device=device, source=source, **chosen)
    probe.gaussian_hint = gaussian_hint(weights_path.parent)
    return probe


__all__ = ["BurgessVAE", "open_disvae", "sniff"]


formats.register("disvae", Format(
    "vaeprobe.adapters.disvae:open_disvae", sniff,
    "a disentangling-vae results folder: specs.json (model_type, rec_dist) + model.pt"))
