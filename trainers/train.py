"""``python -m trainers.train``: elbo, distortion-targeted, sigma-VAE and two-stage training.

Resumable (``--resume``), DDP-ready (``torchrun``), checkpoints from early to late steps.
"""

from __future__ import annotations

import collections
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
from trainers._runtime import (
    TrainingError,
    TrainingInterrupted,
    _StopRequests,
    all_mean,
    checkpoint_steps,
    setup_distributed,
)
from trainers._setup import build_model, prepare_run_dir
from trainers.config import TrainConfig, from_args
from vaeprobe import data as vdata
from vaeprobe import io
from vaeprobe._threads import apply_threads
from vaeprobe.models.families import config_of, family_of
from vaeprobe.models.likelihoods import LOG_SIGMA_MIN
from vaeprobe.random import image_generators, per_image_noise
from vaeprobe.units import nll_bpd


# ---- the loop ------------------------------------------------------------------------------
class Trainer:
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
        dataset = vdata.as_dataset(vdata.load(config.data, split="train",
                                              root=config.data_root or None))
        self.dataset = dataset
        self.images = dataset.images.to(self.device) \
            if isinstance(dataset, vdata.ImageTensorDataset) else None  # resident: no copies
        image_shape = tuple(dataset[0].shape)
        self.dims = math.prod(image_shape)
        torch.manual_seed(config.seed)
        self.model = build_model(config, image_shape).to(self.device)
        if config.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.objective = objectives.objectives.get(config.objective)
        self.loss_arguments = self.objective.arguments(config)  # + lam, towards its target
        if self.objective.target is not None:
            self.loss_arguments["lam"] = None  # set below, once lam exists
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameter_groups(), lr=config.lr,
                                          betas=(0.9, 0.999))
        self.lam = torch.tensor(config.lambda_init, requires_grad=True)
        if "lam" in self.loss_arguments:
            self.loss_arguments["lam"] = self.lam
        self.lambda_optimizer = torch.optim.Adam([self.lam], lr=config.lambda_lr,
                                                 betas=(0.0, 0.999))
        self.network = self.model
        if self.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile:  # the EMA copy and the checkpoints keep the plain module
            self.network = torch.compile(self.network)
        self.step, self.skipped = 0, 0
        self.recent_skips = collections.deque(maxlen=100)
        self.schedule = set(checkpoint_steps(config.steps, config.ckpt_every))

    def parameter_groups(self) -> list[dict]:
        """The weights at --lr; a learned decoder log sigma (a scalar) at --sigma-lr."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        sigma = [p for n, p in named if n.endswith("head.log_sigma")]
        groups = [dict(params=[p for n, p in named if not n.endswith("head.log_sigma")])]
        if sigma:
            groups.append(dict(params=sigma, lr=self.config.sigma_lr))
        return groups

    # -- data order: a permutation per epoch from (seed, epoch); resumable from the step alone
    def batch_indices(self, step: int) -> torch.Tensor:
        n, batch = len(self.dataset), self.config.batch_size
        per_epoch = max(1, n // batch)
        epoch, position = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator)
        indices = order[position * batch:(position + 1) * batch]
        local = batch // self.world
        return indices[self.rank * local:(self.rank + 1) * local]

    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images of the training set at ``indices``, on the device."""
        if self.images is not None:
            return self.images[indices.to(self.device)]
        return vdata.gather(self.dataset, indices).to(self.device, non_blocking=True)

    def batches(self, start: int):
        """Yield (indices, uint8 images on the device) for steps ``start``, ``start + 1``...

        A tensor dataset lives on the device (moved once; a step indexes it there, with no
        copy from the host); any other is read ahead by ``--workers`` loader processes into
        pinned memory. The order is ``batch_indices``' either way, so a resume is exact.
        """
        if self.images is not None:
            for step in range(start, self.config.steps):
                indices = self.batch_indices(step)
                yield indices, self.fetch(indices)
            return
        steps = (self.batch_indices(step) for step in range(start, self.config.steps))
        for indices, x in vdata.load_batches(self.dataset, steps, workers=self.config.workers,
                                             device=self.device):
            yield indices, x.to(self.device, non_blocking=True)

    def autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def example_noise(self, step: int, indices: torch.Tensor):
        """Per-example randomness keyed by (seed, step, dataset index): (latent noise per layer,
        per-example generators for dequantization). The same example gets the same noise
        whatever the process layout or a resume, so DDP matches one process and resumes are
        exact without restoring RNG states."""
        generators = image_generators(_noise_seed(self.config.seed, step, 0), indices.tolist(),
                                      self.device)
        noise = per_image_noise(self.model.latent_shapes(), generators, 1, self.device)
        return noise, generators

    def train_step(self, x: torch.Tensor, indices: torch.Tensor) -> dict:
        """One update: the model reports its terms, the objective weighs them, Adam steps
        (unless the gradient is NaN or huge: then skipped and counted), lambda follows the
        objective's target. Returns the batch's logged values."""
        self.model.train()
        noise, generators = self.example_noise(self.step, indices)
        with self.autocast():
            terms = self.network(x, noise=noise, generator=generators)
        loss = self.objective.loss(terms, **self.loss_arguments) / self.dims
        result = summary(terms, loss, self.dims)  # before the step: sigma is a parameter
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        result["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        skip = not math.isfinite(float(result["grad_norm"])) or \
            float(result["grad_norm"]) > self.config.skip_threshold
        if not skip:
            self.optimizer.step()
            self.update_ema()
            self.check_finite(result["loss"])
        self._count_nonfinite_loss(result["loss"])
        if self.objective.target is not None:
            distortion = all_mean(result["distortion"], self.world)
            if bool(torch.isfinite(distortion.detach()).all()):  # NaN would poison lambda
                objectives.lambda_step(self.lam, self.lambda_optimizer, distortion,
                                       getattr(self.config, self.objective.target))
        self.count_skip(skip)
        return result

    def count_skip(self, skip: bool) -> None:
        """Count a skipped update; stop when most recent updates were skipped."""
        self.skipped += skip
        self.recent_skips.append(skip)
        if len(self.recent_skips) >= 50 and sum(self.recent_skips) > \
                self.config.max_skip_fraction * len(self.recent_skips):
            raise TrainingError(
                f"{sum(self.recent_skips)} of the last {len(self.recent_skips)} updates were "
                f"skipped (gradient norm NaN or above --skip-threshold "
                f"{self.config.skip_threshold}); the model is not learning. Lower --lr or "
                f"raise --skip-threshold")

    def _count_nonfinite_loss(self, loss: torch.Tensor) -> None:
        """A non-finite loss skips its update (its gradient is not finite either); after
        NONFINITE_LOSS_PATIENCE in a row training stops: the weights give NaN on every batch."""
        finite = bool(torch.isfinite(loss.detach()))
        self.nonfinite_losses = 0 if finite else getattr(self, "nonfinite_losses", 0) + 1
        if self.nonfinite_losses >= NONFINITE_LOSS_PATIENCE:
            raise TrainingError(
                f"the loss has been non-finite (NaN or inf) for {self.nonfinite_losses} steps in "
                f"a row (to step {self.step + 1}): the weights overflowed (--lr "
                f"{self.config.lr:g}). Those updates were skipped and no checkpoint was written "
                f"since; start again with a lower --lr")

    @torch.no_grad()
    def check_finite(self, loss: torch.Tensor | None = None) -> None:
        """Stop with a TrainingError when the weights or their EMA (parameters and buffers,
        e.g. a calibrated decoder sigma) or lambda hold NaN or inf: an update that overflowed,
        which nothing later can recover and no checkpoint may keep."""
        for name, module in (("weights", self.model), ("EMA weights", self.ema),
                             ("Lagrange multiplier", {"lam": self.lam})):
            state = module.state_dict() if isinstance(module, torch.nn.Module) else module
            params = [p.detach() for p in state.values() if p.is_floating_point()]
            if params and not bool(torch.isfinite(torch.stack(
                    torch._foreach_norm(params, float("inf")))).all()):
                loss_said = "" if loss is None else f" (loss {float(loss):.4g})"
                raise TrainingError(
                    f"the {name} became non-finite (NaN or inf) at step {self.step + 1}"
                    f"{loss_said}: the update overflowed (--lr {self.config.lr:g}, --ema-rate "
                    f"{self.config.ema_rate:g}). No checkpoint was written with them; the "
                    f"latest checkpoint in {self.out} is the last good one. Start again with a "
                    f"lower --lr")

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA with warm-up: decay min(rate, (1 + n) / (10 + n)), so short runs track too."""
        rate = min(self.config.ema_rate, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            ema_p.lerp_(p, 1 - rate)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_b.copy_(b)

    # -- checkpoints --------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return dict(optimizer=self.optimizer.state_dict(),
                    lambda_optimizer=self.lambda_optimizer.state_dict(),
                    lam=self.lam.detach().clone(), skipped=self.skipped,
                    recent_skips=list(self.recent_skips), world=self.world)

    @torch.no_grad()
    def calibrate_sigma(self) -> None:
        """Set an ``optimal`` head's evaluation sigma of the EMA weights to sqrt(MSE) on a fixed
        seeded set of training images (the sigma that maximises their Gaussian likelihood)."""
        head = self.ema.head  # a two-stage model's decoder is its secondary's
        if head.kind != "optimal":
            return
        indices = vdata.select(self.dataset, CALIBRATION_IMAGES, self.config.seed)
        self.ema.eval()
        total, count = 0.0, 0
        for start in range(0, len(indices), self.config.batch_size):
            chunk = indices[start:start + self.config.batch_size]
            generators = image_generators(_noise_seed(self.config.seed, -1, 0), chunk.tolist(),
                                          self.device)
            noise = per_image_noise(self.model.latent_shapes(), generators, 1, self.device)
            x = self.fetch(chunk)
            likelihood, _ = self.ema.posterior_pass(x, noise=noise)
            total += float(((x.float() / 255.0 - likelihood.loc.float()) ** 2).sum())
            count += x.numel()
        head.log_sigma.fill_(max(0.5 * math.log(total / count), LOG_SIGMA_MIN))

    def save(self) -> None:
        if self.rank != 0:
            return
        self.calibrate_sigma()
        self.check_finite()  # never write a non-finite checkpoint
        self.directory.save_checkpoint(self.step, family=family_of(self.model),
                                       config=config_of(self.model),
                                       state_dict=self.model.state_dict(),
                                       ema_state_dict=self.ema.state_dict(),
                                       trainer_state=self.trainer_state())

    def restore(self) -> None:
        found = self.directory.checkpoints()
        if not found:  # killed before its first checkpoint: start afresh, drop its log lines
            self._truncate_metrics()
            return
        payload = self._last_good_checkpoint(found)
        state = payload["trainer_state"]
        self.model.load_state_dict(payload["state_dict"])
        self.ema.load_state_dict(payload["ema_state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lambda_optimizer.load_state_dict(state["lambda_optimizer"])
        with torch.no_grad():
            self.lam.copy_(state["lam"])
        self.skipped, self.step = state["skipped"], payload["step"]
        self.recent_skips.extend(state["recent_skips"])
        self._truncate_metrics()  # noise is keyed by (seed, step, example): no RNG to restore

    def _last_good_checkpoint(self, found: list) -> dict:
        """The payload of the latest readable checkpoint; an unreadable later one (truncated by
        a crash or a full disk) is named and skipped."""
        for number, (step, path) in enumerate(reversed(found)):
            try:
                payload = io.read_checkpoint(path)
                if not payload.get("trainer_state") or not payload.get("ema_state_dict"):
                    raise io.CheckpointError(f"{path} has no trainer state to resume from")
                if number and self.rank == 0:
                    print(f"trainers.train: resuming from the previous good checkpoint {path} "
                          f"(step {step})", file=sys.stderr)
                return payload
            except io.CheckpointError as error:
                if self.rank == 0:
                    print(f"trainers.train: skipping the checkpoint of step {step}: {error}",
                          file=sys.stderr)
        raise TrainingError(f"no readable checkpoint to resume in {self.out} (tried "
                            f"{', '.join(p.name for _, p in found)}); start a new run")

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from: they will be redone."""
        if self.rank == 0:
            self.directory.truncate_log(self.step)

    def write_config(self) -> None:
        """The run's config.json, once (a resumed run keeps the one it started with)."""
        if self.rank == 0:
            target = self.objective.target
            self.directory.write_config(train=self.config.to_dict(),
                                        distortion_target=None if target is None else
                                        float(getattr(self.config, target)),
                                        family=family_of(self.model),
                                        model=config_of(self.model), world_size=self.world,
                                        threads=self.threads)

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
        progress = _progress(self.config, self.step, self.rank)
        tick, images = time.perf_counter(), 0
        with _StopRequests(announce=self.rank == 0) as stop:
            try:
                self._loop(progress, stop, tick, images)
            finally:
                progress.close()
        return self.out

    def _stop_requested(self, stop: _StopRequests) -> bool:
        """Whether any process was asked to stop (every process agrees, so all save and stop
        at the same step)."""
        asked = stop.signal_name is not None
        if self.world > 1:
            flag = torch.tensor([float(asked)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
        return asked

    def _interrupted(self, stop: _StopRequests) -> TrainingInterrupted:
        """Save the current step (unless it was just saved), and say how to resume."""
        checkpoint = None
        if self.step > 0:
            if self.step not in self.schedule:
                self.save()
            checkpoint = self.directory.checkpoint_path(self.step)
        if self.world > 1:
            dist.barrier()
        return TrainingInterrupted(self.step, checkpoint, stop.signal_name or "SIGTERM",
                                   self.out)

    def _loop(self, progress, stop: _StopRequests, tick: float, images: int) -> None:
        """Steps until --steps, or until a stop request (then a checkpoint, and
        TrainingInterrupted)."""
        for indices, x in self.batches(self.step):
            if self._stop_requested(stop):
                raise self._interrupted(stop)
            result = self.train_step(x, indices)
            self.step += 1
            images += len(indices) * self.world
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                elapsed = time.perf_counter() - tick
                row = self.metrics_row(result, images / max(elapsed, 1e-9))
                tick, images = time.perf_counter(), 0
                if self.rank == 0:
                    self.directory.append_log(row)
                progress.set_postfix(rate=f"{row['rate']:.1f}", D=f"{row['distortion']:.2f}",
                                     lam=f"{row['lambda']:.4f}", refresh=False)
            if self.step in self.schedule:
                self.save()
            progress.update(1)

    def metrics_row(self, result: dict, images_per_s: float) -> dict:
        row = dict(step=self.step)
        for key in ("loss", "elbo", "elbo_bpd", "rate", "distortion", "mse", "sigma",
                    "grad_norm"):
            row[key] = float(all_mean(result[key].detach().float(), self.world))
        for stage, rate in result["stage_rates"].items():  # a multi-stage model: each stage's
            row[f"rate_{stage}"] = float(all_mean(rate.detach().mean().float(), self.world))
        if result["stage_rates"]:  # ``rate`` is then their total, not the trained stage's
            row["rate"] = sum(row[f"rate_{stage}"] for stage in result["stage_rates"])
        row.update(**{"lambda": float(self.lam.detach())}, skipped=self.skipped,
                   images_per_s=round(images_per_s, 1), threads=self.threads)
        return row


def summary(terms, loss: torch.Tensor, dims: int) -> dict:
    """The logged values of a batch (batch means): the loss, the ELBO (nats per image, and
    bits/dim of 8-bit data), rate, distortion, mse (D per dimension), the decoder sigma, and
    each stage's rate (``stage_rates``, per image)."""
    elbo = (terms.log_px - terms.rate).mean()
    return dict(loss=loss, elbo=elbo, elbo_bpd=nll_bpd(elbo, dims, "dequantized", n_bits=8),
                rate=terms.rate.mean(), distortion=terms.distortion.mean(),
                mse=terms.distortion.mean() / dims, sigma=terms.sigma,
                stage_rates=terms.stage_rates)


NONFINITE_LOSS_PATIENCE = 10  # non-finite losses in a row before training stops
CALIBRATION_IMAGES = 256  # training images that set an optimal head's sigma at each save


def _noise_seed(seed: int, step: int, rank: int) -> int:
    return hash((seed, step, rank)) & 0x7FFF_FFFF_FFFF_FFFF


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
