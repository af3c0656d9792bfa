"""The Probe contract: all that analyses may ask of a trained VAE, whatever its origin.

A Probe exposes ``image_shape`` (C, H, W), ``layers`` (top to bottom: name, resolution,
channels, stage) and three operations:
- ``encode(x_uint8, n_samples=K, generator=None)`` -> :class:`LatentPass` with the posterior and
  prior parameters of every layer, the draw ``z``, the analytic per-element KL, and log q(z|x),
  log p(z) of the draw. The bottom-up encoder runs once per image; the K paths share it.
  Rows are image-major: row ``i * K + k`` is draw k of image i.
- ``decode(latents)`` -> the decoder likelihood (``.mean``, ``.sample``, ``.log_prob``).
- ``sample_prior(n, temperature=1.0, generator=None)`` -> latents for ``decode``.

``generator`` is a ``torch.Generator`` or a list of them, one per image; with a list, each
image's noise comes from its own stream, so results do not depend on how images are batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vaeprobe.models.hvae import HVAE, LayerDraw, gaussian_log_density, per_layer_temperatures
from vaeprobe.models.two_stage import TwoStageVAE

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class LayerInfo:
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
        return self.draws[0].q_mean is not None

    def kl_per_layer(self) -> torch.Tensor:
        """Analytic KL per row and layer, nats: (rows, layers)."""
        if not self.from_posterior:
            raise ValueError("latents drawn from the prior have no KL; use probe.encode(x)")
        return torch.stack([d.kl.flatten(1).sum(1) for d in self.draws], dim=1)

    def log_q(self) -> torch.Tensor:
        """log q(z | x) of the draw, summed over layers: (rows,)."""
        if not self.from_posterior:
            raise ValueError("latents drawn from the prior have no posterior")
        return sum(gaussian_log_density(d.z, d.q_mean, d.q_logstd).flatten(1).sum(1)
                   for d in self.draws)

    def log_p(self) -> torch.Tensor:
        """log p(z) of the draw under the (conditional) priors, summed over layers: (rows,)."""
        return sum(gaussian_log_density(d.z, d.p_mean, d.p_logstd).flatten(1).sum(1)
                   for d in self.draws)


class Probe:
    """Base class: shape checks, devices and noise; subclasses implement the three operations."""

    likelihood_kind = "discretized"
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

        On CPU a pass gets slower per row once its activations outgrow the caches, so the
        default is small; probes that know their activation width refine it.
        """
        return 4096 if self.device.type == "cuda" else 64

    def noise(self, rows: int, n_samples: int, generator: Generators) -> list[torch.Tensor]:
        """Standard normal draws for every layer, (rows * n_samples, c, h, w) each."""
        shapes = self.latent_shapes()
        if generator is None or isinstance(generator, torch.Generator):
            return [torch.randn((rows * n_samples, *shape), generator=generator,
                                device=self.device) for shape in shapes]
        if len(generator) != rows:
            raise ValueError(f"expected one generator per image ({rows}), got {len(generator)}")
        return per_image_noise(shapes, generator, n_samples, self.device)

    def encode(self, x, n_samples: int = 1, generator: Generators = None) -> LatentPass:
        raise NotImplementedError

    def encode_chunks(self, x, n_samples: int, chunk: int, generator: Generators = None):
        """Yield LatentPasses of ``chunk`` draws per image until ``n_samples`` are drawn.

        The default calls :meth:`encode` per chunk; probes that can share the deterministic
        encoder work across chunks override it (ours do). Rows are image-major per chunk.
        """
        _check_n_samples(n_samples)
        for start in range(0, n_samples, chunk):
            yield self.encode(x, min(chunk, n_samples - start), generator)

    def decode(self, latents: LatentPass):
        raise NotImplementedError

    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_shape={self.image_shape}, "
                f"layers={len(self.layers)}, source={self.source.get('checkpoint', 'memory')})")


def per_image_noise(shapes, generators, n_samples: int, device) -> list[torch.Tensor]:
    """Standard normal draws per layer, (images * n_samples, *shape), each image's own stream.

    Layer by layer, so a model's first layers get the same noise as a model of fewer layers
    (the two-stage primary matches the primary alone): randn is not prefix-stable in size.
    """
    return [torch.cat([torch.randn((n_samples, *shape), generator=g, device=device)
                       for g in generators]) for shape in shapes]


class RepeatedRows:
    """Per-image tensors repeated k times along rows (image-major), built once per k: every
    chunk of the same size reuses them."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors, self.k, self.repeated = tensors, None, None

    def rows(self, k: int) -> list[torch.Tensor]:
        if k != self.k:
            self.k, self.repeated = k, [t.repeat_interleave(k, 0) for t in self.tensors]
        return self.repeated


def image_generators(seed: int, indices, device=None) -> list[torch.Generator]:
    """One generator per image, seeded by (seed, dataset index): batch-size-free randomness."""
    generators = []
    for index in indices:
        generator = torch.Generator(device=device or "cpu")
        generator.manual_seed(hash((int(seed), int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
        generators.append(generator)
    return generators


def _check_n_samples(n_samples: int) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


class HVAEProbe(Probe):
    """Probe over a :class:`~vaeprobe.models.hvae.HVAE`."""

    def __init__(self, model: HVAE, device=None, source: dict | None = None):
        super().__init__(source)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_shape = model.image_shape
        self.layers = [LayerInfo(**info) for info in model.layer_info()]

    def rows_per_pass(self) -> int:
        if self.device.type == "cuda":
            return super().rows_per_pass()
        config = self.model.config  # about 2^21 activation elements (8 MiB) per tensor
        return max(1, 2 ** 21 // (config.width * config.image_size ** 2))

    @torch.no_grad()
    def encode(self, x, n_samples: int = 1, generator: Generators = None) -> LatentPass:
        return next(self.encode_chunks(x, n_samples, n_samples, generator))

    @torch.no_grad()
    def encode_chunks(self, x, n_samples: int, chunk: int, generator: Generators = None):
        _check_n_samples(n_samples)
        x = self.check_images(x)
        # the deterministic encoder work, once per image, shared by every draw
        contexts = RepeatedRows(self.model.posterior_contexts(self.model.bottom_up(x)))
        for start in range(0, n_samples, chunk):
            k = min(chunk, n_samples - start)
            h, draws = self.model.top_down(contexts=contexts.rows(k),
                                           noise=self.noise(x.shape[0], k, generator))
            yield LatentPass(draws, k, {"h": h})

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        h = latents.context.get("h")
        if h is None:
            h, _ = self.model.top_down(batch=latents.draws[0].z.shape[0],
                                       zs=[d.z for d in latents.draws])
        return self.model.likelihood(h)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        h, draws = self.model.top_down(batch=n, temperature=temperature,
                                       noise=self.noise(n, 1, generator))
        return LatentPass(draws, 1, {"h": h})


class TwoStageProbe(Probe):
    """Probe over a :class:`~vaeprobe.models.two_stage.TwoStageVAE`: joint latents (z, z')."""

    def __init__(self, model: TwoStageVAE, device=None, source: dict | None = None):
        super().__init__(source)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_shape = model.primary.image_shape
        self.layers = [LayerInfo(name=f"{stage}.{info['name']}", resolution=info["resolution"],
                                 channels=info["channels"], stage=stage)
                       for stage in ("primary", "secondary")
                       for info in getattr(model, stage).layer_info()]
        self.n_primary = len(model.primary.decoder_layers)

    def _secondary(self, x_hat, noise, x=None, temperature=1.0):
        secondary = self.model.secondary
        features = secondary.condition_features(x_hat)
        activations = None if x is None else secondary.bottom_up(x, condition=x_hat)
        return secondary.top_down(activations, batch=x_hat.shape[0], temperature=temperature,
                                  condition_features=features, noise=noise)

    @torch.no_grad()
    def encode(self, x, n_samples: int = 1, generator: Generators = None) -> LatentPass:
        return next(self.encode_chunks(x, n_samples, n_samples, generator))

    @torch.no_grad()
    def encode_chunks(self, x, n_samples: int, chunk: int, generator: Generators = None):
        _check_n_samples(n_samples)
        x = self.check_images(x)
        primary = self.model.primary
        # shared by every draw
        contexts = RepeatedRows(primary.posterior_contexts(primary.bottom_up(x)))
        images = RepeatedRows([x])
        for start in range(0, n_samples, chunk):
            k = min(chunk, n_samples - start)
            noise = self.noise(x.shape[0], k, generator)
            h1, draws1 = primary.top_down(contexts=contexts.rows(k), noise=noise[:self.n_primary])
            x_hat = primary.likelihood(h1).mean  # depends on z: the secondary runs per draw
            h2, draws2 = self._secondary(x_hat, noise[self.n_primary:], x=images.rows(k)[0])
            yield LatentPass(draws1 + draws2, k, {"h": h2, "x_hat": x_hat})

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        h, x_hat = latents.context.get("h"), latents.context.get("x_hat")
        if h is None:
            zs = [d.z for d in latents.draws]
            rows = zs[0].shape[0]
            h1, _ = self.model.primary.top_down(batch=rows, zs=zs[:self.n_primary])
            x_hat = self.model.primary.likelihood(h1).mean
            secondary = self.model.secondary
            h, _ = secondary.top_down(batch=rows, zs=zs[self.n_primary:],
                                      condition_features=secondary.condition_features(x_hat))
        return self.model.secondary.likelihood(h, condition=x_hat)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        temperatures = per_layer_temperatures(temperature, len(self.layers))
        noise = self.noise(n, 1, generator)
        h1, draws1 = self.model.primary.top_down(batch=n, temperature=temperatures[
            :self.n_primary], noise=noise[:self.n_primary])
        x_hat = self.model.primary.likelihood(h1).mean
        h2, draws2 = self._secondary(x_hat, noise[self.n_primary:],
                                     temperature=temperatures[self.n_primary:])
        return LatentPass(draws1 + draws2, 1, {"h": h2, "x_hat": x_hat})


def probe_for(model, device=None, source: dict | None = None) -> Probe:
    """Wrap one of vaeprobe's own models in its Probe."""
    if isinstance(model, TwoStageVAE):
        return TwoStageProbe(model, device, source)
    if isinstance(model, HVAE):
        return HVAEProbe(model, device, source)
    raise TypeError(f"no Probe for {type(model).__name__}; write an adapter in vaeprobe.adapters")
