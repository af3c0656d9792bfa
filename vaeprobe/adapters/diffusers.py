"""diffusers' ``AutoencoderKL`` (the latent-diffusion VAE) as a Probe, without diffusers.

A diffusers autoencoder folder holds ``config.json`` (``"_class_name": "AutoencoderKL"``) and
``diffusion_pytorch_model.safetensors``. The network is written here with the same module
names as diffusers' ``Encoder`` / ``Decoder`` (ResnetBlock2D, Downsample2D, Upsample2D,
UNetMidBlock2D with one single-head attention), so its state dict loads strictly; only the
safetensors file is read (a ``.bin`` is a pickle and is never opened).

As a Probe: one latent layer ``z`` of shape (latent_channels, H / f, W / f), f = 2^(blocks - 1);
the posterior is the encoder's diagonal Gaussian (mean, logvar clamped to [-30, 20] as diffusers
does), the prior N(0, I), so the rate is diffusers' ``latent_dist.kl()`` in nats. Images enter on
diffusers' [-1, 1] scale. The decoder has no likelihood (``likelihood_kind="none"``) and the
prior that generates images is the diffusion model, not N(0, I) (``prior_is_generative=False``):
IWAE, stochastic samples and prior samples are undefined; reconstructions run, from the
posterior mean as diffusers makes them (``posterior="mean"``) or from a sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaeprobe import validate
from vaeprobe.adapters._common import (
    MeanOnly,
    file_source,
    read_tensors,
    refuse_pickles,
)
from vaeprobe.adapters._tiling import OVERLAP, check_tile_size, tiled
from vaeprobe.distributed import resolve_device
from vaeprobe.io import check_state_dict
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerDraw,
    LayerInfo,
    Probe,
    check_image_size,
    gaussian_kl,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps log variances
EPS = 1e-6  # every GroupNorm of diffusers' VAE encoder and decoder
PADS = (None, "reflect")  # how images whose size f does not divide are padded (None: refused)


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


def _rename_deprecated(state: dict) -> dict:
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


class AutoencoderKLProbe(Probe):
    """Probe over an :class:`AutoencoderKL`: one Gaussian latent layer, prior N(0, I).

    Convolutional: it takes any height and width divisible by the downsampling factor f
    (``size_multiple``); :meth:`at_image_size` gives the same weights at another size. With
    ``pad="reflect"`` any size is taken: images are reflect-padded at the bottom and right to
    the next multiple of f, and reconstructions are cropped back, so every metric sees the
    original pixels (the latent is that of the padded image; ``padded_size`` in provenance).
    ``tile_size`` > 0: images larger than that are encoded and decoded in tiles, as diffusers'
    ``enable_tiling`` does (:mod:`vaeprobe.adapters._tiling`).
    """

    likelihood_kind = "none"
    prior_is_generative = False

    def __init__(self, model: AutoencoderKL, image_size: tuple[int, int], device=None,
                 source: dict | None = None, *, tile_size: int = 0, pad: str | None = None):
        super().__init__(source)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        config, factor = model.config, model.downsampling
        self.size_multiple = factor
        if pad not in PADS:
            raise ValueError(f"pad must be one of {PADS} (None: refuse sizes not divisible by "
                             f"{factor}), got {pad!r}")
        self.pad = pad
        if pad is None:
            check_image_size(*image_size, factor, self.name)
        self.tile_size = check_tile_size(tile_size, factor) if tile_size else 0
        self.image_shape = (config.in_channels, *image_size)
        self.padded_size = tuple(-(-side // factor) * factor for side in image_size)
        resolution = (self.padded_size[0] // factor, self.padded_size[1] // factor)
        self.layers = [LayerInfo("z", resolution, config.latent_channels)]
        self.source.update(image_size=json.dumps(list(image_size)), pad=pad or "none",
                           padded_size=json.dumps(list(self.padded_size)),
                           tile_size=self.tile_size, tile_overlap=OVERLAP)

    def at_image_size(self, height: int, width: int) -> AutoencoderKLProbe:
        if (height, width) == tuple(self.image_shape[1:]):
            return self
        if self.pad is None:
            check_image_size(height, width, self.size_multiple, self.name)
        return self._resized(height, width)

    def _resized(self, height: int, width: int) -> AutoencoderKLProbe:
        return AutoencoderKLProbe(self.model, (int(height), int(width)), self.device,
                                  self.source, tile_size=self.tile_size, pad=self.pad)

    def with_tiling(self, tile_size: int) -> AutoencoderKLProbe:
        """The same model and image size, encoding and decoding in tiles of ``tile_size``
        pixels (0: never tile)."""
        return AutoencoderKLProbe(self.model, tuple(self.image_shape[1:]), self.device,
                                  self.source, tile_size=tile_size, pad=self.pad)

    def rows_per_pass(self) -> int:
        if self.device.type == "cuda":
            return super().rows_per_pass()
        pixels = self.padded_size[0] * self.padded_size[1]  # a pass sees one tile at a time
        if self.tile_size:
            pixels = min(pixels, self.tile_size ** 2)
        width = self.model.config.block_out_channels[0]  # about 2^24 elements per activation
        return max(1, min(64, 2 ** 24 // (width * pixels)))

    def _in_chunks(self, rows: torch.Tensor, function) -> list:
        """``function`` on chunks of at most :meth:`rows_per_pass` rows: memory follows the
        image (or tile) size, not the batch (every row is computed on its own anyway)."""
        step = self.rows_per_pass()
        return [function(rows[start:start + step]) for start in range(0, len(rows), step)]

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> [-1, 1], reflect-padded at the bottom and right to ``padded_size``."""
        x11 = x.float() / 127.5 - 1
        extra_h, extra_w = (p - s for p, s in zip(self.padded_size, x.shape[-2:], strict=True))
        return F.pad(x11, (0, extra_w, 0, extra_h), mode="reflect") if extra_h or extra_w \
            else x11

    @torch.no_grad()
    def encode(self, x, n_samples: int = 1, generator: Generators = None, *,
               posterior: str = "sample") -> LatentPass:
        x = self.check_images(x)
        mean, logstd = (torch.cat(parts) for parts in zip(*self._in_chunks(
            x, lambda rows: self.model.moments(self._padded(rows), self.tile_size)), strict=True))
        mean, logstd = (t.repeat_interleave(n_samples, 0) for t in (mean, logstd))
        noise = self.noise(x.shape[0], n_samples, generator, posterior)[0]
        z = mean + logstd.exp() * noise
        zeros = torch.zeros_like(mean)
        draw = LayerDraw(p_mean=zeros, p_logstd=zeros, z=z, q_mean=mean, q_logstd=logstd,
                         kl=gaussian_kl(mean, logstd, zeros, zeros))
        return LatentPass([draw], n_samples)

    @torch.no_grad()
    def decode(self, latents: LatentPass) -> MeanOnly:
        x11 = torch.cat(self._in_chunks(latents.draws[0].z,
                                        lambda z: self.model.decode(z, self.tile_size)))
        height, width = self.image_shape[1:]
        return MeanOnly(((x11[:, :, :height, :width] + 1) / 2).clamp(0, 1), self.name)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        self.require("sample_prior", prior=True)


def parse_image_size(value, config: AutoencoderKLConfig | None) -> tuple[int, int]:
    """(height, width) from the ``image_size`` option (an int, [h, w] or their text), default the
    config's ``sample_size``: positive integers up to 65536 (the probe checks the rest)."""
    size = config.sample_size if value is None else value
    if isinstance(size, str):
        try:
            size = json.loads(size)
        except ValueError:
            size = None
    size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1 << 16
            for s in size)):
        raise ValueError(f"image_size must be a positive integer or (height, width) of "
                         f"integers up to 65536, got {value!r}")
    return int(size[0]), int(size[1])


def find_folder(path: Path) -> Path:
    """The autoencoder folder: ``path`` itself, its ``vae/`` (a pipeline), or a file's folder."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    return path


def sniff(path: Path) -> bool:
    """A folder (or a pipeline's ``vae/``) with an AutoencoderKL config.json and safetensors."""
    folder = find_folder(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL"
            and any(folder.glob("*.safetensors")))


def find_weights_file(folder: Path, weights: str | None) -> Path:
    if weights is not None:
        path = folder / weights
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
    elif (folder / WEIGHTS).is_file():
        path = folder / WEIGHTS
    else:
        found = sorted(folder.glob("*.safetensors"))
        if len(found) != 1:
            pickles = sorted(p.name for p in folder.iterdir()
                             if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise FileNotFoundError(
                f"no single safetensors file in {folder} (found {[p.name for p in found]}"
                + (f"; {pickles} are pickles, which vaeprobe never opens: convert them with "
                   f"safetensors" if pickles else "")
                + "); pass weights='<file>.safetensors'")
        path = found[0]
    refuse_pickles(path, "diffusers")
    return path


def _tile_size(value, config: AutoencoderKLConfig, factor: int) -> int:
    """0 (no tiling), a tile size in pixels, or "auto": the config's ``sample_size`` (the tile
    diffusers' ``enable_tiling`` uses), rounded down to a multiple of 4 f."""
    if value is None or value == 0:
        return 0
    if value == "auto":
        size = config.sample_size if isinstance(config.sample_size, int) \
            else config.sample_size[0]
        return max(4 * factor, (int(size) // (4 * factor)) * 4 * factor)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return check_tile_size(value, factor)


def open_diffusers(path: Path, *, image_size=None, weights: str | None = None,
                   tile_size=None, pad: str | None = None, device=None) -> AutoencoderKLProbe:
    """Open a diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors) as a Probe.

    Parameters
    ----------
    path : Path
        The autoencoder folder, a file in it, or a pipeline folder with a ``vae/`` subfolder.
    image_size : int or (int, int), optional
        Input images' size (the network is convolutional); default the config's
        ``sample_size``.
    weights : str, optional
        The safetensors file name in the folder; default
        ``diffusion_pytorch_model.safetensors`` or the only ``.safetensors``.
    tile_size : int or "auto", optional
        Encode and decode images taller or wider than this many pixels in overlapping tiles,
        blended as diffusers' ``enable_tiling`` does (overlap 0.25): memory then follows the
        tile, not the image. A multiple of 4 f; ``"auto"``: the config's ``sample_size``
        (diffusers' tile). Default None: never tile. :func:`vaeprobe.tiling_error` measures
        what tiling changes.
    pad : {None, "reflect"}
        Sizes not divisible by the downsampling factor f: None refuses them (naming the nearest
        valid sizes); ``"reflect"`` pads the images to the next multiple of f and crops the
        reconstructions back.
    device : str or torch.device, optional

    Examples
    --------
    >>> probe = vp.load("sd-vae-ft-mse/", image_size=256)  # doctest: +SKIP
    >>> probe.layers[0].resolution  # doctest: +SKIP
    (32, 32)
    """
    folder = find_folder(path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}: not a diffusers model folder")
    config = AutoencoderKLConfig.from_json(validate.json_object(config_path, "AutoencoderKL "
                                                                "config"), config_path)
    size = parse_image_size(image_size, config)
    check_budget(config, size, config_path)
    weights_path = find_weights_file(folder, weights)
    model = AutoencoderKL(config)
    state = _rename_deprecated(read_tensors(weights_path))
    check_state_dict(model, state, weights_path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    source = file_source(weights_path, [config_path, weights_path])
    source.update(scaling_factor=config.scaling_factor,
                  shift_factor=("none" if config.shift_factor is None else config.shift_factor),
                  **{key: json.dumps([float(v) for v in getattr(config, key)])
                     for key in ("latents_mean", "latents_std") if getattr(config, key)},
                  latent_downsampling=model.downsampling)
    return AutoencoderKLProbe(model, size, device, source,
                              tile_size=_tile_size(tile_size, config, model.downsampling),
                              pad=pad)


__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "AutoencoderKLProbe", "open_diffusers",
           "sniff"]
