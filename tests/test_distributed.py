"""Distributed evaluation: two gloo processes (torchrun) give the Dataset of one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_job import analyses

import vaeprobe as vp
from vaeprobe import distributed

ROOT = Path(__file__).resolve().parents[1]
# provenance that differs between calls by nature: the time, and whether a reference cache
# entry happened to exist already
VOLATILE = ("created_at", "reference_from_cache")


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tiny_run, tmp_path_factory):
    """One torchrun job of 2 CPU processes running every noun; (output dir, its stdout)."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAEPROBE_CACHE": str(out / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               str(ROOT / "tests" / "distributed_job.py"), str(tiny_run), str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def one_process(tiny_run):
    return analyses(tiny_run)


def assert_same(mine, theirs, rtol=1e-6, atol=1e-9):
    """Same variables, dims, coords and provenance; numbers equal up to float rounding."""
    assert dict(mine.sizes) == dict(theirs.sizes)
    assert set(mine.variables) == set(theirs.variables)
    for name in mine.variables:
        a, b = mine[name], theirs[name]
        assert a.dims == b.dims and a.attrs == b.attrs, name
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a.values, b.values, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(a.values, b.values, err_msg=name)
    keep = [key for key in mine.attrs if key not in VOLATILE]
    assert {k: mine.attrs[k] for k in keep} == {k: theirs.attrs.get(k) for k in keep}


NOUNS = ["rate", "iwae", "spectrum", "spectrum_data", "pca", "sample_quality", "samples"]


@pytest.mark.parametrize("name", NOUNS)
def test_two_ranks_equal_one_process(two_ranks, one_process, name):
    out, _ = two_ranks
    ranks = [vp.open_results(out / f"{name}-rank{rank}.nc") for rank in (0, 1)]
    # per-image values come from other batch compositions (float32 rounding); sums of
    # float64 in another order
    assert_same(ranks[0], one_process[name], rtol=2e-5, atol=1e-6)
    assert_same(ranks[1], ranks[0], rtol=0, atol=0)  # every rank returns the same Dataset


def test_the_job_ran_on_two_ranks_each_with_its_block(two_ranks):
    out, _ = two_ranks
    worlds = [json.loads((out / f"world-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [w["world"] for w in worlds] == [2, 2]
    assert [w["block"] for w in worlds] == [list(range(11)), list(range(11, 21))]


def test_per_image_rows_keep_the_subset_order(two_ranks, one_process):
    out, _ = two_ranks
    for name in ("rate", "iwae"):
        ds = vp.open_results(out / f"{name}-rank0.nc")
        np.testing.assert_array_equal(ds["image"], one_process[name]["image"])
        assert np.all(np.diff(ds["image"].values) > 0)


def test_cli_under_torchrun_prints_and_writes_on_rank_0_only(two_ranks):
    out, stdout = two_ranks
    assert stdout.count("total rate") == 1, stdout
    assert stdout.count("wrote ") == 1
    assert vp.open_results(out / "cli-rate.nc").attrs["n_images"] == 20


def test_one_process_is_untouched():
    indices = torch.arange(7)
    assert distributed.shard(indices) is indices
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.is_main() and not distributed.active()
    moments = vp.rate.__globals__["Moments"]()
    assert distributed.merge(moments) is moments


def test_blocks_are_contiguous_and_cover_the_subset(monkeypatch):
    """What each rank evaluates: contiguous blocks in rank order, lengths within one."""
    blocks = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "init", lambda device=None, rank=rank: (rank, 3))
        blocks.append(distributed.shard(torch.arange(10, 21)).tolist())
    assert blocks == [list(range(10, 14)), list(range(14, 18)), list(range(18, 21))]
    assert json.dumps(sum(blocks, [])) == json.dumps(list(range(10, 21)))
