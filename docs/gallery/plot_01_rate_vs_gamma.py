"""
Rate falls as the distortion target grows
=========================================

*Mind Your Bits and Errors*, Section 3.2: a distortion-targeted VAE trained to reach a
per-image distortion ``gamma`` (sum of squared error on the [0, 1] scale) spends fewer nats the
larger ``gamma`` is. Here three tiny-8 models are trained for 100 steps each on the embedded
``digits8`` images (a few seconds each on a CPU), then measured on the test split with
``vp.rate``; the dashed curve is the Gaussian rate-distortion bound of the data's PCA
(``vp.pca_baseline``). The paper-scale version of this figure is among
:doc:`the committed figures </at_scale>`.
"""

import tempfile

import numpy as np
import xarray as xr

import vaeprobe as vp
from trainers.config import make
from trainers.train import train

workdir = tempfile.TemporaryDirectory()  # removed when the script ends
runs = workdir.name
rows = []
for gamma in (0.5, 2.0, 8.0):
    run = train(make(preset="tiny-8", data="digits8", objective="distortion", gamma=gamma,
                     steps=100, out=f"{runs}/gamma{gamma:g}", progress=False, device="cpu"))
    rate = vp.rate(vp.load(run), "digits8:test", n_images=128, progress=False)
    rows.append(xr.Dataset({"rate": rate["total_rate"], "rate_se": rate["total_rate_se"],
                            "distortion": rate["distortion"],
                            "distortion_se": rate["distortion_se"]}).expand_dims(gamma=[gamma]))
sweep = xr.concat(rows, dim="gamma")

# the Gaussian R(D) bound of the data's PCA, as a curve along distortion
pca = vp.pca_baseline("digits8:train", progress=False)
sweep = sweep.assign(rd_rate=pca["rd_rate"])
vp.plot.rate_distortion(sweep)
print(sweep[["rate", "distortion"]].to_dataframe().round(2))
assert np.all(np.diff(sweep["rate"].values) < 0), "rate should fall as gamma grows"
