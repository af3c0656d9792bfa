"""FID, KID and precision/recall from features, by torch-fidelity's own functions
(features -> statistics -> metric), so numbers match torch-fidelity's."""

from __future__ import annotations

import torch

PROTOCOL = ("torch-fidelity 0.4 statistics and metrics; uint8 via round(clamp(x, 0, 1) * 255); "
            "grey repeated to 3 channels; extractor resizes internally")


def fid_from_features(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """FID between two feature sets (N, F)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_from_statistics(fid_features_to_statistics(generated.cpu()),
                               fid_features_to_statistics(reference.cpu()))


def fid_from_statistics(generated: dict, reference: dict) -> float:
    """FID between two Gaussians given as ``{"mu": (F,), "sigma": (F, F)}``."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(generated, reference, verbose=False)[KEY_METRIC_FID])


def kid_from_features(generated, reference, subset_size=1000, subsets=100, seed=0):
    """(mean, std, subset size used): the subset adapts down to the smaller set (recorded)."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    smallest = min(len(generated), len(reference))
    if smallest < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {smallest}")
    size = min(subset_size, smallest)
    out = kid_features_to_metric(generated.cpu(), reference.cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False, rng_seed=seed)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size


def prc_from_features(generated, reference, neighborhood=3) -> tuple[float, float]:
    """(precision, recall) of Kynkaanniemi et al. with ``neighborhood`` nearest neighbours."""
    from torch_fidelity.metric_prc import (
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    if min(len(generated), len(reference)) <= neighborhood:
        raise ValueError(f"precision/recall needs more than {neighborhood} images per set")
    out = prc_features_to_metric(generated.float().cpu(), reference.float().cpu(),
                                 prc_neighborhood=neighborhood, prc_batch_size=10000,
                                 save_cpu_ram=False, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])
