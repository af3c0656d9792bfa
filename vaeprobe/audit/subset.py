"""The audit's images, drawn once.

:func:`choose_subset` is called once per audit, by :func:`vaeprobe.audit.run.plan_audit`; every
section then reads its images from the plan's :class:`ImageSubset`: the shared pass all of
them (:attr:`ImageSubset.indices`), a section capped at k images the first k drawn
(:meth:`ImageSubset.first`). The subsets of one seed are nested, so a capped section sees a
seeded random subset of the audit's images (not the k lowest indices), and the same images
``vaeprobe.data.select(dataset, k, seed)`` gives: a section run on its own agrees with its
audit. The audit's fingerprint records :attr:`ImageSubset.digest`, so a resumed audit never
mixes sections computed on other images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from vaeprobe import data as vdata


@dataclass(frozen=True)
class ImageSubset:
    """The audit's images: dataset indices in the order they were drawn.

    Attributes
    ----------
    order : torch.Tensor
        int64 dataset indices, without repetition, in the order drawn by ``seed``.
    seed : int
        The seed that drew them.
    indices : torch.Tensor
        The same indices sorted: the images of the shared pass, in the order it reads them.
    """

    order: torch.Tensor
    seed: int
    indices: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        order = torch.as_tensor(self.order, dtype=torch.int64).flatten()
        if len(order.unique()) != len(order):
            raise ValueError("an image subset holds each dataset index once; got repeats")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "indices", order.sort().values)

    def __len__(self) -> int:
        return len(self.order)

    def first(self, k: int | None) -> torch.Tensor:
        """The first ``k`` images drawn (all: None or k >= len), sorted dataset indices."""
        if k is None or k >= len(self.order):
            return self.indices
        if k < 1:
            raise ValueError(f"a section needs at least 1 image, got k={k}")
        return self.order[:k].sort().values

    @property
    def digest(self) -> str:
        """sha256 of the order (int64, little-endian): equal digests, equal images for every
        section of the audit."""
        values = self.order.to(torch.int64).numpy().astype("<i8")
        return hashlib.sha256(values.tobytes()).hexdigest()


def choose_subset(dataset, n_images: int | None, seed: int) -> ImageSubset:
    """The audit's images: ``n_images`` of ``dataset`` drawn without replacement by ``seed``
    (:func:`vaeprobe.data.draw_order`; None, or more than the dataset holds: all of them, in
    the seeded order). Sorted, they are ``vaeprobe.data.select(dataset, n_images, seed)``."""
    return ImageSubset(vdata.draw_order(dataset, n_images, seed), seed)


__all__ = ["ImageSubset", "choose_subset"]
