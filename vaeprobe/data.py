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
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vaeprobe import data_checks
from vaeprobe._patches import PHOTOS, build_patches, load_patches
from vaeprobe.binarize import BinarizedDataset, split_name
from vaeprobe.binarize import binarize as _binarize
from vaeprobe.cache import cache_dir
from vaeprobe.data_path import default_workers, gather, iterate_batches, load_batches
from vaeprobe.data_sources import (
    ImageFiles,
    TorchvisionUint8,
    datasets,
    in_memory,
    materialize,
    path_datasets,
)
from vaeprobe.images import ImageTensorDataset, check_images, dataset_name, to_uint8

# the public names of vaeprobe.data; each lives in the module it is imported from above
__all__ = ["PHOTOS", "SPLITS", "ImageFiles", "ImageTensorDataset", "as_dataset", "binarize",
           "build_patches", "cache_dir", "check_images", "dataset_identity", "dataset_name",
           "datasets", "default_workers", "draw_order", "gather", "in_memory", "iterate_batches",
           "load", "load_batches", "load_patches", "materialize", "names", "path_datasets",
           "select", "to_uint8"]

SPLITS = ("train", "test")


def names() -> list[str]:
    """Names :func:`load` understands: the ``datasets`` registry, then ``scheme:PATH`` ones.

    Register your own with ``vaeprobe.data.datasets.register(name, loader)``, where
    ``loader(split, root, download, size)`` returns a Dataset of uint8 ``(C, H, W)`` tensors.
    """
    return list(datasets) + [f"{scheme}:PATH" for scheme in path_datasets]


def split_options(rest: str) -> tuple[str, dict]:
    """``"PATH,key=value,key=value"`` -> (PATH, {key: value}); a comma not followed by
    ``key=value`` pairs to the end stays part of the path.

    Examples
    --------
    >>> split_options("kodak,resize=none,orient=landscape")
    ('kodak', {'resize': 'none', 'orient': 'landscape'})
    >>> split_options("photos, 2024/a")
    ('photos, 2024/a', {})
    """
    match = re.fullmatch(r"(.*?)((?:,\w+=[^,=]*)+)", rest)
    if match is None:
        return rest, {}
    path, tail = match.groups()
    return path, dict(pair.split("=", 1) for pair in tail[1:].split(","))


def _load_path(scheme: str, rest: str, size, *, grey: bool = False) -> Dataset:
    """A ``scheme:PATH[,key=value...]`` dataset at ``size`` (int or (H, W))."""
    import inspect

    path, options = split_options(rest)
    loader = path_datasets.get(scheme)
    parameters = inspect.signature(loader).parameters
    known = [name for name, p in list(parameters.items())[2:]
             if name != "grey" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{scheme}: unknown option(s) {unknown} in {scheme}:{rest}; "
                         + (f"options: {', '.join(known)} (e.g. {scheme}:PATH,{known[0]}=...)"
                            if known else f"{scheme}:PATH takes no options"))
    if grey:
        options["grey"] = True
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    return loader(Path(path).expanduser(), size, **options)


def load(name: str, split: str = "train", root=None, *, download: bool = False,
         size: int | tuple[int, int] = 64) -> Dataset:
    """Load a dataset by name as a Dataset of uint8 ``(C, H, W)`` tensors.

    Parameters
    ----------
    name : str
        ``patches16|32|64``, ``digits8``, ``svhn``, ``cifar10``, ``mnist``, ``celeba64`` (or
        any name in the ``datasets`` registry), ``folder:PATH`` or ``npz:PATH``.
        ``"name:split"`` sets the split. A folder takes options after commas:
        ``resize=crop`` (default: centre crop to the target's aspect ratio, then resize),
        ``resize=squash`` (the whole image resized), ``resize=none`` (native size: every image
        must then have one size), ``orient=landscape|portrait`` (turn images a quarter to
        one orientation first) and ``filter=box|bilinear|bicubic|lanczos|nearest`` (PIL's
        resampling), e.g. ``"folder:kodak,resize=none,orient=landscape"``.
    split : {"train", "test"}
    root : path, optional
        Directory of a torchvision dataset.
    download : bool
        Let torchvision download a missing dataset (needs network).
    size : int or (int, int)
        Side (or (H, W)) of ``folder:`` images unless ``resize=none`` (the analyses pass the
        model's image size instead: see :func:`as_dataset`).

    Examples
    --------
    >>> ds = load("digits8", split="test")
    >>> len(ds), tuple(ds[0].shape), ds[0].dtype
    (297, (1, 8, 8), torch.uint8)
    """
    name, mode = split_name(name)
    if mode is not None:  # "NAME,binarize=MODE"
        return binarize(load(name, split, root, download=download, size=size), mode)
    scheme, _, rest = name.partition(":")
    if ":" in name and scheme in path_datasets:
        return _load_path(scheme, rest, size)
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


def binarize(data, mode: str = "threshold", *, seed: int = 0) -> BinarizedDataset:
    """Binarize any ``data`` (a name, Dataset or uint8 tensor) to levels {0, 255}, for
    Bernoulli likelihoods; see :func:`vaeprobe.binarize.binarize` for the two modes.

    Examples
    --------
    >>> binarize("digits8:test", "dynamic").name
    'digits8:test,binarize=dynamic(seed=0)'
    """
    return _binarize(as_dataset(data), mode, seed=seed)


def as_dataset(data, *, image_shape: tuple[int, int, int] | None = None,
               check: bool = True) -> Dataset:
    """Normalise ``data`` (name, Dataset or uint8 tensor) to a Dataset of uint8 (C, H, W).

    ``image_shape`` (C, H, W), when given, is checked against the first item (``check=False``:
    not checked; :func:`vaeprobe._analysis.fit_probe` then fits a convolutional model to the
    data instead); a ``"folder:PATH"`` name is read at that size and channel count (the
    model's), not 64 px, unless it says ``,resize=none``. A name may end in
    ``",binarize=threshold"`` or ``",binarize=dynamic"`` (:func:`vaeprobe.binarize.binarize`).
    """
    if isinstance(data, str) and split_name(data)[1] is not None:
        base, mode = split_name(data)
        dataset = binarize(as_dataset(base, image_shape=image_shape, check=check), mode)
    elif isinstance(data, str) and data.startswith("folder:") and image_shape is not None:
        dataset = _load_path("folder", data[len("folder:"):], tuple(image_shape[1:]),
                             grey=int(image_shape[0]) == 1)
        # channels converted, images resized: a warning before any number (or an error)
        data_checks.report(getattr(dataset, "changes", []), dataset_name(dataset))
    elif isinstance(data, str):
        dataset = load(data)
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        dataset = ImageTensorDataset(check_images(data))
    elif isinstance(data, ImageTensorDataset | TorchvisionUint8 | _CheckedDataset
                    | BinarizedDataset):
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
    if check and image_shape is not None and tuple(first.shape) != tuple(image_shape):
        raise ValueError(
            f"images of {dataset_name(dataset)!r} have shape {tuple(first.shape)} but the model "
            f"expects {tuple(image_shape)} (C, H, W); use data of that size and channel count"
        )
    return dataset


def dataset_identity(dataset: Dataset) -> str:
    """A content hash of a dataset's images (used as a cache key)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.identity
    digest = hashlib.sha256()
    for batch in iterate_batches(dataset, 256):
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.numpy().tobytes())
    return digest.hexdigest()


def _subset_size(dataset: Dataset, n_images: int | None) -> int:
    """The dataset's size, after checking ``n_images`` (a warning when it asks for more)."""
    from vaeprobe.validate import positive_int

    total = len(dataset)
    positive_int(n_images, "n_images", allow_none=True)
    if n_images is not None and n_images > total:
        warnings.warn(f"n_images={n_images} but {dataset_name(dataset)!r} has only {total} "
                      f"images: using all {total}", UserWarning, stacklevel=4)
    return total


def draw_order(dataset: Dataset, n_images: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of ``n_images`` images drawn without replacement by ``seed``, in the order drawn
    (None, or more than the dataset holds: every image, in the seeded order).

    The subsets of one seed are nested: the first k of the order, sorted, are
    ``select(dataset, k, seed)`` for every k. The audit draws its images once this way and
    gives a section capped at k images the first k.
    """
    total = _subset_size(dataset, n_images)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order if n_images is None else order[:n_images]


def select(dataset: Dataset, n_images: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of ``n_images`` images drawn without replacement by ``seed``, sorted (None: all):
    the first ``n_images`` of :func:`draw_order`, sorted."""
    total = _subset_size(dataset, n_images)
    if n_images is None or n_images >= total:
        return torch.arange(total)
    return draw_order(dataset, n_images, seed).sort().values
