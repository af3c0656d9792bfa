"""Tiny autoencoders (madebyollin/taesd: TAESD, TAESDXL, TAESD3, TAEF1, TAEF2; diffusers'
``AutoencoderTiny``) as deterministic Probes.

Two layouts are read:

- an encoder/decoder pair of ``.pth`` state dicts of ``nn.Sequential`` networks
  (``taesd_encoder.pth`` + ``taesd_decoder.pth``, ``taef2_*``, ...), given as a folder, or as
  either file (its partner is found beside it). The variant comes from the file name
  (``taesd``, ``taesdxl``, ``taesd3``, ``taef1``, ``taef2``) and is checked against the tensor
  shapes: latent channels from the last encoder convolution (4, 4, 16, 16, 32), the FLUX.2
  mid-block GroupNorm branch (``pool``) from its keys;
- a diffusers ``AutoencoderTiny`` folder (``config.json`` with ``"_class_name":
  "AutoencoderTiny"`` + safetensors), whose ``encoder.layers.N`` / ``decoder.layers.N`` keys are
  the same networks (the decoder's leading clamp is not a layer there).

The networks are written here from reading taesd.py: 3x3 convolutions, residual blocks of three
convolutions (``conv.0/2/4``, a 1x1 ``skip`` when widths differ, ReLU ``fuse``), three stride-2
downsamplings (x8), nearest upsampling, and the decoder's soft clamp 3 tanh(z / 3). Images enter
on [0, 1] (TAESD's scale; diffusers' wrapper maps its [-1, 1] to this) and leave on [0, 1].
Weights stored in float16 are computed in float32.

As a Probe: one latent layer (latent_channels, H / 8, W / 8), a **point posterior**
(``point_posterior=True``): the encoder gives one latent per image, with no variance and no
prior, so rate, IWAE and prior samples refuse with the reason; reconstructions, spectra, latent
statistics and numerics run. ``image_size`` (an int or (height, width), default 512) sets the
input size, as for diffusers: the networks are convolutional.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vaeprobe import io
from vaeprobe.adapters._common import file_source, read_tensors
from vaeprobe.adapters.diffusers import parse_image_size
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.adapters.module import ModuleProbe
from vaeprobe.io import check_state_dict

# file-name prefix -> (latent channels, FLUX.2 mid-block GroupNorm); longest names first
VARIANTS = {"taesdxl": (4, False), "taesd3": (16, False), "taesd": (4, False),
            "taef1": (16, False), "taef2": (32, True)}
WIDTH, DOWNSAMPLING, DEFAULT_SIZE = 64, 8, 512
CLAMP = 3.0  # the decoder's soft clamp: 3 tanh(z / 3)


def _conv(c_in: int, c_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """Residual block: conv-ReLU-conv-ReLU-conv + skip, ReLU; optional global mixing branch."""

    def __init__(self, c_in: int, c_out: int, midblock_gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(),
                                  _conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if midblock_gn:  # TAEF2: 1x1 up to 4x channels, GroupNorm(4), ReLU, 1x1 back
            wide = 4 * c_in
            self.pool = nn.Sequential(nn.Conv2d(c_in, wide, 1, bias=False), nn.GroupNorm(4, wide),
                                      nn.ReLU(), nn.Conv2d(wide, c_in, 1, bias=False))

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class Clamp(nn.Module):
    def forward(self, z):
        return torch.tanh(z / CLAMP) * CLAMP


def tiny_encoder(latent_channels: int, midblock_gn: bool) -> nn.Sequential:
    """x on [0, 1] (B, 3, H, W) -> latents (B, latent_channels, H / 8, W / 8)."""
    layers = [_conv(3, WIDTH), Block(WIDTH, WIDTH)]
    for stage in range(3):
        layers.append(_conv(WIDTH, WIDTH, stride=2, bias=False))
        layers += [Block(WIDTH, WIDTH, midblock_gn and stage == 2) for _ in range(3)]
    return nn.Sequential(*layers, _conv(WIDTH, latent_channels))


def tiny_decoder(latent_channels: int, midblock_gn: bool) -> nn.Sequential:
    """latents -> image on [0, 1] (unclamped); layer 0 is the soft clamp."""
    layers = [Clamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
    for stage in range(3):
        layers += [Block(WIDTH, WIDTH, midblock_gn and stage == 0) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
    return nn.Sequential(*layers, Block(WIDTH, WIDTH), _conv(WIDTH, 3))


class TinyAutoencoder(nn.Module):
    """``encode(x) -> latents`` and ``decode(z) -> image``, both on TAESD's [0, 1] scale."""

    def __init__(self, latent_channels: int, midblock_gn: bool):
        super().__init__()
        self.encoder = tiny_encoder(latent_channels, midblock_gn)
        self.decoder = tiny_decoder(latent_channels, midblock_gn)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


# ---- finding the files --------------------------------------------------------------------------


def _variant(name: str) -> str | None:
    return next((v for v in VARIANTS if name.startswith(f"{v}_encoder.")
                 or name.startswith(f"{v}_decoder.")), None)


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for encoder in sorted(folder.glob("*_encoder.pth")) + sorted(folder.glob(
            "*_encoder.safetensors")):
        decoder = encoder.with_name(encoder.name.replace("_encoder.", "_decoder."))
        if _variant(encoder.name) and decoder.is_file():
            pairs.append((encoder, decoder))
    return pairs


def _tiny_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and \
        config.get("_class_name") == "AutoencoderTiny" else None


def sniff(path: Path) -> bool:
    """A TAESD-family encoder/decoder pair (a folder or either file), or a diffusers
    ``AutoencoderTiny`` folder."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if path.is_file() and _variant(path.name):
        return bool(_pairs(folder))
    return bool(_pairs(folder)) or (_tiny_config(folder) is not None
                                   and any(folder.glob("*.safetensors")))


def _pair_for(path: Path) -> tuple[Path, Path]:
    folder = path.parent if path.is_file() else path
    pairs = _pairs(folder)
    if path.is_file():
        pairs = [pair for pair in pairs if path in pair]
    if not pairs:
        raise FileNotFoundError(f"no TAESD encoder/decoder pair at {path}: expected "
                                f"<variant>_encoder.pth and <variant>_decoder.pth with variant "
                                f"one of {list(VARIANTS)}")
    if len(pairs) > 1:
        raise ValueError(f"{folder} holds several tiny autoencoders "
                         f"{[p[0].name for p in pairs]}; pass the path of one encoder file")
    return pairs[0]


# ---- reading the weights ------------------------------------------------------------------------


def _shapes(encoder: dict, path: Path) -> tuple[int, bool]:
    """(latent channels, mid-block GroupNorm) from the encoder's tensors."""
    last = max((k for k in encoder if k.endswith(".weight") and k.split(".")[0].isdigit()),
               key=lambda k: int(k.split(".")[0]), default=None)
    if last is None or encoder[last].ndim != 4:
        raise io.CheckpointError(f"{path} is not a TAESD-family encoder state dict (no "
                                 f"numbered convolution weights)")
    return int(encoder[last].shape[0]), any(".pool." in k for k in encoder)


def _from_diffusers(state: dict) -> tuple[dict, dict]:
    """diffusers' ``encoder.layers.N`` / ``decoder.layers.N`` -> taesd's ``N`` (decoder N + 1:
    taesd's decoder starts with the clamp, diffusers applies it in forward)."""
    encoder, decoder = {}, {}
    for key, value in state.items():
        part, _, rest = key.partition(".layers.")
        index, _, tail = rest.partition(".")
        if part == "encoder":
            encoder[f"{index}.{tail}"] = value
        elif part == "decoder":
            decoder[f"{int(index) + 1}.{tail}"] = value
    return encoder, decoder


def _build(encoder: dict, decoder: dict, path: Path, expected: str | None) -> TinyAutoencoder:
    channels, midblock_gn = _shapes(encoder, path)
    if expected is not None and VARIANTS[expected] != (channels, midblock_gn):
        raise io.CheckpointError(
            f"{path} is named {expected} ({VARIANTS[expected][0]} latent channels, mid-block "
            f"GroupNorm {VARIANTS[expected][1]}) but its tensors have {channels} channels, "
            f"GroupNorm {midblock_gn}; rename the files or check where they came from")
    model = TinyAutoencoder(channels, midblock_gn)
    for network, state, name in ((model.encoder, encoder, "encoder"),
                                 (model.decoder, decoder, "decoder")):
        check_state_dict(network, state, Path(f"{path} ({name})"))
        network.load_state_dict({k: v.float() for k, v in state.items()})  # float16 -> 32
    return model


def open_taesd(path: Path, *, image_size=None, device=None) -> ModuleProbe:
    """Open a tiny autoencoder (a TAESD-family .pth pair or a diffusers AutoencoderTiny folder).

    Parameters
    ----------
    path : Path
        A folder holding ``<variant>_encoder.pth`` and ``<variant>_decoder.pth``, one of those
        files, or a diffusers ``AutoencoderTiny`` folder (``config.json`` + safetensors).
    image_size : int or (int, int), optional
        Input size (height, width); a multiple of 8. Default 512.
    device : str or torch.device, optional

    Examples
    --------
    >>> probe = vp.load("taesd/", image_size=(512, 768))  # doctest: +SKIP
    >>> probe.layers[0].resolution, probe.point_posterior  # doctest: +SKIP
    ((64, 96), True)
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    config = _tiny_config(folder)
    if config is not None and not _pairs(folder):
        from vaeprobe.adapters.diffusers import find_weights_file

        weights = find_weights_file(folder, None)
        encoder, decoder = _from_diffusers(read_tensors(weights))
        model = _build(encoder, decoder, weights, None)
        source = file_source(weights, [folder / "config.json", weights])
        variant, dtype = "AutoencoderTiny", "see safetensors"
    else:
        encoder_path, decoder_path = _pair_for(path)
        encoder, decoder = read_tensors(encoder_path), read_tensors(decoder_path)
        variant = _variant(encoder_path.name)
        model = _build(encoder, decoder, encoder_path, variant)
        source = file_source(encoder_path, [encoder_path, decoder_path])
        dtype = str(next(iter(encoder.values())).dtype).replace("torch.", "")
    size = parse_image_size(DEFAULT_SIZE if image_size is None else image_size, None)
    if size[0] % DOWNSAMPLING or size[1] % DOWNSAMPLING:
        raise ValueError(f"image_size {size} must be divisible by {DOWNSAMPLING} (the tiny "
                         f"autoencoder's downsampling)")
    source.update(variant=variant, weights_dtype=dtype, compute_dtype="float32",
                  latent_downsampling=DOWNSAMPLING)
    latent_shape = (model.encoder[-1].out_channels, size[0] // DOWNSAMPLING,
                    size[1] // DOWNSAMPLING)
    return ModuleProbe(model, (3, *size), scale="none", decoder_output="mean",
                       pixel_range=(0.0, 1.0), device=device, source=source,
                       latent_shape=latent_shape, size_multiple=DOWNSAMPLING)


__all__ = ["TinyAutoencoder", "VARIANTS", "open_taesd", "sniff"]


formats.register("taesd", Format(
    "vaeprobe.adapters.taesd:open_taesd", sniff,
    "a tiny autoencoder: <taesd|taesdxl|taesd3|taef1|taef2>_encoder.pth + _decoder.pth, or a "
    "diffusers AutoencoderTiny folder (config.json + .safetensors)"))
