from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes


def tile(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """uint8 (N, C, H, W) -> one (rows*(H+pad), columns*(W+pad), C) mosaic, white padding."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[top:top + h, left:left + w] = image.transpose(1, 2, 0)
    return canvas


def image_grid(images, ax=None, columns: int = 8, title: str | None = None):
    """Draw uint8 images (a DataArray with dims image, channel, y, x, or an array) as a grid."""
    array = np.asarray(images.values if isinstance(images, xr.DataArray) else images)
    if array.ndim != 4:
        raise ValueError(f"expected images (image, channel, y, x), got shape {array.shape}")
    mosaic = tile(array.astype(np.uint8), min(columns, len(array)))
    ax = axes(ax, figsize=(columns, max(1.0, len(array) / columns)))
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray",
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def sample_grid(ds: xr.Dataset, axs=None, kinds=None, columns: int = 8):
    """Figure 3: preview images per kind (mean vs stochastic ...) side by side."""
    if "preview" not in ds:
        raise ValueError("the Dataset has no 'preview' images (dims kind, image, channel, y, x)")
    kinds = list(kinds or ds["kind"].values)
    if axs is None:
        import matplotlib.pyplot as plt

        _, axs = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.4))
    for ax, kind in zip(np.atleast_1d(axs), kinds, strict=True):
        image_grid(ds["preview"].sel(kind=kind), ax=ax, columns=columns, title=str(kind))
    return axs
