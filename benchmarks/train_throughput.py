"""Training throughput (images/s, read from the trainer's own log) and achieved TFLOP/s, per
preset and mode: fp32, bf16 autocast, channels_last, torch.compile, and all three together.

FLOPs per image are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward
and backward pass of the preset's model (matrix multiplies and convolutions, as the counter
counts them); achieved TFLOP/s = FLOPs per image x images/s.

    .venv/bin/python -m benchmarks.train_throughput [--presets demo-cpu paper-svhn]
        [--device cpu|cuda] [--modes fp32 bf16 channels_last compile all] [--steps 60]
        [--batch 32] [--quick]

On a GPU (the issue's table):
    python -m benchmarks.train_throughput --device cuda --presets paper-svhn --batch 128 \\
        --steps 300
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from trainers.config import make
from trainers.train import train
from vaeprobe.run import Run

MODES = {  # name -> trainer settings
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "all": {"amp": "bf16", "channels_last": True, "compile": True},
}


def data_for(preset: str) -> str:
    return {"paper-celeba": "patches64", "tiny-8": "digits8"}.get(preset, "patches32")


def throughput(preset: str, device: str, mode: str, steps: int, batch: int) -> float:
    """Steady images/s of ``steps`` training steps (the first logging window is warm-up)."""
    out = Path(tempfile.mkdtemp()) / preset
    log_every = max(1, steps // 6)
    train(make(preset=preset, data=data_for(preset), steps=steps, batch_size=batch,
               log_every=log_every, ckpt_every=10 ** 9, device=device, progress=False,
               out=str(out), **MODES[mode]))
    rows = Run(out).log_rows()
    steady = [row["images_per_s"] for row in rows[1:]] or [rows[-1]["images_per_s"]]
    return sum(steady) / len(steady)


def flops_per_image(preset: str, batch: int = 4) -> float:
    """Forward + backward FLOPs of one image through the preset's model and its ELBO."""
    from torch.utils.flop_counter import FlopCounterMode

    from vaeprobe.models import HVAE
    from vaeprobe.models import preset as model_preset

    torch.manual_seed(0)
    model = HVAE(model_preset(preset))
    x = torch.randint(0, 256, (batch, *model.image_shape), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        likelihood, draws = model.posterior_pass(x)
        loss = sum(d.kl.sum() for d in draws) - likelihood.log_prob(x, "dequantized").sum()
        loss.backward()
    return counter.get_total_flops() / batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["demo-cpu", "paper-svhn"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: tiny-8 on digits8, 12 steps of batch 8")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.steps, args.batch = ["tiny-8"], 12, 8
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("| preset | mode | images/s | GFLOP per image (fwd+bwd) | achieved TFLOP/s |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        flops = flops_per_image(preset)
        for mode in args.modes:
            rate = throughput(preset, args.device, mode, args.steps, args.batch)
            print(f"| {preset} | {mode} | {rate:.1f} | {flops / 1e9:.3f} | "
                  f"{rate * flops / 1e12:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
