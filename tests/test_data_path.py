"""The data path: in-memory torchvision sets as tensors, loader processes, resident training
data; every path gives the images and the order of the plain per-item one."""

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from vaeprobe import data as vdata
from vaeprobe import data_sources


def fake_torchvision(cls, data):
    """A torchvision dataset object holding ``data`` (no files): its own __getitem__ decodes."""
    base = cls.__new__(cls)
    base.data, base.transform, base.target_transform = data, None, None
    base.targets = base.labels = [0] * len(data)
    return base


@pytest.mark.parametrize("cls, shape, grey", [
    (tvd.SVHN, (5, 3, 32, 32), False), (tvd.CIFAR10, (5, 32, 32, 3), False),
    (tvd.MNIST, (5, 28, 28), True)])
def test_in_memory_sets_equal_their_pil_items(cls, shape, grey):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    base = fake_torchvision(cls, torch.from_numpy(pixels) if cls is tvd.MNIST else pixels)
    fast = vdata.in_memory(base, "fake")
    per_item = data_sources.TorchvisionUint8(base, "fake", grey=grey)
    expected = torch.stack([per_item[i] for i in range(len(per_item))])
    assert fast.images.dtype == torch.uint8 and fast.images.is_contiguous()
    torch.testing.assert_close(fast.images, expected, rtol=0, atol=0)


class PerItem(torch.utils.data.Dataset):
    """Images served one at a time (as decoded files would be)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index].clone()


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_keeps_the_order_of_the_index_batches(workers):
    images = vdata.load("digits8", split="test").images
    batches = [torch.tensor([5, 3, 9]), torch.tensor([0]), torch.tensor([296, 1, 2, 4])]
    got = list(vdata.load_batches(PerItem(images), iter(batches), workers=workers))
    for (indices, x), expected in zip(got, batches, strict=True):
        torch.testing.assert_close(indices, expected)
        torch.testing.assert_close(x, images[expected], rtol=0, atol=0)
    loaded = list(vdata.iterate_batches(PerItem(images), 64, torch.arange(100, 297),
                                        workers=workers))
    torch.testing.assert_close(torch.cat(loaded), images[100:], rtol=0, atol=0)


def test_folder_decodes_in_loader_processes_like_one_process(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    files = vdata.ImageFiles(sorted(tmp_path.glob("*.png")), size=8)
    serial = vdata.materialize(files, workers=0)
    parallel = vdata.materialize(files, workers=2, batch_size=4)
    torch.testing.assert_close(parallel.images, serial.images, rtol=0, atol=0)
    torch.testing.assert_close(vdata.load(f"folder:{tmp_path}", size=8).images, serial.images,
                               rtol=0, atol=0)
    assert tuple(serial.images.shape) == (6, 3, 8, 8)


def test_trainer_reads_resident_and_loaded_data_in_the_same_order(tmp_path):
    from trainers.config import make
    from trainers.train import Trainer

    trainer = Trainer(make(preset="tiny-8", data="digits8", steps=7, batch_size=16,
                           progress=False, out=str(tmp_path / "run"), workers=1))
    assert trainer.images is not None and trainer.images.device == trainer.device
    resident = list(trainer.batches(3))  # a resume at step 3
    trainer.images, trainer.dataset = None, PerItem(trainer.dataset.images)
    loaded = list(trainer.batches(3))
    assert len(resident) == len(loaded) == 4
    for (i, x), (j, y), step in zip(resident, loaded, range(3, 7), strict=True):
        torch.testing.assert_close(i, trainer.batch_indices(step))
        torch.testing.assert_close(j, i)
        torch.testing.assert_close(y, x, rtol=0, atol=0)
