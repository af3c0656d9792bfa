"""``python -m trainers.train``: elbo, distortion-targeted, sigma-VAE and two-stage training.

Resumable (``--resume``), DDP-ready (``torchrun``), checkpoints from early to late steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from trainers import objectives
from trainers._checkpoint import CheckpointMixin
from trainers._data import DataMixin, resident_images
from trainers._device import EMA, Guards, StepNoise, floating_tensors
from trainers._runtime import (
    TrainingError,
    TrainingInterrupted,
    _StopRequests,
    all_mean,
    checkpoint_steps,
    setup_distributed,
)
from trainers._setup import build_model, compile_regions, prepare_run_dir
from trainers.config import TrainConfig, from_args
from vaeprobe import data as vdata
from vaeprobe._threads import apply_threads
from vaeprobe.units import nll_bpd

__all__ = ["Trainer", "TrainingError", "main", "train"]


# ---- the loop ------------------------------------------------------------------------------
class Trainer(DataMixin, CheckpointMixin):
    """One training run: ``Trainer(config).run()``. A step (:meth:`train_step`) queues its work
    on the device and never reads a tensor on the host; logging and checkpoint steps are the
    sync points (:meth:`sync`), one host read each."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.threads, threads_said = apply_threads(config.threads)
        self.rank, self.world, self.device = setup_distributed(config)
        if self.rank == 0:
            print(f"trainers.train: {threads_said}", file=sys.stderr)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.directory = prepare_run_dir(config)
        self.out = self.directory.path
        self.dataset = vdata.as_dataset(vdata.load(config.data, split="train",
                                                   root=config.data_root))
        self.images = resident_images(self.dataset, self.device)
        image_shape = tuple(self.dataset[0].shape)
        self.dims = math.prod(image_shape)
        torch.manual_seed(config.seed)
        self.model = build_model(config, image_shape).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.objective = objectives.objectives.get(config.objective)
        self.target = None if self.objective.target is None else \
            float(getattr(config, self.objective.target))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizers()
        self.loss_arguments = self.objective.arguments(config)
        if self.target is not None:
            self.loss_arguments["lam"] = self.lam
        self.network = self.model
        if self.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile:  # the EMA copy and the checkpoints keep the plain modules
            compile_regions(self.model)
        self.noise = StepNoise(self.model.latent_shapes(), image_shape, config.batch_size,
                               self.rank, self.world, self.device)
        self.ema_update = EMA(self.model, self.ema, config.ema_rate)
        self.guards = Guards(self.device, {
            "weights": floating_tensors(self.model), "EMA weights": floating_tensors(self.ema),
            "Lagrange multiplier": [self.lam.detach()]})
        self.step = 0
        self.schedule = set(checkpoint_steps(config.steps, config.ckpt_every))
        self.model.train()  # once (a two-stage model keeps its frozen primary in eval mode)

    def _optimizers(self) -> None:
        """Fused Adam for the weights and for lambda (on the device): its ``found_inf`` skips
        an update, step count included, without a host read."""
        config = self.config
        self.optimizer = torch.optim.Adam(self.parameter_groups(), lr=config.lr,
                                          betas=(0.9, 0.999), fused=True)
        self.lam = torch.tensor(config.lambda_init, device=self.device, requires_grad=True)
        self.lambda_optimizer = torch.optim.Adam([self.lam], lr=config.lambda_lr,
                                                 betas=(0.0, 0.999), fused=True)

    def parameter_groups(self) -> list[dict]:
        """The weights at --lr; a learned decoder log sigma (a scalar) at --sigma-lr."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        sigma = [p for n, p in named if n.endswith("head.log_sigma")]
        groups = [dict(params=[p for n, p in named if not n.endswith("head.log_sigma")])]
        if sigma:
            groups.append(dict(params=sigma, lr=self.config.sigma_lr))
        return groups

    def autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: torch.Tensor) -> dict:
        """One update of step ``self.step``, queued on the device with no host read: forward,
        loss, backward, clip, and an Adam step that the device skips when the gradient norm is
        NaN or above --skip-threshold; then the EMA, lambda towards its target, and the
        counters. Returns the batch's logged values (tensors, read at the next sync)."""
        noise, uniform = self.noise.draw(self.config.seed, self.step)  # keyed by (seed, step)
        with self.autocast():
            terms = self.network(x, noise=noise, generator=uniform)
        loss = self.objective.loss(terms, **self.loss_arguments) / self.dims
        logged = summary(terms, loss, self.dims)  # before the step: sigma is a parameter
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip,
                                                   foreach=True)
        skip = ~(grad_norm <= self.config.skip_threshold)  # NaN compares False: skipped
        self.optimizer.found_inf = skip.float()  # fused Adam: 1 leaves weights and moments
        self.optimizer.step()
        self.ema_update.update(self.step)
        if self.target is not None:  # a non-finite D leaves lambda (decided on the device)
            objectives.lambda_step(self.lam, self.lambda_optimizer,
                                   all_mean(logged["distortion"], self.world), self.target)
        self.guards.record(self.step, skip, loss)
        logged["grad_norm"] = grad_norm
        return logged

    def advance(self) -> dict:
        """Fetch the batch of step ``self.step`` and train on it; the step count moves on. (The
        loop's body without its sync points, for benchmarks.step_cost and tests.)"""
        logged = self.train_step(self.fetch(self.batch_indices(self.step)))
        self.step += 1
        return logged

    # -- sync points: the only host reads ---------------------------------------------------
    def sync(self, logged: dict | None) -> dict:
        """The one host read of a logging or checkpoint step: the batch values of ``logged``
        (averaged over processes), lambda, and the guards' counters and finite checks, stacked
        into one tensor. Returns them by name; raises TrainingError when training must stop."""
        means = {} if logged is None else _batch_means(logged)
        values = torch.zeros(0, device=self.device)
        if means:  # every process logs: the mean over them (a save reads on rank 0 alone)
            values = all_mean(torch.stack([v.detach().float().reshape(())
                                           for v in means.values()]), self.world)
        health = torch.stack([self.lam.detach().float(), *self.guards.read()])
        read = torch.cat([values, health.to(values.device)]).tolist()  # the sync
        result = dict(zip(means, read, strict=False))
        result["lambda"], health_values = read[len(means)], read[len(means) + 1:]
        result["skipped"] = int(health_values[0])
        self.guards.check(health_values, self.step, self.config, self.out)
        return result

    def check_finite(self) -> None:
        """Stop with a TrainingError when the weights, their EMA or lambda hold NaN or inf, or
        most recent updates were skipped (a sync point: saves call it)."""
        self.sync(None)

    def metrics_row(self, logged: dict, images_per_s: float) -> dict:
        """The metrics.jsonl row of this step (a sync point)."""
        values = self.sync(logged)
        row = dict(step=self.step)
        for key in ("loss", "elbo", "elbo_bpd", "rate", "distortion", "mse", "sigma",
                    "grad_norm"):
            row[key] = values[key]
        stages = [key for key in values if key.startswith("rate_")]
        for key in stages:  # a multi-stage model: each stage's rate; ``rate`` is their total
            row[key] = values[key]
        if stages:
            row["rate"] = sum(row[key] for key in stages)
        row.update(**{"lambda": values["lambda"]}, skipped=values["skipped"],
                   images_per_s=round(images_per_s, 1), threads=self.threads)
        return row

    # -- main ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train, holding the run directory's lock: a second trainer on the same --out
        refuses (``vaeprobe.run.RunBusyError``); a dead trainer's stale lock is taken over."""
        if self.rank != 0:
            return self._run()
        said = self.directory.lock()
        try:
            if said not in ("taken", "held"):
                print(f"trainers.train: {self.out}: {said}", file=sys.stderr)
            prepare_run_dir(self.config)  # again, under the lock: no other run slipped in
            return self._run()
        finally:
            self.directory.unlock()

    def _run(self) -> Path:
        self.write_config()
        if self.config.resume:
            self.restore()
        if self.world > 1:
            dist.barrier()
        self.model.train()
        progress = _progress(self.config, self.step, self.rank)
        with _StopRequests(announce=self.rank == 0) as stop:
            try:
                self._loop(progress, stop)
            finally:
                progress.close()
        return self.out

    def _stop_requested(self, stop: _StopRequests) -> bool:
        """Whether any process was asked to stop (every process agrees, so all save and stop
        at the same step). Under DDP the processes agree at logging steps only (a collective
        and a host read): a stop then waits up to --log-every steps."""
        asked = stop.signal_name is not None
        if self.world > 1:
            if self.step % self.config.log_every:
                return False
            flag = torch.tensor([float(asked)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
        return asked

    def _interrupted(self, stop: _StopRequests) -> TrainingInterrupted:
        """Save the current step (unless it was just saved), and say how to resume."""
        checkpoint = None
        if self.step > 0:
            if self.step not in self.schedule:
                self.check_finite()
                self.save()
            checkpoint = self.directory.checkpoint_path(self.step)
        if self.world > 1:
            dist.barrier()
        return TrainingInterrupted(self.step, checkpoint, stop.signal_name or "SIGTERM",
                                   self.out)

    def _loop(self, progress, stop: _StopRequests) -> None:
        """Steps until --steps, or until a stop request (then a checkpoint, and
        TrainingInterrupted). Logging and checkpoint steps are the only sync points."""
        tick, images = time.perf_counter(), 0
        for _, x in self.batches(self.step):
            if self._stop_requested(stop):
                raise self._interrupted(stop)
            logged = self.train_step(x)
            self.step += 1
            images += self.config.batch_size
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                row = self.metrics_row(logged, images / max(time.perf_counter() - tick, 1e-9))
                tick, images = time.perf_counter(), 0
                if self.rank == 0:
                    self.directory.append_log(row)
                progress.set_postfix(rate=f"{row['rate']:.1f}", D=f"{row['distortion']:.2f}",
                                     lam=f"{row['lambda']:.4f}", refresh=False)
            elif self.step in self.schedule:
                self.check_finite()  # every process: all stop together
            if self.step in self.schedule:
                self.save()
            progress.update(1)


LOGGED = ("loss", "elbo", "elbo_bpd", "rate", "distortion", "mse", "sigma", "grad_norm")


def summary(terms, loss: torch.Tensor, dims: int) -> dict:
    """The logged values of a batch (batch means): the loss, the ELBO (nats per image, and
    bits/dim of 8-bit data), rate, distortion, mse (D per dimension), the decoder sigma, and
    each stage's rate (``stage_rates``, per image)."""
    elbo = (terms.log_px - terms.rate).mean()
    return dict(loss=loss, elbo=elbo, elbo_bpd=nll_bpd(elbo, dims, "dequantized", n_bits=8),
                rate=terms.rate.mean(), distortion=terms.distortion.mean(),
                mse=terms.distortion.mean() / dims, sigma=terms.sigma,
                stage_rates=terms.stage_rates)


def _batch_means(logged: dict) -> dict:
    """The 0-dim values of :func:`summary` (plus ``grad_norm``) by name; each stage's rate
    as ``rate_<stage>``."""
    means = {key: logged[key] for key in LOGGED if key in logged}
    for stage, rate in logged["stage_rates"].items():
        means[f"rate_{stage}"] = rate.mean()
    return means


def _progress(config: TrainConfig, start: int, rank: int):
    """The step bar of rank 0; elsewhere, or with --no-progress, a disabled one."""
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc=f"train {Path(config.out).name}",
                unit="step", dynamic_ncols=True, disable=rank != 0 or not config.progress)


def train(config: TrainConfig) -> Path:
    """Train with ``config``; returns the run directory."""
    trainer = Trainer(config)
    try:
        out = trainer.run()
        if trainer.world > 1:
            dist.barrier()  # rank 0 may still be writing: tear down only when all are done
        return out
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None) -> int:
    config = None
    try:
        config = from_args(argv)
        out = train(config)
    except TrainingInterrupted as stopped:
        print(f"trainers.train: {stopped.describe()}", file=sys.stderr)
        return 128 + getattr(signal, stopped.signal_name, signal.SIGINT)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step
        where = f" --out {config.out} --resume" if config is not None else " ... --resume"
        print(f"\ntrainers.train: interrupted; the run keeps its latest checkpoint (resume "
              f"with: python -m trainers.train{where})", file=sys.stderr)
        return 130
    except (TrainingError, ValueError, OSError) as error:
        print(f"trainers.train: error: {error}", file=sys.stderr)
        return 2
    print(f"run written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
