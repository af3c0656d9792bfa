"""Session-wide test isolation (tests/ and the doctests in vaeprobe/)."""

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Embedded datasets and reference features are cached in a session directory."""
    os.environ["VAEPROBE_CACHE"] = str(tmp_path_factory.mktemp("vaeprobe-cache"))
    os.environ["VAEPROBE_OFFLINE"] = "1"  # never try to download weights during tests
    os.environ.setdefault("MPLBACKEND", "Agg")
    if "OMP_NUM_THREADS" not in os.environ:  # an explicit choice (e.g. 1 on a shared box) wins
        torch.set_num_threads(2)
