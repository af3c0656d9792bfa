"""
Several models side by side
===========================

``vp.compare`` puts several checkpoints, run directories or model folders in one Dataset
along ``model``: rate, distortion, PSNR / SSIM / LPIPS, IWAE and ELBO bits/dim where defined,
the information split; ``vp.plot.compare_page`` draws the rate-distortion plane and the
columns. Here the two tiny test models (the two-stage one is built on the other), with the
stand-in LPIPS network (flagged in the Dataset's attrs).
"""

from pathlib import Path

import vaeprobe as vp

FIXTURES = Path(vp.__file__).resolve().parents[1] / "tests" / "fixtures"
table = vp.compare([FIXTURES / "tiny8_trained", FIXTURES / "tiny8_two_stage"], "digits8:test",
                   n_images=32, information_images=32, lpips_trunk="random-TEST-ONLY",
                   feature_extractor="random-convnet-TEST-ONLY", progress=False)
vp.plot.compare_page(table)
print(table[["rate", "distortion", "psnr"]].to_dataframe().round(3))
