"""Training throughput (images/s) per preset and device, read from the trainer's own log.

    .venv/bin/python -m benchmarks.train_throughput [--presets demo-cpu paper-svhn]
        [--device cpu|cuda] [--amp bf16] [--steps 60]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from trainers.config import make
from trainers.train import train
from vaeprobe.run import Run


def throughput(preset: str, device: str, amp: str, steps: int, batch: int) -> float:
    out = Path(tempfile.mkdtemp()) / preset
    train(make(preset=preset, data="patches32" if preset != "paper-celeba" else "patches64",
               steps=steps, batch_size=batch, log_every=10, ckpt_every=10 ** 9,
               device=device, amp=amp, progress=False, out=str(out),
               channels_last=device.startswith("cuda")))
    rows = Run(out).log_rows()
    steady = [row["images_per_s"] for row in rows[1:]] or [rows[-1]["images_per_s"]]
    return sum(steady) / len(steady)  # the first logging window includes warm-up


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["demo-cpu", "paper-svhn"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    for preset in args.presets:
        rate = throughput(preset, args.device, args.amp, args.steps, args.batch)
        print(f"{preset}: {rate:.1f} images/s training (batch {args.batch}, {args.device}, "
              f"amp {args.amp}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
