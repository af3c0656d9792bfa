import subprocess
import sys

import numpy as np
import pytest

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


def help_defaults(command: str) -> dict:
    """``vaeprobe COMMAND --help`` parsed: each option's long flag -> its shown default."""
    import contextlib
    import io
    import re

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    options = out.getvalue().split("\noptions:\n", 1)[1].split("\nexample:", 1)[0]
    found = {}
    for entry in re.split(r"\n  (?=-)", "\n" + options):  # one entry per option
        entry = " ".join(entry.split())
        if entry.startswith("-"):
            flags = [word.rstrip(",") for word in entry.split() if word.startswith("-")][:2]
            flag = next((f for f in flags if f.startswith("--")), flags[0])
            shown = re.search(r"\(?default: ([^;)]*)", entry)
            found[flag] = shown.group(1) if shown else None
    return found


# what each command's --help says its defaults are, written out: a changed default in the API
# or in the CLI fails here (the defaults the API documents, in its units)
LOADING = {"--format": "recognised from the files", "--option": "none",
           "--no-ema": "EMA weights", "--device": "cuda when available, else cpu"}
HELP_DEFAULTS = {
    "rate": {"--n-images": "all", "--batch-size": "64 images", "--seed": "0",
             "--active-threshold": "0.01 nats", "--posterior": "sample", **LOADING},
    "iwae": {"-k": "1000 draws", "--n-images": "all", "--batch-size": "16 images",
             "--seed": "0", "--chunk": "the model's rows per pass / --batch-size",
             "--kind": "the model's own likelihood kind", **LOADING},
    "samples": {"--n-images": "64", "--kind": "mean", "--temperature": "1.0", "--data": "none",
                "--seed": "0", "--batch-size": "100 images", **LOADING},
    "quality": {"--n-images": "10000 images",
                "--kinds": "mean stochastic reconstruction_mean reconstruction_stochastic",
                "--metrics": "fid kid prc lpips", "--temperature": "1.0",
                "--feature-extractor": "inception-v3-compat", "--prc-extractor": "vgg16-fc2",
                "--lpips-trunk": "alexnet", "--batch-size": "100 images", "--seed": "0",
                "--posterior": "sample",
                "--weights": "found in $VAEPROBE_WEIGHTS_DIR or the torch hub cache", **LOADING},
    "spectrum": {"--data": "the test split of the data the run was trained on",
                 "--n-images": "512 images", "--window": "hann", "--channels": "per_channel",
                 "--cutoff": "0.25 cycles/pixel", "--batch-size": "128 images", "--seed": "0",
                 **LOADING},
    "pca": {"--n-images": "all", "--targets": "1 2 4 8 16 32 64 (sums of squares on [0, 1]",
            "--distortion": "none: no PCA spectrum", "--cutoff": "0.25 cycles/pixel",
            "--seed": "0", "--device": "cuda when available, else cpu"},
    "data": {"--split": "train", "--root": "none", "--size": "64 px", "--n-preview": "64"},
}
# the values the parsed command line passes on, for the flags whose default is not None
PARSED_DEFAULTS = {
    ("rate", "x", "--data", "d"): dict(n_images=None, batch_size=64, seed=0,
                                       active_threshold=0.01, posterior="sample"),
    ("iwae", "x", "--data", "d"): dict(k=1000, n_images=None, batch_size=16, seed=0,
                                       chunk=None, kind=None),
    ("samples", "x"): dict(n_images=64, kind="mean", temperature=1.0, seed=0, batch_size=100),
    ("quality", "x", "--reference", "d"): dict(
        n_images=10000, temperature=1.0, batch_size=100, seed=0, posterior="sample",
        kinds=("mean", "stochastic", "reconstruction_mean", "reconstruction_stochastic"),
        metrics=("fid", "kid", "prc", "lpips")),
    ("spectrum", "x"): dict(n_images=512, window="hann", channels="per_channel", cutoff=0.25,
                            batch_size=128, seed=0),
    ("pca", "d"): dict(n_images=None, targets=(1, 2, 4, 8, 16, 32, 64),
                       distortion=None, cutoff=0.25, seed=0, batch_size=1024),
}


@pytest.mark.parametrize("command", sorted(HELP_DEFAULTS))
def test_help_shows_each_flag_with_its_literal_default(command):
    shown = help_defaults(command)
    for flag, default in HELP_DEFAULTS[command].items():
        assert flag in shown, f"vaeprobe {command} has no {flag}"
        assert shown[flag] == default, (command, flag)


@pytest.mark.parametrize("argv", sorted(PARSED_DEFAULTS))
def test_parsed_defaults_are_the_documented_ones(argv):
    from vaeprobe.cli import build_parser

    args = vars(build_parser().parse_args(list(argv)))
    assert {key: args[key] for key in PARSED_DEFAULTS[argv]} == PARSED_DEFAULTS[argv]


def test_every_parameter_of_the_api_has_a_flag():
    """Each parameter a user sets from Python can be set from the command line (progress and
    the networks' stand-in settings aside)."""
    import inspect

    import vaeprobe as vp

    not_flags = {"probe", "source", "data", "reference", "progress", "kid_subset_size",
                 "kid_subsets", "n_diversity_pairs", "n_preview", "per_image", "return_primary",
                 "ks", "n_spectrum_images", "window"}
    renamed = {"spectrum_distortion": "--distortion", "k": "-k"}
    missing = []
    for command, function in (("rate", vp.rate), ("iwae", vp.iwae), ("samples", vp.samples),
                              ("quality", vp.sample_quality), ("spectrum", vp.spectrum),
                              ("pca", vp.pca_baseline)):
        shown = help_defaults(command)
        for name in inspect.signature(function).parameters:
            if name in not_flags and not (command == "spectrum" and name == "window"):
                continue
            flag = renamed.get(name, "--" + name.replace("_", "-"))
            if flag not in shown:
                missing.append(f"vp.{function.__name__}({name}=) has no {flag} in vaeprobe "
                               f"{command}")
    assert not missing, missing


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
