"""A fingerprint of short training runs, to show that a refactor leaves training unchanged.

Trains tiny-8 on digits8 for 60 steps with each objective (elbo, elbo with a learned sigma and
beta 0.5, distortion, two-stage on the distortion run) and prints, per run, a sha256 of its
training log (``images_per_s`` dropped: a timing) and of every checkpoint's weights, EMA
weights and lambda, then its last log row. Run it before and after a change and diff:

    OMP_NUM_THREADS=1 python -m benchmarks.train_fingerprint --out /tmp/fp > before.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from trainers.config import make
from trainers.train import train
from vaeprobe import io

RUNS = {
    "elbo": dict(objective="elbo"),
    "elbo-learned": dict(objective="elbo", likelihood="learned", beta=0.5),
    "distortion": dict(objective="distortion", gamma=2.0),
    "two-stage": dict(objective="two-stage", gamma=1.0),  # on the distortion run
}


def fingerprint(run: Path) -> tuple[str, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s", None)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode())
    for checkpoint in sorted(run.glob("ckpt_step*")):
        payload = io.read_checkpoint(checkpoint)
        for key in ("state_dict", "ema_state_dict"):
            for name, tensor in sorted(payload[key].items()):
                digest.update(name.encode())
                digest.update(tensor.contiguous().numpy().tobytes())
        digest.update(payload["trainer_state"]["lam"].numpy().tobytes())
    return digest.hexdigest()[:16], rows[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a scratch directory (emptied first)")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    common = dict(preset="tiny-8", data="digits8", steps=args.steps, ckpt_every=30,
                  log_every=10, progress=False, seed=0, threads=1)
    for name, extra in RUNS.items():
        if extra["objective"] == "two-stage":
            extra = dict(extra, primary=str(out / "distortion"))
        train(make(**common, **extra, out=str(out / name)))
        digest, last = fingerprint(out / name)
        print(name, digest, json.dumps(last, sort_keys=True))


if __name__ == "__main__":
    main()
