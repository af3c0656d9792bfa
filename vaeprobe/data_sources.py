"""Where :mod:`vaeprobe.data`'s images come from: scikit-learn's digits, torchvision sets,
image folders, npz files and the embedded patches, and the ``datasets`` / ``path_datasets``
registries that :func:`vaeprobe.data.load` looks names up in (public as
``vaeprobe.data.datasets`` and ``vaeprobe.data.path_datasets``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vaeprobe._patches import PATCH_STRIDES, load_patches
from vaeprobe.data_path import iterate_batches
from vaeprobe.images import ImageTensorDataset, dataset_name
from vaeprobe.registry import Registry


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


MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def _read_idx_images(path: Path) -> torch.Tensor:
    """uint8 (N, 1, H, W) from an IDX image file (gzip or not): magic 0x00000803, sizes."""
    import gzip

    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic, count, height, width = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 0x803 or len(raw) != 16 + int(count) * int(height) * int(width):
        raise ValueError(f"{path} is not an IDX file of uint8 images (magic {magic:#x}, "
                         f"{len(raw)} bytes)")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    return torch.from_numpy(pixels.reshape(int(count), 1, int(height), int(width)).copy())


def _mnist_split(root, split: str) -> ImageTensorDataset | None:
    """MNIST's ``split`` from its own IDX file, when it is present (in ``root``,
    ``root/MNIST/raw`` or ``root/raw``, gzipped or not): the other split's files need not be
    (torchvision checks all four)."""
    name = MNIST_FILES[split]
    for folder in (Path(root), Path(root) / "MNIST" / "raw", Path(root) / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return ImageTensorDataset(_read_idx_images(candidate), name=f"mnist:{split}")
    return None


def _one_split_cifar10(root, train: bool, download: bool):
    """torchvision's CIFAR-10 that needs only the requested split's batches (and
    ``batches.meta``): torchvision checks the train and test batches whichever is asked."""
    import os

    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    class OneSplitCIFAR10(tvd.CIFAR10):
        def _check_integrity(self) -> bool:
            files = (self.train_list if self.train else self.test_list) + [
                [self.meta["filename"], self.meta["md5"]]]
            return all(check_integrity(os.path.join(self.root, self.base_folder, name), md5)
                       for name, md5 in files)

    return OneSplitCIFAR10(root, train=train, download=download)


def _torchvision(name: str, split: str, root, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    if name == "mnist" and root is not None and not download:
        found = _mnist_split(root, split)
        if found is not None:
            return found
    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (a directory holding it, or where "
                         f"to download it with download=True)")
    train = split == "train"
    try:
        if name == "svhn":
            return in_memory(tvd.SVHN(root, split=split, download=download), name)
        if name == "cifar10":
            return in_memory(_one_split_cifar10(root, train, download), name)
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

        from vaeprobe.validate import read_image  # 16-bit scaled, bombs refused, file named

        with read_image(self.files[index]) as image:
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
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as stored:
            if not hasattr(stored, "keys"):
                raise ValueError(f"{path} holds a single array, not an .npz archive with an "
                                 f"'images' array")
            if "images" not in stored:
                raise KeyError(f"{path} has no array named 'images' (found "
                               f"{list(stored.keys())})")
            images = stored["images"]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib_error()) as error:
        if isinstance(error, (FileNotFoundError, KeyError)) or str(path) in str(error):
            raise
        raise ValueError(f"cannot read npz file {path}: truncated or corrupt ({error})") from None
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' is {images.dtype}; vaeprobe reads uint8 (0..255): "
                         f"convert 16-bit data with np.round(x / 257).astype(np.uint8), floats "
                         f"in [0, 1] with vaeprobe.data.to_uint8")
    try:
        return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(images)), f"npz:{path}")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def zlib_error() -> type:
    import zlib

    return zlib.error


def _callable_as(signature: str):
    """A registry check: the entry must be callable as ``signature``."""
    def check(name: str, loader) -> None:
        if not callable(loader):
            raise TypeError(f"dataset {name!r}: a loader must be callable as {signature} -> "
                            f"Dataset, got {type(loader).__name__}")
    return check


# name -> loader(split, root, download, size) -> Dataset of uint8 (C, H, W)
datasets = Registry("dataset", check=_callable_as("loader(split, root, download, size)"))
# "scheme:PATH" names: scheme -> loader(path, size) -> Dataset
path_datasets = Registry("dataset scheme", check=_callable_as("loader(path, size)"))


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
