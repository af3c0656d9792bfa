"""Rows per pass (images x draws) from measured memory per row and the memory a pass may use.

A pass over ``rows`` rows (e.g. ``batch_size`` images x ``chunk`` importance draws in
:func:`vaeprobe.iwae`) needs about ``rows * bytes_per_row`` bytes of activations. The bytes
per row are measured on a small first pass (:func:`measure_bytes_per_row`): on CUDA the peak
allocated above what was allocated before it; elsewhere the bytes of every tensor the pass's
operations created (an upper bound of its live peak: temporaries freed early count in full).
The memory a pass may use (:func:`pass_budget`) is a share of the device's free memory
(``torch.cuda.mem_get_info``) on CUDA, bounded by ``max_memory`` / ``$VAEPROBE_MAX_MEMORY``
(the CLI's ``--max-memory``) where given; on CPU that bound, else half the available memory.
On CPU a smaller pass is also a faster one (activations that stay in the caches), so the
probe's own preference (:meth:`vaeprobe.probe.Probe.rows_per_pass`) caps the rows there. The
results do not depend on the chunk (:mod:`vaeprobe.random`), only the time and the memory do.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CUDA_SHARE = 0.6  # of the free device memory one pass may use (allocator slack, other tensors)


class _CreatedBytes(TorchDispatchMode):
    """Sums the bytes of the tensors that operations create (views excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(tensor, torch.Tensor):
                    self.bytes += tensor.numel() * tensor.element_size()
        return out


def measure_bytes_per_row(run, rows: int, device) -> int:
    """Bytes per row of ``run()``, a pass over ``rows`` rows on ``device`` (see the module
    docstring for how each device measures)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        used = torch.cuda.max_memory_allocated(device) - before
    else:
        with _CreatedBytes() as counter:
            run()
        used = counter.bytes
    return max(1, -(-int(used) // max(1, rows)))


def pass_budget(device, max_memory=None) -> tuple[int, str]:
    """(bytes one pass may use, where that comes from) on ``device``."""
    from vaeprobe.validate import memory_limit, parse_bytes

    if max_memory is not None:
        limit, source = parse_bytes(max_memory, "max_memory"), "max_memory"
    else:
        limit, source = memory_limit()
    device = torch.device(device)
    if device.type == "cuda":
        free = int(CUDA_SHARE * torch.cuda.mem_get_info(device)[0])
        if source.endswith("available memory") or free < limit:  # host RAM says nothing
            return free, f"{CUDA_SHARE:g} of the free CUDA memory"
    return limit, source


def rows_within(bytes_per_row: int, budget: int, preference: int | None = None) -> int:
    """Rows per pass: as many as ``budget`` bytes hold, at most ``preference`` (at least 1)."""
    rows = max(1, budget // max(1, bytes_per_row))
    return max(1, min(rows, preference)) if preference is not None else rows


def images_per_pass(probe, batch_size: int) -> int:
    """``batch_size`` images, at most the probe's :meth:`~vaeprobe.probe.Probe.rows_per_pass`
    (on CPU a few MiB of image values: larger passes page-fault); at least one."""
    return max(1, min(batch_size, probe.rows_per_pass()))


def plan_draws(run_one, images: int, batch_size: int, k: int, device,
               preference: int | None, max_memory=None, declared: int | None = None
               ) -> tuple[int, dict]:
    """(draws per image per pass, facts) for ``k`` draws per image in batches of
    ``batch_size`` images.

    ``run_one()`` runs one draw of ``images`` images (one row each) and is measured; on CUDA
    the probe's preference does not cap the rows (memory does). On CPU, where ``declared``
    bytes per row (the probe's :meth:`~vaeprobe.probe.Probe.activation_bytes_per_row`) fit the
    budget four times over at the preferred rows, nothing is measured: the preference binds
    anyway, and the first measurement costs seconds (a dispatch mode's imports).
    """
    budget, source = pass_budget(device, max_memory)
    cap = None if torch.device(device).type == "cuda" else preference
    if cap is not None and declared is not None and 4 * declared * cap <= budget:
        per_row, measured = int(declared), False
    else:
        per_row, measured = measure_bytes_per_row(run_one, images, device), True
    rows = rows_within(per_row, budget, cap)
    chunk = max(1, min(k, rows // max(1, batch_size)))
    return chunk, dict(bytes_per_row=per_row, memory_budget=budget, memory_source=source,
                       rows_per_pass=chunk * batch_size, measured=measured)
