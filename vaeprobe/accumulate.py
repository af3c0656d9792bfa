"""One accumulator protocol for every streaming analysis: ``update``, ``merge``, ``compute``.

An accumulator holds running totals (torchmetrics' ``_update`` / ``_compute`` split):
``update(batch)`` folds one batch in, ``merge(other)`` folds in another accumulator's totals (the
images of ``other`` count as coming after this one's, as a later rank's shard), and
``compute()`` turns the totals into the result. Updating on A then B and merging
``acc(A).merge(acc(B))`` give the same result (to float64 rounding), so evaluation can shard
images across ranks and reduce the accumulators on one of them without touching the maths.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

A = TypeVar("A", bound="Accumulator")


@runtime_checkable
class Accumulator(Protocol):
    """Running totals of a streaming analysis (see the module docstring)."""

    def update(self, batch: Any) -> None:
        """Fold one batch into the totals."""

    def merge(self: A, other: A) -> A:
        """Fold ``other``'s totals into this one (``other`` is left as it was); return self."""

    def compute(self) -> Any:
        """The result of everything folded in so far."""


def merge_all(accumulators: Iterable[A]) -> A:
    """Merge accumulators in order into the first (e.g. one per rank, rank 0 first).

    Examples
    --------
    >>> from vaeprobe.rate import _Moments
    >>> parts = [_Moments() for _ in range(3)]
    >>> for value, part in zip([1.0, 2.0, 6.0], parts, strict=True):
    ...     part.update(torch.tensor([value]))  # one image each
    >>> mean, standard_error = merge_all(parts).compute()
    >>> float(mean)
    3.0
    """
    return reduce(lambda merged, other: merged.merge(other), accumulators)


def check_mergeable(accumulator: Any, other: Any, *settings: str) -> None:
    """Refuse to merge accumulators of different classes or settings (window, networks...)."""
    if type(other) is not type(accumulator):
        raise TypeError(f"cannot merge a {type(other).__name__} into a "
                        f"{type(accumulator).__name__}; merge accumulators of one analysis")
    for name in settings:
        mine, theirs = getattr(accumulator, name), getattr(other, name)
        if mine != theirs:
            raise ValueError(f"cannot merge {type(accumulator).__name__}s with different "
                             f"{name} ({mine!r} vs {theirs!r}); build both with the same "
                             f"settings")


def add_totals(mine, theirs):
    """Sum of two running totals, either possibly still empty (None): tensors move to ``mine``'s
    device."""
    if theirs is None:
        return mine
    if mine is None:
        return theirs.clone() if isinstance(theirs, torch.Tensor) else theirs
    if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
        theirs = theirs.to(mine.device)
    return mine + theirs
