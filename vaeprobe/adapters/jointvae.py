"""A JointVAE ``trained_models/<name>`` folder (Schlumberger/joint-vae) as a Probe.

The folder holds ``specs.json`` (``dataset``, ``latent_spec`` = {"cont": D, "disc": [K1, ...]})
and ``model.pt`` (a plain state dict). The network is JointVAE's, written here with its keys:
``img_to_features`` (4x4 stride-2 convolutions 32, (32 at 64x64), 64, 64 with ReLU),
``features_to_hidden`` (256 ReLU units), heads ``fc_mean`` / ``fc_log_var`` (Gaussian) and
``fc_alphas.i`` (softmax: one categorical per discrete latent), ``latent_to_features`` and
``features_to_img`` (transposed convolutions ending in a sigmoid). The decoder reads the
concatenation [continuous z, one-hot of each discrete latent].

As a Probe, layers in that order: ``cont`` (D, 1, 1), a Gaussian layer with prior N(0, I), and
``disc0``, ``disc1``, ... (K, 1, 1), **categorical** layers whose prior is uniform; the KL of
each is analytic (``vp.rate`` shows both kinds per layer, as JointVAE's loss computes them).
The decoder is a Bernoulli likelihood (JointVAE trains with binary cross-entropy) unless the
format's option ``likelihood="gaussian"`` (with ``sigma``) asks for a Gaussian; images are
on [0, 1] (MNIST and Fashion-MNIST at 32x32; dSprites, chairs at 64x64; CelebA (3, 64, 64)).

The discrete latents are **sampled**, not marginalised, and not relaxed: a posterior draw
takes an exact one-hot sample of q(c|x) (Gumbel-max, the limit of JointVAE's Gumbel-softmax at
temperature 0), so an importance sample of ``vp.iwae`` is (z, c) ~ q(z|x) q(c|x) and its weight
includes log p(c) - log q(c|x); ``posterior="mean"`` takes the Gaussian mean and the most likely
category (as JointVAE reconstructs in eval mode); prior samples draw c uniformly
(``temperature`` scales the Gaussian layer only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaeprobe.adapters._common import (
    MeanOnly,
    check_size,
    choose_likelihood,
    file_source,
    gaussian_hint,
    read_specs,
    read_tensors,
    sniff_specs,
    spec_int,
)
from vaeprobe.adapters.bernoulli import FROM_MODULE_GAUSSIAN, Bernoulli
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.distributed import resolve_device
from vaeprobe.io import check_state_dict
from vaeprobe.models.likelihoods import DiscretizedGaussian
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerDraw,
    LayerInfo,
    RepeatedRows,
    SharedEncoderProbe,
    categorical_draw,
    categorical_kl,
    categorical_moments,
    gaussian_kl,
)

IMAGE_SHAPES = {"mnist": (1, 32, 32), "fashion_mnist": (1, 32, 32), "dsprites": (1, 64, 64),
                "chairs": (1, 64, 64), "celeba": (3, 64, 64)}  # as JointVAE's load_model
HIDDEN, FEATURES = 256, (64, 4, 4)
MAX_DISCRETE = 1024  # discrete latents in one latent_spec


def _conv(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)


def _deconv(c_in, c_out):
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)


class JointVAE(nn.Module):
    """JointVAE's networks with its state-dict keys; the heads give (mean, logvar, logits)."""

    def __init__(self, image_shape: tuple, continuous: int, discrete: list[int]):
        super().__init__()
        channels, is_64 = image_shape[0], tuple(image_shape[1:]) == (64, 64)
        widths = [channels, 32] + [32] * is_64 + [64, 64]
        encoder = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [_conv(c_in, c_out), nn.ReLU()]
        self.img_to_features = nn.Sequential(*encoder)
        self.features_to_hidden = nn.Sequential(nn.Linear(math.prod(FEATURES), HIDDEN), nn.ReLU())
        self.continuous, self.discrete = continuous, list(discrete)
        if continuous:
            self.fc_mean, self.fc_log_var = (nn.Linear(HIDDEN, continuous),
                                             nn.Linear(HIDDEN, continuous))
        if self.discrete:
            self.fc_alphas = nn.ModuleList(nn.Linear(HIDDEN, k) for k in self.discrete)
        self.latent_to_features = nn.Sequential(
            nn.Linear(continuous + sum(self.discrete), HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, math.prod(FEATURES)), nn.ReLU())
        decoder = [_deconv(64, 64), nn.ReLU()] if is_64 else []
        decoder += [_deconv(64, 32), nn.ReLU(), _deconv(32, 32), nn.ReLU(), _deconv(32, channels)]
        self.features_to_img = nn.Sequential(*decoder, nn.Sigmoid())

    def encode(self, x):
        """x on [0, 1] -> (mean, logvar) (B, D) or None, and log-probabilities [(B, K), ...]."""
        hidden = self.features_to_hidden(self.img_to_features(x).flatten(1))
        gaussian = (self.fc_mean(hidden), self.fc_log_var(hidden)) if self.continuous else None
        log_probs = [F.log_softmax(head(hidden), dim=1) for head in getattr(self, "fc_alphas", [])]
        return gaussian, log_probs

    def decode(self, latent):
        """latent (B, D + sum K): [z, one-hots] -> Bernoulli probabilities (B, C, H, W)."""
        return self.features_to_img(self.latent_to_features(latent).reshape(-1, *FEATURES))


class JointVAEProbe(SharedEncoderProbe):
    """A JointVAE: a Gaussian layer ``cont`` and categorical layers ``disc0``, ...; see the
    module docstring for how the discrete latents are drawn."""

    def __init__(self, model: JointVAE, image_shape: tuple, device=None, source=None,
                 likelihood: str = "bernoulli", sigma: float | None = None):
        super().__init__(source)
        self.likelihood, self.sigma = likelihood, sigma  # see open_jointvae
        self.likelihood_kind = "none" if likelihood == "none" else "discretized"
        self.gaussian_hint = FROM_MODULE_GAUSSIAN
        self.image_shape = tuple(image_shape)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.layers = ([LayerInfo("cont", (1, 1), model.continuous)] if model.continuous else [])
        self.layers += [LayerInfo(f"disc{i}", (1, 1), k) for i, k in enumerate(model.discrete)]

    @torch.no_grad()
    def _shared(self, x):
        gaussian, log_probs = self.model.encode(x.float() / 255.0)
        parts = [] if gaussian is None else [gaussian[0], 0.5 * gaussian[1]]  # mean, logstd
        return RepeatedRows([p[:, :, None, None].float() for p in parts + log_probs])

    def _draw(self, shared, k: int, noise) -> LatentPass:
        parts, draws = shared.rows(k), []
        if self.model.continuous:
            mean, logstd = parts[:2]
            zeros = torch.zeros_like(mean)
            draws.append(LayerDraw(p_mean=zeros, p_logstd=zeros, z=mean + logstd.exp() * noise[0],
                                   q_mean=mean, q_logstd=logstd,
                                   kl=gaussian_kl(mean, logstd, zeros, zeros)))
        offset = 2 * bool(self.model.continuous)
        for q_log_probs in parts[offset:]:
            # posterior="mean" gives zero noise: the same Gumbel offset everywhere, so the mode
            draws.append(self._categorical(q_log_probs, noise[len(draws)]))
        return LatentPass(draws, k)

    @staticmethod
    def _categorical(q_log_probs, noise, prior_only: bool = False) -> LayerDraw:
        p_log_probs = torch.full_like(q_log_probs, -math.log(q_log_probs.shape[1]))  # uniform
        p_mean, p_logstd = categorical_moments(p_log_probs)
        if prior_only:
            return LayerDraw(p_mean=p_mean, p_logstd=p_logstd, z=categorical_draw(p_log_probs,
                                                                                  noise),
                             distribution="categorical", p_log_probs=p_log_probs)
        q_mean, q_logstd = categorical_moments(q_log_probs)
        return LayerDraw(p_mean=p_mean, p_logstd=p_logstd, z=categorical_draw(q_log_probs, noise),
                         q_mean=q_mean, q_logstd=q_logstd,
                         kl=categorical_kl(q_log_probs, p_log_probs),
                         distribution="categorical", q_log_probs=q_log_probs,
                         p_log_probs=p_log_probs)

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        latent = torch.cat([draw.z.flatten(1) for draw in latents.draws], dim=1)
        mean = self.model.decode(latent).float()  # (B, C, H, W) on [0, 1]
        if self.likelihood == "gaussian":
            log_sigma = torch.tensor(math.log(self.sigma), device=mean.device)
            return DiscretizedGaussian(mean, log_sigma, "fixed")
        if self.likelihood == "none":
            return MeanOnly(mean, self.name)
        return Bernoulli(mean, gaussian_hint=self.gaussian_hint)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        noise, draws = self.noise(n, 1, generator), []
        if self.model.continuous:
            z = noise[0] * float(temperature)
            zeros = torch.zeros_like(z)
            draws.append(LayerDraw(p_mean=zeros, p_logstd=zeros, z=z))
        for k in self.model.discrete:
            uniform = torch.full((n, k, 1, 1), -math.log(k), device=self.device)
            draws.append(self._categorical(uniform, noise[len(draws)], prior_only=True))
        return LatentPass(draws, 1)


def sniff(path: Path) -> bool:
    """A folder (or its ``model.pt``) whose ``specs.json`` has JointVAE's ``latent_spec``."""
    specs = sniff_specs(path)
    return specs is not None and "latent_spec" in specs


def _spec(specs: dict, path: Path) -> tuple[tuple, int, list[int]]:
    dataset, latent_spec = specs.get("dataset"), specs.get("latent_spec") or {}
    if not isinstance(dataset, str) or dataset not in IMAGE_SHAPES:
        raise ValueError(f"{path}: dataset {dataset!r} has no known image size; JointVAE's "
                         f"datasets are {sorted(IMAGE_SHAPES)}")
    disc = latent_spec.get("disc", []) if isinstance(latent_spec, dict) else None
    if not isinstance(disc, list) or len(disc) > MAX_DISCRETE:
        raise ValueError(f"{path}: latent_spec must be an object {{\"cont\": D, \"disc\": "
                         f"[K1, ...]}} with at most {MAX_DISCRETE} discrete latents, got "
                         f"{latent_spec!r}"[:400])
    continuous = spec_int(latent_spec.get("cont", 0), "latent_spec.cont", path, low=0)
    discrete = [spec_int(k, "latent_spec.disc", path, low=2) for k in disc]
    if not continuous and not discrete:
        raise ValueError(f"{path}: latent_spec needs 'cont' and/or 'disc', got {latent_spec!r}")
    shape = IMAGE_SHAPES[dataset]
    check_size(lambda: JointVAE(shape, continuous, discrete), 8 * math.prod(shape)
               + 4 * (continuous + sum(discrete)) + 4 * HIDDEN, path, "latent_spec")
    return shape, continuous, discrete


def open_jointvae(path: Path, *, likelihood: str | None = None, sigma: float | None = None,
                  device=None) -> JointVAEProbe:
    """Open a JointVAE ``trained_models/<name>`` folder (``specs.json`` + ``model.pt``).

    Parameters
    ----------
    path : Path
        The folder or its ``model.pt``.
    likelihood : {None, "bernoulli", "gaussian", "none"}
        The decoder likelihood. None (default): Bernoulli, as JointVAE trains (binary
        cross-entropy; binary images only). ``"gaussian"``: a discretized Gaussian of standard
        deviation ``sigma`` on [0, 1] around the decoder's output, for grey or colour levels.
    sigma : float, optional
        Required with ``likelihood="gaussian"`` (JointVAE has no sigma of its own: a choice,
        and the bound depends on it).
    device : str or torch.device, optional

    Examples
    --------
    >>> probe = vp.load("trained_models/mnist")  # doctest: +SKIP
    >>> [layer.name for layer in probe.layers]  # doctest: +SKIP
    ['cont', 'disc0']
    """
    specs_path, weights_path, specs = read_specs(path, "a JointVAE model folder")
    image_shape, continuous, discrete = _spec(specs, specs_path)
    chosen, sigma = choose_likelihood(likelihood, sigma, "bernoulli")
    model = JointVAE(image_shape, continuous, discrete)
    state = read_tensors(weights_path)
    check_state_dict(model, state, weights_path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    source = file_source(weights_path, [specs_path, weights_path])
    source.update(latent_spec=json.dumps(specs["latent_spec"], sort_keys=True),
                  discrete_latents="sampled (exact one-hot draws of q(c|x); prior uniform)",
                  likelihood_choice=chosen)
    if chosen == "gaussian":
        source.update(decoder_likelihood="fixed", decoder_sigma=sigma)
    probe = JointVAEProbe(model, image_shape, device, source, chosen, sigma)
    probe.gaussian_hint = gaussian_hint(weights_path.parent)
    return probe


__all__ = ["JointVAE", "JointVAEProbe", "open_jointvae", "sniff"]


formats.register("jointvae", Format(
    "vaeprobe.adapters.jointvae:open_jointvae", sniff,
    "a JointVAE trained_models folder: specs.json (latent_spec) + model.pt"))
