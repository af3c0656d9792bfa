"""Datasets as uint8 ``(C, H, W)`` tensors: embedded defaults, torchvision sets, folders, npz.

Every function in vaeprobe that takes ``data`` accepts one of
- a name string: ``"patches32"``, ``"patches32:test"``, ``"digits8"``, ``"svhn:test"``,
  ``"folder:/path/to/images"``, ``"npz:/path/to/file.npz"``;
- a torch Dataset yielding uint8 ``(C, H, W)`` tensors or ``(image, label)`` pairs;
- a uint8 tensor ``(N, C, H, W)``.
:func:`as_dataset` normalises all three and rejects anything else with an error naming the fix.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

# the embedded patches live in vaeprobe._patches, imported back here (data.load_patches & co.)
from vaeprobe._patches import (  # noqa: F401
    _PATCH_RECIPE_VERSION,
    PATCH_SCALES,
    PATCH_STRIDES,
    PHOTOS,
    TEST_PHOTOS,
    _area_downsample,
    _array_sha256,
    _cut_patches,
    _load_photo,
    _patch_recipe,
    _recipe_key,
    build_patches,
    cache_dir,
    load_patches,
)

SPLITS = ("train", "test")


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


def names() -> list[str]:
    """Names :func:`load` understands: the ``datasets`` registry, then ``scheme:PATH`` ones.

    Register your own with ``vaeprobe.data.datasets.register(name, loader)``, where
    ``loader(split, root, download, size)`` returns a Dataset of uint8 ``(C, H, W)`` tensors.
    """
    return list(datasets) + [f"{scheme}:PATH" for scheme in path_datasets]


def load(name: str, split: str = "train", root=None, *, download: bool = False,
         size: int = 64) -> Dataset:
    """Load a dataset by name as a Dataset of uint8 ``(C, H, W)`` tensors.

    Parameters
    ----------
    name : str
        ``patches16|32|64``, ``digits8``, ``svhn``, ``cifar10``, ``mnist``, ``celeba64`` (or
        any name in the ``datasets`` registry), ``folder:PATH`` or ``npz:PATH``.
        ``"name:split"`` sets the split.
    split : {"train", "test"}
    root : path, optional
        Directory of a torchvision dataset.
    download : bool
        Let torchvision download a missing dataset (needs network).
    size : int
        Side of the centre-cropped square for ``folder:`` (the analyses pass the model's
        image size instead: see :func:`as_dataset`).

    Examples
    --------
    >>> ds = load("digits8", split="test")
    >>> len(ds), tuple(ds[0].shape), ds[0].dtype
    (297, (1, 8, 8), torch.uint8)
    """
    scheme, _, rest = name.partition(":")
    if ":" in name and scheme in path_datasets:
        return path_datasets.get(scheme)(Path(rest).expanduser(), size)
    if ":" in name:
        name, split = name.split(":", 1)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name not in datasets:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    return datasets.get(name)(split, root, download, size)


# ---------------------------------------------------------------------------------------------
# the one normaliser


class _CheckedDataset(Dataset):
    """A user Dataset whose items are checked: uint8 (C, H, W), labels dropped."""

    def __init__(self, base: Dataset):
        self.base = base
        self.name = getattr(base, "name", type(base).__name__)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.base[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return check_images(torch.as_tensor(item)[None], what="dataset items")[0]


def as_dataset(data, *, image_shape: tuple[int, int, int] | None = None) -> Dataset:
    """Normalise ``data`` (name, Dataset or uint8 tensor) to a Dataset of uint8 (C, H, W).

    ``image_shape`` (C, H, W), when given, is checked against the first item; a
    ``"folder:PATH"`` name is then read at that size and channel count (the model's), not 64 px.
    """
    if isinstance(data, str) and data.startswith("folder:") and image_shape is not None:
        dataset = _image_folder(Path(data[len("folder:"):]).expanduser(), int(image_shape[-1]),
                                grey=int(image_shape[0]) == 1)
    elif isinstance(data, str):
        dataset = load(data)
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        dataset = ImageTensorDataset(check_images(data))
    elif isinstance(data, ImageTensorDataset | _TorchvisionUint8 | _CheckedDataset):
        dataset = data
    elif isinstance(data, Dataset):
        dataset = _CheckedDataset(data)
    else:
        raise TypeError(
            f"data must be a dataset name (e.g. 'patches32:test'), a torch Dataset of uint8 "
            f"(C, H, W) tensors, or a uint8 tensor (N, C, H, W); got {type(data).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset_name(dataset)!r} is empty")
    first = dataset[0]
    if image_shape is not None and tuple(first.shape) != tuple(image_shape):
        raise ValueError(
            f"images of {dataset_name(dataset)!r} have shape {tuple(first.shape)} but the model "
            f"expects {tuple(image_shape)} (C, H, W); use data of that size and channel count"
        )
    return dataset


def dataset_name(dataset: Dataset) -> str:
    return getattr(dataset, "name", type(dataset).__name__)


def dataset_identity(dataset: Dataset) -> str:
    """A content hash of a dataset's images (used as a cache key)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.identity
    digest = hashlib.sha256()
    for batch in iterate_batches(dataset, 256):
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.numpy().tobytes())
    return digest.hexdigest()


def select(dataset: Dataset, n_images: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of ``n_images`` images drawn without replacement by ``seed``, sorted (None: all)."""
    from vaeprobe.validate import positive_int

    total = len(dataset)
    positive_int(n_images, "n_images", allow_none=True)
    if n_images is None or n_images >= total:
        if n_images is not None and n_images > total:
            warnings.warn(f"n_images={n_images} but {dataset_name(dataset)!r} has only {total} "
                          f"images: using all {total}", UserWarning, stacklevel=3)
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:n_images].sort().values


# the loader (index batches -> image batches) lives in vaeprobe.data_path; imported back here
# at the end, as it needs ImageTensorDataset defined above
from vaeprobe.data_path import (  # noqa: E402, F401
    _BatchList,
    _collate,
    _Indexed,
    default_workers,
    gather,
    iterate_batches,
    load_batches,
)

# the sources and their registries live in vaeprobe.data_sources; imported back here
from vaeprobe.data_sources import (  # noqa: E402, F401
    ImageFiles,
    _digits8,
    _image_folder,
    _npz,
    _torchvision,
    _TorchvisionUint8,
    datasets,
    in_memory,
    materialize,
    path_datasets,
)
