"""Images/s of the data path alone against the model's training step.

Datasets made in a temporary directory: an npz and a folder of PNGs of N 32x32 RGB images (the
embedded patches32, tiled to N), and a CIFAR-10-shaped torchvision object. Each path reads
batches of 64 in a shuffled order, as training does:

- resident tensor: ``images[indices]`` on the device (npz, folders, SVHN/CIFAR/MNIST, patches);
- per-item decoding (PNG files, torchvision PIL items): in this process, or read ahead by
  DataLoader worker processes (``vaeprobe.data.load_batches``);
- loading once: ``folder:`` decoded serially or by loader processes; the npz; torchvision
  in-memory sets as one tensor (``vaeprobe.data.in_memory``) vs a PIL round trip per item.

    .venv/bin/python -m benchmarks.data_path [--n 20000] [--device cpu|cuda] [--quick]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd

from benchmarks._common import timed
from vaeprobe import data as vdata

BATCH = 64


def make_files(directory: Path, n: int) -> tuple[Path, Path, np.ndarray]:
    from PIL import Image

    patches = vdata.load("patches32").images.numpy()
    images = np.concatenate([patches] * (n // len(patches) + 1))[:n]
    npz = directory / "images.npz"
    np.savez(npz, images=images)
    folder = directory / "folder"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:06d}.png", compress_level=1)
    return npz, folder, images


def rate_of(batches, n_batches: int, device) -> float:
    """Images/s reading ``n_batches`` batches from the iterator (after one warm-up batch)."""
    iterator = iter(batches)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _, (_, x) in zip(range(n_batches), iterator, strict=False):
        x = x.to(device, non_blocking=True)
        count += len(x)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def shuffled(n: int, n_batches: int, seed: int = 0):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[i * BATCH:(i + 1) * BATCH] for i in range(n_batches + 1)]


def model_step(preset: str, device: str, seconds: float) -> float:
    from benchmarks.model_speed import images_per_second

    return images_per_second(preset, 32, device, seconds=seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000, help="images in the made datasets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, default=100, help="batches timed per path")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.workers = 2000, 20, [1]
    device, rows = args.device, []
    pin = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        npz, folder, images = make_files(Path(tmp), args.n)
        files = vdata.ImageFiles(sorted(folder.glob("*.png")), size=32, name="png files")
        cifar = tvd.CIFAR10.__new__(tvd.CIFAR10)
        cifar.data, cifar.targets = images.transpose(0, 2, 3, 1).copy(), [0] * len(images)
        cifar.transform = cifar.target_transform = None
        per_item_cifar = vdata.TorchvisionUint8(cifar, "cifar10-shaped")

        # reading shuffled batches, as a training step does
        resident = vdata.load(f"npz:{npz}").images.to(device)
        order = shuffled(args.n, args.batches)
        rows.append(("batches: resident uint8 tensor, images[indices] on " + device,
                     rate_of(((i, resident[i.to(device)]) for i in order), args.batches,
                             device)))
        patches = vdata.load("patches32").images.to(device)
        order_p = shuffled(len(patches), args.batches)
        rows.append((f"batches: embedded patches32 ({len(patches)}) resident",
                     rate_of(((i, patches[i.to(device)]) for i in order_p), args.batches,
                             device)))
        for name, dataset in (("PNG files", files), ("torchvision PIL items", per_item_cifar)):
            n_batches = min(args.batches, 30 if name == "PNG files" else args.batches)
            for workers in [0, *args.workers]:
                loader = vdata.load_batches(dataset, order[:n_batches + 1], workers=workers,
                                            device=device if pin else None)
                label = "in this process" if workers == 0 else f"{workers} loader process" + \
                    ("es" if workers > 1 else "")
                rows.append((f"batches: {name} decoded per item, {label}",
                             rate_of(loader, n_batches, device)))

        # loading a whole dataset once
        seconds, _ = timed(lambda: vdata.load(f"npz:{npz}"))
        rows.append(("load once: npz", args.n / seconds))
        for workers in [0, *args.workers]:
            seconds, _ = timed(lambda w=workers: vdata.materialize(files, workers=w))
            rows.append((f"load once: folder of PNGs, {workers} loader processes",
                         args.n / seconds))
        seconds, _ = timed(lambda: vdata.in_memory(cifar, "cifar10-shaped"))
        rows.append(("load once: torchvision in-memory set as one tensor", args.n / seconds))
        subset = range(min(args.n, 2000))
        seconds, _ = timed(lambda: [per_item_cifar[i] for i in subset])
        rows.append(("load once: torchvision set, PIL round trip per item",
                     len(subset) / seconds))

    steps = {preset: model_step(preset, device, 2.0 if args.quick else 10.0)
             for preset in ("demo-cpu", "paper-svhn")}
    print(f"{args.n} 3x32x32 images, batches of {BATCH}, device {device}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("model step (forward+backward, batch 32): "
          + ", ".join(f"{p} {r:.2f} images/s" for p, r in steps.items()))
    print(f"| {'data path':<68} | images/s | x paper-svhn step |")
    print(f"|{'-' * 70}|----------|-------------------|")
    for name, rate in rows:
        print(f"| {name:<68} | {rate:>8.0f} | {rate / steps['paper-svhn']:>17.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
