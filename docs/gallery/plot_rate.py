"""
Rate per latent layer
=====================

``vp.rate`` of the tiny trained test model on the embedded ``digits8`` images.
"""

from pathlib import Path

import vaeprobe as vp

ROOT = Path(vp.__file__).resolve().parents[1]
probe = vp.load(ROOT / "tests" / "fixtures" / "tiny8_trained")
rate = vp.rate(probe, "digits8:test", n_images=64)
vp.plot.rate(rate)
