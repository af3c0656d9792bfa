"""What the training step keeps on the device, so that it never waits for the host.

- :class:`StepNoise`: the step's randomness, one draw per latent layer and one for the
  dequantisation, for the whole global batch, keyed by (seed, step): a resume needs no RNG
  state, and each DDP rank takes its rows of the same draws, so N ranks train as one process.
- :class:`EMA`: the weights' exponential moving average, one ``torch._foreach_lerp_``.
- :class:`Guards`: skipped updates and non-finite losses counted on the device, and the finite
  check of weights, EMA and lambda; read only at logging and checkpoint steps
  (:meth:`Guards.read` returns tensors that the trainer stacks into its one host read), where
  :meth:`Guards.check` stops training with a clear error.
"""

from __future__ import annotations

import torch

from trainers._runtime import TrainingError
from vaeprobe.random import seed_of

SKIP_WINDOW = 100  # the recent updates whose skipped fraction may stop training
MIN_SKIP_WINDOW = 50  # ... once at least this many updates were made
NONFINITE_LOSS_PATIENCE = 10  # non-finite losses in a row before training stops


class StepNoise:
    """The standard normal draws of every latent layer and the U(0, 1) dequantisation draws of
    one training step, for the global batch (``batch`` images), keyed by (seed, step).

    One ``randn`` per latent layer and one ``rand``: their number does not grow with the batch.
    Rank ``rank`` of ``world`` takes rows ``[rank * local, (rank + 1) * local)``, the images
    :meth:`trainers._data.Batches.batch_indices` gives it, so the noise of an image in the
    global batch does not depend on the process layout. (Evaluation keys noise per image
    instead, so that its results do not depend on the batch: :mod:`vaeprobe.random`.)
    """

    def __init__(self, latent_shapes, image_shape, batch: int, rank: int, world: int, device):
        self.shapes = [tuple(shape) for shape in latent_shapes]
        self.image_shape = tuple(image_shape)
        self.batch, self.device = batch, torch.device(device)
        local = batch // world
        self.rows = None if world == 1 else slice(rank * local, (rank + 1) * local)
        self.generator = torch.Generator(device=self.device)

    def draw(self, seed: int, step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(latent noise per layer, dequantisation noise) of this rank's rows at ``step``."""
        self.generator.manual_seed(seed_of(seed, step))  # host-side: no device work
        latent = [torch.randn((self.batch, *shape), generator=self.generator,
                              device=self.device) for shape in self.shapes]
        uniform = torch.rand((self.batch, *self.image_shape), generator=self.generator,
                             device=self.device)
        if self.rows is not None:
            latent, uniform = [noise[self.rows] for noise in latent], uniform[self.rows]
        return latent, uniform


class EMA:
    """An EMA of ``model``'s trainable weights in ``ema`` (the same architecture): decay
    min(rate, (1 + n) / (10 + n)) at step n, so short runs track too. One
    ``torch._foreach_lerp_`` per step; buffers (e.g. an optimal head's running sigma) are
    copied, in one ``_foreach_copy_``, only when their version counter says they changed.

    A skipped update leaves the weights as they were; the EMA still takes its step towards
    them (the decision stays on the device).
    """

    def __init__(self, model: torch.nn.Module, ema: torch.nn.Module, rate: float):
        shadow = dict(ema.named_parameters())
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.rate = rate
        self.ema_params = [shadow[name] for name, _ in trainable]
        self.params = [p.detach() for _, p in trainable]
        self.buffers = list(zip(ema.buffers(), model.buffers(), strict=True))
        self.versions = [None] * len(self.buffers)

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.rate, (1 + step) / (10 + step))
        if self.params:
            torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
        changed = [i for i, (_, b) in enumerate(self.buffers) if b._version != self.versions[i]]
        if changed:
            torch._foreach_copy_([self.buffers[i][0] for i in changed],
                                 [self.buffers[i][1] for i in changed])
            for i in changed:
                self.versions[i] = self.buffers[i][1]._version


def floating_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The floating-point parameters and buffers of ``module`` (what its state dict saves)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return [t.detach() for t in tensors if t.is_floating_point()]


class Guards:
    """Device-side counters of what can go wrong in training, read only at sync steps.

    ``skipped``: updates skipped in all; the last :data:`SKIP_WINDOW` steps' skips (a ring);
    ``nonfinite_run``: non-finite losses in a row. ``watched``: name -> the tensors whose
    finiteness :meth:`read` checks (cached lists: the weights, their EMA, lambda).
    """

    NAMES = ("skipped", "recent_skips", "nonfinite_run")

    def __init__(self, device, watched: dict[str, list[torch.Tensor]]):
        self.skipped = torch.zeros((), dtype=torch.float32, device=device)
        self.ring = torch.zeros(SKIP_WINDOW, dtype=torch.float32, device=device)
        self.nonfinite_run = torch.zeros((), dtype=torch.float32, device=device)
        self.watched = {name: list(tensors) for name, tensors in watched.items()}

    def record(self, step: int, skip: torch.Tensor, loss: torch.Tensor) -> None:
        """Count step ``step``'s ``skip`` (a bool tensor) and whether its loss was finite."""
        skip = skip.float()
        self.skipped += skip
        self.ring[step % SKIP_WINDOW] = skip
        self.nonfinite_run.add_(1).mul_(~torch.isfinite(loss.detach()))

    def read(self) -> list[torch.Tensor]:
        """0-dim tensors to read at a sync step: the counters of :data:`NAMES`, then one flag
        per watched group (1 when all its tensors are finite)."""
        flags = [torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all()
                 for tensors in self.watched.values()]
        return [self.skipped, self.ring.sum(), self.nonfinite_run, *flags]

    def check(self, values: list[float], step: int, config, out) -> None:
        """Raise a :class:`~trainers._runtime.TrainingError` when the values :meth:`read` gave
        (as floats, after ``step`` steps) say training cannot go on."""
        _, recent, run, *flags = values
        if run >= NONFINITE_LOSS_PATIENCE:
            raise TrainingError(
                f"the loss has been non-finite (NaN or inf) for {NONFINITE_LOSS_PATIENCE} steps "
                f"in a row or more ({int(run)} to step {step}): the weights overflowed (--lr "
                f"{config.lr:g}). Those updates were skipped and no checkpoint was written "
                f"since; start again with a lower --lr")
        window = min(step, SKIP_WINDOW)
        if window >= MIN_SKIP_WINDOW and recent > config.max_skip_fraction * window:
            raise TrainingError(
                f"{int(recent)} of the last {window} updates were skipped (gradient norm NaN "
                f"or above --skip-threshold {config.skip_threshold}); the model is not "
                f"learning. Lower --lr or raise --skip-threshold")
        for name, finite in zip(self.watched, flags, strict=True):
            if not finite:
                raise TrainingError(
                    f"the {name} became non-finite (NaN or inf) by step {step}: the update "
                    f"overflowed (--lr {config.lr:g}, --ema-rate {config.ema_rate:g}). No "
                    f"checkpoint was written with them; the latest checkpoint in {out} is the "
                    f"last good one. Start again with a lower --lr")

    def state(self, step: int) -> dict:
        """The counters for a checkpoint (a host read: save steps only): ``skipped`` and
        ``recent_skips`` (the last skips, oldest first)."""
        ring = self.ring.tolist()
        recent = [bool(ring[s % SKIP_WINDOW]) for s in range(max(0, step - SKIP_WINDOW), step)]
        return dict(skipped=int(self.skipped), recent_skips=recent)

    def load(self, state: dict, step: int) -> None:
        """The counters of a checkpoint's ``state`` saved after ``step`` steps."""
        self.skipped.fill_(state["skipped"])
        self.ring.zero_()
        recent = list(state["recent_skips"])[-min(step, SKIP_WINDOW):] if step else []
        for s, skip in zip(range(step - len(recent), step), recent, strict=True):
            self.ring[s % SKIP_WINDOW] = float(skip)
        self.nonfinite_run.zero_()
