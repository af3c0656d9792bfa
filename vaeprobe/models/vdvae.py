"""VDVAE (Child 2021, openai/vdvae) written for vaeprobe: same modules, same state-dict keys.

The network's parameter names and shapes equal openai/vdvae's ``VAE`` (``encoder.in_conv``,
``encoder.enc_blocks.N.c1..c4``, ``decoder.dec_blocks.N.{enc,prior,z_proj,resnet}``,
``decoder.bias_xs.N``, ``decoder.out_net.out_conv``, ``decoder.gain``, ``decoder.bias``), so
its ``*-model.th`` / ``*-model-ema.th`` state dicts load strictly. The passes are ours: they
take NCHW images already normalised (the adapter does that from uint8) and expose every latent
layer's posterior and prior parameters.

Hyperparameters follow openai/vdvae's ``hps.py``: five named sets (cifar10, imagenet32,
imagenet64, ffhq256, ffhq1024) on top of its argument defaults, or a dict with its keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ---- hyperparameters -----------------------------------------------------------------------

# per dataset: (image_size, input shift, input scale, input in [0, 1] rather than [0, 255],
# bits per channel of the likelihood); from openai/vdvae's data.py
DATASETS = {
    "cifar10": (32, -120.63838, 1 / 64.16736, False, 8),
    "imagenet32": (32, -116.2373, 1 / 69.37404, False, 8),
    "imagenet64": (64, -115.92961967, 1 / 69.37404, False, 8),
    "ffhq_256": (256, -112.8666757481, 1 / 69.84780273, False, 5),
    "ffhq_1024": (1024, -0.4387, 1 / 0.2743, True, 8),
}

# openai/vdvae's keys that do not change the network (training, logging, distributed setup):
# accepted in a dict or log so that its own hparams load, and ignored
IGNORED_KEYS = frozenset("""
    seed port save_dir data_root desc hparam_sets restore_path restore_ema_path restore_log_path
    restore_optimizer_path ema_rate scale_encblock test_eval warmup_iters grad_clip
    skip_threshold lr lr_prior wd wd_prior num_epochs n_batch adam_beta1 adam_beta2 temperature
    iters_per_ckpt iters_per_print iters_per_save iters_per_images epochs_per_eval
    epochs_per_probe epochs_per_eval_save num_images_visualize num_variables_visualize
    num_temperatures_visualize mpi_size local_rank rank logdir image_channels
""".split())


@dataclass(frozen=True)
class VDVAEHparams:
    """The hyperparameters that shape a VDVAE network (openai/vdvae's names and defaults)."""

    dataset: str = "cifar10"  # fixes the input normalisation, image size and bits (data.py)
    width: int = 512  # channels of the residual stream
    zdim: int = 16  # channels of every latent layer
    dec_blocks: str = ""  # top-down blocks, e.g. "1x1,4m1,4x2": res x count, res m mixin-res
    enc_blocks: str = ""  # bottom-up blocks, e.g. "32x11,32d2": res x count, res d down-rate
    custom_width_str: str = ""  # per-resolution widths, "res:width,..." (else ``width``)
    bottleneck_multiple: float = 0.25  # bottleneck channels = width * this
    no_bias_above: int = 64  # learned top-down start state at resolutions up to this
    num_mixtures: int = 10  # logistic components of the output distribution
    image_size: int = 0  # 0: the dataset's size; set it for a model of other image sizes

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown VDVAE dataset {self.dataset!r}; known: "
                             f"{sorted(DATASETS)} (it fixes the input normalisation)")
        if not self.dec_blocks or not self.enc_blocks:
            raise ValueError("VDVAE hparams need dec_blocks and enc_blocks, e.g. "
                             "dec_blocks='1x1,4m1,4x2', enc_blocks='4x2,4d4,1x1'")
        dec = parse_layer_string(self.dec_blocks)
        if dec[-1][0] != self.resolution:
            raise ValueError(f"dec_blocks {self.dec_blocks!r} must end at the image size "
                             f"{self.resolution}")
        if widths(self)[self.resolution] != self.width:
            raise ValueError(f"the width at the image resolution ({self.resolution}) must equal "
                             f"width={self.width} (custom_width_str={self.custom_width_str!r})")

    @property
    def resolution(self) -> int:
        """Image side in pixels."""
        return self.image_size or DATASETS[self.dataset][0]

    @property
    def n_bits(self) -> int:
        """Bits per channel the likelihood models: 5 for FFHQ-256, else 8."""
        return DATASETS[self.dataset][4]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VDVAEHparams:
        """From openai/vdvae's keys; its training keys are ignored, unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown VDVAE hparams {unknown}; the network's keys are "
                             f"{sorted(known)}")
        if values.get("image_channels", 3) != 3:
            raise ValueError(f"VDVAE models RGB images: image_channels must be 3, got "
                             f"{values['image_channels']}")
        chosen = {k: v for k, v in values.items() if k in known and v is not None}
        return cls(**chosen)


def _named_sets() -> dict[str, dict]:
    """openai/vdvae's HPARAMS_REGISTRY, restricted to the keys that shape the network."""
    cifar10 = dict(dataset="cifar10", width=384, zdim=16,
                   dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
                   enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3")
    imagenet32 = dict(cifar10, dataset="imagenet32", width=512,
                      dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40",
                      enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6")
    imagenet64 = dict(imagenet32, dataset="imagenet64",
                      dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
                      enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5")
    ffhq256 = dict(imagenet64, dataset="ffhq_256", no_bias_above=64,
                   dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,"
                              "128x7,256m128",
                   enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,"
                              "8d2,4x5,4d4,1x4")
    ffhq1024 = dict(ffhq256, dataset="ffhq_1024", num_mixtures=2, width=16,
                    dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,"
                               "128x7,256m128,256x2,512m256,1024m512",
                    enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,"
                               "32x14,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
                    custom_width_str="512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,"
                                     "1:512")
    return dict(cifar10=cifar10, imagenet32=imagenet32, imagenet64=imagenet64, ffhq256=ffhq256,
                ffhq1024=ffhq1024)


NAMED_HPARAMS = _named_sets()


def hparams_from(spec) -> VDVAEHparams:
    """VDVAE hyperparameters from a set name, a dict of its keys, or a JSON file of them.

    Examples
    --------
    >>> hparams_from("cifar10").width, hparams_from("ffhq256").n_bits
    (384, 5)
    """
    if isinstance(spec, VDVAEHparams):
        return spec
    if isinstance(spec, dict):
        return VDVAEHparams.from_dict(spec)
    if isinstance(spec, (str, Path)):
        if str(spec) in NAMED_HPARAMS:
            return VDVAEHparams.from_dict(NAMED_HPARAMS[str(spec)])
        path = Path(spec)
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"VDVAE hparams file not found: {path}")
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ValueError(f"{path} must hold a JSON object of VDVAE hparams")
            return VDVAEHparams.from_dict(values)
    raise ValueError(f"hparams must be one of VDVAE's sets {sorted(NAMED_HPARAMS)}, a dict of "
                     f"its keys or a JSON file of them; got {spec!r}")


def parse_layer_string(spec: str) -> list[tuple[int, int | None]]:
    """openai/vdvae's block strings: "32x3" -> 3 x (32, None); "8m4" -> (8, 4); "32d2" -> (32, 2).

    Examples
    --------
    >>> parse_layer_string("1x2,4m1,8d2,16")
    [(1, None), (1, None), (4, 1), (8, 2), (16, None)]
    """
    layers = []
    for part in spec.split(","):
        try:
            if "x" in part:
                resolution, count = (int(a) for a in part.split("x"))
                layers += [(resolution, None)] * count
            elif "m" in part or "d" in part:
                resolution, other = (int(a) for a in part.replace("m", "d").split("d"))
                layers.append((resolution, other))
            else:
                layers.append((int(part), None))
        except ValueError:
            raise ValueError(f"cannot parse VDVAE block {part!r} in {spec!r}; expected e.g. "
                             f"'32x3', '8m4', '32d2' or '16'") from None
    return layers


def widths(hparams: VDVAEHparams) -> dict[int, int]:
    """Channels per resolution (``custom_width_str`` overrides ``width``)."""
    mapping = {}
    for part in filter(None, hparams.custom_width_str.split(",")):
        resolution, width = part.split(":")
        mapping[int(resolution)] = int(width)
    resolutions = {r for r, _ in parse_layer_string(hparams.dec_blocks)}
    resolutions |= {r for r, _ in parse_layer_string(hparams.enc_blocks)}
    resolutions.add(hparams.image_size or DATASETS[hparams.dataset][0])
    return {r: mapping.get(r, hparams.width) for r in sorted(resolutions | set(mapping))}


# ---- modules (parameter names follow openai/vdvae) ---------------------------------------------

class Block(nn.Module):
    """Bottleneck block: gelu -> 1x1 -> gelu -> 3x3 -> gelu -> 3x3 -> gelu -> 1x1 (c1..c4)."""

    def __init__(self, in_width: int, middle_width: int, out_width: int, *,
                 down_rate: int | None = None, residual: bool = False, use_3x3: bool = True):
        super().__init__()
        self.down_rate, self.residual = down_rate, residual
        kernel = 3 if use_3x3 else 1  # 1x1 and 2x2 maps get 1x1 convs
        self.c1 = nn.Conv2d(in_width, middle_width, 1)
        self.c2 = nn.Conv2d(middle_width, middle_width, kernel, padding=kernel // 2)
        self.c3 = nn.Conv2d(middle_width, middle_width, kernel, padding=kernel // 2)
        self.c4 = nn.Conv2d(middle_width, out_width, 1)

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        """``first``: c1's output given instead of computed (see DecBlock.posterior_context)."""
        out = self.c1(F.gelu(x)) if first is None else first
        out = self.c4(F.gelu(self.c3(F.gelu(self.c2(F.gelu(out))))))
        out = x + out if self.residual else out
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


class Encoder(nn.Module):
    """Bottom-up: normalised image (B, 3, S, S) -> {resolution: activation (B, width_r, r, r)}."""

    def __init__(self, hparams: VDVAEHparams):
        super().__init__()
        self.widths = widths(hparams)
        self.in_conv = nn.Conv2d(3, hparams.width, 3, padding=1)
        self.enc_blocks = nn.ModuleList([
            Block(self.widths[r], int(self.widths[r] * hparams.bottleneck_multiple),
                  self.widths[r], down_rate=down, residual=True, use_3x3=r > 2)
            for r, down in parse_layer_string(hparams.enc_blocks)])

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.in_conv(x)
        activations = {x.shape[2]: x}
        for block in self.enc_blocks:
            x = block(x)
            resolution = x.shape[2]
            if x.shape[1] < self.widths[resolution]:  # zero channels up to this width
                x = F.pad(x, (0, 0, 0, 0, 0, self.widths[resolution] - x.shape[1]))
            activations[resolution] = x
        return activations


class DecBlock(nn.Module):
    """One top-down block, one latent layer: prior p(z | h), posterior q(z | h, a), update h."""

    def __init__(self, hparams: VDVAEHparams, resolution: int, mixin: int | None):
        super().__init__()
        self.base, self.mixin, self.zdim = resolution, mixin, hparams.zdim
        width = widths(hparams)[resolution]
        middle = int(width * hparams.bottleneck_multiple)
        use_3x3 = resolution > 2
        self.enc = Block(2 * width, middle, 2 * hparams.zdim, use_3x3=use_3x3)
        self.prior = Block(width, middle, 2 * hparams.zdim + width, use_3x3=use_3x3)
        self.z_proj = nn.Conv2d(hparams.zdim, width, 1)
        self.resnet = Block(width, middle, width, residual=True, use_3x3=use_3x3)

    def posterior_context(self, activation: torch.Tensor) -> torch.Tensor:
        """The activation's share of the posterior's first conv (image-only: shared by draws).

        c1(gelu(cat(h, a))) = W_h gelu(h) + W_a gelu(a) + b: the W_a term is computed once.
        """
        return F.conv2d(F.gelu(activation), self.enc.c1.weight[:, activation.shape[1]:])

    def posterior(self, h: torch.Tensor, context: torch.Tensor):
        """(q_mean, q_logstd), each (B, zdim, r, r)."""
        c1 = self.enc.c1
        first = F.conv2d(F.gelu(h), c1.weight[:, :h.shape[1]], c1.bias) + context
        return self.enc(h, first=first).chunk(2, dim=1)

    def prior_terms(self, h: torch.Tensor):
        """(p_mean, p_logstd, update of h)."""
        out = self.prior(h)
        return out[:, :self.zdim], out[:, self.zdim:2 * self.zdim], out[:, 2 * self.zdim:]

    def finish(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.resnet(h + self.z_proj(z))


class Decoder(nn.Module):
    """Top-down blocks, the learned start states, the output gain/bias and the mixture head."""

    def __init__(self, hparams: VDVAEHparams):
        super().__init__()
        self.hparams, self.widths = hparams, widths(hparams)
        blocks = parse_layer_string(hparams.dec_blocks)
        self.dec_blocks = nn.ModuleList([DecBlock(hparams, r, m) for r, m in blocks])
        self.resolutions = sorted({r for r, _ in blocks})
        self.bias_xs = nn.ParameterList([
            nn.Parameter(torch.zeros(1, self.widths[r], r, r))
            for r in self.resolutions if r <= hparams.no_bias_above])
        self.out_net = nn.Module()  # openai/vdvae's DmolNet: only its conv holds parameters
        self.out_net.out_conv = nn.Conv2d(hparams.width, hparams.num_mixtures * 10, 1)
        self.gain = nn.Parameter(torch.ones(1, hparams.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, hparams.width, 1, 1))


class VDVAE(nn.Module):
    """openai/vdvae's ``VAE`` with explicit latents.

    Examples
    --------
    >>> hp = VDVAEHparams(width=8, zdim=2, dec_blocks="1x1,4m1", enc_blocks="4x1,4d4,1x1",
    ...                   num_mixtures=2, image_size=4)
    >>> model = VDVAE(hp)
    >>> [k for k in model.state_dict() if k.startswith("decoder.dec_blocks.1.z")]
    ['decoder.dec_blocks.1.z_proj.weight', 'decoder.dec_blocks.1.z_proj.bias']
    """

    def __init__(self, hparams: VDVAEHparams):
        super().__init__()
        self.hparams = hparams
        self.encoder = Encoder(hparams)
        self.decoder = Decoder(hparams)

    # ---- facts -------------------------------------------------------------------------------
    def layer_resolutions(self) -> list[int]:
        return [block.base for block in self.decoder.dec_blocks]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> the network's input scale (openai/vdvae's data.py)."""
        _, shift, scale, unit_range, _ = DATASETS[self.hparams.dataset]
        x = x.float() / 255.0 if unit_range else x.float()
        return (x + shift) * scale

    # ---- passes ------------------------------------------------------------------------------
    def bottom_up(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Deterministic encoder work on uint8 images, once per image."""
        return self.encoder(self.normalise(x))

    def posterior_contexts(self, activations: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [block.posterior_context(activations[block.base])
                for block in self.decoder.dec_blocks]

    def _start(self, batch: int, reference: torch.Tensor) -> dict[int, torch.Tensor]:
        states = {bias.shape[2]: bias.expand(batch, -1, -1, -1) for bias in self.decoder.bias_xs}
        for resolution in self.decoder.resolutions:
            if resolution not in states:  # above no_bias_above: start from zeros
                states[resolution] = reference.new_zeros(
                    batch, self.decoder.widths[resolution], resolution, resolution)
        return states

    def top_down(self, *, batch: int, contexts=None, noise=None, zs=None, temperature=None,
                 posterior_mean: bool = False):
        """Run the decoder blocks; returns (output features (B, width, S, S), per-layer draws).

        With ``contexts`` (:meth:`posterior_contexts`, one row per draw) z comes from the
        posterior (``q_mean + q_std * noise``, or ``q_mean`` with ``posterior_mean``); else from
        the prior (``p_mean + temperature * p_std * noise``), unless ``zs`` gives z per layer
        (``None`` entries: drawn from the prior given the layers above; with ``contexts``, the
        posterior's parameters are then evaluated at the given z).
        Each draw is a dict of p_mean, p_logstd, z and, from the posterior, q_mean, q_logstd.
        """
        reference = self.decoder.gain
        states, draws = self._start(batch, reference), []
        for index, block in enumerate(self.decoder.dec_blocks):
            h = states[block.base]
            if block.mixin is not None:
                coarse = states[block.mixin][:, :h.shape[1]]
                h = h + F.interpolate(coarse, scale_factor=block.base // block.mixin)
            p_mean, p_logstd, update = block.prior_terms(h)
            draw = dict(p_mean=p_mean, p_logstd=p_logstd)
            if contexts is not None:
                q_mean, q_logstd = block.posterior(h, contexts[index])
                draw.update(q_mean=q_mean, q_logstd=q_logstd)
                if zs is not None and zs[index] is not None:  # the posterior at a given z
                    z = zs[index]
                else:
                    z = q_mean if posterior_mean else q_mean + torch.exp(q_logstd) * noise[index]
            elif zs is not None and zs[index] is not None:
                z = zs[index]
            else:
                z = p_mean + temperature[index] * torch.exp(p_logstd) * noise[index]
            draw["z"] = z
            draws.append(draw)
            states[block.base] = block.finish(h + update, z)
        out = states[self.hparams.resolution]
        return out * self.decoder.gain + self.decoder.bias, draws

    def output_params(self, features: torch.Tensor) -> torch.Tensor:
        """Mixture parameters (B, 10 * num_mixtures, S, S) in openai/vdvae's channel layout."""
        return self.decoder.out_net.out_conv(features)
