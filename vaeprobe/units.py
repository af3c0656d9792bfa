"""Nats per image -> bits per dimension, in one place.

A log-likelihood of 8-bit images is either a PMF over the 2^n_bits levels (``discretized``:
bits/dim need no offset) or a density on data dequantized to [0, 1] (``dequantized``: adding
n_bits bits/dim turns it into a bound on the PMF: log2(2^n_bits) per dimension, the width of
a bin being 2^-n_bits). Rates are costs already and take no offset.
"""

from __future__ import annotations

import math

KINDS = ("discretized", "dequantized", "none")


def bpd_offset(kind: str, n_bits: int = 8) -> float:
    """Bits/dim added to a negative log-likelihood of ``kind``: ``n_bits`` for a density on
    dequantized [0, 1] data, else 0.

    Examples
    --------
    >>> bpd_offset("dequantized"), bpd_offset("dequantized", n_bits=5), bpd_offset("discretized")
    (8.0, 5.0, 0.0)
    """
    if kind not in KINDS:
        raise ValueError(f"likelihood kind must be one of {KINDS}, got {kind!r}")
    return float(n_bits) if kind == "dequantized" else 0.0


def offset_nats(dims: int, kind: str, n_bits: int = 8) -> float:
    """:func:`bpd_offset` in nats per image of ``dims`` dimensions (subtract it from a density's
    log-likelihood to bound the PMF's)."""
    return dims * bpd_offset(kind, n_bits) * math.log(2)


def nats_to_bpd(nats, dims: int):
    """A cost in nats per image (a rate) -> bits per dimension: ``nats / (dims ln 2)``.

    Works on floats, numpy arrays and tensors alike.

    >>> round(nats_to_bpd(64 * math.log(2), 64), 12)
    1.0
    """
    return nats / (dims * math.log(2))


def nll_bpd(log_likelihood, dims: int, kind: str = "discretized", n_bits: int = 8):
    """A log-likelihood in nats per image (higher is better) -> negative log-likelihood in
    bits/dim, with the offset of ``kind`` (:func:`bpd_offset`).

    >>> float(nll_bpd(-64 * math.log(2), 64, "dequantized"))
    9.0
    """
    return -log_likelihood / (dims * math.log(2)) + bpd_offset(kind, n_bits)
