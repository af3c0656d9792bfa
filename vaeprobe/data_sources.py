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
from vaeprobe.data_checks import folder_changes
from vaeprobe.data_path import iterate_batches
from vaeprobe.images import ImageTensorDataset, dataset_name
from vaeprobe.registry import Registry


def _digits8(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    pixels = load_digits().images  # (1797, 8, 8) floats 0..16
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images[:1500] if split == "train" else images[1500:]


class TorchvisionUint8(Dataset):
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
                        f"TorchvisionUint8 (decoded per item)")
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
        return TorchvisionUint8(base, name, size=64)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"dataset {name!r} ({split}) not found under {root!r}: {error}. Put the files there "
            f"or pass download=True (needs network)"
        ) from None


RESIZE_MODES = ("crop", "squash", "none")  # folder:PATH,resize=...
ORIENTATIONS = ("landscape", "portrait")  # folder:PATH,orient=...
FILTERS = ("box", "bilinear", "bicubic", "lanczos", "nearest")  # folder:PATH,filter=... (PIL)


class ImageFiles(Dataset):
    """Image files decoded one at a time: RGB (or grey), optionally turned to one orientation,
    then sized by ``resize``:

    - ``"crop"``: the largest centred crop of the target's aspect ratio, box-resized to
      ``size`` (H, W) (a square for an int);
    - ``"squash"``: the whole image box-resized to ``size``, aspect ratio not kept (as
      disentangling-vae and many VAE codebases feed their models);
    - ``"none"``: the native pixels (``size`` is ignored).

    ``orient="landscape"`` (``"portrait"``) turns taller-than-wide (wider-than-tall) images by
    90 degrees counter-clockwise first, so that e.g. all 24 Kodak images are 512x768 (HxW).
    ``filter`` is PIL's resampling filter: ``"box"`` (default: area averages when shrinking),
    ``"bilinear"`` (torchvision's ``Resize`` on PIL images, as disentangling-vae and JointVAE
    resized MNIST to 32x32), ``"bicubic"``, ``"lanczos"`` or ``"nearest"``.
    """

    SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

    def __init__(self, files, size, name: str = "files", grey: bool = False,
                 resize: str = "crop", orient: str | None = None, filter: str = "box"):
        self.files, self.name, self.grey = list(files), name, grey
        self.size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.resize, self.orient = check_choice("resize", resize, RESIZE_MODES), orient
        self.filter = check_choice("filter", filter, FILTERS)
        if orient is not None:
            check_choice("orient", orient, ORIENTATIONS)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        from vaeprobe.validate import read_image  # 16-bit scaled, bombs refused, file named

        with read_image(self.files[index]) as image:
            image = image.convert("L" if self.grey else "RGB")
            if turned(image.size, self.orient):
                image = image.transpose(Image.Transpose.ROTATE_90)
            if self.resize == "crop":
                image = image.crop(_centre_box(image.size, self.size))
            if self.resize != "none":
                image = image.resize(self.size[::-1], getattr(Image.Resampling,
                                                              self.filter.upper()))
            pixels = np.array(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels  # grey: (H, W) -> HWC
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def check_choice(option: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(str, choices))}, got "
                         f"{value!r}")
    return value


def turned(size: tuple[int, int], orient: str | None) -> bool:
    """Does an image of PIL ``size`` (W, H) need a quarter turn to be in ``orient``?"""
    width, height = size
    return (orient == "landscape" and height > width) or (orient == "portrait" and width > height)


def _centre_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred (left, top, right, bottom) box of aspect ``size`` (H, W)."""
    width, height = image_size
    crop_w = min(width, round(height * size[1] / size[0]))
    crop_h = min(height, round(crop_w * size[0] / size[1]))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def materialize(dataset: Dataset, *, workers: int | None = None, batch_size: int = 512,
                name: str | None = None) -> ImageTensorDataset:
    """Every image of ``dataset`` in one uint8 tensor, decoded by ``workers`` loader processes
    (default :func:`default_workers`): later batches are slices, with no per-item Python."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset
    images = torch.cat(list(iterate_batches(dataset, batch_size, workers=workers)))
    return ImageTensorDataset(images, name=name or dataset_name(dataset))


def _image_folder(path: Path, size, grey: bool = False, resize: str = "crop",
                  orient: str | None = None, filter: str = "box") -> ImageTensorDataset:
    """A folder's images (searched recursively, sorted) as one uint8 tensor; see
    :class:`ImageFiles` for ``resize`` and ``orient``. With ``resize="none"`` every image must
    have one size (after ``orient``): else an error names two files and their sizes."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in ImageFiles.SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(ImageFiles.SUFFIXES)}) under "
                                f"{path}")
    files_dataset = ImageFiles(files, size, grey=grey, resize=resize, orient=orient,
                               filter=filter)
    if resize == "none":
        _check_one_size(files, orient, path)
    chosen = (("resize", resize, "crop"), ("orient", orient, None), ("filter", filter, "box"))
    options = ",".join(f"{key}={value}" for key, value, default in chosen if value != default)
    name = f"folder:{path}" + (f",{options}" if options else "")
    dataset = materialize(files_dataset, name=name)
    dataset.changes = folder_changes(files, files_dataset.size, grey, resize,
                                     lambda size: turned(size, orient))  # said by as_dataset
    return dataset


def _check_one_size(files: list[Path], orient: str | None, folder: Path) -> None:
    """Refuse native-size images of different sizes, naming the first two that differ."""
    from PIL import Image

    first = None
    for file in files:
        with Image.open(file) as image:  # reads the header only
            width, height = image.size
        if turned((width, height), orient):
            width, height = height, width
        if first is None:
            first = (file, height, width)
        elif (height, width) != first[1:]:
            raise ValueError(
                f"folder:{folder},resize=none needs images of one size, but "
                f"{first[0].name} is {first[1]}x{first[2]} and {file.name} is {height}x{width} "
                f"(HxW); add ,orient=landscape (or portrait) to turn them to one orientation, "
                f"resize them (,resize=crop or ,resize=squash), or split the folder by size")


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
        if "allow_pickle" in str(error):  # numpy's advice would run the pickle: never quoted
            raise ValueError(f"{path}: its 'images' array holds Python objects (a pickle), "
                             f"which vaeprobe never loads; save the images as a uint8 array "
                             f"(np.savez(path, images=x.astype(np.uint8)))") from None
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
# "scheme:PATH" or "scheme:PATH,key=value,..." names: scheme -> loader(path, size, **options)
# -> Dataset; size is (H, W), the options are the strings after the commas
path_datasets = Registry("dataset scheme", check=_callable_as("loader(path, size, **options)"))


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
path_datasets.register("folder", _image_folder)
path_datasets.register("npz", lambda path, size: _npz(path))
