"""Plot functions: each takes a results Dataset (or DataArray), draws on ``ax``, returns the Axes.

They never compute a model. Import matplotlib lazily so the library imports without a display.
All plot code lives in this package; callers use these public names (``axes`` gives an Axes to
draw on, ``save_figure`` writes a PNG atomically), never the private modules.
"""

from vaeprobe.plot._audit import (
    audit_bits,
    audit_card,
    audit_latents,
    audit_page,
    audit_panels,
    audit_precision,
    audit_progressive,
    audit_progressive_previews,
    audit_reconstructions,
    audit_samples,
    audit_section,
    audit_spectra,
)
from vaeprobe.plot._bits import compare_page, compress, information, rate_distortion_models
from vaeprobe.plot._common import axes, save_figure
from vaeprobe.plot._images import image_grid, sample_grid
from vaeprobe.plot._latent_panels import audit_rate_map, audit_rate_map_example
from vaeprobe.plot._paper import (
    against_distortion,
    bars,
    bits_by_stage,
    image_rows,
    rate_by_stage,
    rate_distortion,
    training_comparison,
)
from vaeprobe.plot._quality import sample_quality
from vaeprobe.plot._rate import iwae_convergence, rate
from vaeprobe.plot._spectrum import high_frequency, pca, spectrum, training_curves

__all__ = ["against_distortion", "audit_bits", "audit_card", "audit_latents", "audit_page",
           "audit_panels", "audit_precision", "audit_progressive", "audit_progressive_previews",
           "audit_rate_map", "audit_rate_map_example", "audit_reconstructions", "audit_samples",
           "audit_section", "audit_spectra", "axes", "bars", "bits_by_stage", "compare_page",
           "compress", "high_frequency", "image_grid", "image_rows", "information",
           "iwae_convergence", "pca", "rate", "rate_by_stage", "rate_distortion",
           "rate_distortion_models", "sample_grid", "sample_quality", "save_figure", "spectrum",
           "training_comparison", "training_curves"]
