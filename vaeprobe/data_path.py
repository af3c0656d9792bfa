"""How a dataset feeds a model: index batches become uint8 image batches, sliced
from a tensor dataset or read ahead by loader processes (``benchmarks/data_path.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from vaeprobe.images import ImageTensorDataset


def gather(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) of ``dataset`` at ``indices`` (a slice for tensor datasets)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.images[indices]
    return torch.stack([dataset[int(i)] for i in indices])


def default_workers(dataset: Dataset, n_images: int) -> int:
    """Loader processes for ``n_images`` of ``dataset``: none for a tensor (a slice is faster
    than any worker) or a few images (a worker costs ~0.1-1 s to start); else up to 8, leaving
    one core to the model (benchmarks/data_path.py)."""
    if isinstance(dataset, ImageTensorDataset) or n_images < 2048:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _Indexed(Dataset):
    """(index, image) items, so that a loader's batches say which images they hold."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return index, self.base[index]


def _collate(items):
    indices, images = zip(*items, strict=True)
    return torch.tensor(indices), torch.stack(images)


def load_batches(dataset: Dataset, index_batches, *, workers: int | None = None,
                 device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (indices, uint8 images) for each batch of indices in ``index_batches``, in order.

    A tensor dataset is indexed directly. Any other dataset (decoded per item: image files,
    torchvision's PIL sets) is read by a ``DataLoader`` with ``workers`` processes (default
    :func:`default_workers`) that prefetch the following batches while the model works, with
    pinned memory when ``device`` is CUDA. The order is the order of ``index_batches`` whatever
    the workers, so training resumes and evaluations stay exact. ``index_batches`` may be a lazy
    iterable (e.g. one batch per remaining training step); give ``workers`` then.
    """
    if isinstance(dataset, ImageTensorDataset):
        for indices in index_batches:
            yield indices, dataset.images[indices]
        return
    if workers is None:
        workers = default_workers(dataset, sum(len(batch) for batch in index_batches))
    pin = device is not None and torch.device(device).type == "cuda"
    if workers == 0 and not pin:
        for indices in index_batches:
            yield indices, gather(dataset, indices)
        return
    from torch.utils.data import DataLoader

    sampler = _BatchList(index_batches)
    loader = DataLoader(_Indexed(dataset), batch_sampler=sampler, num_workers=workers,
                        collate_fn=_collate, pin_memory=pin,
                        prefetch_factor=4 if workers else None)
    yield from loader


class _BatchList:
    """Index batches as a DataLoader ``batch_sampler`` (lists of ints, lazily)."""

    def __init__(self, index_batches):
        self.index_batches = index_batches

    def __iter__(self):
        return ([int(i) for i in batch] for batch in self.index_batches)


def iterate_batches(dataset: Dataset, batch_size: int, indices: torch.Tensor | None = None,
                    *, workers: int | None = None, device=None) -> Iterator[torch.Tensor]:
    """Yield uint8 ``(B, C, H, W)`` batches of ``dataset`` (at ``indices``, in order).

    Tensor datasets are sliced; others are read ahead by loader processes (see
    :func:`load_batches`: ``workers``, pinned memory when ``device`` is CUDA).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if indices is None:
        indices = torch.arange(len(dataset))
    chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    for _, images in load_batches(dataset, chunks, workers=workers, device=device):
        yield images
