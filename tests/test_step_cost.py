"""The training step never waits for the host, and its cost does not grow with the batch
(benchmarks/step_cost.py is the counter; a CPU proxy of GPU speed)."""

import dataclasses

import pytest
import torch

from benchmarks.step_cost import count, step_cost, trainer_for
from trainers._device import StepNoise


def test_the_counter_sees_host_reads_and_random_ops():
    x = torch.ones(3)
    assert count(lambda: float(x.sum()))["host_reads"] == 1
    assert count(lambda: bool((x > 0).all()))["host_reads"] == 1
    assert count(lambda: x.tolist())["host_reads"] == 1
    assert count(lambda: x.nonzero())["host_reads"] == 1
    assert count(lambda: x + 1)["host_reads"] == 0
    cost = count(lambda: [torch.randn(4), torch.rand(2, 2), torch.randperm(5)])
    assert cost["random_ops"] == 3 and cost["ops"] >= 3


@pytest.mark.parametrize("objective", ["distortion", "elbo"])
def test_a_training_step_reads_nothing_on_the_host_and_does_not_grow_with_the_batch(objective):
    small, large = step_cost(8, objective=objective), step_cost(16, objective=objective)
    for cost in (small, large):
        assert cost["host_reads"] == 0, cost["reads"]
        assert cost["random_ops"] == 3 + 1, cost["random"]  # tiny-8: 3 latent layers + dequant
        assert cost["ops"] <= 1000, cost["ops"]  # 2,350 before (per-image noise, syncs)
    assert small["ops"] == large["ops"]
    assert small["random"] == large["random"]


def test_two_ranks_take_their_rows_of_one_process_noise():
    shapes, image = [(2, 1, 1), (2, 4, 4)], (1, 8, 8)
    one = StepNoise(shapes, image, 6, 0, 1, "cpu").draw(seed=3, step=5)
    ranks = [StepNoise(shapes, image, 6, rank, 2, "cpu").draw(seed=3, step=5)
             for rank in range(2)]
    for layer in range(len(shapes)):
        assert torch.equal(torch.cat([r[0][layer] for r in ranks]), one[0][layer])
    assert torch.equal(torch.cat([r[1] for r in ranks]), one[1])
    again = StepNoise(shapes, image, 6, 0, 1, "cpu").draw(seed=3, step=5)
    later = StepNoise(shapes, image, 6, 0, 1, "cpu").draw(seed=3, step=6)
    assert torch.equal(again[1], one[1]) and not torch.equal(later[1], one[1])
    assert one[1].min() >= 0 and one[1].max() < 1 and one[1].shape == (6, *image)


def test_a_skipped_update_leaves_weights_and_adam_as_they_were(tmp_path):
    trainer = trainer_for(8, tmp_path / "run", skip_threshold=1e-12)  # every norm is above
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.advance()
    trainer.advance()
    for key, value in trainer.model.state_dict().items():
        if not key.endswith("log_sigma"):  # the optimal head's running estimate moves
            assert torch.equal(value, before[key]), key
    steps = [float(state["step"]) for state in trainer.optimizer.state.values()]
    assert steps and all(step == 0 for step in steps)  # Adam's step count undone too
    assert trainer.sync(None)["skipped"] == 2
    trainer.config = dataclasses.replace(trainer.config, skip_threshold=1e9)
    trainer.advance()
    name = next(iter(before))
    assert not torch.equal(trainer.model.state_dict()[name], before[name])  # it updates now
    assert trainer.sync(None)["skipped"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_never_synchronize(tmp_path):
    trainer = trainer_for(32, tmp_path / "run", device="cuda")
    trainer.advance()  # warm-up: allocations, cuDNN choices
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.advance()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.sync(None)["skipped"] == 0


def test_a_bf16_pass_keeps_its_loss_terms_in_float32():
    """Under bf16 autocast the convolutions run in bf16; rate (KL), distortion and log p(x|z)
    stay float32, and agree with the float32 pass to bf16's precision."""
    from vaeprobe.models import HVAE, preset

    torch.manual_seed(0)
    model = HVAE(preset("tiny-8"))
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    noise = [torch.randn(4, *shape) for shape in model.latent_shapes()]
    uniform = torch.rand(4, 1, 8, 8)
    full = model(x, noise=noise, generator=uniform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(x, noise=noise, generator=uniform)
    assert half.draws[-1].q_mean.dtype == torch.bfloat16  # the network did run in bf16
    for name in ("rate", "distortion", "log_px"):
        assert getattr(half, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(half, name), getattr(full, name), rtol=0.05,
                                   atol=0.5)
