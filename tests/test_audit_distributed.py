"""``vaeprobe audit`` under torchrun (2 gloo processes) writes the sections of one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_distributed import free_port

import vaeprobe as vp
from vaeprobe.audit.store import load_section, save_section

ROOT = Path(__file__).resolve().parents[1]
DATA = "digits8:test"
# precision: a fixed dtype decision (audit_job.PRECISION), not one timed under this machine's load
SETTINGS = {"likelihood": {"k": 3, "n_images": 5}, "progressive": {"n_images": 5},
            "precision": {"dtypes": ["bfloat16"], "cpu_slowdown_limit": 1e9}}
# differ between calls by nature: time, and this CPU's measured float16 slowdown
VOLATILE = ("created_at", "elapsed_seconds", "cpu_slowdown", "dtype_skipped")


@pytest.mark.slow
def test_audit_under_torchrun_gives_the_sections_of_one_process(tiny_run, tmp_path,
                                                                 monkeypatch, one_thread):
    monkeypatch.setenv("VAEPROBE_OFFLINE", "1")
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "vaeprobe.cli",
               "audit", str(tiny_run), "--data", DATA, "--n-images", "11", "--batch-size", "3",
               "--feature-extractor", "random-convnet-TEST-ONLY", "--settings",
               json.dumps(SETTINGS), "--out", str(out), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("1. Model card") == 1  # rank 0 alone prints
    one = vp.audit(tiny_run, DATA, n_images=11, batch_size=5, progress=False,
                   feature_extractor="random-convnet-TEST-ONLY", settings=SETTINGS)
    assert all(ds.attrs["status"] == "ok" for ds in one.values()), {
        name: ds.attrs.get("error") for name, ds in one.items()}
    for name, ds in one.items():
        mine = load_section(save_section(ds, tmp_path / f"{name}.nc"))
        theirs = load_section(out / "sections" / f"{name}.nc")
        assert {k: v for k, v in mine.attrs.items() if k not in VOLATILE} == {
            k: v for k, v in theirs.attrs.items() if k not in VOLATILE}, name
        assert set(mine.variables) == set(theirs.variables), name
        for variable in mine.variables:
            a, b = mine[variable].values, theirs[variable].values
            if a.dtype.kind in "fc":
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9, equal_nan=True,
                                           err_msg=f"{name}.{variable}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{name}.{variable}")
