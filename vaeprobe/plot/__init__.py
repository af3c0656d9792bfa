"""Plot functions: each takes a results Dataset (or DataArray), draws on ``ax``, returns the Axes.

They never compute a model. Import matplotlib lazily so the library imports without a display.
"""

from vaeprobe.plot._images import image_grid, sample_grid
from vaeprobe.plot._rate import iwae_convergence, rate

__all__ = ["image_grid", "iwae_convergence", "rate", "sample_grid"]
