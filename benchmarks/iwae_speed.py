"""vp.iwae against the straightforward estimator: K separate full forward passes (as NVAE's
evaluation does), on the same model, images and K. Each method runs in its own process so its
peak memory (RSS) is its own.

    .venv/bin/python -m benchmarks.iwae_speed [--presets demo-cpu paper-svhn] [-k 64]
        [--device cpu|cuda] [--quick]

On a GPU (the issue's comparison: K=1000 draws batched per pass vs K separate passes):
    python -m benchmarks.iwae_speed --device cuda --presets paper-svhn -k 1000 --n-images 64
"""

import argparse
import json
import math
import os
import sys

import torch

from benchmarks._common import in_child, peak_rss_mib, timed


def _setup(preset: str, n_images: int, device: str = "cpu"):
    import vaeprobe as vp
    from vaeprobe.adapters.native import probe_for
    from vaeprobe.models import HVAE
    from vaeprobe.models import preset as model_preset

    torch.manual_seed(0)
    probe = probe_for(HVAE(model_preset(preset)), device)
    data = "digits8:test" if preset == "tiny-8" else "patches32:test"
    images = vp.data.load(data).images[:n_images].to(device)
    return probe, images


@torch.no_grad()
def naive_loop(probe, images, k: int) -> torch.Tensor:
    """K full passes (encoder included), one draw each; L_K per image."""
    log_w = []
    for draw in range(k):
        generator = torch.Generator(device=images.device).manual_seed(1000 + draw)
        latents = probe.encode(images, 1, generator)
        log_px = probe.decode(latents).log_prob(images)
        log_w.append(log_px.double() + latents.log_p().double() - latents.log_q().double())
    log_w = torch.stack(log_w, dim=1).cpu()
    return torch.logsumexp(log_w, 1) - math.log(k)


def shared_flop_fraction(preset: str) -> float:
    """FLOPs of the per-image work vp.iwae shares (bottom-up pass, posterior contexts) over the
    FLOPs of one full pass. Amdahl: sharing alone is at most 1 / (1 - fraction) faster."""
    from torch.utils.flop_counter import FlopCounterMode

    probe, images = _setup(preset, 1)
    model = probe.model
    with FlopCounterMode(display=False) as shared:  # grad mode on: the counter needs it
        contexts = model.posterior_contexts(model.bottom_up(images))
    with FlopCounterMode(display=False) as per_draw:
        h, _ = model.top_down(contexts=contexts)
        model.likelihood(h).log_prob(images)
    shared, per_draw = shared.get_total_flops(), per_draw.get_total_flops()
    return shared / (shared + per_draw)


def _synchronized(function, device: str):
    def run():
        result = function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return result
    return run


def child(method: str, preset: str, k: int, n_images: int, chunk: int, device: str) -> None:
    import vaeprobe as vp

    torch.set_num_threads(torch.get_num_threads())
    probe, images = _setup(preset, n_images, device)
    repeats = 2 if preset.startswith("paper") else 5  # the machine is noisy; best of repeats
    if method == "vaeprobe":
        seconds, ds = timed(_synchronized(lambda: vp.iwae(
            probe, images.cpu(), k=k, chunk=chunk or None, batch_size=n_images,
            progress=False), device), repeats)
        values = ds["log_likelihood"].values
    else:
        seconds, values = timed(_synchronized(lambda: naive_loop(probe, images, k).numpy(),
                                              device), repeats)
    peak_gpu = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else 0
    print(json.dumps(dict(method=method, seconds=seconds, mean=float(values.mean()),
                          se=float(values.std(ddof=1) / math.sqrt(len(values))),
                          peak_rss_mib=peak_rss_mib(), peak_gpu_mib=peak_gpu)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["demo-cpu", "paper-svhn"])
    parser.add_argument("-k", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=0, help="0: vp.iwae's default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny-8, K=8")
    parser.add_argument("--child", nargs=6, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, preset, k, n_images, chunk, device = args.child
        child(method, preset, int(k), int(n_images), int(chunk), device)
        return 0
    if args.quick:
        args.presets, args.k, args.n_images = ["tiny-8"], 8, 6
    print(f"K={args.k}, {args.n_images} test images, chunk {args.chunk or 'default'}, device "
          f"{args.device}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for preset in args.presets:
        results = {m: in_child("benchmarks.iwae_speed", "--child", m, preset, str(args.k),
                               str(args.n_images), str(args.chunk), args.device)
                   for m in ("vaeprobe", "naive")}
        ours, naive = results["vaeprobe"], results["naive"]
        gap = abs(ours["mean"] - naive["mean"]) / math.hypot(ours["se"], naive["se"])
        fraction = shared_flop_fraction(preset)
        print(f"{preset:>11}: vp.iwae {ours['seconds']:.2f} s (peak {ours['peak_rss_mib']:.0f}"
              f" MiB, GPU {ours['peak_gpu_mib']:.0f} MiB) | K passes {naive['seconds']:.2f} s"
              f" (peak {naive['peak_rss_mib']:.0f} MiB, GPU {naive['peak_gpu_mib']:.0f} MiB) | "
              f"speed-up "
              f"{naive['seconds'] / ours['seconds']:.2f}x | L_K {ours['mean']:.2f} vs "
              f"{naive['mean']:.2f} nats ({gap:.2f} combined se) | shared work "
              f"{100 * fraction:.1f}% of a pass's FLOPs: sharing alone is at most "
              f"{1 / (1 - fraction):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
