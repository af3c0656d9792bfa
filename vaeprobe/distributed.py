"""Evaluation across processes under torchrun: which images a rank evaluates, and how the ranks'
results meet.

Every analysis runs unchanged in one process. Under ``torchrun`` (``torch.distributed``
initialised by the caller, or ``WORLD_SIZE`` > 1 in the environment, in which case the first
call here initialises it: gloo on CPU, NCCL on CUDA with device ``cuda:LOCAL_RANK``):

- :func:`shard` gives each rank a **contiguous block** of the seeded evaluation subset (rank 0
  the first block). Contiguous, not strided, so that concatenating or merging in rank order
  (:func:`cat`, :func:`merge`) gives the images in the order one process sees them: per-image
  variables need no re-ordering and order-dependent accumulators (kept previews, the features
  behind KID's random subsets) match one process.
- Per-image randomness is keyed by (seed, dataset index) (:mod:`vaeprobe.random`), so a rank
  draws for its images exactly what one process draws for them.
- :func:`merge` gathers the ranks' accumulators (``update`` / ``merge`` / ``compute``,
  :mod:`vaeprobe.accumulate`) to **every** rank and merges them in rank order; :func:`cat`
  does the same for per-image rows. Every rank therefore returns the same Dataset (no rank
  returns None, so code after an analysis needs no rank checks); only the CLI's rank 0 prints
  and writes files. Sums are merged in float64: equal to one process up to float64 rounding
  (and per-image values up to the float32 rounding of a different batch composition).

Objects travel between ranks with ``all_gather_object``: tensors are moved to the CPU first and
networks (``torch.nn.Module`` attributes, e.g. a feature extractor held by an accumulator) do not
travel (they arrive as None; the receiving rank merges their totals only). With one process
every function here is the identity and nothing is communicated.
"""

from __future__ import annotations

import atexit
import copy
import os

import torch
import torch.distributed as dist

from vaeprobe.accumulate import merge_all


def _requested_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True under torchrun (a process group exists or the environment asks for one)."""
    if not dist.is_available():
        return False
    return dist.is_initialized() or _requested_world() > 1


def default_device() -> torch.device:
    """CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def resolve_device(device=None) -> torch.device:
    """``device`` as a torch.device; None: :func:`default_device` (the one rule every model and
    analysis follows)."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; use cpu, cuda or cuda:N (or no "
                         f"--device: CUDA when available, else the CPU)") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r} asked for, but this machine has "
                             f"{count or 'no'} usable CUDA GPU(s) (torch.cuda.is_available() "
                             f"is {torch.cuda.is_available()}); use device 'cpu' (--device "
                             f"cpu), or no device to take CUDA when there is one")
    return resolved


def init(device=None) -> tuple[int, int]:
    """(rank, world size); initialises the process group when torchrun asked for one.

    The backend follows ``device`` (default :func:`default_device`): NCCL for CUDA, else gloo.
    """
    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _requested_world() <= 1:
        return 0, 1
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        torch.cuda.set_device(default_device())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(shutdown)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Tear down the process group; nothing without one. No barrier: a rank that failed must
    not wait for the others (torchrun then stops them)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without torchrun); does not initialise anything."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0, which alone prints and writes files."""
    return rank() == 0


def shard(indices: torch.Tensor, device=None) -> torch.Tensor:
    """This rank's contiguous block of ``indices`` (all of them in one process).

    Blocks differ in length by at most one; rank 0 gets the first.

    Examples
    --------
    >>> shard(torch.arange(5)).tolist()  # one process
    [0, 1, 2, 3, 4]
    """
    position, world = init(device)
    if world == 1:
        return indices
    return torch.tensor_split(indices, world)[position]


def _portable(value):
    """``value`` with tensors on the CPU and networks dropped, ready to pickle for another rank."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, torch.nn.Module):
        return None
    if isinstance(value, list | tuple):
        return type(value)(_portable(item) for item in value)
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        clone = copy.copy(value)
        clone.__dict__ = {key: _portable(item) for key, item in vars(value).items()}
        return clone
    return value


def gather(value) -> list:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
    _, world = init()
    if world == 1:
        return [value]
    gathered = [None] * world
    dist.all_gather_object(gathered, _portable(value))
    return gathered


def merge(accumulator):
    """The rank-order merge of every rank's accumulator (this one unchanged in one process).

    With several ranks the merged accumulator is a CPU copy; compute on it as usual.
    """
    parts = gather(accumulator)
    return parts[0] if len(parts) == 1 else merge_all(parts)


def cat(rows: torch.Tensor) -> torch.Tensor:
    """Per-image rows of every rank concatenated in rank order (the one-process order).

    Ranks without rows (fewer images than ranks) may give any empty tensor.
    """
    parts = gather(rows)
    if len(parts) == 1:
        return parts[0]
    return torch.cat([part for part in parts if len(part)] or parts[:1])


def total(value: float) -> float:
    """Sum of a number over ranks, in rank order."""
    return sum(gather(value))


def all_true(flag: bool) -> bool:
    """True only if ``flag`` holds on every rank (e.g. a cache entry every rank can read)."""
    return all(gather(bool(flag)))
