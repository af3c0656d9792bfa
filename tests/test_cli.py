import subprocess
import sys

import numpy as np

from vaeprobe import __version__
from vaeprobe.cli import main


def test_version_and_help(capsys):
    out = subprocess.run([sys.executable, "-m", "vaeprobe.cli", "--version"], check=True,
                         capture_output=True, text=True).stdout
    assert __version__ in out
    assert main([]) == 0 and "data" in capsys.readouterr().out


def test_data_command_describes_and_previews(tmp_path, capsys):
    assert main(["data", "digits8:test", "--preview", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "297 images of shape (1, 8, 8)" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_errors_are_one_line_and_exit_2(capsys):
    assert main(["data", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def _subcommands():
    from vaeprobe.cli import build_parser

    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    return choices  # name -> its ArgumentParser


def test_every_cli_default_is_the_apis():
    """The CLI mirrors the public functions: each flag that stands for a parameter has that
    parameter's default (pca --n-images: all, as vp.pca_baseline)."""
    import inspect

    import vaeprobe as vp

    checked = 0
    for name, parser in _subcommands().items():
        if name == "weights":
            continue
        api = parser.get_default("api")
        assert api is not None, f"vaeprobe {name} does not name the function it mirrors"
        functions = {"": api, **parser.get_default("api_extra")}
        for dest, (of, param) in parser.get_default("api_renames").items():
            expected = inspect.signature(functions[of]).parameters[param].default
            assert parser.get_default(dest) == expected, (name, dest)
            checked += 1
    assert checked > 40
    pca = _subcommands()["pca"]
    assert pca.get_default("n_images") is None  # all images, as the API
    assert inspect.signature(vp.pca_baseline).parameters["n_images"].default is None
    assert _subcommands()["spectrum"].get_default("cutoff") == \
        inspect.signature(vp.spectrum).parameters["cutoff"].default


def test_every_flag_is_described_with_its_default_and_each_command_has_an_example():
    for name, parser in _subcommands().items():
        text = " ".join(parser.format_help().split())
        assert "example: vaeprobe " + name in text, name
        for action in parser._actions:
            if action.help == "==SUPPRESS==":  # old flags kept to say where they moved
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.dest != "help" and action.nargs != 0 \
                    and not action.required:
                assert "default:" in action.help, (name, action.dest)
    spectrum = " ".join(_subcommands()["spectrum"].format_help().split())
    assert "(default: 0.25 cycles/pixel)" in spectrum
    quality = " ".join(_subcommands()["quality"].format_help().split())
    assert "random-convnet-TEST-ONLY" in quality and "random-TEST-ONLY" in quality


def test_a_missing_path_and_a_text_checkpoint_say_what_they_are(tmp_path, capsys):
    assert main(["spectrum", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nonexistent'} does not exist" in err and "unknown dataset" not in err
    (tmp_path / "notes.pt").write_text("some text, not weights")
    assert main(["rate", str(tmp_path / "notes.pt"), "--data", "digits8:test"]) == 2
    err = capsys.readouterr().err
    assert "notes.pt is not a checkpoint" in err and "101" not in err


def test_outputs_are_checked_before_the_work_and_a_late_failure_keeps_the_summary(
        tiny_run, tmp_path, capsys, monkeypatch):
    from vaeprobe import io

    (tmp_path / "file").write_text("x")
    assert main(["rate", str(tiny_run), "--data", "digits8:test", "--plot",
                 str(tmp_path / "file" / "rate.png")]) == 2
    captured = capsys.readouterr()
    assert "cannot write --plot" in captured.err and "total rate" not in captured.out
    def fail(ds, path):
        raise io.OutputError(f"could not write {path}: Read-only file system")
    monkeypatch.setattr(io, "save", fail)
    assert main(["rate", str(tiny_run), "--data", "digits8:test", "--n-images", "8", "--out",
                 str(tmp_path / "r.nc"), "--plot", str(tmp_path / "r.png"), "--threads",
                 "1"]) == 1
    captured = capsys.readouterr()
    assert "total rate" in captured.out and f"wrote {tmp_path / 'r.png'}" in captured.out
    assert f"could not write {tmp_path / 'r.nc'}" in captured.err
    assert "1 CPU thread(s) per process (--threads" in captured.err


def test_missing_weights_name_the_cli_flags_and_warnings_are_one_line(tiny_run, capsys,
                                                                      monkeypatch, tmp_path):
    monkeypatch.setenv("VAEPROBE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("VAEPROBE_WEIGHTS_DIR", raising=False)
    assert main(["quality", str(tiny_run), "--reference", "digits8:test", "-n", "8"]) == 2
    err = capsys.readouterr().err
    assert "3 pretrained weights file(s) missing" in err
    assert "--weights PATH" in err and "--prc-weights PATH" in err and "weights=PATH" not in err
    assert main(["pca", "digits8:test", "--n-images", "5000"]) == 0
    err = capsys.readouterr().err
    assert "vaeprobe pca: warning: n_images=5000 but 'digits8:test' has only 297" in err


def test_samples_draws_a_grid_or_a_dataset_and_points_metrics_to_quality(tiny_run, tmp_path,
                                                                          capsys):
    import vaeprobe as vp

    assert main(["samples", str(tiny_run), "-n", "6", "--seed", "3", "--out",
                 str(tmp_path / "s.nc"), "--plot", str(tmp_path / "s.png")]) == 0
    saved = vp.open_results(tmp_path / "s.nc")
    direct = vp.samples(tiny_run, 6, seed=3, progress=False)
    np.testing.assert_array_equal(saved["images"].values, direct["images"].values)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["samples", str(tiny_run), "-n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"  # a .png --out is the grid
    capsys.readouterr()
    assert main(["samples", str(tiny_run), "--reference", "digits8:test", "-n", "8"]) == 2
    err = capsys.readouterr().err
    assert "--reference: the sample metrics moved to `vaeprobe quality`" in err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
    assert "Traceback" not in err
