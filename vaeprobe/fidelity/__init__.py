"""Sample quality of mean vs stochastic samples: FID / KID / precision-recall and LPIPS.

Protocol: images are quantised with round(clamp(x, 0, 1) * 255), grey is repeated to three
channels, features come from torch-fidelity's extractors (FID as torch-fidelity computes it,
TTUR-compatible Inception), and the metrics from torch-fidelity's functions
(features -> statistics -> metric). LPIPS from the ``lpips`` package, inputs in [-1, 1].
Reference features are cached under a key of the reference images' hash, n, resolution,
extractor and weights hash, so a stale entry can never be returned.

The package: ``extractors`` (feature networks and their registry, test stand-ins),
``perceptual`` (LPIPS and its trunk registry), ``cache`` (reference features on disk),
``metrics`` (FID / KID / precision-recall from features), ``quality`` (``sample_quality``,
``fid``). Samples come from :mod:`vaeprobe.sampling`.
"""

from vaeprobe.fidelity.cache import featurise, reference_features, reference_key
from vaeprobe.fidelity.extractors import (
    Extractor,
    RandomConvNet,
    build_extractor,
    extractors,
    to_rgb,
)
from vaeprobe.fidelity.metrics import (
    PROTOCOL,
    fid_from_features,
    fid_from_statistics,
    kid_from_features,
    prc_from_features,
)
from vaeprobe.fidelity.perceptual import LPIPS, Trunk, lpips_trunks
from vaeprobe.fidelity.quality import METRICS, fid, sample_quality
from vaeprobe.sampling import KINDS

__all__ = ["KINDS", "LPIPS", "METRICS", "PROTOCOL", "Extractor", "Trunk", "RandomConvNet",
           "build_extractor", "extractors", "featurise", "fid", "fid_from_features",
           "fid_from_statistics", "kid_from_features", "lpips_trunks", "prc_from_features",
           "reference_features", "reference_key", "sample_quality", "to_rgb"]
