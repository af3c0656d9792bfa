"""The Probe contract: all that analyses may ask of a trained VAE, whatever its origin.

This module is the whole contract and nothing model-specific: an adapter (a checkpoint format
in :mod:`vaeprobe.adapters`) imports only this. A Probe exposes ``image_shape`` (C, H, W),
``layers`` (top/coarsest to bottom: name, resolution (H, W), channels, stage) and three
operations:

- ``encode(x_uint8, n_samples=K, generator=None, posterior="sample")`` -> :class:`LatentPass`
  with the posterior and prior parameters of every layer, the draw ``z``, the per-element KL,
  and log q(z|x), log p(z) of the draw. The bottom-up encoder runs once per image; the K paths
  share it. Rows are image-major: row ``i * K + k`` is draw k of image i. With
  ``posterior="mean"`` every layer's z is its posterior mean (no noise): reconstructions from
  the mode, as diffusers' autoencoders make them by default.
- ``decode(latents)`` -> the decoder likelihood: ``.mean`` (B, C, H, W) in [0, 1],
  ``.sample(generator)`` -> uint8, ``.log_prob(x_uint8)`` -> nats per image.
- ``sample_prior(n, temperature=1.0, generator=None)`` -> latents for ``decode``.

Every Probe declares ``likelihood_kind`` (``"discretized"``: a PMF over the 2^n_bits levels;
``"dequantized"``: a density on uniformly dequantized [0, 1] data; ``"none"``: the decoder has no
likelihood), ``n_bits`` (8 unless the model was trained on fewer levels, e.g. 5 for VDVAE's
FFHQ-256) and ``prior_is_generative`` (False where the prior that matters lives outside the
checkpoint, as for a latent-diffusion autoencoder). Analyses that are undefined for a Probe
call :meth:`Probe.require` first and refuse with one :class:`UndefinedAnalysisError`.

Image sizes: ``size_multiple`` is None for a model with fixed-size parameters (it takes
``image_shape`` only), or its downsampling factor f for a convolutional one (any height and
width divisible by f); ``downsampling`` (image over coarsest latent side), ``accepted_sizes()``
(in words) and ``at_image_size(h, w)`` (the same weights at another size, or a refusal naming
the nearest valid sizes) say it. The analyses fit a convolutional probe to the data's size.

A draw's KL is analytic where posterior and prior are Gaussian (``LayerDraw.kl_analytic``);
otherwise it is the sampled log q(z|x) - log p(z) of the draw.

Each layer draw has a ``distribution`` (:data:`DISTRIBUTIONS`):

- ``"gaussian"``: diagonal Gaussian posterior and prior (``q_mean``, ``q_logstd``, ...);
- ``"categorical"``: a one-hot ``z`` over the layer's channels (the categories), with
  ``q_log_probs`` / ``p_log_probs`` (B, K, 1, 1); its KL to the prior is analytic and, per
  element, q_k (log q_k - log p_k), so that it sums to the KL over categories. ``q_mean`` /
  ``p_mean`` are the probabilities (the mean of the one-hot) and ``q_logstd`` / ``p_logstd`` the
  log standard deviations of its components, so latent statistics read it like any layer;
- ``"point"``: a deterministic encoder's latent (a point posterior: ``z = q_mean``, ``q_logstd``
  is -inf, ``kl`` is None). A Probe whose layers are points declares ``point_posterior = True``:
  the rate, IWAE and prior samples are undefined and refuse (:meth:`Probe.require` with
  ``posterior=True`` or ``prior=True``); reconstructions, spectra, latent statistics and
  numerics run.

``generator`` is None, a ``torch.Generator``, per-image counter-based streams
(:func:`vaeprobe.random.image_streams`, what the analyses use: one vectorised draw per layer,
the same numbers on CPU and CUDA) or a list of generators, one per image. With streams or a
list, each image's noise comes from its own stream in a fixed layout (:mod:`vaeprobe.random`),
so results do not depend on how images are batched or draws chunked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vaeprobe.densities import (  # noqa: F401 (re-exported: part of the contract)
    categorical_draw,
    categorical_kl,
    categorical_moments,
    gaussian_kl,
    gaussian_log_density,
)
from vaeprobe.probe_checks import (  # noqa: F401 (re-exported)
    check_image_size,
    check_n_fixed,
    check_n_samples,
    nearest_multiples,
    per_layer_temperatures,
)
from vaeprobe.random import ImageStreams, per_image_noise

LIKELIHOOD_KINDS = ("discretized", "dequantized", "none")
POSTERIORS = ("sample", "mean")
DISTRIBUTIONS = ("gaussian", "categorical", "point")


class UndefinedAnalysisError(ValueError):
    """An analysis that is not defined for this model (e.g. IWAE without a likelihood)."""


class NotBinaryError(ValueError):
    """Grey-level images given to a Bernoulli likelihood (defined on levels 0 and 255 only)."""


@dataclass
class LayerDraw:
    """One latent layer of one pass: parameters (B, c, h, w) and the draw.

    ``kl`` is per element, nats: analytic KL(q || p) when ``kl_analytic``, else the sampled
    log q(z|x) - log p(z) of this draw (posteriors that are not Gaussian, e.g. flows).
    """

    p_mean: torch.Tensor
    p_logstd: torch.Tensor
    z: torch.Tensor
    q_mean: torch.Tensor | None = None  # None when z came from the prior
    q_logstd: torch.Tensor | None = None
    kl: torch.Tensor | None = field(default=None)
    kl_analytic: bool = True
    distribution: str = "gaussian"  # one of DISTRIBUTIONS
    q_log_probs: torch.Tensor | None = None  # categorical only: (B, K, 1, 1)
    p_log_probs: torch.Tensor | None = None


Generators = torch.Generator | Sequence[torch.Generator] | ImageStreams | None


@dataclass(frozen=True)
class LayerInfo:
    """One latent layer: ``name``, ``resolution`` (H, W), ``channels``, ``stage``."""

    name: str
    resolution: tuple[int, int]
    channels: int
    stage: str = "primary"


@dataclass
class LatentPass:
    """Latents of one pass: one :class:`LayerDraw` per probe layer, rows image-major."""

    draws: list[LayerDraw]
    n_samples: int = 1
    context: dict = field(default_factory=dict)  # adapter-private state for decode()

    @property
    def from_posterior(self) -> bool:
        first = self.draws[0]  # a point posterior has a q_mean and no KL; a flow the reverse
        return first.kl is not None or first.q_mean is not None

    def _require_distribution(self, what: str) -> None:
        points = [index for index, d in enumerate(self.draws) if d.distribution == "point"]
        if points:
            raise UndefinedAnalysisError(
                f"{what} is undefined for a point posterior (a deterministic encoder: layers "
                f"{points} have no posterior distribution and no prior to measure it against)")

    @property
    def kl_analytic(self) -> list[bool]:
        """Per layer: is the KL analytic (True) or the sampled log q - log p of the draw?"""
        return [bool(d.kl_analytic) for d in self.draws]

    def kl_per_layer(self) -> torch.Tensor:
        """KL per row and layer, nats: (rows, layers). See :attr:`kl_analytic`."""
        if not self.from_posterior:
            raise ValueError("latents drawn from the prior have no KL; use probe.encode(x)")
        self._require_distribution("the KL (rate)")
        return torch.stack([d.kl.flatten(1).sum(1) for d in self.draws], dim=1)

    def log_q(self) -> torch.Tensor:
        """log q(z | x) of the draw, summed over layers: (rows,)."""
        if not self.from_posterior:
            raise ValueError("latents drawn from the prior have no posterior")
        self._require_distribution("log q(z|x)")
        return sum(_layer_log_q(d) for d in self.draws)

    def log_p(self) -> torch.Tensor:
        """log p(z) of the draw under the (conditional) priors, summed over layers: (rows,)."""
        self._require_distribution("log p(z)")
        return sum(_layer_log_p(d) for d in self.draws)


def _layer_log_p(draw: LayerDraw) -> torch.Tensor:
    if draw.distribution == "categorical":
        return (draw.z * draw.p_log_probs).flatten(1).sum(1)
    return gaussian_log_density(draw.z, draw.p_mean, draw.p_logstd).flatten(1).sum(1)


def _layer_log_q(draw: LayerDraw) -> torch.Tensor:
    if draw.distribution == "categorical":
        return (draw.z * draw.q_log_probs).flatten(1).sum(1)
    if draw.kl_analytic:
        return gaussian_log_density(draw.z, draw.q_mean, draw.q_logstd).flatten(1).sum(1)
    # a sampled KL is log q - log p of this very draw
    return (draw.kl + gaussian_log_density(draw.z, draw.p_mean, draw.p_logstd)).flatten(1).sum(1)


class Probe:
    """Base class: shape checks, devices, noise and refusals; subclasses implement the three
    operations (``encode``, ``decode``, ``sample_prior``) and set ``image_shape``, ``layers``
    and ``device``.

    Class attributes declare what the model defines: ``likelihood_kind`` (``"discretized"``,
    ``"dequantized"`` or ``"none"``), ``n_bits`` (levels are 2^n_bits),
    ``prior_is_generative`` and ``point_posterior`` (a deterministic autoencoder: no rate).
    """

    likelihood_kind = "discretized"
    n_bits = 8
    prior_is_generative = True
    point_posterior = False
    image_shape: tuple[int, int, int]
    layers: list[LayerInfo]
    device: torch.device

    def __init__(self, source: dict | None = None):
        self.source = dict(source or {})  # provenance: checkpoint, checkpoint_sha256, step...

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images (N, {', '.join(map(str, self.image_shape))})"
                             f", got {getattr(x, 'dtype', type(x).__name__)}; use "
                             f"vaeprobe.data.to_uint8")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))}"
                             f") for this model, got {tuple(x.shape)}")
        return x.to(self.device)

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [(info.channels, *info.resolution) for info in self.layers]

    def rows_per_pass(self) -> int:
        """A good number of rows (images x draws) per pass on this probe's device.

        On CUDA: as many as a share of the free device memory holds at
        :meth:`activation_bytes_per_row` each (:mod:`vaeprobe.chunking`; ``vp.iwae`` measures
        the bytes per row instead). On CPU a pass slows once its tensors outgrow the caches and
        the allocator's heap (larger ones are mapped afresh, page by page, by every operation):
        at most 64 rows and 2^19 image values (2 rows of 256x256 RGB) unless the probe knows.
        """
        if self.device.type == "cuda":
            from vaeprobe.chunking import pass_budget, rows_within

            return rows_within(self.activation_bytes_per_row(), pass_budget(self.device)[0])
        return max(1, min(64, 2 ** 19 // torch.Size(self.image_shape).numel()))

    def activation_bytes_per_row(self) -> int:
        """Declared bytes of activations per row: by default 256 float32 channels at the
        image's full resolution; probes that know their widths may say better."""
        return 4 * 256 * self.image_shape[1] * self.image_shape[2]

    def noise(self, rows: int, n_samples: int, generator: Generators,
              posterior: str = "sample") -> list[torch.Tensor]:
        """Standard normal draws for every layer, (rows * n_samples, c, h, w) each.

        ``posterior="mean"`` gives zeros: z = q_mean + q_std * 0 is the posterior mean.
        """
        shapes = self.latent_shapes()
        if check_posterior(posterior) == "mean":
            return [torch.zeros((rows * n_samples, *shape), device=self.device)
                    for shape in shapes]
        if generator is None or isinstance(generator, torch.Generator):
            return [torch.randn((rows * n_samples, *shape), generator=generator,
                                device=self.device) for shape in shapes]
        if len(generator) != rows:
            raise ValueError(f"expected one generator (or stream) per image ({rows}), got "
                             f"{len(generator)}")
        return per_image_noise(shapes, generator, n_samples, self.device)

    def encode(self, x, n_samples: int = 1, generator: Generators = None, *,
               posterior: str = "sample") -> LatentPass:
        raise NotImplementedError

    def encode_chunks(self, x, n_samples: int, chunk: int, generator: Generators = None, *,
                      posterior: str = "sample"):
        """Yield LatentPasses of ``chunk`` draws per image until ``n_samples`` are drawn.

        The default calls :meth:`encode` per chunk; probes that can share the deterministic
        encoder work across chunks override it (ours do). Rows are image-major per chunk.
        """
        check_n_samples(n_samples)
        for start in range(0, n_samples, chunk):
            yield encode(self, x, min(chunk, n_samples - start), generator, posterior)

    def decode(self, latents: LatentPass):
        raise NotImplementedError

    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        raise NotImplementedError

    def sample_prior_given(self, latents: LatentPass, n_fixed: int, temperature=1.0,
                           generator: Generators = None) -> LatentPass:
        """Latents whose first ``n_fixed`` layers are those of ``latents`` (e.g. posterior
        draws from :meth:`encode`) and whose later layers come from the prior given them,
        p(z_l | z_<l), at ``temperature`` (0: the conditional prior means).

        ``n_fixed=0`` equals :meth:`sample_prior` with the same ``generator``;
        ``n_fixed=len(self.layers)`` keeps every layer. Rows follow ``latents``; ``generator``
        is one per row or one for all, laid out as in :meth:`sample_prior`. Hierarchical probes
        implement it (progressive coding); the default refuses.
        """
        raise UndefinedAnalysisError(
            f"drawing later latent layers from the prior given earlier ones is undefined for "
            f"{self.name}: {type(self).__name__} does not implement sample_prior_given (a prior "
            f"p(z_l | z_<l) conditioned on the layers above)")

    def encode_given(self, x, zs: Sequence[torch.Tensor], n_samples: int = 1) -> LatentPass:
        """The posterior pass of images ``x`` with every latent fixed to ``zs`` (teacher
        forcing): per layer, the posterior q(z_l | z_<l, x) and prior p(z_l | z_<l)
        parameters evaluated at the given z. ``zs[l]`` is ``(rows, c, h, w)`` with
        ``n_samples`` rows per image, image-major as in :meth:`encode` (row ``i * K + k`` is
        latent k of image i; the encoder work is done once per image). A layer's parameters
        depend only on the layers above it, so later entries may be placeholders. Used where a
        density must be evaluated at a given z (``vp.information``'s aggregate posterior,
        ``vp.compress``'s bits-back coder).

        The default serves one-layer models (the posterior does not depend on z);
        hierarchical probes implement it.
        """
        if len(self.layers) != 1:
            raise UndefinedAnalysisError(
                f"evaluating the posterior at given latents is undefined for {self.name}: "
                f"{type(self).__name__} has {len(self.layers)} layers and does not implement "
                f"encode_given (q(z_l | z_<l, x) at a given z_<l)")
        draw = encode(self, x, 1, None, "mean").draws[0]
        p_mean, p_logstd, q_mean, q_logstd = (t.repeat_interleave(n_samples, 0) for t in (
            draw.p_mean, draw.p_logstd, draw.q_mean, draw.q_logstd))
        z = zs[0].to(q_mean.device, q_mean.dtype)
        kl = gaussian_kl(q_mean, q_logstd, p_mean, p_logstd)
        return LatentPass([LayerDraw(p_mean, p_logstd, z, q_mean, q_logstd, kl)], n_samples, {})

    @property
    def name(self) -> str:
        """How errors and reports name this model: its checkpoint, or its class."""
        return str(self.source.get("checkpoint") or type(self).__name__)

    def require(self, analysis: str, *, likelihood: bool = False, prior: bool = False,
                posterior: bool = False) -> None:
        """Refuse ``analysis`` with one :class:`UndefinedAnalysisError` where it is undefined.

        ``likelihood``: the analysis needs a decoder likelihood (IWAE, stochastic samples);
        ``prior``: it needs the checkpoint's prior to be the generative model (prior samples);
        ``posterior``: it needs a posterior distribution (rate, IWAE), which a deterministic
        autoencoder (``point_posterior``) lacks.
        """
        if (posterior or prior) and self.point_posterior:
            raise UndefinedAnalysisError(
                f"{analysis} is undefined for {self.name}: it is a deterministic autoencoder "
                f"(point_posterior=True: its encoder gives one latent per image, with no "
                f"posterior variance and no prior), so it has no rate, no likelihood bound and "
                f"no prior to sample; reconstructions, spectra, latent statistics and numerics "
                f"still run")
        if likelihood and self.likelihood_kind == "none":
            raise UndefinedAnalysisError(
                f"{analysis} is undefined for {self.name}: its decoder has no likelihood "
                f"(likelihood_kind='none'), so there is no log p(x|z) to evaluate or sample; "
                f"use the reconstruction analyses (posterior='mean') instead")
        if prior and not self.prior_is_generative:
            raise UndefinedAnalysisError(
                f"{analysis} is undefined for {self.name}: its prior is not the generative "
                f"model (prior_is_generative=False; e.g. a latent-diffusion autoencoder, whose "
                f"prior is the diffusion model); reconstruction kinds still run")

    # ---- image sizes: which (H, W) the model takes ------------------------------------------
    # None: only image_shape's (H, W) (a model with fixed-size parameters, or flat latents);
    # an int k: any H and W divisible by k (a convolutional model: k is its downsampling)
    size_multiple: int | None = None

    @property
    def downsampling(self) -> int | None:
        """Image height over the coarsest latent layer's height (8 for Stable Diffusion's
        AutoencoderKL); None where that is not a whole number or the latents are flat."""
        height, coarsest = self.image_shape[1], min(info.resolution[0] for info in self.layers)
        if coarsest <= 1 and len(self.layers) == 1 or height % coarsest:
            return None
        return height // coarsest

    def accepted_sizes(self) -> str:
        """The image sizes this probe takes, in words (for errors and the model card)."""
        if self.size_multiple is None:
            return f"only {self.image_shape[1]}x{self.image_shape[2]} (HxW) images"
        return f"any height and width divisible by {self.size_multiple}"

    def at_image_size(self, height: int, width: int) -> Probe:
        """This model as a Probe of (C, ``height``, ``width``) images, sharing its weights.

        Fixed-size probes return themselves for their own size and refuse others; convolutional
        ones (``size_multiple`` set) check the size (:func:`check_image_size`) and build a new
        Probe with :meth:`_resized`.
        """
        height, width = int(height), int(width)
        if (height, width) == tuple(self.image_shape[1:]):
            return self
        if self.size_multiple is None:
            raise ValueError(
                f"{self.name} takes {self.accepted_sizes()}, not {height}x{width}: its "
                f"parameters fix the image size; resize the data (e.g. folder:PATH,resize=crop "
                f"or ,resize=squash)")
        check_image_size(height, width, self.size_multiple, self.name)
        return self._resized(height, width)

    def _resized(self, height: int, width: int) -> Probe:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_shape={self.image_shape}, "
                f"layers={len(self.layers)}, source={self.source.get('checkpoint', 'memory')})")


class SharedEncoderProbe(Probe):
    """A Probe that encodes in chunks of draws with the deterministic encoder work done once
    per image: subclasses give ``_shared(x)`` (that work, run once) and
    ``_draw(shared, k, noise)`` (a LatentPass of ``k`` draws per image from the noise of
    :meth:`Probe.noise`); ``encode`` is one chunk of all the draws."""

    @torch.no_grad()
    def encode(self, x, n_samples: int = 1, generator: Generators = None, *,
               posterior: str = "sample") -> LatentPass:
        return next(self.encode_chunks(x, n_samples, n_samples, generator, posterior=posterior))

    @torch.no_grad()
    def encode_chunks(self, x, n_samples: int, chunk: int, generator: Generators = None, *,
                      posterior: str = "sample"):
        check_n_samples(n_samples)
        x = self.check_images(x)
        shared = self._shared(x)
        for start in range(0, n_samples, chunk):
            k = min(chunk, n_samples - start)
            yield self._draw(shared, k, self.noise(x.shape[0], k, generator, posterior))

    def _shared(self, x):
        raise NotImplementedError

    def _draw(self, shared, k: int, noise) -> LatentPass:
        raise NotImplementedError


class RepeatedRows:
    """Per-image tensors repeated k times along rows (image-major), built once per k: every
    chunk of the same size reuses them."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors, self.k, self.repeated = tensors, None, None

    def rows(self, k: int) -> list[torch.Tensor]:
        if k != self.k:
            self.k, self.repeated = k, [t.repeat_interleave(k, 0) for t in self.tensors]
        return self.repeated


def encode(probe: Probe, x, n_samples: int = 1, generator: Generators = None,
           posterior: str = "sample") -> LatentPass:
    """``probe.encode`` passing ``posterior`` only when it is not the default, so Probes written
    against the first contract (``encode(x, n_samples, generator)``) keep working for samples."""
    if check_posterior(posterior) == "sample":
        return probe.encode(x, n_samples, generator)
    return probe.encode(x, n_samples, generator, posterior=posterior)


def check_posterior(posterior: str) -> str:
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS} (a posterior sample or its "
                         f"mean), got {posterior!r}")
    return posterior
