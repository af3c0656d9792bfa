import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vaeprobe as vp
from trainers._runtime import TrainingError, checkpoint_steps
from trainers.config import from_args, make
from trainers.train import train
from vaeprobe import io
from vaeprobe.adapters.native import probe_for
from vaeprobe.random import image_generators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A port no one listens on now: fixed ports collide when several test runs share a host."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_config(out, **overrides):
    values = dict(preset="tiny-8", data="digits8", progress=False, out=str(out), log_every=10)
    values.update(overrides)
    return make(**values)


def test_distortion_targeting_converges(tmp_path):
    run = train(tiny_config(tmp_path / "r", gamma=2.0, steps=400, ckpt_every=400))
    late = [r for r in rows(run) if r["step"] > 300]
    distortion = sum(r["distortion"] for r in late) / len(late)
    # within 10% of gamma; measured by `python -m benchmarks.test_spread --cases targeting`:
    # 0.083 (seed 0), 0.035 (seed 1), equal to 5e-7 across 1, 2 and 4 threads
    assert abs(distortion - 2.0) < 0.2, distortion
    assert all(1e-4 <= r["lambda"] <= 0.9999 for r in rows(run))
    assert rows(run)[0]["lambda"] > late[-1]["lambda"]  # lambda fell from its start at 0.9999


def test_sigma_vae_learned_sigma_reaches_the_mse(tmp_path):
    """sigma-VAE: the learned shared sigma^2 converges to the MSE, its analytic optimum, with
    the default learning rates (log sigma has its own, --sigma-lr)."""
    run = train(tiny_config(tmp_path / "r", objective="elbo", likelihood="learned", steps=200,
                            ckpt_every=200, log_every=20))
    first, last = rows(run)[0], rows(run)[-1]
    assert first["sigma"] ** 2 > 3 * first["mse"]  # it starts far (sigma = 1)
    # |sigma^2 / mse - 1| measured (benchmarks.test_spread --cases sigma): 0.011 (seed 1),
    # 0.063 (seed 2), equal to 3e-6 across 1, 2 and 4 threads
    assert last["sigma"] ** 2 == pytest.approx(last["mse"], rel=0.2)


def test_optimal_sigma_is_the_batch_rms(tmp_path):
    run = train(tiny_config(tmp_path / "r", objective="elbo", likelihood="optimal", steps=20,
                            ckpt_every=20))
    for row in rows(run):
        assert abs(row["sigma"] - row["mse"] ** 0.5) < 1e-4 * row["sigma"]


def _train_command(out, steps, *extra):
    return [sys.executable, "-m", "trainers.train", "--preset", "tiny-8", "--data", "digits8",
            "--steps", str(steps), "--ckpt-every", "10", "--log-every", "10", "--no-progress",
            "--deterministic", "--out", str(out), *extra]


def _final_state(run):
    payload = io.read_checkpoint(vp.checkpoints(run)[-1][1])
    return payload["state_dict"], payload["ema_state_dict"], payload["trainer_state"]["lam"]


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    steps = 400
    subprocess.run(_train_command(tmp_path / "a", steps), check=True, cwd=ROOT)
    process = subprocess.Popen(_train_command(tmp_path / "b", steps), cwd=ROOT)
    deadline = time.time() + 120
    def progressed():
        run = tmp_path / "b"
        return run.exists() and any(step >= 60 for step, _ in vp.checkpoints(run))
    while time.time() < deadline and not progressed():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert vp.checkpoints(tmp_path / "b")[-1][0] < steps, "the run ended before it was killed"
    subprocess.run(_train_command(tmp_path / "b", steps, "--resume"), check=True, cwd=ROOT)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for state_a, state_b in zip(a[:2], b[:2], strict=True):
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(a[2], b[2])
    assert [r["step"] for r in rows(tmp_path / "b")] == list(range(10, steps + 1, 10))


@pytest.mark.slow
def test_two_process_gloo_torchrun(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m",
               "trainers.train", "--preset", "tiny-8", "--data", "digits8", "--steps", "30",
               "--ckpt-every", "10", "--no-progress", "--out", str(tmp_path / "ddp"),
               "--device", "cpu"]
    subprocess.run(command, check=True, cwd=ROOT, timeout=300)
    assert [s for s, _ in vp.checkpoints(tmp_path / "ddp")] == [10, 20, 30]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    assert len(rows(tmp_path / "ddp")) == 3  # rank 0 alone writes
    vp.load(tmp_path / "ddp", device="cpu")


def test_two_stage_starts_at_primary_distortion_and_improves(tiny_run, tmp_path, digits_test):
    from trainers._setup import build_model

    x = digits_test.images[:64]
    def distortion(probe):
        latents = probe.encode(x, generator=image_generators(0, range(len(x))))
        return float(((x.float() / 255 - probe.decode(latents).mean) ** 2).flatten(1).sum(1)
                     .mean())
    primary = vp.load(tiny_run, device="cpu")
    config = tiny_config(tmp_path / "s", objective="two-stage", primary=str(tiny_run),
                         gamma=0.5, steps=150, ckpt_every=150, lr=5e-3)
    model = build_model(config, (1, 8, 8))
    untrained = probe_for(model, "cpu")
    assert model.secondary.head.kind == "optimal"  # the Lagrangian's default head
    torch.nn.init.zeros_(model.secondary.head.out_conv.weight)  # a zero residual: x_hat itself
    torch.nn.init.zeros_(model.secondary.head.out_conv.bias)
    assert distortion(untrained) == pytest.approx(distortion(primary), abs=1e-6)
    run = train(config)
    trained = vp.load(run, device="cpu")
    assert [info.stage for info in trained.layers].count("secondary") == 3
    # trained / primary measured (benchmarks.test_spread --cases two_stage_train): 0.053
    # (seed 1), 0.131 (seed 2), equal to 4e-7 across 1, 2 and 4 threads
    assert distortion(trained) < 0.5 * distortion(primary)


def test_bad_input_is_refused_and_nothing_overwritten(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="gamma"):
        tiny_config(tmp_path / "g", gamma=0)
    with pytest.raises(ValueError, match=r"models images \(3, 32, 32\)"):
        train(make(preset="demo-cpu", data="digits8", out=str(tmp_path / "shape"),
                   progress=False))
    with pytest.raises(ValueError, match="must be below the primary's"):
        train(tiny_config(tmp_path / "g2", objective="two-stage", primary=str(tiny_run),
                          gamma=2.0))
    (tmp_path / "notarun").mkdir()
    with pytest.raises(TrainingError, match="not a vaeprobe run"):
        train(tiny_config(tmp_path / "ts", objective="two-stage", primary=str(tmp_path /
                                                                               "notarun")))
    stored = (tiny_run / "config.json").read_text()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny_config(tiny_run, steps=5))
    with pytest.raises(TrainingError, match="differs"):
        train(tiny_config(tiny_run, steps=50, gamma=3.0, resume=True))
    assert (tiny_run / "config.json").read_text() == stored
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not an empty vaeprobe run"):
        train(tiny_config(tmp_path / "other"))
    with pytest.raises(SystemExit):
        from_args(["--gama", "3"])


def test_most_updates_skipped_stops_with_an_error(tmp_path):
    with pytest.raises(TrainingError, match="updates were skipped"):
        train(tiny_config(tmp_path / "r", skip_threshold=1e-12, steps=100))


def test_checkpoint_schedule_is_log_spaced_then_regular():
    assert checkpoint_steps(1000, 500) == [100, 140, 200, 280, 400, 500, 570, 800, 1000]
    assert checkpoint_steps(30, 10) == [10, 20, 30]


def test_tiny_run_fixture_is_a_complete_run(tiny_run):
    assert [s for s, _ in vp.checkpoints(tiny_run)] == [10, 20, 30, 40]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["family"] == "hvae" and config["train"]["gamma"] == 2.0
    assert {"step", "rate", "distortion", "mse", "lambda", "sigma", "grad_norm", "skipped",
            "images_per_s"} <= set(rows(tiny_run)[0])


def test_bf16_autocast_runs(tmp_path):
    """bf16 autocast (meant for CUDA) also runs on CPU; losses stay finite."""
    run = train(tiny_config(tmp_path / "r", amp="bf16", steps=20, ckpt_every=20))
    assert all(abs(r["loss"]) < float("inf") for r in rows(run))


def test_resume_before_any_checkpoint_starts_afresh_without_stale_log(tmp_path):
    run = tmp_path / "r"
    train(tiny_config(run, steps=5, ckpt_every=100, log_every=1))  # only a final checkpoint
    for path in run.glob("ckpt_*.pt"):
        path.unlink()  # as if killed before the first checkpoint
    train(tiny_config(run, steps=5, ckpt_every=100, log_every=1, resume=True))
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = ["--preset", "tiny-8", "--data", "digits8", "--steps", "5", "--batch-size", "16",
              "--ckpt-every", "5", "--no-progress", "--device", "cpu", "--deterministic"]
    subprocess.run([sys.executable, "-m", "trainers.train", *common, "--out",
                    str(tmp_path / "one")], check=True, cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m",
                    "trainers.train", *common, "--out",
                    str(tmp_path / "two")], check=True, cwd=ROOT, timeout=300)
    one, two = _final_state(tmp_path / "one"), _final_state(tmp_path / "two")
    for key in one[0]:  # equal up to the order of floating-point reductions
        if key.endswith("head.log_sigma"):
            # the optimal head's running sigma estimate sees each rank's half batch; the loss
            # never reads it, and saved EMA weights are recalibrated (compared below)
            continue
        assert torch.allclose(one[0][key], two[0][key], rtol=1e-4, atol=1e-6), key
    for key in one[1]:  # the EMA weights, calibrated sigma included
        assert torch.allclose(one[1][key], two[1][key], rtol=1e-4, atol=1e-6), key
    assert torch.allclose(one[2], two[2])


def test_two_stage_log_has_both_stages_and_their_total(tiny_run, tmp_path):
    from trainers.train import Trainer

    config = tiny_config(tmp_path / "s", objective="two-stage", primary=str(tiny_run),
                         gamma=0.5, steps=4, ckpt_every=4, log_every=2)
    trainer = Trainer(config)
    indices = trainer.batch_indices(0)
    x = trainer.fetch(indices)
    result = trainer.train_step(x)  # the losses before the update, and grad_norm
    noise, _ = trainer.noise.draw(config.seed, 0)  # the same step's noise again
    n_primary = len(trainer.model.primary.latent_shapes())
    with torch.no_grad():  # the oracle: the frozen primary's own pass on the same batch
        _, draws = trainer.model.primary.posterior_pass(x, noise=noise[:n_primary])
    primary_rate = sum(d.kl.flatten(1).sum(1) for d in draws).mean()
    assert float(result["stage_rates"]["primary"].mean()) == pytest.approx(float(primary_rate),
                                                                         rel=1e-6)
    row = trainer.metrics_row(result, 1.0)
    assert row["rate_secondary"] == pytest.approx(float(result["rate"].detach()), rel=1e-6)
    assert row["rate"] == row["rate_primary"] + row["rate_secondary"]
    run = train(tiny_config(tmp_path / "t", objective="two-stage", primary=str(tiny_run),
                            gamma=0.5, steps=4, ckpt_every=4, log_every=2))
    for row in rows(run):
        assert row["rate"] == row["rate_primary"] + row["rate_secondary"]
        assert row["rate_primary"] > 0 and row["rate_secondary"] > 0
    log = vp.Run(run).training_log()
    assert log["train_rate_primary"].attrs["units"] == "nats"
    np.testing.assert_allclose(log["train_rate"], log["train_rate_primary"] +
                               log["train_rate_secondary"], rtol=1e-12)


def test_threads_flag_environment_and_local_world_size():
    from trainers.config import parser
    from vaeprobe._threads import choose_threads

    assert choose_threads(3, {"OMP_NUM_THREADS": "1"}, cores=16)[0] == 3
    assert choose_threads(0, {"OMP_NUM_THREADS": "2"}, cores=16)[0] == 2
    assert choose_threads(0, {"LOCAL_WORLD_SIZE": "4"}, cores=16)[0] == 4
    assert choose_threads(0, {"LOCAL_WORLD_SIZE": "4"}, cores=2)[0] == 1
    assert choose_threads(0, {}, cores=6)[0] == 6
    assert "LOCAL_WORLD_SIZE" in parser().format_help()
    with pytest.raises(ValueError, match="threads"):
        make(threads=-1)


def test_the_chosen_threads_are_logged(tmp_path, capsys):
    run = train(tiny_config(tmp_path / "r", steps=10, ckpt_every=10, threads=1))
    assert rows(run)[-1]["threads"] == 1 and torch.get_num_threads() == 1
    assert "1 CPU thread(s) per process (--threads" in capsys.readouterr().err
    assert vp.Run(run).training_log()["train_threads"].attrs["units"] == \
        "CPU threads per process"


def test_resume_alone_reads_the_stored_config_and_a_moved_run_resumes(tmp_path):
    import shutil

    first = train(tiny_config(tmp_path / "a", gamma=3.0, steps=10, ckpt_every=10, lr=1e-3))
    shutil.move(first, tmp_path / "moved")
    config = from_args(["--out", str(tmp_path / "moved"), "--resume", "--steps", "20"])
    assert (config.preset, config.gamma, config.lr, config.steps) == ("tiny-8", 3.0, 1e-3, 20)
    train(config)
    assert [step for step, _ in vp.checkpoints(tmp_path / "moved")] == [10, 20]
    with pytest.raises(TrainingError, match="differs in.*gamma"):
        train(make(out=str(tmp_path / "moved"), resume=True, gamma=4.0, progress=False))


def test_help_lists_choices_and_each_presets_defaults():
    from trainers.config import PRESETS, parser

    text = parser().format_help()
    for choice in ("elbo", "two-stage", "demo-cpu", "paper-svhn", "learned", "dmol"):
        assert choice in text
    flat = " ".join(text.split())  # argparse wraps the help lines
    assert "--steps STEPS" in flat and "from --preset, 2000 for demo-cpu" in flat
    table = text[text.index("defaults per --preset"):].splitlines()
    demo = next(line.split() for line in table if line.strip().startswith("demo-cpu"))
    assert demo[1:] == ["2000", "32", "0.001", "0.005", "250"] == [
        f"{PRESETS['demo-cpu'][key]:g}" for key in ("steps", "batch_size", "lr", "lambda_lr",
                                                     "ckpt_every")]
    with pytest.raises(SystemExit):
        parser().parse_args(["--likelihood", "gaussian"])


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys):
    from trainers.train import main

    (tmp_path / "file").write_text("x")
    assert main(["--preset", "tiny-8", "--data", "digits8", "--steps", "5", "--no-progress",
                 "--out", str(tmp_path / "file" / "run")]) == 2
    assert "cannot write the run directory (--out)" in capsys.readouterr().err


def test_sigterm_saves_the_current_step_and_the_run_resumes(tmp_path, monkeypatch):
    from trainers.train import Trainer, TrainingInterrupted

    original = Trainer.train_step
    def step_then_signal(self, x):
        if self.step == 13:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the step boundary
        return original(self, x)
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(tmp_path / "r", steps=100, ckpt_every=10))
    assert stopped.value.step == 14 and stopped.value.signal_name == "SIGTERM"
    assert [step for step, _ in vp.checkpoints(tmp_path / "r")] == [10, 14]
    assert "resume with: python -m trainers.train --out" in stopped.value.describe()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Trainer, "train_step", original)
    train(make(out=str(tmp_path / "r"), resume=True, steps=20, progress=False))
    assert [row["step"] for row in rows(tmp_path / "r")] == [10, 20]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    command = _train_command(out, 100000, "--ckpt-every", "50000")  # the flag given last wins
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # a bound on waiting, not a measured time
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"resume with: python -m trainers.train --out {out} " \
        "--resume" in err
    (step, path), = vp.checkpoints(out)  # the one saved on the signal
    assert step >= 10 and f"checkpoint saved: {path}" in err
    assert [row["step"] for row in rows(out)][-1] <= step


def test_lagrangian_default_head_is_optimal_and_changes_no_weight(tmp_path):
    """The Lagrangian's loss never reads sigma: an optimal head trains the same weights as the
    fixed sigma = 1 head; its saved EMA sigma is sqrt(MSE) of the EMA on training images."""
    from trainers._checkpoint import CALIBRATION_IMAGES

    optimal = train(tiny_config(tmp_path / "o", gamma=2.0, steps=20, ckpt_every=20))
    fixed = train(tiny_config(tmp_path / "f", gamma=2.0, steps=20, ckpt_every=20,
                              likelihood="fixed"))
    (a, a_ema, a_lam), (b, b_ema, b_lam) = _final_state(optimal), _final_state(fixed)
    assert torch.equal(a_lam, b_lam)
    for key in a:
        if not key.endswith("log_sigma"):
            assert torch.equal(a[key], b[key]) and torch.equal(a_ema[key], b_ema[key]), key
    probe = vp.load(optimal, device="cpu")
    assert probe.source["decoder_likelihood"] == "optimal"
    x = vp.data.load("digits8", split="train").images
    x = x[vp.data.select(vp.data.as_dataset(x), CALIBRATION_IMAGES, 0)]
    latents = probe.encode(x, generator=image_generators(1, range(len(x))))
    mse = float(((x.float() / 255 - probe.decode(latents).mean) ** 2).mean())
    # other posterior draws than the trainer's: equal within sampling error, not exactly
    assert probe.source["decoder_sigma"] ** 2 == pytest.approx(mse, rel=0.05)
    assert vp.load(fixed, device="cpu").source["decoder_sigma"] == 1.0


def test_a_new_objective_is_one_registered_entry(tmp_path, tiny_run):
    """A toy objective (beta R + D, no target) registered in one line trains through the whole
    trainer; its logged loss is its formula on the logged terms, lambda never moves, and the
    run records no distortion target (Run.gamma None), as an objective with a target does."""
    from trainers.objectives import Objective, objectives

    def toy(terms, beta):
        return (beta * terms.rate + terms.distortion).mean()

    objectives.register("toy-rd", Objective(toy, "beta R + D (a test)", fields=("beta",)))
    try:
        run = train(tiny_config(tmp_path / "toy", objective="toy-rd", beta=0.25, steps=3,
                                ckpt_every=3, log_every=1))
    finally:
        objectives._entries.pop("toy-rd")
    dims = 1 * 8 * 8
    for row in rows(run):
        assert row["loss"] == pytest.approx((0.25 * row["rate"] + row["distortion"]) / dims,
                                            rel=1e-5)
        assert row["lambda"] == pytest.approx(make().lambda_init)
    assert vp.Run(run).stored()["distortion_target"] is None and vp.Run(run).gamma is None
    assert vp.Run(tiny_run).stored()["distortion_target"] == 2.0 == vp.Run(tiny_run).gamma
