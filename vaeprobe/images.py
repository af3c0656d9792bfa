"""uint8 image tensors: the checks every image argument passes, float -> uint8 conversion, and
a tensor as a named Dataset. A leaf module: it imports nothing from vaeprobe."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """A uint8 ``(N, C, H, W)`` tensor as a Dataset, with a name and a content hash."""

    def __init__(self, images: torch.Tensor, name: str = "tensor"):
        self.images = check_images(images)
        self.name = name
        self._identity: str | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    @property
    def identity(self) -> str:
        """sha256 of the pixels and shape: the same images give the same key."""
        if self._identity is None:
            digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
            digest.update(self.images.contiguous().numpy().tobytes())
            self._identity = digest.hexdigest()
        return self._identity

    def __repr__(self) -> str:
        return f"ImageTensorDataset(name={self.name!r}, images={tuple(self.images.shape)})"


# ---------------------------------------------------------------------------------------------
# validation and conversion


def check_images(images, *, what: str = "images") -> torch.Tensor:
    """Return ``images`` if it is a uint8 ``(N, C, H, W)`` tensor with C in (1, 3); else raise."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected {what} as a uint8 torch.Tensor (N, C, H, W), got {type(images)}")
    shape = tuple(images.shape)
    if images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 {what} of shape (N, C, H, W) with values 0..255, got {images.dtype} "
            f"{shape}; use vaeprobe.data.to_uint8 to convert floats in [0, 1]"
        )
    if images.ndim != 4:
        raise ValueError(f"expected {what} of shape (N, C, H, W), got {images.ndim} dims {shape}")
    if images.shape[1] not in (1, 3):
        hint = "; they look NHWC: use images.permute(0, 3, 1, 2)" if shape[3] in (1, 3) else ""
        raise ValueError(f"expected {what} with 1 or 3 channels at dim 1 (NCHW), got {shape}{hint}")
    return images


def to_uint8(images: torch.Tensor, *, channels_last: bool = False, clip: bool = False
             ) -> torch.Tensor:
    """Quantise floats in [0, 1] to uint8 by ``round(x * 255)``.

    Floats outside [0, 1] are refused (floats in 0..255 would otherwise all become 255):
    divide them by 255 first, or pass ``clip=True`` to clamp values a little outside [0, 1]
    (e.g. a decoder mean) into range.

    Examples
    --------
    >>> to_uint8(torch.tensor([[[[0.0, 0.5, 1.0]]]])).tolist()
    [[[[0, 128, 255]]]]
    >>> to_uint8(torch.tensor([[[[-0.1, 1.2]]]]), clip=True).tolist()
    [[[[0, 255]]]]
    """
    images = torch.as_tensor(images)
    if channels_last:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images
    values = images.float()
    if not clip and values.numel():
        low, high = float(values.min()), float(values.max())
        if not (low >= 0.0 and high <= 1.0):  # NaN fails too
            hint = ("they look like 0..255 values: divide by 255 first" if high > 1.5 else
                    "pass clip=True to clamp them into [0, 1]")
            raise ValueError(f"to_uint8 expects floats in [0, 1], got values in [{low:g}, "
                             f"{high:g}]; {hint}")
    return (values.clamp(0, 1) * 255).round().to(torch.uint8)


def dataset_name(dataset: Dataset) -> str:
    return getattr(dataset, "name", type(dataset).__name__)
