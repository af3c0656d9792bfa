"""Does the two-stage secondary improve the likelihood while samples stay the primary's?

Trains (or reuses, or resumes) a secondary on a distortion-targeted primary run, then reports on
the test split, for the primary and the two-stage model: IWAE bits/dim with standard errors (and
the paired difference over the same images), rate, E log p(x|z), distortion, the decoder sigma;
and how far the two-stage model's mean samples move from the primary's x_hat they start from.

    .venv/bin/python -m benchmarks.two_stage_gain --primary runs/demo --out runs/two_stage
"""

import argparse
import json
import math
from pathlib import Path

import torch

import vaeprobe as vp
from trainers.config import make
from trainers.train import train
from vaeprobe.random import image_generators


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--primary", default="runs/demo", help="a distortion-targeted run")
    parser.add_argument("--out", default="runs/two_stage", help="the secondary's run directory")
    parser.add_argument("--gamma", type=float, default=1.0, help="the secondary's target")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--data", default="patches32")
    parser.add_argument("--k", type=int, default=64, help="importance samples")
    parser.add_argument("--n-images", type=int, default=256, help="test images")
    parser.add_argument("--n-samples", type=int, default=64, help="prior samples compared")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def ensure_secondary(args) -> Path:
    values = dict(preset="demo-cpu", objective="two-stage", primary=args.primary,
                  gamma=args.gamma, data=args.data, steps=args.steps, out=args.out,
                  seed=args.seed, progress=False)
    found = vp.checkpoints(args.out) if Path(args.out, "config.json").exists() else []
    if found and found[-1][0] >= args.steps:
        return Path(args.out)
    return train(make(**values, resume=bool(found)))


@torch.no_grad()
def sample_distance(two_stage, n: int, seed: int) -> dict:
    """Prior samples z ~ p(z) -> x_hat -> z' ~ p(z' | x_hat): the secondary's mean decoding
    against the x_hat it refines (per-image sum of squares on [0, 1], like the distortion),
    beside the distance between two different primary samples for scale."""
    generators = image_generators(seed, range(n))
    latents = two_stage.sample_prior(n, generator=generators)
    x_hat, refined = latents.context["x_hat"], two_stage.decode(latents).mean
    change = ((refined - x_hat) ** 2).flatten(1).sum(1).double()
    between = ((x_hat - x_hat.roll(1, 0)) ** 2).flatten(1).sum(1).double()
    return dict(sample_change=float(change.mean()),
                sample_change_se=float(change.std() / math.sqrt(n)),
                sample_change_rms=float((change.mean() / x_hat[0].numel()) ** 0.5),
                between_primary_samples=float(between.mean()))


def summarise(probe, data: str, args) -> dict:
    iwae = vp.iwae(probe, data, k=args.k, n_images=args.n_images, seed=args.seed,
                   progress=False)
    rate = vp.rate(probe, data, n_images=args.n_images, seed=args.seed, progress=False)
    row = {key: float(iwae[key]) for key in ("bpd_mean", "bpd_se", "elbo_bpd_mean",
                                             "log_px_bpd_mean")}
    row.update(rate=float(rate["total_rate"]), distortion=float(rate["distortion"]),
               log_px=float(rate["log_px"]), sigma=probe.source.get("decoder_sigma"))
    if "rate_by_stage" in rate:
        row["rate_by_stage"] = dict(zip(rate["stage_name"].values.tolist(),
                                        rate["rate_by_stage"].values.tolist(), strict=True))
    return row, iwae


def main(argv=None) -> int:
    args = parse_args(argv)
    run = ensure_secondary(args)
    data = f"{args.data}:test"
    primary, two_stage = vp.load(args.primary), vp.load(run)
    rows = {}
    rows["primary"], primary_iwae = summarise(primary, data, args)
    rows["two_stage"], two_stage_iwae = summarise(two_stage, data, args)
    gain = (primary_iwae["bpd"] - two_stage_iwae["bpd"]).values  # same images, same seed
    rows["gain_bpd"] = dict(mean=float(gain.mean()),
                            se=float(gain.std(ddof=1) / math.sqrt(len(gain))))
    rows["samples"] = sample_distance(two_stage, args.n_samples, args.seed)
    rows["setup"] = dict(primary=str(args.primary), secondary=str(run), k=args.k,
                         n_images=args.n_images, gamma=args.gamma, steps=args.steps)
    for name in ("primary", "two_stage"):
        r = rows[name]
        print(f"{name:10s} IWAE {r['bpd_mean']:.4f} +- {r['bpd_se']:.4f} bits/dim "
              f"(ELBO {r['elbo_bpd_mean']:.4f}); rate {r['rate']:.1f} nats; "
              f"E log p(x|z) {r['log_px']:.1f} nats; distortion {r['distortion']:.3f}; "
              f"sigma {r['sigma']:.4f}")
    print(f"gain      {rows['gain_bpd']['mean']:.4f} +- {rows['gain_bpd']['se']:.4f} bits/dim "
          f"(paired over {args.n_images} test images, K={args.k})")
    s = rows["samples"]
    print(f"samples   mean secondary change {s['sample_change']:.3f} +- "
          f"{s['sample_change_se']:.3f} (RMS {s['sample_change_rms']:.4f} per pixel) vs "
          f"{s['between_primary_samples']:.1f} between two primary samples")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
