"""
The PCA baseline
================

How far does a linear code get? ``vp.pca_baseline`` fits PCA to the training images and
reconstructs the test images from the top-k (largest variance) and from the bottom-k
components: the top-k reach a given distortion with far fewer components, and the same
eigenvalues give the Gaussian rate-distortion bound ``rd_rate`` used as a reference curve
elsewhere (see the first example). Embedded ``digits8`` images (8x8, 64 dimensions).
"""

import vaeprobe as vp

pca = vp.pca_baseline("digits8:train", progress=False)
vp.plot.pca(pca, title="PCA on digits8: top-k vs bottom-k")
print(pca["components_needed"].to_pandas())
