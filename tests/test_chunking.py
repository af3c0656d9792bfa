"""Memory-aware chunking: rows per pass from the measured memory per row and the budget; the
numbers do not depend on the chunk it picks."""

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import chunking
from vaeprobe.adapters.native import probe_for
from vaeprobe.models import HVAE, preset


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return probe_for(HVAE(preset("tiny-8")), "cpu")


def test_measured_bytes_per_row_count_what_the_pass_creates():
    def run():
        a = torch.ones(10, 1000)  # 40,000 bytes
        return (a * 2).sum()  # 40,000 more, and 4 for the sum

    per_row = chunking.measure_bytes_per_row(run, 10, "cpu")
    assert 8000 <= per_row <= 8001


def test_budget_and_rows():
    assert chunking.pass_budget("cpu", "3MB") == (3_000_000, "max_memory")
    assert chunking.rows_within(1000, 10_000) == 10
    assert chunking.rows_within(1000, 10_000, preference=4) == 4
    assert chunking.rows_within(10**9, 10) == 1  # at least one row, whatever the budget
    chunk, facts = chunking.plan_draws(lambda: torch.ones(4, 250).sum(), 4, 8, 100, "cpu",
                                       None, max_memory=8 * 1000 * 5)
    assert facts["bytes_per_row"] == 1001 and chunk == 4  # 39 rows / 8 images


def test_cpu_plan_trusts_declared_bytes_when_they_fit_four_times_over():
    def never():
        raise AssertionError("measured although the declared bytes fit")

    chunk, facts = chunking.plan_draws(never, 4, 2, 100, "cpu", 8, max_memory=4 * 1000 * 8,
                                       declared=1000)
    assert (chunk, facts["measured"], facts["bytes_per_row"]) == (4, False, 1000)
    chunk, facts = chunking.plan_draws(lambda: torch.ones(4, 250).sum(), 4, 2, 100, "cpu", 8,
                                       max_memory=4 * 1000 * 8 - 1, declared=1000)
    assert facts["measured"] and facts["bytes_per_row"] == 1001 and chunk == 4


def test_iwae_chunk_follows_max_memory_and_the_numbers_do_not(tiny, digits_test):
    results = {}
    for max_memory in ("1MB", "20MB", "1GB"):  # ~0.24 MB per row
        ds = vp.iwae(tiny, digits_test, k=24, n_images=6, batch_size=6, progress=False,
                     max_memory=max_memory)
        results[max_memory] = ds
    used = [int(ds.attrs["chunk_used"]) for ds in results.values()]
    assert used[0] < used[1] <= used[2] and used[0] >= 1
    assert used[2] == min(24, tiny.rows_per_pass() // 6)  # on CPU the probe's cap binds
    fixed = vp.iwae(tiny, digits_test, k=24, n_images=6, batch_size=6, chunk=24,
                    progress=False)
    for ds in results.values():
        np.testing.assert_allclose(ds["log_likelihood_by_k"], fixed["log_likelihood_by_k"],
                                   rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="chunk must be an integer"):
        vp.iwae(tiny, digits_test, k=4, n_images=2, chunk=0, progress=False)


def test_rows_per_pass_on_cuda_follows_the_free_memory(monkeypatch):
    class Declared(vp.Probe):
        image_shape, device = (3, 32, 32), torch.device("cuda")

    per_row = 4 * 256 * 32 * 32
    for free_rows in (3, 40):
        monkeypatch.setattr(chunking, "pass_budget",
                            lambda device, max_memory=None, n=free_rows: (n * per_row, "test"))
        assert Declared().rows_per_pass() == free_rows
