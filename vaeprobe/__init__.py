"""vaeprobe: train and audit VAEs; where their bits go and which of them matter.

>>> import vaeprobe as vp
>>> vp.__version__
'0.1.0'
"""

from vaeprobe import data, plot
from vaeprobe._version import __version__
from vaeprobe.adapters import load
from vaeprobe.audit import audit
from vaeprobe.fidelity import sample_quality
from vaeprobe.io import checkpoints, open_results, save
from vaeprobe.likelihood import iwae
from vaeprobe.pca import pca_baseline
from vaeprobe.probe import LatentPass, LayerDraw, LayerInfo, Probe, UndefinedAnalysisError
from vaeprobe.rate import rate
from vaeprobe.spectrum import spectrum

__all__ = ["LatentPass", "LayerDraw", "LayerInfo", "Probe", "UndefinedAnalysisError",
           "__version__", "audit", "checkpoints", "data", "iwae", "load", "open_results",
           "pca_baseline", "plot", "rate", "sample_quality", "save", "spectrum"]
