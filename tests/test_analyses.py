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
