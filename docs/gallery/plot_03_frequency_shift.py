"""
The frequency shift over training
=================================

*Mind Your Bits and Errors*, Section 5: as training lowers the rate at a fixed distortion
target, reconstructions of equal distortion move their error from low to high frequencies.
``vp.spectrum`` reads every checkpoint of a run and gives the reconstructions' radially
averaged power spectrum relative to the data's, per checkpoint (dims ``step``, ``frequency``).
Here a tiny-8 model trains for 150 steps on ``digits8`` (8x8 images have only four frequency
bins, so this shows the mechanics; ``make demo`` runs the real experiment on patches32, whose
figure is among :doc:`the committed figures </at_scale>`).
"""

import tempfile

import matplotlib.pyplot as plt

import vaeprobe as vp
from trainers.config import make
from trainers.train import train

workdir = tempfile.TemporaryDirectory()  # removed when the script ends
run = train(make(preset="tiny-8", data="digits8", objective="distortion", gamma=1.0,
                 steps=150, ckpt_every=50, out=f"{workdir.name}/run", progress=False,
                 device="cpu"))
print(vp.checkpoints(run))
spectra = vp.spectrum(run, "digits8:test", n_images=128, progress=False)
fig, axs = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
vp.plot.spectrum(spectra, ax=axs[0])
vp.plot.training_curves(vp.Run(run).training_log(), ax=axs[1], gamma=1.0)
print(spectra["relative_power"].to_pandas().round(3))
