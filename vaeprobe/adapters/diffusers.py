"""diffusers' ``AutoencoderKL`` (the latent-diffusion VAE) as a Probe, without diffusers.

A diffusers autoencoder folder holds ``config.json`` (``"_class_name": "AutoencoderKL"``) and
``diffusion_pytorch_model.safetensors``. The network (:mod:`vaeprobe.adapters.autoencoder_kl`)
has the same module names as diffusers' ``Encoder`` / ``Decoder`` (ResnetBlock2D, Downsample2D,
Upsample2D, UNetMidBlock2D with one single-head attention), so its state dict loads strictly;
only the safetensors file is read (a ``.bin`` is a pickle and is never opened).

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
from pathlib import Path

import torch
import torch.nn.functional as F

from vaeprobe import validate
from vaeprobe.adapters._common import (
    MeanOnly,
    file_source,
    read_tensors,
    refuse_pickles,
)
from vaeprobe.adapters._tiling import OVERLAP, check_tile_size
from vaeprobe.adapters.autoencoder_kl import (  # noqa: F401 (re-exported)
    EPS,
    LOGVAR_RANGE,
    AutoencoderKL,
    AutoencoderKLConfig,
    check_budget,
    rename_deprecated,
)
from vaeprobe.adapters.format_registry import Format, formats
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
PADS = (None, "reflect")  # how images whose size f does not divide are padded (None: refused)


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
    state = rename_deprecated(read_tensors(weights_path))
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


formats.register("diffusers", Format(
    "vaeprobe.adapters.diffusers:open_diffusers", sniff,
    "a folder with config.json (_class_name AutoencoderKL) and a .safetensors file"))
