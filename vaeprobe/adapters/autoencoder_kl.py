"""diffusers' ``AutoencoderKL`` network written without diffusers: its config (every key
checked before anything is built, and the memory it needs) and its modules, with the same
names as diffusers' ``Encoder`` / ``Decoder`` so that its state dict loads strictly.

The Probe over it and the opening of a diffusers folder are :mod:`vaeprobe.adapters.diffusers`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaeprobe import validate
from vaeprobe.adapters._tiling import tiled

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps log variances
EPS = 1e-6  # every GroupNorm of diffusers' VAE encoder and decoder


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """The architecture keys of diffusers' ``AutoencoderKL`` config.json (same defaults)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple = 32  # the training image size; the network is convolutional
    scaling_factor: float = 0.18215  # what the diffusion model multiplies z by (provenance)
    shift_factor: float | None = None  # subtracted before scaling (provenance)
    latents_mean: tuple | None = None
    latents_std: tuple | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def from_json(cls, config: dict, path: Path) -> AutoencoderKLConfig:
        """The config of ``path`` with every architecture key checked (type, range,
        consistency) before anything is built."""
        validate.check_fields(config, CONFIG_SPEC, path)
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if config.get("_class_name") != "AutoencoderKL":
            raise ValueError(f"{path} describes a {config.get('_class_name')!r}, not an "
                             f"'AutoencoderKL'; vaeprobe's diffusers format reads AutoencoderKL "
                             f"folders only")
        if unknown:
            raise ValueError(f"{path} has config keys this AutoencoderKL does not know: "
                             f"{unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
                  if k in known}
        config = cls(**values)
        for kind, expected in (("down_block_types", "DownEncoderBlock2D"),
                               ("up_block_types", "UpDecoderBlock2D")):
            if any(t != expected for t in getattr(config, kind)):
                raise ValueError(f"{path}: only {expected} blocks are supported, got "
                                 f"{kind}={list(getattr(config, kind))}")
        if config.act_fn not in ("silu", "swish"):
            raise ValueError(f"{path}: act_fn {config.act_fn!r} is not supported (silu only)")
        _check_consistency(config, path)
        return config


# key -> (kind, low, high): what a diffusers AutoencoderKL config.json may hold (bounds far above
# every released autoencoder; the memory estimate guards the combinations)
CONFIG_SPEC = {
    "in_channels": ("int", 1, 64), "out_channels": ("int", 1, 64),
    "down_block_types": ("strs", None, None), "up_block_types": ("strs", None, None),
    "block_out_channels": ("ints", 1, 65536), "layers_per_block": ("int", 1, 64),
    "act_fn": ("str", None, None), "latent_channels": ("int", 1, 4096),
    "norm_num_groups": ("int", 1, 65536), "scaling_factor": ("float", None, None),
    "force_upcast": ("bool", None, None), "use_quant_conv": ("bool", None, None),
    "use_post_quant_conv": ("bool", None, None), "mid_block_add_attention": ("bool", None, None),
}
MAX_BLOCKS = 12  # downsampling by 2^11: far beyond any released autoencoder


def _check_consistency(config: AutoencoderKLConfig, path: Path) -> None:
    """What the keys must agree on: one block type per width, widths divisible by the groups,
    a plausible number of blocks, numbers where the optional factors are given."""
    widths = config.block_out_channels
    if len(widths) > MAX_BLOCKS:
        raise validate.ConfigError(f"{path}: block_out_channels has {len(widths)} entries; at "
                                   f"most {MAX_BLOCKS} blocks are supported")
    for kind in ("down_block_types", "up_block_types"):
        if len(getattr(config, kind)) != len(widths):
            raise validate.ConfigError(
                f"{path}: {kind} has {len(getattr(config, kind))} entries but "
                f"block_out_channels has {len(widths)}; they must match")
    bad = [w for w in widths if w % config.norm_num_groups]
    if bad:
        raise validate.ConfigError(f"{path}: norm_num_groups {config.norm_num_groups} must "
                                   f"divide every block_out_channels entry; {bad} do not")
    for key in ("shift_factor",):
        value = getattr(config, key)
        if value is not None:
            validate.check_value(value, "float", str(path), key)
    for key in ("latents_mean", "latents_std"):  # per-channel shift and spread (SDXL-style)
        values = getattr(config, key)
        if values is not None and (not isinstance(values, tuple)
                                   or len(values) != config.latent_channels):
            raise validate.ConfigError(f"{path}: {key} must be null or a list of "
                                       f"latent_channels={config.latent_channels} numbers, got "
                                       f"{list(values) if isinstance(values, tuple) else values}")
        for value in values or ():
            validate.check_value(value, "float", str(path), key)
    size = config.sample_size
    if isinstance(size, tuple):
        validate.check_value(list(size), "ints", str(path), "sample_size", 1, 1 << 16)
    else:
        validate.check_value(size, "int", str(path), "sample_size", 1, 1 << 16)


def check_budget(config: AutoencoderKLConfig, image_size: tuple[int, int], path: Path) -> int:
    """Refuse, before building, a network whose weights plus one image's activations exceed the
    memory limit; return the parameter count (the meta-device build allocates nothing)."""
    parameters = validate.count_parameters(lambda: AutoencoderKL(config))
    widths, (height, width) = config.block_out_channels, image_size
    levels = [w * (height >> i) * (width >> i) for i, w in enumerate(widths)]
    pixels = (height >> (len(widths) - 1)) * (width >> (len(widths) - 1))
    attention = pixels * pixels if config.mid_block_add_attention else 0  # (hw)^2 scores
    activations = 4 * max(levels) + attention + 4 * widths[-1] * pixels
    validate.check_budget(parameters=parameters, activations=activations, file=path,
                          key=f"block_out_channels={list(widths)} at image size "
                              f"{height}x{width}")
    return parameters


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                              if in_channels != out_channels else None)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over pixels with a residual (diffusers' VAE mid block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        batch, channels, height, width = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        attended = F.scaled_dot_product_attention(self.to_q(h)[:, None], self.to_k(h)[:, None],
                                                  self.to_v(h)[:, None])[:, 0]
        out = self.to_out[0](attended).transpose(1, 2).reshape(batch, channels, height, width)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups),
                                      ResnetBlock2D(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 conv3x3 (diffusers' padding=0 variant)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional resampler."""

    def __init__(self, in_channels, out_channels, n_layers, groups, resample, attribute):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(n_layers)])
        self.attribute = attribute
        setattr(self, attribute, nn.ModuleList([resample(out_channels)] if resample else []))

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, self.attribute):
            x = resample(x)
        return x


class Encoder(nn.Module):
    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Block(widths[max(i - 1, 0)], width, config.layers_per_block, groups,
                  Downsample if i < len(widths) - 1 else None, "downsamplers")
            for i, width in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        widths, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([
            Block(widths[max(i - 1, 0)], width, config.layers_per_block + 1, groups,
                  Upsample if i < len(widths) - 1 else None, "upsamplers")
            for i, width in enumerate(widths)])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL: same state-dict keys, same maths (no tiling or slicing)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.use_quant_conv else None
        self.post_quant_conv = (nn.Conv2d(latent, latent, 1) if config.use_post_quant_conv
                                else None)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def moments(self, x11: torch.Tensor, tile_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logstd) of images on the [-1, 1] scale, (B, latent, h, w) each.

        ``tile_size`` > 0: images taller or wider than it are encoded in overlapping tiles of
        that many pixels, blended in latent space (:mod:`vaeprobe.adapters._tiling`)."""
        if tile_size and max(x11.shape[-2:]) > tile_size:
            moments = tiled(x11, self._moments, tile_size, tile_size // self.downsampling)
        else:
            moments = self._moments(x11)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, 0.5 * logvar.clamp(*LOGVAR_RANGE)

    def _moments(self, x11: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x11)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def decode(self, z: torch.Tensor, tile_size: int = 0) -> torch.Tensor:
        """Images on the [-1, 1] scale (not clipped); ``tile_size`` > 0: latents larger than
        ``tile_size / f`` are decoded in overlapping tiles, blended in pixel space."""
        latent_tile = tile_size // self.downsampling
        if tile_size and max(z.shape[-2:]) > latent_tile:
            return tiled(z, self._decode, latent_tile, tile_size)
        return self._decode(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def rename_deprecated(state: dict) -> dict:
    """Old diffusers files name the attention projections query/key/value/proj_attn."""
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
               ".proj_attn.": ".to_out.0."}
    renamed = {}
    for key, value in state.items():
        if ".attentions." in key:
            for old, new in renames.items():
                key = key.replace(old, new)
        renamed[key] = value
    return renamed
