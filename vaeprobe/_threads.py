"""How many CPU threads torch uses: one rule for the trainer and the ``vaeprobe`` commands.

torch's default (one intra-op thread per core) oversubscribes a machine whose cores are shared
with other processes: on 2 shared cores, training ran 20-60x slower than with one thread. So
each process takes, in order: an explicit request (``--threads``), else ``OMP_NUM_THREADS`` when
set, else the cores it may run on divided by the processes on this node (torchrun's
``LOCAL_WORLD_SIZE``), at least 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), else all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(requested: int = 0, environ: Mapping[str, str] | None = None,
                   cores: int | None = None) -> tuple[int, str]:
    """(intra-op threads per process, why).

    Parameters
    ----------
    requested : int
        An explicit choice (``--threads``); 0 means automatic.
    environ : mapping, optional
        The environment (default ``os.environ``): ``OMP_NUM_THREADS``, ``LOCAL_WORLD_SIZE``.
    cores : int, optional
        Usable cores (default :func:`usable_cores`).

    Examples
    --------
    >>> choose_threads(0, {"LOCAL_WORLD_SIZE": "4"}, cores=16)
    (4, '16 usable cores / 4 process(es) on this node')
    >>> choose_threads(3, {"OMP_NUM_THREADS": "1"}, cores=16)
    (3, '--threads')
    """
    environ = os.environ if environ is None else environ
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0: automatic), got {requested}")
    if requested > 0:
        return int(requested), "--threads"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores = usable_cores() if cores is None else cores
    local = environ.get("LOCAL_WORLD_SIZE", "1").strip()
    processes = max(1, int(local)) if local.isdigit() else 1
    return max(1, cores // processes), f"{cores} usable cores / {processes} process(es) on " \
                                       f"this node"


def apply_threads(requested: int = 0, environ: Mapping[str, str] | None = None
                  ) -> tuple[int, str]:
    """Choose (:func:`choose_threads`) and set torch's intra-op threads; return (n, a sentence
    saying what was chosen and how to override it)."""
    import torch

    threads, why = choose_threads(requested, environ)
    torch.set_num_threads(threads)
    return threads, (f"{threads} CPU thread(s) per process ({why}; override with --threads "
                     f"or OMP_NUM_THREADS)")
