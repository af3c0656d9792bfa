"""Plot functions: each takes a results Dataset (or DataArray), draws on ``ax``, returns the Axes.

They never compute a model. Import matplotlib lazily so the library imports without a display.
All plot code lives in this package; callers use these public names (``axes`` gives an Axes to
draw on, ``save_figure`` writes a PNG atomically), never the private modules.
"""

from vaeprobe.plot._audit import audit_page, audit_progressive_previews, audit_section
from vaeprobe.plot._common import axes, save_figure
from vaeprobe.plot._images import image_grid, sample_grid
from vaeprobe.plot._quality import sample_quality
from vaeprobe.plot._rate import iwae_convergence, rate
from vaeprobe.plot._spectrum import high_frequency, pca, spectrum, training_curves

__all__ = ["audit_page", "audit_progressive_previews", "audit_section", "axes",
           "high_frequency", "image_grid", "iwae_convergence", "pca", "rate", "sample_grid",
           "sample_quality", "save_figure", "spectrum", "training_curves"]
