"""What one training step costs the host: torch ops, host reads of tensor values, random ops.

A CPU proxy of GPU speed that CI can keep: a step that launches few ops and never reads a tensor
value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``nonzero``...) keeps
a GPU busy; every host read stalls it until the queue drains. Counted with a
``TorchDispatchMode`` (every aten op, the reads that dispatch: ``_local_scalar_dense`` behind
``item`` / ``float`` / ``bool``, data-dependent shapes) and a ``TorchFunctionMode`` (reads that
do not dispatch: ``tolist``, ``numpy``).

    OMP_NUM_THREADS=1 python -m benchmarks.step_cost [--preset tiny-8] [--data digits8]
        [--batch 8 16] [--objective distortion]

prints, per batch size, the ops, host reads and random ops of one non-logging training step
(and which ops read the host, when any do).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result the host must wait for (a value, or a data-dependent shape)
HOST_READ_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique",
                 "_unique2", "unique_consecutive", "unique_dim", "equal", "allclose",
                 "repeat_interleave", "_assert_async.msg")
# tensor methods that read values on the host without dispatching an aten op
HOST_READ_METHODS = ("tolist", "numpy", "__array__")
RANDOM_WORDS = ("rand", "normal", "uniform", "bernoulli", "multinomial", "exponential",
                "random_", "poisson", "cauchy", "geometric", "log_normal")


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        if func.overloadpacket.__name__ == "_to_copy":  # a device-to-host copy waits too
            source, device = args[0], (kwargs or {}).get("device")
            if device is not None and torch.device(device).type == "cpu" and \
                    source.device.type != "cpu":
                self.ops["_to_copy(device->host)"] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.reads = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READ_METHODS:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


class Cost(dict):
    """``ops`` (all aten ops), ``host_reads``, ``random_ops``, and their names (``reads``,
    ``random``: Counters)."""


def count(function, *args, **kwargs) -> Cost:
    """Run ``function(*args, **kwargs)`` and count its torch ops, host reads and random ops."""
    ops, methods = _Ops(), _Methods()
    with methods, ops:
        function(*args, **kwargs)
    reads = collections.Counter({name: n for name, n in ops.ops.items()
                                 if name in HOST_READ_OPS or name.endswith("device->host)")})
    reads.update(methods.reads)
    random = collections.Counter({name: n for name, n in ops.ops.items()
                                  if any(word in name for word in RANDOM_WORDS)})
    return Cost(ops=sum(ops.ops.values()), host_reads=sum(reads.values()),
                random_ops=sum(random.values()), reads=reads, random=random, all=ops.ops)


def trainer_for(batch: int, out: Path, **overrides):
    """A tiny-8 trainer on digits8 (or ``overrides``) with global batch ``batch``."""
    from trainers.config import make
    from trainers.train import Trainer

    values = dict(preset="tiny-8", data="digits8", steps=1000, batch_size=batch,
                  log_every=100, ckpt_every=1000, progress=False, out=str(out), threads=1)
    values.update(overrides)
    return Trainer(make(**values))


def step_cost(batch: int, warmup: int = 3, **overrides) -> Cost:
    """The cost of step ``warmup + 1`` of a fresh trainer (not a logging or checkpoint step,
    not the first of an epoch)."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = trainer_for(batch, Path(scratch) / "run", **overrides)
        for _ in range(warmup):
            trainer.advance()
        return count(trainer.advance)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--preset", default="tiny-8")
    parser.add_argument("--data", default="digits8")
    parser.add_argument("--objective", default="distortion")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| batch | ops per step | host reads per step | random ops per step |")
    print("|---|---|---|---|")
    costs = {}
    for batch in args.batch:
        cost = step_cost(batch, preset=args.preset, data=args.data, objective=args.objective)
        costs[batch] = cost
        print(f"| {batch} | {cost['ops']} | {cost['host_reads']} | {cost['random_ops']} |")
    for batch, cost in costs.items():
        if cost["reads"]:
            print(f"batch {batch}: host reads {dict(cost['reads'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
