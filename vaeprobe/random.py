"""Randomness keyed by (seed, image index): results that do not depend on batch size or chunks.

Every image gets its own ``torch.Generator`` seeded from ``(seed, dataset index)``
(:func:`image_generators`). Each generator is consumed in a fixed layout that does not depend on
how images are batched or how the draws of one image are split into chunks: one call per draw
and per tensor, draw after draw (:func:`per_image_noise`, :func:`per_row_random`). So the k-th
draw of image i is the same number whether the image is evaluated alone, in a batch of 16, with
all its K draws in one pass or in chunks of 3.

Used alike by the probes (latent noise), the likelihood heads (dequantisation and sampling
noise) and the trainer (per-example noise keyed by (seed, step, index)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_MASK = 0x7FFF_FFFF_FFFF_FFFF


def seed_of(*keys: int) -> int:
    """A 63-bit seed from integers; stable across processes (ints hash to themselves)."""
    return hash(tuple(int(key) for key in keys)) & _MASK


def image_generators(seed: int, indices, device=None, stream: int | None = None
                     ) -> list[torch.Generator]:
    """One generator per image, seeded by (seed, dataset index): batch-size-free randomness.

    ``stream`` (an integer) keys an independent stream for the same images, e.g. the
    dequantisation noise of a likelihood next to the latent noise of the encoder.
    """
    generators = []
    for index in indices:
        generator = torch.Generator(device=device or "cpu")
        keys = (seed, index) if stream is None else (seed, index, stream)
        generator.manual_seed(seed_of(*keys))
        generators.append(generator)
    return generators


def per_image_noise(shapes: Sequence[tuple[int, ...]], generators: Sequence[torch.Generator],
                    n_samples: int, device) -> list[torch.Tensor]:
    """Standard normal draws per layer, ``(images * n_samples, *shape)``, rows image-major.

    Each image's generator is consumed draw by draw and, within a draw, layer by layer, one
    ``randn(shape)`` each. Hence (a) the k-th draw of an image does not depend on how its draws
    are chunked, provided the chunks are drawn in order from the same generators, and (b) the
    first layers of a draw get the same noise as a model of fewer layers (a two-stage model's
    primary matches the primary alone for single draws).
    """
    draws = [[] for _ in shapes]
    for generator in generators:
        for _ in range(n_samples):
            for layer, shape in enumerate(shapes):
                draws[layer].append(torch.randn(shape, generator=generator, device=device))
    return [torch.stack(layer) for layer in draws]


def per_row_random(draw: Callable, shape: tuple[int, ...], generator, device,
                   dtype=torch.float32) -> torch.Tensor:
    """``draw`` (torch.randn / torch.rand) of ``shape``; ``generator`` may be one per image.

    With a list of generators, rows are split evenly and in order among them (image-major
    rows) and every row is its own call, so an image's randomness depends neither on the batch
    nor on how many of its rows come in one call.
    """
    if isinstance(generator, (list, tuple)):
        if shape[0] % len(generator):
            raise ValueError(f"{shape[0]} rows do not split evenly among {len(generator)} "
                             f"per-image generators")
        rows = shape[0] // len(generator)
        return torch.stack([draw(tuple(shape[1:]), generator=g, device=device, dtype=dtype)
                            for g in generator for _ in range(rows)])
    return draw(shape, generator=generator, device=device, dtype=dtype)
