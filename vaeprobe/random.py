"""Randomness keyed by (seed, stream, image index, draw, layer, element): results that depend
neither on batch size, chunks, process layout nor the device.

Counter-based streams (:class:`ImageStreams`, made by :func:`image_streams`)
---------------------------------------------------------------------------
Every number is a pure function of its keys, computed by Philox4x32-10 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011) in vectorised int64 tensor arithmetic masked to 32
bits, the same integer operations on CPU and CUDA. The stream layout:

- **key** (2 x 32 bits): the seed as 64 bits, ``(seed mod 2^32, (seed >> 32) mod 2^32)``;
- **counter** (4 x 32 bits): ``c0`` the element block (elements ``4 c0 .. 4 c0 + 3`` of one
  tensor, C-order), ``c1 = slot + 2^16 * stream`` (``slot``: the layer within one call, 0 for a
  single tensor; ``stream``: an independent stream of the same images, e.g. 1 for the
  dequantisation noise of :func:`vaeprobe.iwae`, 2 for the prior draws of progressive coding),
  ``c2`` the image's draw position, ``c3`` the image's dataset index.

An :class:`ImageStreams` holds the images' indices and one draw position shared by all of them
(the images advance in lockstep): a call for ``k`` draws per image uses positions ``p .. p+k-1``
and leaves the position at ``p + k``. So the k-th draw of image i is the same number whether
the image is evaluated alone or in a batch of 16, with all its K draws in one pass or in chunks
of 3, on one process or under torchrun, on CPU or CUDA; and the first layers of a draw get the
same noise as a model of fewer layers. One call is O(tensors) vectorised passes, whatever the
number of images and draws (blocks of ``BLOCK[device type]`` counters bound the memory).

Transforms: a 32-bit word ``w`` gives the uniform ``w / 2^32`` in float64 and ``(w >> 8) /
2^24`` in float32 (both in [0, 1), as ``torch.rand``); normals come by Box-Muller in float64 from
the pairs of words (0, 1) and (2, 3) of a counter: ``r = sqrt(-2 log((w_a + 1) / 2^32))``,
``t = 2 pi w_b / 2^32``, elements ``r cos t``, ``r sin t``, then rounded to the dtype asked
for. Float64 transcendental functions of CPU and CUDA differ by at most an ulp, so float32 draws
agree between devices up to rare roundings of that ulp.

Legacy per-image generators (:func:`image_generators`)
------------------------------------------------------
One ``torch.Generator`` per image seeded from ``(seed, index[, stream])``, consumed one call
per draw and per tensor (:func:`per_image_noise`, :func:`per_row_random`): the same
batch-size-free guarantee at O(images x draws x layers) calls, device-dependent numbers. Still
accepted everywhere a generator is (the trainer's per-example noise uses them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

_MASK = 0x7FFF_FFFF_FFFF_FFFF
MASK32 = 0xFFFF_FFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox4x32 multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl key increments
ROUNDS = 10
BLOCK = {"cpu": 1 << 15, "cuda": 1 << 22}  # counters per vectorised pass (cache vs launches)
MAX_SLOTS = 1 << 16  # slots (tensors per call) per stream
SEED_BITS = 64


def seed_of(*keys: int) -> int:
    """A 63-bit seed from integers; stable across processes (ints hash to themselves)."""
    return hash(tuple(int(key) for key in keys)) & _MASK


# ---- Philox4x32-10 on int64 tensors ------------------------------------------------------
def philox4x32(counter: Sequence, key: tuple[int, int], rounds: int = ROUNDS
               ) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of ``counter`` (4 int64 tensors or ints < 2^32, broadcastable)
    under ``key`` (two ints < 2^32): four int64 tensors of 32-bit words.

    A 32 x 32-bit product is formed in int64, whose multiplication wraps modulo 2^64 on CPU and
    CUDA alike: its low 32 bits are the product's low word and ``(p >> 32) & (2^32 - 1)`` its
    high word (the arithmetic shift's sign bits are masked off).
    """
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = int(key[0]) & MASK32, int(key[1]) & MASK32
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    c0, c2 = c0.expand(shape), c2.expand(shape)  # the products are then full-size
    for _ in range(rounds):
        p0, p2 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        low0, low1 = p0 & MASK32, p2 & MASK32
        # new c0 = high(p2) ^ c1 ^ k0; new c2 = high(p0) ^ c3 ^ k1 (in place on the products)
        c0 = p2.bitwise_right_shift_(32).bitwise_and_(MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        c2 = p0.bitwise_right_shift_(32).bitwise_and_(MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c1, c3 = low1, low0
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key of ``seed``: its two 32-bit halves (negative seeds as two's complement)."""
    seed = int(seed) & ((1 << SEED_BITS) - 1)
    return seed & MASK32, seed >> 32


def _uniform(word: torch.Tensor, dtype) -> torch.Tensor:
    if dtype == torch.float64:
        return word.double().mul_(2.0 ** -32)
    return (word >> 8).to(dtype).mul_(2.0 ** -24)


def _transform(kind: str, words: Sequence[torch.Tensor], dtype) -> torch.Tensor:
    """The four words of each counter -> four values (..., 4), element order as the words.

    Normals: Box-Muller in float64 on the pairs (0, 1) and (2, 3).
    """
    if kind == "uniform":
        return torch.stack([_uniform(word, dtype) for word in words], dim=-1)
    values = []
    for first, second in ((words[0], words[1]), (words[2], words[3])):
        radius = first.double().add_(1.0).mul_(2.0 ** -32).log_().mul_(-2.0).sqrt_()
        angle = second.double().mul_(2.0 * math.pi * 2.0 ** -32)
        values += [(radius * torch.cos(angle)).to(dtype), (radius * torch.sin(angle)).to(dtype)]
    return torch.stack(values, dim=-1)


def counter_draws(kind: str, seed: int, stream: int, slot: int, images, positions,
                  shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Draws ``(len(images) * len(positions), *shape)`` keyed by (seed, stream, slot, image
    index, draw position, element); ``kind`` "normal" or "uniform". Rows image-major.

    The pure function behind :class:`ImageStreams` (see the module docstring for the layout);
    rows are computed in blocks of about ``BLOCK[device type]`` counters.
    """
    if kind not in ("normal", "uniform"):
        raise ValueError(f"kind must be 'normal' or 'uniform', got {kind!r}")
    if not 0 <= slot < MAX_SLOTS or not 0 <= stream < MAX_SLOTS:
        raise ValueError(f"slot and stream must be in 0..{MAX_SLOTS - 1}, got {slot}, {stream}")
    device = torch.device(device or "cpu")
    images = torch.as_tensor(images, dtype=torch.int64).reshape(-1)
    positions = torch.as_tensor(positions, dtype=torch.int64).reshape(-1)
    if images.numel() and (images.min() < 0 or images.max() > MASK32):
        raise ValueError("image indices must be in 0..2^32 - 1")
    n = math.prod(shape)
    n_counters, rows = -(-n // 4), images.numel() * positions.numel()
    image = images.to(device).repeat_interleave(positions.numel())[:, None]
    position = positions.to(device).repeat(images.numel())[:, None]
    element = torch.arange(n_counters, dtype=torch.int64, device=device)[None]
    out = torch.empty((rows, n_counters, 4), dtype=dtype, device=device)
    block = max(1, BLOCK.get(device.type, BLOCK["cuda"]) // max(1, n_counters))
    key, c1 = seed_key(seed), slot + MAX_SLOTS * stream
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        words = philox4x32((element, c1, position[start:stop], image[start:stop]), key)
        out[start:stop] = _transform(kind, words, dtype)
    return out.reshape(rows, -1)[:, :n].reshape(rows, *shape)


class ImageStreams:
    """Counter-based random streams of a batch of images (see the module docstring).

    Accepted wherever the probes and likelihoods take ``generator``: ``Probe.noise`` draws all
    layers of all images and draws in one vectorised call per layer, ``per_row_random`` one call
    per tensor. ``position`` is the next draw position of every image.
    """

    def __init__(self, seed: int, indices: Iterable[int], device=None, stream: int = 0,
                 position: int = 0):
        self.seed, self.stream, self.position = int(seed), int(stream), int(position)
        self.indices = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor)
                                       else indices, dtype=torch.int64).reshape(-1).cpu()
        self.device = torch.device(device or "cpu")

    def __len__(self) -> int:
        return self.indices.numel()

    def __repr__(self) -> str:
        return (f"ImageStreams(seed={self.seed}, stream={self.stream}, images={len(self)}, "
                f"position={self.position})")

    def get_state(self) -> int:
        """The draw position (restore it with :meth:`set_state` to replay the same draws)."""
        return self.position

    def set_state(self, position: int) -> None:
        self.position = int(position)

    def subset(self, rows) -> ImageStreams:
        """The streams of some of the images (a slice or index list), at the same position."""
        return ImageStreams(self.seed, self.indices[rows], self.device, self.stream,
                            self.position)

    def draws(self, kind: str, shapes: Sequence[Sequence[int]], per_image: int, device=None,
              dtype=torch.float32) -> list[torch.Tensor]:
        """``per_image`` draws per image of every shape, ``(images * per_image, *shape)`` each
        (row ``i * per_image + k``: draw k of image i); shape l uses slot l. Advances the
        position by ``per_image``."""
        positions = torch.arange(self.position, self.position + per_image)
        self.position += per_image
        return [counter_draws(kind, self.seed, self.stream, slot, self.indices, positions,
                              tuple(shape), device or self.device, dtype)
                for slot, shape in enumerate(shapes)]


def image_streams(seed: int, indices, device=None, stream: int = 0) -> ImageStreams:
    """Counter-based streams of the images ``indices`` (dataset indices) under ``seed``:
    batch-, chunk-, process- and device-independent draws (see the module docstring)."""
    return ImageStreams(seed, indices, device, stream)


def image_generators(seed: int, indices, device=None, stream: int | None = None
                     ) -> list[torch.Generator]:
    """One ``torch.Generator`` per image, seeded by (seed, dataset index): batch-size-free
    randomness (legacy: the analyses use :func:`image_streams`).

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


def per_image_noise(shapes: Sequence[tuple[int, ...]], generators, n_samples: int, device
                    ) -> list[torch.Tensor]:
    """Standard normal draws per layer, ``(images * n_samples, *shape)``, rows image-major.

    With :class:`ImageStreams`: one vectorised call per layer. With a list of generators, each
    image's generator is consumed draw by draw and, within a draw, layer by layer, one
    ``randn(shape)`` each. Either way (a) the k-th draw of an image does not depend on how its
    draws are chunked, provided the chunks are drawn in order from the same streams, and (b)
    the first layers of a draw get the same noise as a model of fewer layers (a two-stage
    model's primary matches the primary alone for single draws).
    """
    if isinstance(generators, ImageStreams):
        return generators.draws("normal", shapes, n_samples, device)
    draws = [[] for _ in shapes]
    for generator in generators:
        for _ in range(n_samples):
            for layer, shape in enumerate(shapes):
                draws[layer].append(torch.randn(shape, generator=generator, device=device))
    return [torch.stack(layer) for layer in draws]


_KINDS = {torch.randn: "normal", torch.rand: "uniform"}


def per_row_random(draw: Callable, shape: tuple[int, ...], generator, device,
                   dtype=torch.float32) -> torch.Tensor:
    """``draw`` (torch.randn / torch.rand) of ``shape``; ``generator`` may be one per image.

    With :class:`ImageStreams` or a list of generators, rows are split evenly and in order
    among the images (image-major rows), so an image's randomness depends neither on the batch
    nor on how many of its rows come in one call: streams draw them in one vectorised call,
    generators one call per row.
    """
    if isinstance(generator, (ImageStreams, list, tuple)):
        if shape[0] % len(generator):
            raise ValueError(f"{shape[0]} rows do not split evenly among {len(generator)} "
                             f"per-image streams")
        rows = shape[0] // len(generator)
        if isinstance(generator, ImageStreams):
            if draw not in _KINDS:
                raise ValueError("image streams draw torch.randn or torch.rand only")
            return generator.draws(_KINDS[draw], [shape[1:]], rows, device, dtype)[0]
        return torch.stack([draw(tuple(shape[1:]), generator=g, device=device, dtype=dtype)
                            for g in generator for _ in range(rows)])
    return draw(shape, generator=generator, device=device, dtype=dtype)
