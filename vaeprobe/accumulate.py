"""One accumulator protocol for every streaming analysis: ``update``, ``merge``, ``compute``.

An accumulator holds running totals (torchmetrics' ``_update`` / ``_compute`` split):
``update(batch)`` folds one batch in, ``merge(other)`` folds in another accumulator's totals (the
images of ``other`` count as coming after this one's, as a later rank's shard), and
``compute()`` turns the totals into the result. Updating on A then B and merging
``acc(A).merge(acc(B))`` give the same result (to float64 rounding), so evaluation can shard
images across ranks and reduce the accumulators on one of them without touching the maths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    >>> from vaeprobe.rate import Moments
    >>> parts = [Moments() for _ in range(3)]
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


def cat_parts(mine, theirs):
    """Per-image parts in order: ``theirs`` after ``mine`` (lists, or dicts of lists)."""
    if isinstance(mine, dict):
        return {key: cat_parts(mine.get(key, []), parts) for key, parts in theirs.items()}
    return list(mine) + list(theirs)


def chan_merge(mine: tuple, theirs: tuple) -> tuple:
    """Count, mean and co-moment sum (x - mean)(x - mean)^T of two parts, combined by Chan,
    Golub & LeVeque's parallel update (exact up to rounding; no E[x x^T] - mean mean^T
    cancellation). Either part may be empty (count 0)."""
    (n_a, mean_a, m_a), (n_b, mean_b, m_b) = mine, theirs
    if n_b == 0:
        return mine
    if n_a == 0:
        return n_b, mean_b.clone(), m_b.clone()
    mean_b, m_b = mean_b.to(mean_a.device), m_b.to(mean_a.device)
    n = n_a + n_b
    delta = mean_b - mean_a  # (D,)
    comoment = m_a + m_b + torch.outer(delta, delta) * (n_a * n_b / n)
    return n, mean_a + delta * (n_b / n), comoment


def first_given(mine, theirs):
    """The first part's value unless it has none (None or empty): e.g. a per-model fact."""
    return mine if mine is not None and (not hasattr(mine, "__len__") or len(mine)) else theirs


def nested(mine, theirs):
    """An accumulator held as a state: merged by its own ``merge``."""
    return mine.merge(theirs)


REDUCTIONS: dict[str, Callable] = {"sum": add_totals, "cat": cat_parts, "chan": chan_merge,
                                   "first": first_given, "merge": nested}


class Reducing:
    """An accumulator whose ``merge`` is declared, not written (torchmetrics' ``add_state``).

    Subclasses set ``states``: state name (or a tuple of names reduced together) -> how it
    reduces: ``"sum"`` (running totals, :func:`add_totals`), ``"cat"`` (per-image parts in
    order, :func:`cat_parts`), ``"chan"`` ((count, mean, co-moment), :func:`chan_merge`),
    ``"first"`` (the first part that has one, :func:`first_given`), ``"merge"`` (a nested
    accumulator, :func:`nested`), or the name of a method ``(mine, theirs) -> merged``.
    ``must_match`` names the attributes (window, networks...) that must agree for two
    accumulators to merge.
    :func:`vaeprobe.distributed.merge` reduces across ranks with this same ``merge``.

    Examples
    --------
    >>> class Count(Reducing):
    ...     states = {"n": "sum", "values": "cat"}
    ...     def __init__(self):
    ...         self.n, self.values = 0, []
    >>> a, b = Count(), Count()
    >>> a.n, a.values, b.n, b.values = 1, [1.0], 2, [2.0, 3.0]
    >>> merged = a.merge(b)
    >>> merged.n, merged.values
    (3, [1.0, 2.0, 3.0])
    """

    states: dict = {}
    must_match: tuple[str, ...] = ()

    def merge(self, other):
        """Fold ``other``'s states into this one (``other`` is left as it was); return self."""
        check_mergeable(self, other, *self.must_match)
        for names, how in self.states.items():
            reduce_ = REDUCTIONS.get(how) or getattr(self, how)
            if isinstance(names, tuple):
                merged = reduce_(tuple(getattr(self, n) for n in names),
                                 tuple(getattr(other, n) for n in names))
                for name, value in zip(names, merged, strict=True):
                    setattr(self, name, value)
            else:
                setattr(self, names, reduce_(getattr(self, names), getattr(other, names)))
        return self
