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
from vaeprobe.registry import Registry

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


# ---------------------------------------------------------------------------------------------
# other sources


def _digits8(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    pixels = load_digits().images  # (1797, 8, 8) floats 0..16
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images[:1500] if split == "train" else images[1500:]


class _TorchvisionUint8(Dataset):
    """A torchvision dataset of PIL images as uint8 ``(C, H, W)`` tensors."""

    def __init__(self, base, name: str, size: int | None = None, grey: bool = False):
        self.base, self.name, self.size, self.grey = base, name, size, grey

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

        image = self.base[index][0]
        if self.size is not None:
            image = resize(center_crop(image, min(image.size)), [self.size, self.size],
                           antialias=True)
        return pil_to_tensor(image.convert("L" if self.grey else "RGB"))


def in_memory(base, name: str) -> ImageTensorDataset:
    """A torchvision set that holds its pixels in memory (SVHN, CIFAR-10, MNIST) as one uint8
    tensor, the images its PIL items would give, without a PIL round trip per item."""
    import torchvision.datasets as tvd

    data = base.data
    if isinstance(base, tvd.SVHN):  # numpy (N, 3, H, W)
        images = torch.from_numpy(np.ascontiguousarray(data))
    elif isinstance(base, tvd.CIFAR10):  # numpy (N, H, W, 3)
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)
    elif isinstance(base, tvd.MNIST):  # tensor (N, H, W)
        images = torch.as_tensor(data)[:, None]
    else:
        raise TypeError(f"no in-memory layout known for {type(base).__name__}; wrap it as "
                        f"_TorchvisionUint8 (decoded per item)")
    return ImageTensorDataset(images.contiguous(), name=name)


def _torchvision(name: str, split: str, root, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (a directory holding it, or where "
                         f"to download it with download=True)")
    train = split == "train"
    try:
        if name == "svhn":
            return in_memory(tvd.SVHN(root, split=split, download=download), name)
        if name == "cifar10":
            return in_memory(tvd.CIFAR10(root, train=train, download=download), name)
        if name == "mnist":
            return in_memory(tvd.MNIST(root, train=train, download=download), name)
        celeba_split = {"train": "train", "test": "test"}[split]
        base = tvd.CelebA(root, split=celeba_split, download=download)
        return _TorchvisionUint8(base, name, size=64)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"dataset {name!r} ({split}) not found under {root!r}: {error}. Put the files there "
            f"or pass download=True (needs network)"
        ) from None


class ImageFiles(Dataset):
    """Image files decoded one at a time: RGB (or grey), centre-cropped square, box-resized to
    ``size``."""

    SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

    def __init__(self, files, size: int, name: str = "files", grey: bool = False):
        self.files, self.size, self.name, self.grey = list(files), size, name, grey

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("L" if self.grey else "RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            pixels = np.array(image.resize((self.size, self.size), Image.BOX))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels  # grey: (H, W) -> HWC
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def materialize(dataset: Dataset, *, workers: int | None = None, batch_size: int = 512,
                name: str | None = None) -> ImageTensorDataset:
    """Every image of ``dataset`` in one uint8 tensor, decoded by ``workers`` loader processes
    (default :func:`default_workers`): later batches are slices, with no per-item Python."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset
    images = torch.cat(list(iterate_batches(dataset, batch_size, workers=workers)))
    return ImageTensorDataset(images, name=name or dataset_name(dataset))


def _image_folder(path: Path, size: int, grey: bool = False) -> ImageTensorDataset:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in ImageFiles.SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(ImageFiles.SUFFIXES)}) under "
                                f"{path}")
    return materialize(ImageFiles(files, size, grey=grey), name=f"folder:{path}")


def _npz(path: Path) -> ImageTensorDataset:
    if not path.exists():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as stored:
        if "images" not in stored:
            raise KeyError(f"{path} has no array named 'images' (found {list(stored.keys())})")
        images = stored["images"]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(images)), f"npz:{path}")


def _check_loader(name: str, loader) -> None:
    if not callable(loader):
        raise TypeError(f"dataset {name!r}: a loader must be callable as loader(split, root, "
                        f"download, size) -> Dataset, got {type(loader).__name__}")


# name -> loader(split, root, download, size) -> Dataset of uint8 (C, H, W)
datasets = Registry("dataset", check=_check_loader)
# "scheme:PATH" names: scheme -> loader(path, size) -> Dataset
path_datasets = Registry("dataset scheme", check=_check_loader)


def _patches_loader(side: int):
    def load_side(split, root, download, size):
        images = load_patches(side, split)
        return ImageTensorDataset(torch.from_numpy(images), name=f"patches{side}:{split}")
    return load_side


for _side in PATCH_STRIDES:
    datasets.register(f"patches{_side}", _patches_loader(_side))
datasets.register("digits8", lambda split, root, download, size: ImageTensorDataset(
    torch.from_numpy(_digits8(split)), name=f"digits8:{split}"))
for _name in ("svhn", "cifar10", "mnist", "celeba64"):
    datasets.register(_name, lambda split, root, download, size, _name=_name:
                      _torchvision(_name, split, root, download))
path_datasets.register("folder", lambda path, size: _image_folder(path, size))
path_datasets.register("npz", lambda path, size: _npz(path))


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
    total = len(dataset)
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
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
