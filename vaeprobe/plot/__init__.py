"""Plot functions: each takes a results Dataset (or DataArray), draws on ``ax``, returns the Axes.

They never compute a model. Import matplotlib lazily so the library imports without a display.
"""

from vaeprobe.plot._audit import audit_page, audit_section
from vaeprobe.plot._images import image_grid, sample_grid
from vaeprobe.plot._quality import sample_quality
from vaeprobe.plot._rate import iwae_convergence, rate
from vaeprobe.plot._spectrum import high_frequency, spectrum, training_curves

__all__ = ["audit_page", "audit_section", "high_frequency", "image_grid", "iwae_convergence",
           "rate", "sample_grid", "sample_quality", "spectrum", "training_curves"]
