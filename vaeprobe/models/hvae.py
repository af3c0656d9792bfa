"""A VDVAE-style hierarchical VAE (Child 2020) with precision-weighted merging (Sonderby 2016).

Bottom-up: a residual encoder of bottleneck blocks gives one activation per resolution.
Top-down: latent layers laid out per resolution (coarse to fine). Layer l has a prior
p(z_l | z_<l) computed from the top-down state h, and a posterior computed from h and the
bottom-up activation at its resolution, merged by concatenation (VDVAE) or by
precision-weighted merging of a bottom-up Gaussian with the prior (the paper's choice).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaeprobe.models.likelihoods import LIKELIHOODS, LikelihoodHead
from vaeprobe.models.terms import Terms, terms
from vaeprobe.probe import LayerDraw, gaussian_kl, per_layer_temperatures

MERGES = ("precision", "concat")


@dataclass(frozen=True)
class HVAEConfig:
    image_channels: int = 3  # 1 (grey) or 3 (RGB)
    image_size: int = 32  # square images, side in pixels
    width: int = 128  # channels of the residual stream
    bottleneck: int = 32  # channels inside each bottleneck block
    latent_channels: int = 16  # channels of every latent layer
    # (resolution, number of latent layers), top (coarsest) to bottom; the last is image_size
    layers: tuple[tuple[int, int], ...] = ((1, 2), (4, 4), (8, 10), (16, 16), (32, 16))
    encoder_blocks: int = 2  # bottom-up residual blocks per resolution
    merge: str = "precision"  # posterior merge: "precision" (Sonderby) or "concat" (VDVAE)
    likelihood: str = "fixed"  # decoder: fixed | learned | optimal | per_pixel | dmol
    sigma: float = 1.0  # decoder sigma on the [0, 1] scale for likelihood="fixed"
    n_mixtures: int = 10  # logistic components for likelihood="dmol"
    condition_channels: int = 0  # >0: a two-stage secondary conditioned on an image x_hat
    residual: bool = False  # the decoder predicts a residual added to the conditioning image
    # residual models: the inference network sees g (x - condition) instead of x, and the head's
    # output is divided by g, so both work on an O(1) residual (0: x as is, an unscaled output)
    residual_gain: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(tuple(pair) for pair in self.layers))
        resolutions = [r for r, _ in self.layers]
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if resolutions != sorted(set(resolutions)) or resolutions[-1] != self.image_size:
            raise ValueError(f"layers must go from coarse to fine with distinct resolutions and "
                             f"end at image_size={self.image_size}, got {self.layers}")
        for coarse, fine in zip(resolutions, resolutions[1:], strict=False):
            if fine % coarse:
                raise ValueError(f"resolution {coarse} does not divide {fine} in {self.layers}")
        if any(n < 1 for _, n in self.layers):
            raise ValueError(f"every resolution needs >= 1 latent layer, got {self.layers}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.residual_gain < 0 or (self.residual_gain and not self.residual):
            raise ValueError(f"residual_gain must be >= 0 and needs residual=True, got "
                             f"{self.residual_gain} with residual={self.residual}")

    @property
    def n_latent_layers(self) -> int:
        return sum(n for _, n in self.layers)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> HVAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown HVAE config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


class Block(nn.Module):
    """VDVAE bottleneck block: 1x1 -> 3x3 -> 3x3 -> 1x1 with GELUs, optionally residual."""

    def __init__(self, in_ch: int, mid: int, out_ch: int, *, residual: bool, resolution: int,
                 last_scale: float = 1.0):
        super().__init__()
        kernel = 3 if resolution > 2 else 1  # 3x3 on a 1x1 or 2x2 map only sees padding
        self.residual = residual
        self.convs = nn.ModuleList([
            nn.Conv2d(in_ch, mid, 1), nn.Conv2d(mid, mid, kernel, padding=kernel // 2),
            nn.Conv2d(mid, mid, kernel, padding=kernel // 2), nn.Conv2d(mid, out_ch, 1),
        ])
        with torch.no_grad():  # scale the last conv so deep stacks start near identity
            self.convs[-1].weight.mul_(last_scale)
            if last_scale == 0:
                self.convs[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = conv(F.gelu(out))
        return x + out if self.residual else out


class Encoder(nn.Module):
    """Bottom-up: image -> {resolution: activation (B, width, r, r)}."""

    def __init__(self, in_channels: int, config: HVAEConfig):
        super().__init__()
        self.resolutions = [r for r, _ in config.layers][::-1]  # fine to coarse
        n_blocks = config.encoder_blocks * len(self.resolutions)
        self.in_conv = nn.Conv2d(in_channels, config.width, 3, padding=1)
        self.stages = nn.ModuleList([
            nn.Sequential(*[
                Block(config.width, config.bottleneck, config.width, residual=True,
                      resolution=r, last_scale=math.sqrt(1 / n_blocks))
                for _ in range(config.encoder_blocks)
            ]) for r in self.resolutions
        ])

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        h = self.in_conv(x)
        activations = {}
        for resolution, stage in zip(self.resolutions, self.stages, strict=True):
            if h.shape[-1] != resolution:
                h = F.avg_pool2d(h, h.shape[-1] // resolution)
            h = stage(h)
            activations[resolution] = h
        return activations


class TopDownLayer(nn.Module):
    def __init__(self, config: HVAEConfig, resolution: int):
        super().__init__()
        width, mid, zdim = config.width, config.bottleneck, config.latent_channels
        scale = math.sqrt(1 / config.n_latent_layers)
        self.zdim, self.merge = zdim, config.merge
        # prior: mean, log std, and a residual update of h; zero-init so the prior starts N(0, I)
        self.prior = Block(width, mid, 2 * zdim + width, residual=False, resolution=resolution,
                           last_scale=0.0)
        self.posterior = Block(2 * width, mid, 2 * zdim, residual=False, resolution=resolution)
        self.z_proj = nn.Conv2d(zdim, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.resnet = Block(width, mid, width, residual=True, resolution=resolution,
                            last_scale=scale)

    def posterior_context(self, activation: torch.Tensor) -> torch.Tensor:
        """The activation's share of the posterior's first 1x1 conv: (B, bottleneck, r, r).

        conv(gelu(cat(h, a))) = W_h gelu(h) + W_a gelu(a) + b, and W_a gelu(a) depends on the
        image alone: computed once per image, it is shared by every posterior draw.
        """
        first = self.posterior.convs[0]
        width = activation.shape[1]
        return F.conv2d(F.gelu(activation), first.weight[:, -width:])

    def _posterior(self, h: torch.Tensor, context: torch.Tensor):
        first = self.posterior.convs[0]
        out = F.conv2d(F.gelu(h), first.weight[:, :h.shape[1]], first.bias) + context
        for conv in self.posterior.convs[1:]:
            out = conv(F.gelu(out))
        return out.chunk(2, 1)

    def forward(self, h, context=None, z=None, temperature=1.0, noise=None):
        """One layer: returns the new state and the draw. With ``context``, z ~ q; else p.

        ``context``: :meth:`posterior_context` of the bottom-up activation at this resolution.
        ``noise`` (shaped like z) is the standard normal draw; None draws from torch's RNG.
        """
        prior = self.prior(h)
        p_mean, p_logstd, h_update = prior.split(
            [self.zdim, self.zdim, prior.shape[1] - 2 * self.zdim], dim=1)
        draw = LayerDraw(p_mean=p_mean, p_logstd=p_logstd, z=z)
        if noise is None and z is None:
            noise = torch.randn_like(p_mean)
        if context is not None:
            q_mean, q_logstd = self._posterior(h, context)
            if self.merge == "precision":  # combine the bottom-up Gaussian with the prior
                log_precision = torch.logaddexp(-2 * q_logstd, -2 * p_logstd)
                q_mean = (q_mean * torch.exp(-2 * q_logstd - log_precision)
                          + p_mean * torch.exp(-2 * p_logstd - log_precision))
                q_logstd = -0.5 * log_precision
            draw.q_mean, draw.q_logstd = q_mean, q_logstd
            if z is None:
                draw.z = q_mean + torch.exp(q_logstd) * noise
            draw.kl = gaussian_kl(*map(_full, (q_mean, q_logstd, p_mean, p_logstd)))
        elif z is None:
            draw.z = p_mean + temperature * torch.exp(p_logstd) * noise
        h = self.resnet(h + h_update + self.z_proj(draw.z))
        return h, draw


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for a half-precision tensor (a bf16 autocast pass): the KL keeps full
    precision; any other tensor as it is."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


class HVAE(nn.Module):
    """Hierarchical VAE. Inputs are uint8 images; latents and likelihood are explicit.

    Examples
    --------
    >>> config = HVAEConfig(image_channels=1, image_size=8, width=8, bottleneck=4,
    ...                     latent_channels=2, layers=((1, 1), (8, 1)), encoder_blocks=1)
    >>> model = HVAE(config)
    >>> [(layer["name"], layer["resolution"]) for layer in model.layer_info()]
    [('z00_r1', (1, 1)), ('z01_r8', (8, 8))]
    """

    def __init__(self, config: HVAEConfig):
        super().__init__()
        self.config = config
        c = config.image_channels
        self.encoder = Encoder(c + config.condition_channels, config)
        self.condition_encoder = (Encoder(config.condition_channels, config)
                                  if config.condition_channels else None)
        self.layer_resolutions = [r for r, n in config.layers for _ in range(n)]
        self.decoder_layers = nn.ModuleList([TopDownLayer(config, r)
                                             for r in self.layer_resolutions])
        top = config.layers[0][0]
        self.initial_state = nn.Parameter(torch.zeros(1, config.width, top, top))
        self.head = LikelihoodHead(config.likelihood, config.width, c, sigma=config.sigma,
                                   n_mixtures=config.n_mixtures,
                                   zero_init=config.residual and not config.residual_gain)

    # ---- facts -------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.image_channels, self.config.image_size, self.config.image_size)

    def layer_info(self) -> list[dict]:
        return [dict(name=f"z{i:02d}_r{r}", resolution=(r, r),
                     channels=self.config.latent_channels)
                for i, r in enumerate(self.layer_resolutions)]

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of every latent layer, top to bottom."""
        c = self.config.latent_channels
        return [(c, r, r) for r in self.layer_resolutions]

    # ---- passes ------------------------------------------------------------------------------
    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1], the networks' input scale."""
        return x.float() / 127.5 - 1.0

    def bottom_up(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """Deterministic encoder work, once per image: {resolution: activation}."""
        inputs = self.preprocess(x)
        if self.config.residual_gain:  # the same information as x, at the scale of an image
            inputs = (x.float() / 255.0 - condition) * self.config.residual_gain
        if self.condition_encoder is not None:
            inputs = torch.cat([inputs, condition * 2 - 1], 1)
        return self.encoder(inputs)

    def condition_features(self, condition: torch.Tensor | None):
        """U-Net-style features of the conditioning image x_hat at every resolution."""
        if self.condition_encoder is None:
            return None
        if condition is None:
            raise ValueError("this model is conditional: pass condition= (x_hat in [0, 1])")
        return self.condition_encoder(condition * 2 - 1)

    def posterior_contexts(self, activations: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Per-image posterior inputs of every layer (see TopDownLayer.posterior_context)."""
        return [layer.posterior_context(activations[resolution]) for layer, resolution in
                zip(self.decoder_layers, self.layer_resolutions, strict=True)]

    def top_down(self, activations=None, *, contexts=None, batch: int | None = None, zs=None,
                 temperature=1.0, condition_features=None, noise=None):
        """Run the decoder. Posterior draws given ``activations`` or ``contexts``, else prior.

        ``contexts``: :meth:`posterior_contexts` (repeated per draw), instead of activations.
        ``zs``: a list of latents to use instead of drawing (one per layer, or None entries).
        ``temperature``: one float or one per layer (prior draws only).
        ``noise``: a list of standard normal draws, one per layer (see :meth:`latent_shapes`).
        Returns (final state h, list of LayerDraw).
        """
        if activations is not None and contexts is None:
            contexts = self.posterior_contexts(activations)
        if batch is None:
            batch = contexts[0].shape[0]
        n_layers = len(self.decoder_layers)
        temperatures = per_layer_temperatures(temperature, n_layers)
        zs = [None] * n_layers if zs is None else list(zs)
        noise = [None] * n_layers if noise is None else list(noise)
        h = self.initial_state.expand(batch, -1, -1, -1)
        previous, draws = None, []
        for index, (layer, resolution) in enumerate(
                zip(self.decoder_layers, self.layer_resolutions, strict=True)):
            if resolution != previous:
                if h.shape[-1] != resolution:
                    h = F.interpolate(h, size=(resolution, resolution), mode="nearest")
                if condition_features is not None:
                    h = h + condition_features[resolution]
                previous = resolution
            context = None if contexts is None else contexts[index]
            h, draw = layer(h, context, z=zs[index], temperature=temperatures[index],
                            noise=noise[index])
            draws.append(draw)
        return h, draws

    def likelihood(self, h: torch.Tensor, condition: torch.Tensor | None = None, target=None):
        base = condition if self.config.residual else None
        return self.head(h, residual_base=base, target=target,
                         residual_scale=1 / (self.config.residual_gain or 1.0))

    def posterior_pass(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                       noise=None):
        """(likelihood, draws) with z ~ q(z | x).

        ``noise``: standard normal draws per layer (see :meth:`latent_shapes`); None uses
        torch's global RNG.
        """
        activations = self.bottom_up(x, condition)
        h, draws = self.top_down(activations, noise=noise,
                                 condition_features=self.condition_features(condition))
        return self.likelihood(h, condition, target=x), draws

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None, noise=None,
                generator=None) -> Terms:
        """Training pass: the model's own :class:`~vaeprobe.models.terms.Terms` (rate,
        distortion, log p(x|z) per image) with z ~ q(z | x).

        ``noise`` as for :meth:`posterior_pass`; ``generator``: for the dequantization noise of
        log p(x|z) (one, or one per image).
        """
        likelihood, draws = self.posterior_pass(x, condition, noise)
        return terms(likelihood, draws, x, generator)


PRESETS = {  # name -> HVAEConfig (the trainer keeps its own settings per preset)
    # tiny test-size models: grey 8x8 (digits8) and RGB 16x16 (patches16)
    "tiny-8": HVAEConfig(image_channels=1, image_size=8, width=16, bottleneck=8,
                         latent_channels=2, layers=((1, 1), (4, 1), (8, 1)), encoder_blocks=1),
    "tiny-16": HVAEConfig(image_channels=3, image_size=16, width=16, bottleneck=8,
                          latent_channels=4, layers=((1, 1), (4, 1), (8, 1), (16, 1)),
                          encoder_blocks=1),
    # tiny: trains in minutes on 2 CPU cores
    "demo-cpu": HVAEConfig(image_channels=3, image_size=32, width=32, bottleneck=16,
                           latent_channels=4, layers=((1, 1), (4, 2), (8, 2), (16, 2), (32, 1)),
                           encoder_blocks=1),
    # Appendix A.1: 2 @ 1x1, 4 @ 4x4, 10 @ 8x8, 16 @ 16x16, 16 @ 32x32; width 128, bottleneck 32
    "paper-svhn": HVAEConfig(image_channels=3, image_size=32, width=128, bottleneck=32,
                             latent_channels=16, encoder_blocks=3),
    # CelebA: the SVHN layout plus 8 layers at 64x64
    "paper-celeba": HVAEConfig(image_channels=3, image_size=64, width=128, bottleneck=32,
                               latent_channels=16, encoder_blocks=3,
                               layers=((1, 2), (4, 4), (8, 10), (16, 16), (32, 16), (64, 8))),
}


@dataclass(frozen=True)
class Preset:
    """Deprecated: a named model; the training settings per preset are the trainer's
    (``trainers.config.PRESETS``)."""

    model: HVAEConfig
    training: tuple[tuple[str, object], ...] = ()


def __getattr__(name: str):
    if name == "PRESET_TABLE":
        import warnings

        warnings.warn("vaeprobe.models.PRESET_TABLE is deprecated: the model configs are "
                      "vaeprobe.models.PRESETS, the training settings per preset "
                      "trainers.config.PRESETS", DeprecationWarning, stacklevel=2)
        return {name: Preset(config) for name, config in PRESETS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preset(name: str, **overrides) -> HVAEConfig:
    """A named model config, with fields overridden (e.g. ``image_channels=1``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
