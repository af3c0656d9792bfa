"""Log-probabilities of quantisation bins under a standard normal: log(Phi(u) - Phi(l)),
the per-pixel term of :class:`vaeprobe.models.likelihoods.DiscretizedGaussian`.

Three evaluations, each where it is accurate and cheap: :func:`log_bin_series` (a bin narrow
against sigma, by its series in the half-width: no difference of CDFs, exact to 1e-8 relative in
float32), :func:`log_bin_probability` (a difference of two ``erf``; in float32 small differences
are redone in float64) and :func:`log_normal_interval` (``log_ndtr``, stable in both tails, for
the edge bins and the far tails). :func:`series_log_prob` combines them per image.
"""

from __future__ import annotations

import math

import torch


def log_normal_interval(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardised bounds, stable in both tails."""
    flip = lower > 0  # right tail: use the mirrored interval where Phi is not close to 1
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    gap = (log_lower - log_upper).clamp(max=-1e-12)
    return log_upper + torch.log(-torch.expm1(gap))


CENTRAL = 5.0  # standardised bounds within this are evaluated by erf differences
FLOAT32_FLOOR = 1e-3  # a float32 erf difference below this is redone in float64


def log_bin_probability(lower: torch.Tensor, upper: torch.Tensor,
                        central: torch.Tensor | None = None) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) in the bounds' dtype, as :func:`log_normal_interval` but
    cheaper.

    ``central`` (optional, bool): where the fast path may be used (at most where both finite
    ends lie within +-``CENTRAL``); by default exactly there.

    Where the finite ends of the interval lie within +-``CENTRAL``, the difference of two
    ``erf`` (in float64: relative error below 1e-9 there, against 1e-16 / (phi(5) x width));
    elsewhere, on the gathered few, the tail-stable :func:`log_normal_interval` (``log_ndtr``
    costs several times ``erf`` on CPU). In float32 (3x faster on CPU) a difference of two
    ``erf`` near +-1 cancels: where it comes out below :data:`FLOAT32_FLOOR` (relative error
    up to ~1e-4 there) the bin is evaluated again in float64, so no bin is off by more.
    """
    if central is None:
        low_end = torch.where(torch.isneginf(lower), upper, lower)  # the finite ends
        high_end = torch.where(torch.isposinf(upper), lower, upper)
        central = (low_end.abs() < CENTRAL) & (high_end.abs() < CENTRAL)
    root_half = 1 / math.sqrt(2)
    out = torch.erf(upper * root_half).sub_(torch.erf(lower * root_half)).mul_(0.5)
    if out.dtype != torch.float64:
        central = central & (out > FLOAT32_FLOOR)
    out = out.clamp_(min=torch.finfo(out.dtype).tiny).log_()
    redo = ~central
    if bool(redo.any()):
        low, high = lower[redo], upper[redo]
        if out.dtype == torch.float64:
            out[redo] = log_normal_interval(low, high)
        else:
            out[redo] = log_bin_probability(low.double(), high.double()).to(out.dtype)
    return out


SERIES_HALF = 0.25  # the series below serves bins at most this half-width (in sigmas) ...
SERIES_REACH = 0.5  # ... whose centre c has h |c| at most this


def log_bin_series(centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """log(Phi(c + h) - Phi(c - h)) for narrow bins, by its series in the half-width h:
    log(2 h phi(c)) + log1p(h^2/3! He2(c) + h^4/5! He4(c) + h^6/7! He6(c)), He the
    probabilists' Hermite polynomials. No difference of two CDFs: no cancellation in float32,
    however far out the bin. The first term left out is below 1e-8 relative where
    h <= :data:`SERIES_HALF` and h |c| <= :data:`SERIES_REACH`."""
    return _series_shape(centre, half).add_(_series_level(half).to(centre.dtype))


def _series_level(half: torch.Tensor) -> torch.Tensor:
    """log(2 h) - log(2 pi) / 2 of :func:`log_bin_series`, in float64 (a per-pixel constant
    rounded to float32 would add up over the pixels)."""
    return torch.log(2 * half.double()) - 0.5 * math.log(2 * math.pi)


def _series_shape(centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """log1p(h^2/3! He2 + h^4/5! He4 + h^6/7! He6) - c^2 / 2 of :func:`log_bin_series`."""
    h2 = half * half  # the series as a cubic in c^2, its coefficients from h alone
    a3 = h2 * h2 * h2 / 5040
    a2 = h2 * h2 / 120 - 15 * a3
    a1 = h2 / 6 - h2 * h2 / 20 + 45 * a3
    a0 = -h2 / 6 + h2 * h2 / 40 - 15 * a3
    c2 = centre * centre
    terms = (c2 * a3).add_(a2).mul_(c2).add_(a1).mul_(c2).add_(a0)  # Horner
    return torch.log1p_(terms).add_(c2, alpha=-0.5)


def series_log_prob(x: torch.Tensor, centre: torch.Tensor, half: torch.Tensor,
                    dense: bool | None = None) -> torch.Tensor:
    """Nats per image (float64) of levels ``x`` at standardised ``centre`` (float32): the
    series where it serves, CDF differences on the rest; the series' level
    (:func:`_series_level`) added in float64 after the sum over pixels.

    The rest (edge bins, wide bins, far-out wide bins) is gathered and evaluated by
    :func:`log_bins` on CPU; on other devices (``dense`` by default) every pixel is also
    evaluated by :func:`log_normal_interval` in float64 and the rest selected from it, so that
    nothing waits for the host to learn how many pixels the rest holds."""
    rest = (centre.abs() * half > SERIES_REACH).logical_or_(half > SERIES_HALF)
    rest.logical_or_(x == 0).logical_or_(x == 255)  # the edge bins take the tails
    level = _series_level(half)
    out = _series_shape(centre, half)
    if (centre.device.type != "cpu") if dense is None else dense:
        lower, upper = bin_bounds(x, centre.double(), half.double())
        exact = (log_normal_interval(lower, upper) - level).to(out.dtype)
        out = torch.where(rest, exact, out)
    elif (where := rest.reshape(-1).nonzero().squeeze(1)).numel():

        def pick(t):
            return t.expand_as(centre).reshape(-1)[where]

        exact = log_bins(pick(x), pick(centre), pick(half)).double() - pick(level)
        out.view(-1)[where] = exact.to(out.dtype)
    levels = level.expand_as(centre).flatten(1).sum(1) if level.numel() > 1 else \
        level.reshape(()) * centre[0].numel()
    return out.flatten(1).sum(1, dtype=torch.float64) + levels


def bin_bounds(x: torch.Tensor, centre: torch.Tensor, half: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) standardised bounds of the bins of levels ``x``: centre -+ half, the
    edge bins taking the tails: (-inf, upper] at level 0, [lower, inf) at level 255."""
    return ((centre - half).masked_fill_(x == 0, -math.inf),
            (centre + half).masked_fill_(x == 255, math.inf))


def log_bins(x: torch.Tensor, centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """log-probability of the bins of levels ``x`` (:func:`bin_bounds`) by CDF
    differences."""
    lower, upper = bin_bounds(x, centre, half)
    central = (centre.abs() + half) < CENTRAL  # both finite ends within +-CENTRAL
    return log_bin_probability(lower, upper, central)
