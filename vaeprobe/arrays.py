"""The array layer under the Dataset layer (ArviZ's ``arviz_stats.base``): the maths of the
analyses as functions on tensors, for users who hold their own log weights or KL maps.

The public analyses (``vp.iwae``, ``vp.rate``) call these and wrap the results in Datasets;
units as there (nats per image; :mod:`vaeprobe.units` converts to bits/dim).
"""

from __future__ import annotations

import math

import torch


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_K = logsumexp_k(log w_k) - log K over the last dim: log weights (..., K) -> (...).

    Examples
    --------
    >>> round(float(iwae_bound(torch.log(torch.tensor([[1.0, 3.0]])))), 6)  # log(mean w) = log 2
    0.693147
    """
    log_w = torch.as_tensor(log_w)
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size 1 / sum(w_norm^2) of the normalised weights over the last dim
    (K for equal weights, 1 for one dominant weight): log weights (..., K) -> (...).

    Examples
    --------
    >>> ess(torch.zeros(1, 4)).tolist()
    [4.0]
    """
    normalised = torch.softmax(torch.as_tensor(log_w), dim=-1)
    return 1.0 / (normalised ** 2).sum(-1)


def rate_terms(kl: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image rates from per-element KL maps, one ``(B, C_l, H_l, W_l)`` per latent layer
    (nats): ``layer`` (B, L) and ``channel`` (B, L, max C_l), NaN where a layer has fewer
    channels; float64.

    Examples
    --------
    >>> terms = rate_terms([torch.ones(2, 1, 1, 1), torch.ones(2, 2, 4, 4)])
    >>> terms["layer"][0].tolist(), terms["channel"][0].tolist()
    ([1.0, 32.0], [[1.0, nan], [16.0, 16.0]])
    """
    width = max(k.shape[1] for k in kl)
    batch = kl[0].shape[0]
    channel = torch.full((batch, len(kl), width), float("nan"), dtype=torch.float64)
    for index, k in enumerate(kl):
        per_channel = k.double().sum((2, 3)).cpu()  # (B, C_l)
        channel[:, index, :per_channel.shape[1]] = per_channel
    layer = torch.stack([k.flatten(1).sum(1) for k in kl], dim=1).double().cpu()
    return dict(layer=layer, channel=channel)
