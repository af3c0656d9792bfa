import os
import subprocess
import sys

import vaeprobe as vp
from vaeprobe.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frequency_shift_end_to_end_through_its_command_line(tmp_path):
    command = [sys.executable, "-m", "analyses.frequency_shift", "--train-dir",
               str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--preset", "tiny-16",
               "--data", "patches16", "--gamma", "3", "--steps", "150", "--n-images", "64",
               "--pca-images", "1000"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "high-frequency fraction" in result.stdout and "R(D)" in result.stdout
    ds = vp.open_results(tmp_path / "out" / "frequency_shift.nc")
    assert {"step", "frequency"} <= set(ds.dims) and ds.sizes["step"] >= 3
    for name in ("power_reconstruction", "relative_power", "high_frequency_fraction",
                 "distortion", "rate", "rate_bound", "high_frequency_fraction_pca",
                 "train_distortion", "preview_reconstruction"):
        assert name in ds, name
    assert (tmp_path / "out" / "frequency_shift.png").read_bytes()[:4] == b"\x89PNG"
    # a second run reuses the finished training run
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing the finished run" in again.stdout


def test_spectrum_and_pca_commands(tiny_run, tmp_path):
    assert main(["spectrum", str(tiny_run), "--n-images", "32", "--out",
                 str(tmp_path / "s.nc"), "--plot", str(tmp_path / "s.png")]) == 0
    assert vp.open_results(tmp_path / "s.nc").sizes["step"] == 4
    assert main(["spectrum", "digits8:test", "--n-images", "32"]) == 0
    assert main(["pca", "digits8:test", "--distortion", "2", "--out", str(tmp_path / "p.nc"),
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert "eigenvalues" in vp.open_results(tmp_path / "p.nc")


def test_frequency_shift_on_a_run_without_its_config(tiny_run, tmp_path, capsys):
    """--run on bare checkpoints (a third party's, say) with --data: no distortion target is
    known, so none is drawn or claimed."""
    import shutil

    from analyses.frequency_shift import main as frequency_shift

    bare = tmp_path / "bare"
    bare.mkdir()
    for _, path in vp.checkpoints(tiny_run):
        shutil.copy(path, bare / path.name)
    assert frequency_shift(["--run", str(bare), "--data", "digits8", "--out",
                            str(tmp_path / "out"), "--n-images", "32", "--pca-images", "300"]) == 0
    assert "no distortion target" in capsys.readouterr().out
    assert (tmp_path / "out" / "frequency_shift.png").exists()


def test_frequency_shift_reports_pca_components_at_the_runs_own_target(tiny_run, tmp_path,
                                                                        capsys):
    """The PCA line is selected by value (the run's gamma, 2 here), not by position in the
    default targets."""
    from analyses.frequency_shift import main as frequency_shift

    assert frequency_shift(["--run", str(tiny_run), "--out", str(tmp_path), "--n-images", "16",
                            "--pca-images", "300"]) == 0
    out = capsys.readouterr().out
    ds = vp.open_results(tmp_path / "frequency_shift.nc")
    needed = ds["components_needed"].sel(target=2.0)
    assert (f"PCA components to reach distortion 2: top {int(needed.sel(order='top'))}, "
            f"bottom {int(needed.sel(order='bottom'))}") in out
    assert ds.attrs["gamma"] == 2.0 and ds["train_rate"].attrs["units"] == "nats"
    assert ds["checkpoint_sha256"].dims == ("step",)
    assert ds["distortion"].attrs["units"] == "sum of squares on [0, 1]"


def test_the_verdict_needs_a_fall_beyond_its_stated_threshold():
    import numpy as np
    import xarray as xr

    from analyses.frequency_shift import SHIFT_THRESHOLD_SE, verdict

    def result(early, late, se):
        return xr.Dataset({"high_frequency_fraction": ("step", [early, late]),
                           "high_frequency_fraction_se": ("step", [se, se])},
                          coords={"step": [100, 2000]})
    tiny = verdict(result(0.0063, 0.0062, 0.0004), 100, 2000)
    assert tiny.startswith("shift NOT seen") and "fell by 0.0001" in tiny
    threshold = SHIFT_THRESHOLD_SE * np.hypot(0.0004, 0.0004)
    assert f"threshold {SHIFT_THRESHOLD_SE:g} se = {threshold:.4f}" in tiny
    assert verdict(result(0.0080, 0.0062, 0.0004), 100, 2000).startswith("shift seen")
    assert verdict(result(0.0080, 0.0062, 0.0004), 2000, 2000).startswith("shift NOT tested")


def test_frequency_shift_checks_out_first_and_keeps_the_summary_on_a_late_failure(
        tiny_run, tmp_path, capsys, monkeypatch):
    from analyses.frequency_shift import main as frequency_shift
    from vaeprobe import io

    (tmp_path / "file").write_text("x")
    arguments = ["--run", str(tiny_run), "--n-images", "16", "--pca-images", "300"]
    assert frequency_shift(arguments + ["--out", str(tmp_path / "file" / "out")]) == 2
    assert "cannot write --out" in capsys.readouterr().err  # before any analysis
    def fail(ds, path):
        raise io.OutputError(f"could not write {path}: Read-only file system")
    monkeypatch.setattr(vp, "save", fail)
    assert frequency_shift(arguments + ["--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "high-frequency fraction" in captured.out and "shift" in captured.out
    assert f"could not write {tmp_path / 'out' / 'frequency_shift.nc'}" in captured.err
    assert (tmp_path / "out" / "frequency_shift.png").exists()  # what could be written was


def test_no_test_asserts_wall_clock_time():
    """Timings belong in benchmarks/: a loaded machine must not fail a test."""
    import re
    from pathlib import Path

    timed = re.compile(r"^\s*" + "assert" + r"\b.*(elapsed|duration|seconds|perf_counter|"
                       r"time\.time\(\))")
    offenders = [f"{path.name}:{number}" for path in Path(__file__).parent.glob("test_*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if timed.search(line)]
    assert offenders == []
