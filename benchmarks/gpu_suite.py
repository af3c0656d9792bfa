"""The GPU suite: the trainer's step against the bare model, per precision mode and batch, and the
evaluation's GPU rows, side by side in one command.

    python -m benchmarks.gpu_suite [--json gpu_suite.json]      # on a GPU (make bench-gpu)
    python -m benchmarks.gpu_suite --quick                      # a CPU smoke run (tiny-8)

Training rows (paper-svhn on patches32 by default; batch 128 and 512; fp32, bf16,
bf16+channels_last, bf16+compile): per row, in its own process with its own timeout,
- ``bare``: the model's forward (posterior pass, float32 loss terms) and backward alone, the
  same precision mode, compilation and batch; images/s;
- ``trainer``: the trainer's step (:meth:`trainers.train.Trainer.advance`: batch from the
  resident data, the step's noise, forward, loss, backward, clip, the device-side skip, Adam,
  EMA, lambda, counters); images/s, and its time over the bare model's (``ratio``);
- achieved TFLOP/s (FLOPs per image of forward + backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode``, times images/s); the warm-up time of a
  compiled row (``compile_s``: first steps minus steady steps); and the hours 350,000
  iterations (the paper's Figure 10) take at that batch and speed.
Evaluation rows (eval's benchmarks, run as given on the team's board): the SD-size audit at 512
px on 64 images against its floor, IWAE K=1000 on paper-svhn (64 images), the spectrum of 50,000
images. Each prints its last JSON line (or text) into the table.

A markdown table goes to stdout, every row's numbers to ``--json``. Rows that fail or pass their
timeout say so and the suite goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import ROOT

MODES = {  # name -> trainer settings
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "bf16+channels_last": {"amp": "bf16", "channels_last": True},
    "bf16+compile": {"amp": "bf16", "compile": True},
}
PAPER_ITERATIONS = 350_000
EVAL_ROWS = {  # name -> command (eval's benchmarks; flags from the board, 20:28)
    "audit SD-size 512 px, 64 images": ["benchmarks.audit_speed", "--sd", "--device", "cuda",
                                        "--size", "512", "--n-images", "64"],
    "IWAE K=1000 paper-svhn, 64 images": ["benchmarks.iwae_speed", "--device", "cuda",
                                          "--presets", "paper-svhn", "-k", "1000",
                                          "--n-images", "64"],
    "spectrum 50,000 images": ["benchmarks.spectrum_speed", "--device", "cuda", "--n", "50000"],
}
QUICK_EVAL_ROWS = {
    "IWAE --quick": ["benchmarks.iwae_speed", "--quick", "--device", "cpu"],
    "spectrum --quick": ["benchmarks.spectrum_speed", "--quick", "--device", "cpu"],
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the ``warmup`` first calls, seconds per call after them)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _synchronize(device)
    warm = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return warm - start, (time.perf_counter() - warm) / steps


def bare_step(trainer):
    """The model's forward and backward on the trainer's first batch and noise, nothing else
    (the same modules, precision, memory format and compiled regions as the trainer's)."""
    x = trainer.fetch(trainer.batch_indices(0))
    noise, uniform = trainer.noise.draw(trainer.config.seed, 0)

    def step():
        trainer.model.zero_grad(set_to_none=True)
        with trainer.autocast():
            terms = trainer.model(x, noise=noise, generator=uniform)
        ((terms.rate - terms.log_px).mean() / trainer.dims).backward()
    return step


def measure_row(preset: str, data: str, mode: str, batch: int, steps: int, device: str) -> dict:
    """One training row, in this process: bare and trainer images/s, their ratio, warm-up."""
    from benchmarks.step_cost import trainer_for

    with tempfile.TemporaryDirectory() as scratch:
        trainer = trainer_for(batch, Path(scratch) / "run", preset=preset, data=data,
                              device=device, steps=10 ** 6, **MODES[mode])
        trainer.model.train()
        warmup = 3
        trainer_warm, trainer_s = _time(trainer.advance, steps, warmup, trainer.device)
        trainer.sync(None)  # the step ran clean: no skip, finite weights
        bare_warm, bare_s = _time(bare_step(trainer), steps, warmup, trainer.device)
    return dict(bare_images_s=batch / bare_s, trainer_images_s=batch / trainer_s,
                ratio=trainer_s / bare_s,
                compile_s=max(0.0, trainer_warm - warmup * trainer_s)
                if "compile" in mode else None,
                peak_gpu_gib=torch.cuda.max_memory_allocated() / 2 ** 30
                if trainer.device.type == "cuda" else None)


def flops_per_image(preset: str, device: str) -> float:
    """Forward + backward FLOPs per image of the preset's model and its loss terms."""
    from torch.utils.flop_counter import FlopCounterMode

    from vaeprobe.models import HVAE
    from vaeprobe.models import preset as model_preset

    torch.manual_seed(0)
    model = HVAE(model_preset(preset)).to(device)
    x = torch.randint(0, 256, (2, *model.image_shape), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter:
        terms = model(x)
        (terms.rate - terms.log_px).sum().backward()
    return counter.get_total_flops() / 2


def _child(arguments: list[str], timeout: float) -> dict:
    """``python -m arguments...`` with a timeout: its last stdout line as JSON (or as text)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", *arguments], cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status=f"timed out after {timeout:.0f} s")
    lines = done.stdout.strip().splitlines()
    result = dict(status="ok" if done.returncode == 0 else f"exit {done.returncode}",
                  wall_s=time.perf_counter() - start)
    if done.returncode:
        result["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    if lines:
        try:
            result.update(json.loads(lines[-1]))
        except ValueError:
            result["output"] = lines[-1][:300]
    return result


def training_rows(args, flops: float) -> list[dict]:
    rows = []
    for batch in args.batches:
        for mode in args.modes:
            timeout = args.row_timeout * (2 if "compile" in mode else 1)
            result = _child(["benchmarks.gpu_suite", "--row", mode, str(batch),
                             "--preset", args.preset, "--data", args.data, "--steps",
                             str(args.steps), "--device", args.device], timeout)
            row = dict(kind="train", preset=args.preset, mode=mode, batch=batch, **result)
            if "trainer_images_s" in row:
                row["trainer_tflops"] = row["trainer_images_s"] * flops / 1e12
                row["bare_tflops"] = row["bare_images_s"] * flops / 1e12
                row["hours_350k"] = PAPER_ITERATIONS * batch / row["trainer_images_s"] / 3600
            rows.append(row)
            print(_train_line(row), flush=True)
    return rows


def _number(value, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        f"{value:,.{digits}f}"


def _train_line(row: dict) -> str:
    if "trainer_images_s" not in row:
        return f"| {row['mode']} | {row['batch']} | {row['status']} {row.get('error', '')} |" \
               + " |" * 7
    return (f"| {row['mode']} | {row['batch']} | {_number(row['bare_images_s'])} | "
            f"{_number(row['trainer_images_s'])} | {_number(row['ratio'], 2)} | "
            f"{_number(row['bare_tflops'], 2)} | {_number(row['trainer_tflops'], 2)} | "
            f"{_number(row['compile_s'])} | {_number(row['hours_350k'], 2)} |")


def eval_rows(args) -> list[dict]:
    rows = []
    table = QUICK_EVAL_ROWS if args.quick else EVAL_ROWS
    for name, command in table.items():
        result = _child(command, args.row_timeout)
        rows.append(dict(kind="eval", name=name, command="python -m " + " ".join(command),
                         **result))
        shown = {k: v for k, v in result.items() if k not in ("status", "wall_s")}
        print(f"| {name} | {result['status']} | {_number(result.get('wall_s'))} | "
              f"{json.dumps(shown)[:240]} |", flush=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="paper-svhn")
    parser.add_argument("--data", default="patches32")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--row-timeout", type=float, default=120.0,
                        help="seconds per row (twice that for a compiled row)")
    parser.add_argument("--json", default="gpu_suite.json", help="every row's numbers")
    parser.add_argument("--no-eval", action="store_true", help="training rows only")
    parser.add_argument("--quick", action="store_true",
                        help="a CPU smoke run: tiny-8 on digits8, batch 8 and 16, fp32 and bf16")
    parser.add_argument("--row", nargs=2, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.row:  # a child: one training row, one JSON line
        torch.set_num_threads(torch.get_num_threads())
        mode, batch = args.row
        print(json.dumps(measure_row(args.preset, args.data, mode, int(batch), args.steps,
                                     args.device)))
        return 0
    if args.quick:
        args.device, args.preset, args.data, args.batches = "cpu", "tiny-8", "digits8", [8, 16]
        args.modes, args.steps = ["fp32", "bf16"], 5
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    flops = flops_per_image(args.preset, args.device)
    print(f"device {args.device} ({name}); {args.preset} on {args.data}: "
          f"{flops / 1e9:.2f} GFLOP per image forward+backward; {args.steps} timed steps per "
          f"row after 3 warm-up steps; torch {torch.__version__}\n")
    print("| mode | batch | bare images/s | trainer images/s | trainer/bare time | "
          "bare TFLOP/s | trainer TFLOP/s | compile s | h per 350k its |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = training_rows(args, flops)
    if not args.no_eval:
        print("\n| evaluation row | status | wall s | its numbers |\n|---|---|---|---|")
        rows += eval_rows(args)
    Path(args.json).write_text(json.dumps(dict(device=args.device, device_name=name,
                                               preset=args.preset, flops_per_image=flops,
                                               rows=rows), indent=1))
    print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
