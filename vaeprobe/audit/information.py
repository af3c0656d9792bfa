"""Audit section: how much of the rate is information about the image, how much is the
encoder's aggregate disagreeing with the prior (:func:`vaeprobe.information`:
rate = I(x; z) + KL(q(z) || p(z)), per layer).

Its cost grows as the square of its images for hierarchical models (every draw is scored
against every image's posterior, one teacher-forced posterior pass per pair), so it uses at
most ``hierarchical_images`` images there (32 by default: about 1,000 posterior passes); a
one-layer model's pairs are arithmetic on the posterior moments and it takes the audit's
images. It is opt-in (``sections=[..., "information"]``, ``--sections ... information``): not
part of the default audit. With N images, I(x; z) cannot exceed log N
(``attrs["log_n_ceiling"]``); the section warns when it is near that ceiling.
"""

from __future__ import annotations

import xarray as xr

from vaeprobe._analysis import Evaluation, evaluation_of
from vaeprobe.audit._common import restamp
from vaeprobe.audit.registry import Section, register
from vaeprobe.information import compute_information

PROTOCOL = ("rate = I(x; z) + KL(q(z) || p(z)) per layer (vp.information): one posterior draw "
            "per image scored against the aggregate posterior of all N images (logsumexp); "
            "chain-rule terms given the layers above for hierarchical models; I <= log N")


def information_split(probe, data, *, n_images: int = 256, seed: int = 0, progress: bool = True,
                      batch_size: int = 64, hierarchical_images: int = 32) -> xr.Dataset:
    """The information split of the rate on the audit's images (:func:`vaeprobe.information`),
    on at most ``hierarchical_images`` of them for a model with several latent layers."""
    if len(probe.layers) > 1:
        n_images = min(n_images, hierarchical_images)
    return information_core(evaluation_of(probe, data, n_images, seed), batch_size=batch_size,
                            hierarchical_images=hierarchical_images, progress=progress)


def information_core(evaluation: Evaluation, *, batch_size: int = 64,
                     hierarchical_images: int = 32, progress: bool = True) -> xr.Dataset:
    """:func:`information_split` on images already chosen: all of ``evaluation.indices``
    (the audit gives a hierarchical model at most ``hierarchical_images``, its
    :func:`image_limit`, unless its settings name ``n_images``)."""
    ds = compute_information(evaluation, batch_size=batch_size, progress=progress)
    return restamp(ds, "information", dict(n_images=evaluation.n_images, seed=evaluation.seed,
                                           hierarchical_images=hierarchical_images),
                   PROTOCOL)


def image_limit(probe, options: dict) -> int:
    """The audit's images this section takes at most: 256, and ``hierarchical_images`` for a
    model with several latent layers (its cost grows as the square of its images there)."""
    if len(probe.layers) > 1:
        return min(256, options.get("hierarchical_images", 32))
    return 256


def summary(ds: xr.Dataset) -> str:
    return (f"rate {float(ds['total_rate']):.2f} = I(x; z) "
            f"{float(ds['total_mutual_information']):.2f} + marginal KL "
            f"{float(ds['total_marginal_kl']):.2f} nats (N = {ds.attrs.get('n_images')}, "
            f"log N ceiling {float(ds.attrs['log_n_ceiling']):.2f})")


def cost(probe, n_images: int, options: dict) -> float:
    """Floor multiples (one encode + decode per image): about half a floor per posterior
    pass, one pass per pair for hierarchical models; a one-layer model costs one encode per
    image."""
    if len(probe.layers) > 1:
        n = min(n_images, options.get("hierarchical_images", 32))
        return 0.5 * n * n
    return 0.5 * n_images


def check(probe) -> None:
    probe.require("vp.information", posterior=True)


SECTION = register(Section(
    name="information", title="Information and prior mismatch", order=95, summary=summary,
    figure="information", compute=information_split, core=information_core, cost=cost,
    check=check, image_limit=image_limit,
    options=dict(batch_size=64, hierarchical_images=32), default=False,
    quick=dict(hierarchical_images=16)))

__all__ = ["SECTION", "information_split"]
