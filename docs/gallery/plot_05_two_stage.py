"""
Two-stage training
==================

*Mind Your Bits and Errors*, Figures 7-8: a second VAE trained on the latents of a frozen
primary model adds rate where the primary's prior was poor, and improves the likelihood while
the samples barely change. The test fixture ``tiny8_two_stage`` is such a model (a secondary
stage trained for 1,000 steps at gamma 1 on the ``tiny8_trained`` primary); ``vp.rate`` splits
its rate by stage, ``vp.iwae`` gives the importance-weighted bound of both models.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

import vaeprobe as vp

FIXTURES = Path(vp.__file__).resolve().parents[1] / "tests" / "fixtures"
models = {"primary": FIXTURES / "tiny8_trained", "two-stage": FIXTURES / "tiny8_two_stage"}
rows = []
for name, path in models.items():
    probe = vp.load(path)
    rate = vp.rate(probe, "digits8:test", n_images=64, progress=False)
    bound = vp.iwae(probe, "digits8:test", k=16, n_images=64, progress=False)
    stages = rate["rate"].groupby("stage").sum()
    rows.append(xr.Dataset({
        "stage_rate": stages.rename(stage="stage"),
        "bpd": bound["bpd_mean"], "bpd_se": bound["bpd_se"],
        "elbo_bpd": bound["elbo_bpd_mean"], "elbo_bpd_se": bound["elbo_bpd_se"],
    }).expand_dims(model=[name]))
table = xr.concat(rows, dim="model")
fig, axs = plt.subplots(1, 2, figsize=(8, 3.6), layout="constrained")
vp.plot.rate_by_stage(table, ax=axs[0])
vp.plot.bits_by_stage(table, ax=axs[1])
print(table[["bpd", "elbo_bpd"]].to_dataframe().round(3))
