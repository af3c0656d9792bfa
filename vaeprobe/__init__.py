"""vaeprobe: train and audit VAEs; where their bits go and which of them matter.

>>> import vaeprobe as vp
>>> vp.__version__
'0.1.0'
"""

from vaeprobe import data, plot
from vaeprobe._version import __version__
from vaeprobe.adapters import load
from vaeprobe.io import checkpoints, open_results, save
from vaeprobe.probe import LatentPass, LayerInfo, Probe

__all__ = ["LatentPass", "LayerInfo", "Probe", "__version__", "checkpoints", "data", "load", "plot",
           "open_results", "save"]

from vaeprobe.likelihood import iwae  # noqa: E402
from vaeprobe.rate import rate  # noqa: E402

__all__ += ["iwae", "rate"]
from vaeprobe.pca import pca_baseline  # noqa: E402
from vaeprobe.spectrum import spectrum  # noqa: E402

__all__ += ["pca_baseline", "spectrum"]
from vaeprobe.fidelity import sample_quality  # noqa: E402

__all__ += ["sample_quality"]
