import subprocess
import sys

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
