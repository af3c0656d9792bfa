"""
Where the rate goes: information and prior mismatch
===================================================

The rate of a VAE, E KL(q(z|x) || p(z)), is the mutual information I(x; z) that the latents
carry about the image **plus** the KL from the aggregate posterior q(z) to the prior,
KL(q(z) || p(z)): nats spent because the prior does not match where the encoder puts the
images. ``vp.information`` estimates both, per latent layer (conditionally on the layers
above for a hierarchical model), on the tiny trained test model.
"""

from pathlib import Path

import vaeprobe as vp

FIXTURES = Path(vp.__file__).resolve().parents[1] / "tests" / "fixtures"
split = vp.information(FIXTURES / "tiny8_trained", "digits8:test", n_images=64, progress=False)
vp.plot.information(split)
print(split[[name for name in split.data_vars if split[name].dims == ("layer",)]]
      .to_dataframe().round(3))
