"""Shared helpers for the benchmarks: timing and peak memory of a child process."""

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(function, repeats: int = 1):
    """(best wall seconds over repeats, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(module: str, *args: str) -> dict:
    """Run ``python -m module args`` in a fresh process; return its last line, parsed as JSON.

    The child reports its own peak RSS (``peak_rss_mib``), so each method's memory is its own.
    """
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
