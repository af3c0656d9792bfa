import json

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import io
from vaeprobe.run import (
    CONFIG_NAME,
    LOG_NAME,
    Run,
    checkpoint_name,
    checkpoint_step,
    resolve_checkpoint,
)


def _save(run: Run, step: int):
    return run.save_checkpoint(step, family="hvae", config={"n": 1},
                               state_dict={"w": torch.full((2,), float(step))})


def test_checkpoint_names_are_written_and_parsed_in_one_place():
    for step in (0, 7, 2000, 12_345_678):
        assert checkpoint_step(checkpoint_name(step)) == step
        assert checkpoint_step(checkpoint_name(step, ".safetensors")) == step
    assert checkpoint_name(2000) == "ckpt_step00002000.pt"
    for other in ("config.json", "metrics.jsonl", "ckpt_step12.pt.tmp", ".ckpt_step1.pt.x",
                  "ckpt_stepX.pt", "model.pt"):
        assert checkpoint_step(other) is None, other
    with pytest.raises(ValueError, match=">= 0"):
        checkpoint_name(-1)


def test_run_round_trip(tmp_path):
    run = Run(tmp_path / "r")
    assert run.config is None and run.gamma is None and run.objective is None
    assert run.data is None and run.training_log().sizes["train_step"] == 0
    train = dict(objective="distortion", gamma=3.5, data="digits8", seed=0)
    assert run.write_config(train=train, family="hvae", model={"n": 1}, world_size=1)
    assert not run.write_config(train=dict(train, gamma=9.0))  # never overwritten
    stored = json.loads((tmp_path / "r" / CONFIG_NAME).read_text())
    assert stored["train"] == train and stored["family"] == "hvae"
    assert stored["vaeprobe_version"] == vp.__version__ and run.stored() == stored
    assert (run.objective, run.gamma, run.data) == ("distortion", 3.5, "digits8")

    for step in (300, 20, 1000):
        path = _save(run, step)
        assert path == run.checkpoint_path(step) and path.name == checkpoint_name(step)
    (tmp_path / "r" / "notes.txt").write_text("not a checkpoint")
    assert [s for s, _ in run.checkpoints()] == [20, 300, 1000]
    assert vp.checkpoints(tmp_path / "r") == run.checkpoints()
    assert run.latest_checkpoint() == run.checkpoint_path(1000)
    assert resolve_checkpoint(run.path) == run.checkpoint_path(1000)
    payload = io.read_checkpoint(run.checkpoint_path(300))
    assert payload["step"] == 300 and torch.equal(payload["state_dict"]["w"], torch.full(
        (2,), 300.0))
    assert Run.of(run.checkpoint_path(300)).path == run.path

    rows = [dict(step=s, rate=10.0 + s, distortion=2.0 / s, mse=0.1, **{"lambda": 0.5})
            for s in (10, 20, 30)]
    for row in rows:
        run.append_log(row)
    assert run.log_rows() == rows
    log = run.training_log()
    assert dict(log.sizes) == {"train_step": 3}
    assert list(log["train_step"].values) == [10, 20, 30]
    assert set(log.data_vars) == {"train_rate", "train_distortion", "train_mse", "train_lambda"}
    np.testing.assert_array_equal(log["train_rate"], [20.0, 30.0, 40.0])
    assert log["train_rate"].attrs["units"] == "nats"
    assert log["train_distortion"].attrs["units"] == "sum of squares on [0, 1]"
    assert all("units" in log[name].attrs for name in log.variables)
    assert log.attrs["gamma"] == 3.5 and log.attrs["objective"] == "distortion"
    vp.save(log, tmp_path / "log.nc")  # netCDF-safe
    assert vp.open_results(tmp_path / "log.nc")["train_rate"].attrs["units"] == "nats"

    run.truncate_log(20)
    assert [r["step"] for r in run.log_rows()] == [10, 20]
    with pytest.raises(ValueError, match="step"):
        run.append_log(dict(rate=1.0))


def test_training_log_tolerates_a_torn_last_line_and_missing_metrics(tmp_path):
    run = Run(tmp_path)
    (tmp_path / LOG_NAME).write_text('{"step": 1, "rate": 1.0}\n{"step": 2, "rate": 2.0, '
                                     '"rate_primary": 0.5}\n{"step": 3, "ra')
    log = run.training_log()
    assert list(log["train_step"].values) == [1, 2]
    np.testing.assert_array_equal(log["train_rate_primary"], [np.nan, 0.5])
    (tmp_path / LOG_NAME).write_text('{"step": 1, "ra\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        run.training_log()


@pytest.mark.parametrize("objective, gamma", [("elbo", None), ("two-stage", 0.5),
                                              ("distortion", 8.0)])
def test_gamma_is_none_without_a_distortion_target(tmp_path, objective, gamma):
    run = Run(tmp_path)
    run.write_config(train=dict(objective=objective, gamma=0.5 if gamma is None else gamma))
    assert run.gamma == gamma and run.objective == objective


def test_the_trainer_writes_through_run(tiny_run):
    run = Run(tiny_run)
    assert [path for _, path in run.checkpoints()] == [run.checkpoint_path(s)
                                                      for s in (10, 20, 30, 40)]
    assert run.objective == "distortion" and run.gamma == 2.0 and run.data == "digits8"
    log = run.training_log()
    assert list(log["train_step"].values) == [10, 20, 30, 40]
    assert {"train_rate", "train_distortion", "train_lambda", "train_loss",
            "train_elbo_bpd"} <= set(log.data_vars)
    assert log["train_elbo_bpd"].attrs["units"] == "bits/dim"
    assert log["train_step"].attrs["units"] == "optimizer steps"
    assert [p.name for p in run.path.glob("*.tmp")] == []


def test_training_curves_draws_a_training_log(tiny_run, tmp_path):
    log = Run(tiny_run).training_log()
    ax = vp.plot.training_curves(log)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), log["train_distortion"].values)
    labels = [line.get_label() for line in ax.lines]
    assert "gamma = 2" in labels  # from the log's attrs
    vp.plot.save_figure(ax, tmp_path / "log.png")
    assert (tmp_path / "log.png").read_bytes()[:4] == b"\x89PNG"
