"""What runs around the training loop of :mod:`trainers.train`: its errors, the SIGINT /
SIGTERM stop requests, the checkpoint schedule, and the DDP process group."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from trainers.config import TrainConfig
from vaeprobe import distributed


class TrainingError(RuntimeError):
    """Training cannot go on (most updates skipped, bad run directory...)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint.

    ``step``: the last completed step; ``checkpoint``: the file saved then (None when no step
    was completed); ``signal_name``; ``out``: the run directory.
    """

    def __init__(self, step: int, checkpoint: Path | None, signal_name: str, out: Path):
        self.step, self.checkpoint, self.signal_name, self.out = step, checkpoint, \
            signal_name, Path(out)
        super().__init__(self.describe())

    def describe(self) -> str:
        saved = (f"checkpoint saved: {self.checkpoint}" if self.checkpoint is not None else
                 "no step was completed, nothing to save")
        return (f"{self.signal_name} at step {self.step}: {saved}\nresume with: python -m "
                f"trainers.train --out {self.out} --resume")


class _StopRequests:
    """SIGINT / SIGTERM handlers that ask the loop to stop at the next step boundary (so the
    checkpoint it saves is consistent); a second Ctrl-C stops at once."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, announce: bool):
        self.signal_name, self.announce, self.previous = None, announce, {}

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.signal_name is not None and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = name
        if self.announce:
            print(f"\ntrainers.train: {name}: saving a checkpoint after this step (Ctrl-C again "
                  f"stops at once, losing the steps since the last checkpoint)", file=sys.stderr)

    def __enter__(self) -> _StopRequests:
        for name in self.SIGNALS:
            number = getattr(signal, name)
            try:
                self.previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def checkpoint_steps(total: int, every: int) -> list[int]:
    """Log-spaced steps from 100 (x sqrt 2), every ``every`` steps, and the last step."""
    steps, s = {total}, 100.0
    while s < total:
        steps.add(int(round(s, -1)))
        s *= math.sqrt(2)
    steps.update(range(every, total, every))
    return sorted(steps)


# ---- distributed ---------------------------------------------------------------------------
def setup_distributed(config: TrainConfig):
    """(rank, world, device): the process group and device of :mod:`vaeprobe.distributed`
    (torchrun sets WORLD_SIZE; gloo on CPU, NCCL on GPUs with ``cuda:LOCAL_RANK``)."""
    device = distributed.resolve_device(config.device)  # a bad name: one line
    rank, world = distributed.init(device)
    if world > 1 and device.type == "cuda":
        device = distributed.default_device()  # cuda:LOCAL_RANK, whatever --device said
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must divide by the number of "
                         f"processes {world}")
    return rank, world, device


def all_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world
    return value
