"""
An audit of a small model
=========================

``vp.audit`` runs every section that is defined for a model on one set of images and returns
one Dataset per section; ``vp.plot.audit_page`` draws them on one page (``vaeprobe audit RUN
--out DIR`` writes the same page as ``audit.png`` beside ``audit.html``). The tiny trained
test model on 32 ``digits8`` test images, ``quick=True``. The FID and LPIPS networks here are
the registered **stand-ins** (``random-convnet-TEST-ONLY``, ``random-TEST-ONLY``): the build
has no pretrained weights, so those numbers are flagged as not comparable, as the report says.
The :doc:`sections reference </reference/sections>` describes each section.
"""

from pathlib import Path

import vaeprobe as vp

FIXTURES = Path(vp.__file__).resolve().parents[1] / "tests" / "fixtures"
report = vp.audit(FIXTURES / "tiny8_trained", "digits8:test", n_images=32, quick=True,
                  feature_extractor="random-convnet-TEST-ONLY", lpips_trunk="random-TEST-ONLY",
                  progress=False, device="cpu")
print(report.summary())
figure = vp.plot.audit_page(report, title="vp.audit of tiny8_trained on digits8:test")
