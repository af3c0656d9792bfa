"""trainers.config: "unset" is None (typed ``str | None``), on the command line, in Python and
in config.json; the "" that earlier versions stored for unset reads as None, so their runs
still load, compare and resume."""

import json
from pathlib import Path

import pytest

import vaeprobe as vp
from trainers.config import OPTIONAL, TrainConfig, from_args, make, parser
from trainers.train import train

OLD_RUN = Path(__file__).parent / "fixtures" / "tiny8_trained"  # written by an earlier version


def old_train_section() -> dict:
    return json.loads((OLD_RUN / "config.json").read_text())["train"]


def test_the_unset_fields_are_none():
    assert OPTIONAL == ("likelihood", "merge", "data_root", "primary", "device")
    config = TrainConfig()
    assert all(getattr(config, name) is None for name in OPTIONAL)
    assert TrainConfig.__dataclass_fields__["device"].type == str | None
    with pytest.raises(ValueError, match="device must be str, got int 3"):
        TrainConfig(device=3)


def test_an_old_config_with_empty_strings_reads_as_unset():
    old = old_train_section()
    assert [old[name] for name in OPTIONAL] == ["", "", "", "", ""]  # as it was written
    config = TrainConfig(**old)
    assert all(getattr(config, name) is None for name in OPTIONAL)
    # the same settings made today do not differ from the old file (None == old "")
    today = make(preset="tiny-8", objective="distortion", gamma=2.0, data="digits8",
                 steps=400, ckpt_every=100, out=old["out"], progress=False)
    assert today.differs_from(old) == {}
    assert today.differs_from({**old, "merge": "concat"}) == {"merge": ("concat", None)}


def test_the_command_line_is_unchanged_for_users():
    assert from_args([]).device is None and from_args([]).primary is None
    assert from_args(["--device", ""]).device is None  # accepted as unset, as before
    assert from_args(["--device", "cpu", "--merge", "concat"]).merge == "concat"
    flat = " ".join(parser().format_help().split())
    assert "(unset: cuda when available) (default: unset)" in flat
    with pytest.raises(SystemExit):
        from_args(["--merge", ""])  # not a choice, as before


def test_a_run_whose_config_json_stores_empty_strings_resumes(tmp_path):
    run = train(make(preset="tiny-8", data="digits8", steps=10, ckpt_every=10, log_every=10,
                     progress=False, out=str(tmp_path / "r")))
    path = Path(run) / "config.json"
    stored = json.loads(path.read_text())
    assert [stored["train"][name] for name in OPTIONAL] == [None] * 5  # written as null now
    stored["train"].update({name: "" for name in OPTIONAL})  # as an earlier version wrote it
    path.write_text(json.dumps(stored))
    config = make(out=str(run), resume=True, steps=20)
    assert config.device is None and config.likelihood is None
    train(config)
    assert [step for step, _ in vp.checkpoints(run)] == [10, 20]
    assert vp.load(run).image_shape == (1, 8, 8)
