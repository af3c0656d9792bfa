"""Binarized images for Bernoulli decoders: ``threshold`` (level >= 128 -> 255) or ``dynamic``
(255 with probability grey / 255, seeded per image index).

Most MNIST VAEs are trained with a Bernoulli decoder (binary cross-entropy) on grey levels,
where it is not a likelihood; the standard protocol evaluates them on binarized test images and
says which binarization. A binarized dataset's name records it (``"mnist:test,binarize=dynamic
(seed=0)"``), and so does ``attrs["dataset"]`` of every analysis of it. The same binarization
is asked for by name: ``"NAME,binarize=threshold"`` or ``"NAME,binarize=dynamic"``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from vaeprobe.images import ImageTensorDataset, check_images, dataset_name
from vaeprobe.random import seed_of

MODES = ("threshold", "dynamic")
THRESHOLD = 128  # levels >= 128 become 255
SUFFIX = ",binarize="
DYNAMIC_STREAM = 7  # a stream of its own: independent of the analyses' per-image noise


class BinarizedDataset(Dataset):
    """``base`` with every image binarized to levels {0, 255} (see :func:`binarize`)."""

    def __init__(self, base: Dataset, mode: str, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"binarize must be one of {MODES} ('threshold': level >= "
                             f"{THRESHOLD} -> 255; 'dynamic': 255 with probability grey / 255, "
                             f"seeded per image), got {mode!r}")
        if not isinstance(base, Dataset):  # a uint8 tensor (N, C, H, W)
            base = ImageTensorDataset(check_images(base))
        self.base, self.mode, self.seed = base, mode, int(seed)
        detail = f"(seed={self.seed})" if mode == "dynamic" else f"(at {THRESHOLD})"
        self.binarize = f"{mode} {detail}"
        self.name = f"{dataset_name(self.base)}{SUFFIX}{mode}{detail}"

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.base[index]
        if self.mode == "threshold":
            return (image >= THRESHOLD).to(torch.uint8) * 255
        generator = torch.Generator().manual_seed(seed_of(self.seed, int(index), DYNAMIC_STREAM))
        uniform = torch.rand(image.shape, generator=generator, dtype=torch.float64)
        return (uniform < image.double() / 255.0).to(torch.uint8) * 255


def binarize(data, mode: str = "threshold", *, seed: int = 0) -> BinarizedDataset:
    """Binarize a dataset's images to levels {0, 255}, for Bernoulli likelihoods.

    Parameters
    ----------
    data : Dataset or uint8 tensor
        A Dataset of uint8 (C, H, W) images or a uint8 tensor (N, C, H, W);
        :func:`vaeprobe.data.binarize` also takes dataset names.
    mode : {"threshold", "dynamic"}
        ``"threshold"``: level >= 128 -> 255, else 0 (deterministic). ``"dynamic"``: 255 with
        probability level / 255, drawn from a generator keyed by (seed, image index), so an
        image is binarized the same way in every batch, run and analysis.
    seed : int
        Seeds the dynamic binarization (recorded in the name).

    Examples
    --------
    >>> import torch
    >>> images = torch.tensor([[[[0, 127, 128, 255]]]], dtype=torch.uint8)
    >>> binarize(images, "threshold")[0].tolist()
    [[[0, 0, 255, 255]]]
    >>> binarize(images, "dynamic").name
    'tensor,binarize=dynamic(seed=0)'
    """
    return BinarizedDataset(data, mode, seed)


def split_name(name: str) -> tuple[str, str | None]:
    """``"NAME,binarize=MODE"`` -> ("NAME", "MODE"); a name without the suffix -> (name, None)."""
    if SUFFIX not in name:
        return name, None
    base, _, mode = name.rpartition(SUFFIX)
    return base, mode
