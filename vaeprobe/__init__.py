"""vaeprobe: train and audit VAEs; where their bits go and which of them matter.

>>> import vaeprobe as vp
>>> vp.__version__
'0.1.0'

``vp.Probe.from_module(model, image_shape=...)`` wraps a user's own encode/decode VAE; it is
attached here (not in :mod:`vaeprobe.probe`) so the contract module never imports an adapter.
"""

from vaeprobe import arrays, data, plot, similarity, units
from vaeprobe._version import __version__
from vaeprobe.adapters import as_probe, load
from vaeprobe.adapters.module import from_module
from vaeprobe.audit import audit
from vaeprobe.compare import compare
from vaeprobe.compress import compress, decompress
from vaeprobe.fidelity import sample_quality
from vaeprobe.information import information
from vaeprobe.io import open_results, save
from vaeprobe.likelihood import iwae
from vaeprobe.pca import pca_baseline
from vaeprobe.probe import LatentPass, LayerDraw, LayerInfo, Probe, UndefinedAnalysisError
from vaeprobe.rate import rate
from vaeprobe.run import Run, checkpoints
from vaeprobe.sampling import samples
from vaeprobe.spectrum import spectrum
from vaeprobe.tiling import tiling_error

Probe.from_module = staticmethod(from_module)  # vp.Probe.from_module(model, image_shape=...)

__all__ = ["LatentPass", "LayerDraw", "LayerInfo", "Probe", "Run", "UndefinedAnalysisError",
           "__version__", "arrays", "as_probe", "audit", "checkpoints", "compare", "compress",
           "data", "decompress", "information", "iwae", "load", "open_results", "pca_baseline",
           "plot", "rate", "sample_quality", "samples", "save", "similarity", "spectrum",
           "tiling_error", "units"]
