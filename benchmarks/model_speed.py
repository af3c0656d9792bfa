"""Parameter counts of every preset, and forward+backward images/s of the ELBO on this machine.

    .venv/bin/python -m benchmarks.model_speed [--presets demo-cpu paper-svhn] [--device cpu]
"""

import argparse
import sys
import time

import torch

from vaeprobe.models import HVAE, PRESETS


def images_per_second(name: str, batch: int, device: str, seconds: float = 10.0) -> float:
    torch.manual_seed(0)
    model = HVAE(PRESETS[name]).to(device)
    c, s = model.image_shape[0], model.image_shape[1]
    x = torch.randint(0, 256, (batch, c, s, s), dtype=torch.uint8, device=device)

    def step():
        likelihood, draws = model.posterior_pass(x)
        loss = sum(d.kl.sum() for d in draws) - likelihood.log_prob(x, "dequantized").sum()
        loss.backward()

    step()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["demo-cpu", "paper-svhn"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    print("parameters: " + ", ".join(
        f"{name} {sum(p.numel() for p in HVAE(config).parameters()) / 1e6:.3f}M"
        for name, config in PRESETS.items()))
    for name in args.presets:
        rate = images_per_second(name, args.batch, args.device)
        print(f"{name}: forward+backward {rate:.1f} images/s (batch {args.batch}, "
              f"{args.device}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
