"""The audit's output directory: sections written as computed, a killed audit resumed with
only the missing sections computed, other options refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from audit_job import DATA, audit

import vaeprobe as vp
from vaeprobe.audit import AuditMismatchError
from vaeprobe.audit.store import load_section, save_section

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("bits", "reconstructions", "latents", "spectra", "precision")
VOLATILE = ("created_at", "elapsed_seconds", "cpu_slowdown", "dtype_skipped")  # timings
pytestmark = pytest.mark.usefixtures("offline_weights")


def assert_same_sections(mine, theirs):
    assert list(mine) == list(theirs)
    for name in mine:
        a, b = mine[name], theirs[name]
        assert a.attrs.get("status") == b.attrs.get("status"), name
        assert {k: v for k, v in a.attrs.items() if k not in VOLATILE} == {
            k: v for k, v in b.attrs.items() if k not in VOLATILE}, name
        assert set(a.variables) == set(b.variables), name
        for variable in a.variables:
            x, y = a[variable].values, b[variable].values
            if x.dtype.kind in "fc":
                np.testing.assert_allclose(x, y, rtol=1e-12, equal_nan=True,
                                           err_msg=f"{name}.{variable}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{name}.{variable}")


def test_a_killed_audit_resumes_with_only_the_missing_sections(tiny_run, tmp_path, one_thread):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAEPROBE_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    job = subprocess.Popen([sys.executable, str(ROOT / "tests" / "audit_job.py"), str(tiny_run),
                            str(out), "--stall"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sections = out / "sections"
    deadline = time.monotonic() + 120
    try:
        # the shared sections and progressive coding are written before likelihood stalls
        while not all((sections / f"{name}.nc").is_file()
                      for name in ("model_card", *SHARED, "progressive")):
            assert job.poll() is None, job.communicate()[1][-3000:].decode()
            assert time.monotonic() < deadline, "no sections before likelihood within 120 s"
            time.sleep(0.2)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert not (sections / "likelihood.nc").exists() and not (out / "audit.html").exists()
    before = {path.name: path.stat().st_mtime_ns for path in sections.iterdir()}
    assert not [name for name in before if not name.endswith(".nc")]  # no half-written file

    resumed = audit(tiny_run, out)  # the same options, in this process
    assert resumed.attrs["computed_sections"] == '["likelihood", "samples"]'
    assert json.loads(resumed.attrs["resumed_sections"]) == [
        "model_card", "bits", "reconstructions", "latents", "progressive", "spectra",
        "precision"]
    assert sorted(before) == sorted(f"{name}.nc" for name in json.loads(
        resumed.attrs["resumed_sections"]))
    for name, mtime in before.items():  # the finished sections were not written again
        assert (sections / name).stat().st_mtime_ns == mtime, name
    assert (out / "audit.html").is_file() and (out / "audit.png").is_file()

    whole = audit(tiny_run, None)  # uninterrupted, in memory: compared through a netCDF trip
    whole = {name: load_section(save_section(ds, tmp_path / f"{name}.nc"))
             for name, ds in whole.items()}
    assert_same_sections(resumed, whole)


def test_an_audit_runs_twice_into_one_out_and_refuses_other_options(tiny_run, tmp_path):
    out = tmp_path / "twice"
    out.mkdir()  # an existing (empty) directory is fine
    options = dict(n_images=6, sections=["model_card", "bits"], progress=False)
    first = vp.audit(tiny_run, DATA, out=out, **options)
    written = {name: (out / name).stat().st_mtime_ns
               for name in ("audit.nc", "audit.png", "audit.html")}
    again = vp.audit(tiny_run, DATA, out=out, **options)
    assert again.attrs["computed_sections"] == "[]"
    np.testing.assert_array_equal(first["bits"]["rate"], again["bits"]["rate"])
    # nothing computed: the report on disk is current and is not rendered again
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    more = vp.audit(tiny_run, DATA, out=out, **{**options, "sections": ["bits", "latents"]})
    assert more.attrs["computed_sections"] == '["latents"]'
    assert all((out / name).stat().st_mtime_ns > mtime for name, mtime in written.items())
    with pytest.raises(AuditMismatchError, match=r"n_images: 6 before, 7 now"):
        vp.audit(tiny_run, DATA, out=out, **{**options, "n_images": 7})
    with pytest.raises(AuditMismatchError, match=r"active_threshold"):
        vp.audit(tiny_run, DATA, out=out, settings={"bits": {"active_threshold": 1.0}},
                 **options)
    replaced = vp.audit(tiny_run, DATA, out=out, overwrite=True, **{**options, "n_images": 7})
    assert int(replaced["bits"].attrs["n_images"]) == 7
    assert not (out / "sections" / "latents.nc").exists()  # the old audit's sections removed
    with pytest.raises(FileExistsError, match="is a file"):
        vp.audit(tiny_run, DATA, out=out / "audit.nc", **options)


def test_cli_refuses_another_audit_in_out_in_one_line(tiny_run, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "vaeprobe.cli", "audit", str(tiny_run), "--data", DATA,
               "--sections", "model_card", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    vp.audit(tiny_run, DATA, n_images=4, sections=["model_card"], out=out, progress=False)
    refused = subprocess.run(command + ["--n-images", "5"], env=env, capture_output=True,
                             text=True, cwd=ROOT)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "n_images: 4 before, 5 now" in refused.stderr and "--overwrite" in refused.stderr

