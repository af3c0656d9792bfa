"""
Mean samples against stochastic samples
=======================================

*Mind Your Bits and Errors*, Figure 3: a sample from the prior decoded to the decoder's
**mean** is smooth; a **stochastic** sample (the mean plus the decoder's own noise, here a
discretized Gaussian at the optimal sigma) carries per-pixel noise that the model's likelihood
needs but a viewer does not. ``vp.samples`` draws both from the same latents (the same seed),
on the tiny trained test model (tiny-8 on ``digits8``, 400 steps, gamma 2).
"""

from pathlib import Path

import matplotlib.pyplot as plt

import vaeprobe as vp

FIXTURES = Path(vp.__file__).resolve().parents[1] / "tests" / "fixtures"
probe = vp.load(FIXTURES / "tiny8_trained")
fig, axs = plt.subplots(1, 2, figsize=(7, 3.8), layout="constrained")
for ax, kind in zip(axs, ("mean", "stochastic"), strict=True):
    grid = vp.samples(probe, 32, kind=kind, seed=0, progress=False)
    vp.plot.image_grid(grid["images"], ax=ax, columns=8, title=f'kind="{kind}"')
print(grid)
