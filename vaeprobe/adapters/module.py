"""A plain PyTorch VAE as a Probe: ``encode(x) -> (mean, logvar)``, ``decode(z) -> mean``.

The common single-latent VAE written in twenty lines becomes a Probe through
``vp.Probe.from_module(model, image_shape=...)``: one latent layer (a flat latent of D units is
the layer (D, 1, 1)), a diagonal Gaussian posterior, the prior N(0, I). The conventions real
code uses are options, each checked against the shapes the model gives:

- ``encoder_output``: ``"tuple"`` (``encode`` returns (mean, scale)), ``"halves"`` (one tensor,
  mean in the first half of dim 1 and scale in the second, as ``chunk(2, dim=1)``) or
  ``"interleaved"`` (one tensor whose dim 1 alternates mean and scale, as disentangling-vae's
  ``view(-1, D, 2).unbind(-1)``);
- ``scale``: ``"logvar"``, ``"logstd"`` or ``"std"``; or ``"none"``: a deterministic encoder
  whose ``encode`` returns the latent itself, declared a point posterior
  (``point_posterior=True``: rate, IWAE and prior samples refuse, reconstructions run);
- ``decoder_output``: ``"mean"`` (on ``output_range``, e.g. (0, 1) or (-1, 1)),
  ``"probabilities"`` (Bernoulli probabilities of level 255, on [0, 1]) or ``"logits"``
  (Bernoulli logits: the mean is their sigmoid).

The pixel scale the model expects is an option (uint8 0 -> low, 255 -> high), and so is its
decoder likelihood:

- ``"none"`` (default): the decoder gives a mean image only; IWAE and stochastic samples are
  undefined and refuse;
- ``"gaussian"``: a Gaussian of standard deviation ``sigma`` (on the model's output scale)
  around the mean, discretized over the 256 levels (a proper PMF; ``sigma=1`` on a [0, 1]
  scale is the usual "MSE VAE");
- ``"bernoulli"``: for binary images (levels 0 and 255 only): the mean is the probability of
  255. Grey-level data must be binarized first (``vp.data.binarize``, or ``NAME,binarize=...``).
"""

from __future__ import annotations

import copy
import json
import math

import torch
from torch import nn

from vaeprobe.adapters._common import MeanOnly, check_answer, probe_images
from vaeprobe.adapters.bernoulli import (  # noqa: F401 (re-exported: module.Bernoulli ...)
    BINARIZE_HINT,
    FROM_MODULE_GAUSSIAN,
    Bernoulli,
    not_binary_message,
)
from vaeprobe.distributed import resolve_device
from vaeprobe.models.likelihoods import DiscretizedGaussian
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerDraw,
    LayerInfo,
    RepeatedRows,
    SharedEncoderProbe,
    check_image_size,
    gaussian_kl,
)

LIKELIHOODS = ("none", "gaussian", "bernoulli")
ENCODER_OUTPUTS = ("tuple", "halves", "interleaved")
ENCODER_INPUTS = ("image", "flat")
SCALES = ("logvar", "logstd", "std", "none")
DECODER_OUTPUTS = ("mean", "probabilities", "logits")


class ModuleInputError(ValueError):
    """A module's ``encode`` failed on the input vaeprobe gave it (its shape or range)."""


def _choose(value, choices, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class ModuleProbe(SharedEncoderProbe):
    """Probe over a user's ``nn.Module`` with ``encode`` and ``decode``; see
    :meth:`vaeprobe.Probe.from_module` for the conventions."""

    def __init__(self, model: nn.Module, image_shape, *, pixel_range=(0.0, 1.0),
                 output_range=None, likelihood: str = "none", sigma: float | None = None,
                 encoder_output: str = "tuple", scale: str = "logvar",
                 decoder_output: str = "mean", device=None, source: dict | None = None,
                 latent_shape: tuple[int, int, int] | None = None,
                 size_multiple: int | None = None, encoder_input: str = "image"):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.size_multiple = size_multiple  # a convolutional module takes other sizes
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        for name in ("encode", "decode"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"{type(model).__name__} has no {name}() method; expected "
                                f"encode(x) -> (mean, logvar) and decode(z) -> mean")
        self.encoder_output = _choose(encoder_output, ENCODER_OUTPUTS, "encoder_output")
        self.encoder_input = _choose(encoder_input, ENCODER_INPUTS, "encoder_input")
        self.scale = _choose(scale, SCALES, "scale")
        self.decoder_output = _choose(decoder_output, DECODER_OUTPUTS, "decoder_output")
        self.pixel_range = _check_range(pixel_range, "pixel_range")
        self._check_conventions(output_range)
        self.output_range = _check_range(output_range or (
            pixel_range if decoder_output == "mean" else (0.0, 1.0)), "output_range")
        self.likelihood = _choose(likelihood, LIKELIHOODS, "likelihood")
        if (sigma is not None) != (likelihood == "gaussian") or (sigma is not None and not (
                isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0)):
            raise ValueError("likelihood='gaussian' needs sigma > 0 and finite (the decoder's "
                             "standard deviation on its output scale); other likelihoods take "
                             "no sigma")
        self.sigma = sigma
        self.gaussian_hint = FROM_MODULE_GAUSSIAN  # how to choose a Gaussian (adapters: theirs)
        self.likelihood_kind = "none" if likelihood == "none" else "discretized"
        self.point_posterior = scale == "none"
        self.prior_is_generative = not self.point_posterior
        super().__init__({"checkpoint": "in-memory model", "format": "module",
                          "module": type(model).__name__, **(source or {})})
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        with torch.no_grad():  # a dry run on one image: the latent shape
            probed = self._moments(probe_images(self.image_shape, self.device)[:1])[0].shape[1:]
        channels, height, width = (int(v) for v in latent_shape or probed)
        self.layers = [LayerInfo("z", (height, width), channels)]
        if size_multiple is not None:
            check_image_size(*self.image_shape[1:], size_multiple, self.name)
        self._check_answers()

    @torch.no_grad()
    def _check_answers(self) -> None:
        """A dry run on four images: encoder and decoder answers (floating, one row per image,
        image-shaped), the decoded means within RANGE_TOLERANCE of ``output_range``."""
        x = probe_images(self.image_shape, self.device)
        mean = self._moments(x)[0]
        z = mean.flatten(1) if self.layers[0].resolution == (1, 1) else mean
        out = self._decoded(z, x.shape[0])
        if self.decoder_output == "logits":
            return
        low, high = self.output_range if self.decoder_output == "mean" else (0.0, 1.0)
        slack = RANGE_TOLERANCE * (high - low)
        seen_low, seen_high = float(out.min()), float(out.max())
        if math.isfinite(seen_low + seen_high) and low - slack <= seen_low <= seen_high <= \
                high + slack:
            return
        model = type(self.model).__name__
        hint = ("decoder_output='logits' if they are logits" if self.decoder_output ==
                "probabilities" else f"output_range=({seen_low:.3g}, {seen_high:.3g})-like "
                "bounds of the decoder's last activation (e.g. (-1, 1) for tanh, (0, 255) for "
                "a [0, 255] model)")
        raise ValueError(f"{model}.decode gave values on [{seen_low:.3g}, {seen_high:.3g}], "
                         f"outside its declared range [{low:g}, {high:g}] by more than "
                         f"{RANGE_TOLERANCE:.0%} of it: every likelihood would be wrong; "
                         f"declare {hint}")

    def _decoded(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """``model.decode(z)`` checked: floating, one row per image, (B, C, H, W) or flat."""
        model = type(self.model).__name__
        out = self.model.decode(z)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise TypeError(f"{model}.decode(z) must return a floating tensor, got "
                            f"{getattr(out, 'dtype', type(out).__name__)}; return the mean "
                            f"image as float (e.g. torch.sigmoid(logits))")
        expected = (n, *self.image_shape)
        if out.shape[0] != n or tuple(out.shape) not in (expected, (n, math.prod(expected[1:]))):
            raise ValueError(f"{model}.decode(z) gave {tuple(out.shape)} for {n} latents; "
                             f"expected {expected} (image_shape) or (B, C*H*W): one image per "
                             f"latent, channels first (permute a (B, H, W, C) output with "
                             f".permute(0, 3, 1, 2); check image_shape)")
        return out.float().reshape(expected)

    def _resized(self, height: int, width: int) -> ModuleProbe:
        """The same module at (height, width): a convolutional one (``size_multiple``) maps
        it to a latent of (height, width) / size_multiple."""
        resized = copy.copy(self)  # shares the module
        resized.image_shape = (self.image_shape[0], height, width)
        factor, channels = self.size_multiple, self.layers[0].channels
        resized.layers = [LayerInfo("z", (height // factor, width // factor), channels)]
        resized.source = dict(self.source, image_size=json.dumps([height, width]))
        return resized

    def _check_conventions(self, output_range) -> None:
        if self.scale == "none" and self.encoder_output != "tuple":
            raise ValueError(f"scale='none' (a deterministic encoder) returns the latent "
                             f"itself; encoder_output={self.encoder_output!r} splits a mean "
                             f"and a scale: leave encoder_output='tuple'")
        if self.decoder_output != "mean" and output_range is not None and \
                tuple(float(v) for v in output_range) != (0.0, 1.0):
            raise ValueError(f"decoder_output={self.decoder_output!r} gives Bernoulli "
                             f"probabilities on [0, 1]; output_range={output_range!r} is for "
                             f"decoder_output='mean'")

    def _split(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder output as (mean, scale) by ``encoder_output``."""
        model = type(self.model).__name__
        if self.encoder_output == "tuple":
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError(f"{model}.encode(x) must return (mean, {self.scale}) with "
                                f"encoder_output='tuple', got {type(out).__name__}; for one "
                                f"tensor use encoder_output='halves' or 'interleaved'")
            return out[0], out[1]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"encoder_output={self.encoder_output!r} expects {model}.encode(x) "
                            f"to return one tensor, got {type(out).__name__}; use "
                            f"encoder_output='tuple' for (mean, scale)")
        if out.ndim not in (2, 4) or out.shape[1] % 2:
            raise ValueError(f"encoder_output={self.encoder_output!r} needs (B, 2D) or "
                             f"(B, 2C, h, w) with an even dim 1, got {tuple(out.shape)}")
        if self.encoder_output == "halves":
            mean, scale = out.chunk(2, dim=1)
            return mean, scale
        pairs = out.reshape(out.shape[0], out.shape[1] // 2, 2, *out.shape[2:])
        return pairs[:, :, 0], pairs[:, :, 1]

    def _logstd(self, scale: torch.Tensor) -> torch.Tensor:
        if self.scale == "logvar":
            return 0.5 * scale
        if self.scale == "logstd":
            return scale
        if (scale <= 0).any():
            raise ValueError(
                f"scale='std' but {type(self.model).__name__}.encode gave values <= 0 (min "
                f"{float(scale.min()):.3g}), and a standard deviation is positive. Three causes "
                f"fit, and the numbers cannot tell them apart, so read the model's code (its "
                f"loss and its sampling line): a log-variance (z = mean + exp(0.5 * s) * eps: "
                f"scale='logvar'), a log-std (z = mean + exp(s) * eps: scale='logstd'), or a "
                f"signed std that needs abs() (z = mean + s * eps, whose sign does not matter: "
                f"return (mean, s.abs()) from encode and keep scale='std')")
        return torch.log(scale)

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logstd) as (B, c, h, w): a flat (B, D) latent becomes (B, D, 1, 1).

        A point posterior (``scale="none"``) has logstd -inf."""
        low, high = self.pixel_range
        pixels = x.float() * ((high - low) / 255.0) + low
        if self.encoder_input == "flat":
            pixels = pixels.flatten(1)
        try:
            out = self.model.encode(pixels)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ModuleInputError(self._input_hint(pixels, error)) from error
        if self.scale == "none":
            if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4):
                raise TypeError(f"scale='none': {type(self.model).__name__}.encode(x) must "
                                f"return the latent, one tensor (B, D) or (B, C, h, w); got "
                                f"{getattr(out, 'shape', type(out).__name__)}")
            check_answer(self.model, out, x.shape[0], "latent")
            mean = out.float()
            mean = mean[:, :, None, None] if mean.ndim == 2 else mean
            return mean, torch.full_like(mean, -math.inf)
        mean, scale = self._split(out)
        check_answer(self.model, mean, x.shape[0], "mean")
        check_answer(self.model, scale, x.shape[0], self.scale)
        if mean.shape != scale.shape or mean.ndim not in (2, 4):
            raise ValueError(f"encode(x) must give a mean and a {self.scale} of one shape, "
                             f"(B, D) or (B, C, H, W); got {tuple(mean.shape)} and "
                             f"{tuple(scale.shape)}")
        logstd = self._logstd(scale.float())
        if mean.ndim == 2:
            mean, logstd = mean[:, :, None, None], logstd[:, :, None, None]
        return mean.float(), logstd

    def _input_hint(self, pixels: torch.Tensor, error: Exception) -> str:
        """What ``encode`` was given and which option changes it, around the module's error."""
        model, (channels, height, width) = type(self.model).__name__, self.image_shape
        low, high = self.pixel_range
        other = "flat" if self.encoder_input == "image" else "image"
        layout = (f"(B, {channels * height * width}) = (B, C*H*W), e.g. for a model whose "
                  f"first layer is nn.Linear" if other == "flat" else
                  f"(B, {channels}, {height}, {width}) = (B, C, H, W)")
        return (f"{model}.encode failed on the input vaeprobe gave it: a float32 tensor of "
                f"shape {tuple(pixels.shape)} with values on [{low:g}, {high:g}]; the module "
                f"said: {type(error).__name__}: {str(error)[:300]}. Options that change the "
                f"input: image_shape=(C, H, W) (now {self.image_shape}), "
                f"encoder_input={other!r} (gives {layout}), "
                f"pixel_range=(low, high) (now ({low:g}, {high:g}); e.g. "
                f"(-1, 1))")

    def _shared(self, x):
        return RepeatedRows(list(self._moments(x)))  # the module's encoder, once per image

    def _draw(self, moments, k: int, noise) -> LatentPass:
        mean, logstd = moments.rows(k)
        zeros = torch.zeros_like(mean)
        if self.point_posterior:  # z is the encoder's latent; no noise, no KL
            return LatentPass([LayerDraw(p_mean=zeros, p_logstd=zeros, z=mean, q_mean=mean,
                                         q_logstd=logstd, kl=None, distribution="point")], k)
        z = mean + logstd.exp() * noise[0]
        return LatentPass([LayerDraw(p_mean=zeros, p_logstd=zeros, z=z, q_mean=mean,
                                     q_logstd=logstd, kl=gaussian_kl(mean, logstd, zeros, zeros))],
                          k)

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        z = latents.draws[0].z
        flat = self.layers[0].resolution == (1, 1)
        out = self._decoded(z.flatten(1) if flat else z, z.shape[0])
        if self.decoder_output == "logits":
            return self._likelihood(torch.sigmoid(out), logits=out)
        low, high = self.output_range
        return self._likelihood((out - low) / (high - low))

    def _likelihood(self, mean: torch.Tensor, logits: torch.Tensor | None = None):
        if self.likelihood == "gaussian":
            low, high = self.output_range
            log_sigma = torch.tensor(math.log(self.sigma / (high - low)), device=mean.device)
            return DiscretizedGaussian(mean, log_sigma, "fixed")
        if self.likelihood == "bernoulli":
            return Bernoulli(mean, logits=logits, gaussian_hint=self.gaussian_hint)
        return MeanOnly(mean.clamp(0, 1), self.name)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        self.require("prior samples", prior=True)
        noise = self.noise(n, 1, generator)[0] * float(temperature)
        zeros = torch.zeros_like(noise)
        return LatentPass([LayerDraw(p_mean=zeros, p_logstd=zeros, z=noise)], 1)


RANGE_TOLERANCE = 0.5  # decoder output may pass its declared range by this fraction of it


def _check_range(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (low, high), e.g. (0, 1) or (-1, 1); got "
                         f"{value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"{name} must be finite with high > low, got {value!r}")
    return low, high


def from_module(model: nn.Module, image_shape, *, pixel_range=(0.0, 1.0), output_range=None,
                likelihood: str = "none", sigma: float | None = None,
                encoder_output: str = "tuple", scale: str = "logvar",
                decoder_output: str = "mean", size_multiple: int | None = None,
                encoder_input: str = "image", device=None) -> ModuleProbe:
    """A Probe over a plain single-latent VAE (or deterministic autoencoder) module.

    The module's answers are checked on a dry run of four images (black, grey, white, noise)
    when the Probe is made, and the shapes on every call: ``encode``'s parts floating with one
    row per image, ``decode``'s output floating and (B, C, H, W) or (B, C*H*W), and the decoded
    means within half a range of ``output_range`` (``RANGE_TOLERANCE``); each error names the
    fix (the option to declare, or the line to change in the module).

    Parameters
    ----------
    model : nn.Module
        With ``encode(x)`` (see ``encoder_output`` and ``scale``; each part (B, D) or
        (B, C, h, w)) and ``decode(z)`` (reshapeable to ``(B, *image_shape)``).
    image_shape : (C, H, W)
    pixel_range : (low, high)
        The scale the model's input is on: uint8 0 maps to ``low``, 255 to ``high``.
    output_range : (low, high), optional
        The scale of ``decode``'s mean output; default ``pixel_range`` (``decoder_output=
        "mean"``) or (0, 1) (probabilities, logits).
    likelihood : {"none", "gaussian", "bernoulli"}
        The decoder likelihood; ``"none"`` makes IWAE and stochastic samples refuse.
    sigma : float, optional
        The Gaussian's standard deviation on the output scale (``likelihood="gaussian"``).
    encoder_output : {"tuple", "halves", "interleaved"}
        How ``encode`` gives the mean and the scale: a pair; one tensor split in halves along
        dim 1 (mean first); or one tensor whose dim 1 alternates mean, scale, mean, ...
    scale : {"logvar", "logstd", "std", "none"}
        What the scale is; ``"none"``: a deterministic encoder returning the latent (a point
        posterior: rate, IWAE and prior samples are undefined and refuse).
    decoder_output : {"mean", "probabilities", "logits"}
        What ``decode`` returns: a mean on ``output_range``, Bernoulli probabilities, or
        Bernoulli logits (sigmoid gives the mean; log-likelihoods use the logits).
    encoder_input : {"image", "flat"}
        What ``encode`` is given: images (B, C, H, W), or ``"flat"`` vectors (B, C*H*W), for
        a module whose first layer is ``nn.Linear`` and which does not flatten itself. An
        ``encode`` that fails on its input raises ``ModuleInputError`` naming the shape and
        range it was given and these options.
    size_multiple : int, optional
        For a convolutional module: it takes any height and width divisible by this (its
        downsampling factor), and the analyses run it at the data's own size. Default None:
        ``image_shape`` only.
    device : str or torch.device, optional

    Examples
    --------
    >>> import torch, vaeprobe as vp
    >>> class TinyVAE(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.enc, self.dec = torch.nn.Linear(64, 2 * 3), torch.nn.Linear(3, 64)
    ...     def encode(self, x):
    ...         return self.enc(x.flatten(1)).chunk(2, dim=1)
    ...     def decode(self, z):
    ...         return torch.sigmoid(self.dec(z))
    >>> probe = vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), device="cpu")
    >>> probe.layers[0].channels, probe.layers[0].resolution, probe.likelihood_kind
    (3, (1, 1), 'none')
    >>> try:
    ...     vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), encoder_output="halves")
    ... except TypeError as error:
    ...     print(str(error).split(";")[1].strip())
    use encoder_output='tuple' for (mean, scale)
    """
    return ModuleProbe(model, image_shape, pixel_range=pixel_range, output_range=output_range,
                       likelihood=likelihood, sigma=sigma, encoder_output=encoder_output,
                       scale=scale, decoder_output=decoder_output, device=device,
                       size_multiple=size_multiple, encoder_input=encoder_input)
