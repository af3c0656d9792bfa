"""Real bits against the ELBO: bits-back ANS coding of a chain of test images with each model.

For every run given: the coded bits/dim (the ANS stack's growth) beside the -ELBO bits/dim at the
same latent discretization, the chain's overhead, the initial bits, encode and decode images/s on
one CPU thread, and the round trip; and, when a two-stage run and its primary are both given,
whether the coder orders them as their -ELBO does (the two-stage claim: its coded length below
its primary's, as its IWAE is).

    .venv/bin/python -m benchmarks.compress_chain runs/demo runs/demo-stage2 \\
        --data patches32:test --n-images 100
    .venv/bin/python -m benchmarks.compress_chain --quick   # the test fixture, 20 digits
"""

import argparse
import json
from pathlib import Path

import vaeprobe as vp

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny8_trained"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories or checkpoints")
    parser.add_argument("--data", default="digits8:test")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--latent-bits", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the tests' trained tiny-8 "
                        "fixture on 20 digits")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = [str(FIXTURE)] if args.quick else args.runs
    n_images = 20 if args.quick else args.n_images
    rows = {}
    for run in runs:
        ds = vp.compress(run, args.data, n_images=n_images, latent_bits=args.latent_bits,
                         progress=False)
        rows[run] = {name: float(ds[name]) for name in (
            "coded_bpd", "coded_bpd_se", "elbo_bpd", "elbo_bpd_se", "overhead_fraction",
            "coder_overhead_fraction", "initial_bits", "encode_images_per_second",
            "decode_images_per_second")}
        rows[run]["round_trip"] = int(ds.attrs["round_trip"])
        rows[run]["objective"] = vp.Run(Path(ds.attrs["checkpoint"]).parent).objective
        print(f"{run}: coded {rows[run]['coded_bpd']:.4f} ± {rows[run]['coded_bpd_se']:.4f} "
              f"bits/dim vs -ELBO {rows[run]['elbo_bpd']:.4f} ± {rows[run]['elbo_bpd_se']:.4f} "
              f"(overhead {100 * rows[run]['overhead_fraction']:+.2f}%, initial bits "
              f"{int(rows[run]['initial_bits'])}); encode "
              f"{rows[run]['encode_images_per_second']:.1f} / decode "
              f"{rows[run]['decode_images_per_second']:.1f} images/s; round trip "
              f"{rows[run]['round_trip']}")
    stages = [run for run in runs if rows[run]["objective"] == "two-stage"]
    for run in stages:
        config = vp.Run(run).config or {}
        primary = next((p for p in runs if Path(p).resolve() == Path(config.get("primary", "")
                                                                   ).resolve()), None)
        if primary is None:
            continue
        coded = rows[run]["coded_bpd"] - rows[primary]["coded_bpd"]
        elbo = rows[run]["elbo_bpd"] - rows[primary]["elbo_bpd"]
        print(f"two-stage {run} - primary {primary}: coded {coded:+.4f}, -ELBO {elbo:+.4f} "
              f"bits/dim: the coder {'agrees' if coded * elbo > 0 else 'DISAGREES'}; the "
              f"two-stage model codes {'below' if coded < 0 else 'ABOVE'} its primary")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
