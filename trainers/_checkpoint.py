"""The trainer's checkpoints: what a checkpoint holds, the decoder sigma calibrated at each save,
and the exact resume from the latest readable one."""

from __future__ import annotations

import math
import sys

import torch

from trainers._runtime import TrainingError
from vaeprobe import data as vdata
from vaeprobe import io
from vaeprobe.models.families import config_of, family_of
from vaeprobe.models.likelihoods import LOG_SIGMA_MIN
from vaeprobe.random import image_generators, per_image_noise, seed_of

CALIBRATION_IMAGES = 256  # training images that set an optimal head's sigma at each save


class CheckpointMixin:
    """:class:`trainers.train.Trainer`'s saves and resumes (a save is a sync point: it reads
    tensors on the host freely)."""

    def trainer_state(self) -> dict:
        return dict(optimizer=self.optimizer.state_dict(),
                    lambda_optimizer=self.lambda_optimizer.state_dict(),
                    lam=self.lam.detach().cpu().clone(), **self.guards.state(self.step),
                    world=self.world)

    @torch.no_grad()
    def calibrate_sigma(self) -> None:
        """Set an ``optimal`` head's evaluation sigma of the EMA weights to sqrt(MSE) on a fixed
        seeded set of training images (the sigma that maximises their Gaussian likelihood).
        Its noise is keyed per image, as evaluation's: the result does not depend on the batch.
        """
        head = self.ema.head  # a two-stage model's decoder is its secondary's
        if head.kind != "optimal":
            return
        indices = vdata.select(self.dataset, CALIBRATION_IMAGES, self.config.seed)
        self.ema.eval()
        total, count = 0.0, 0
        for start in range(0, len(indices), self.config.batch_size):
            chunk = indices[start:start + self.config.batch_size]
            generators = image_generators(seed_of(self.config.seed, -1, 0), chunk.tolist(),
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
        self.step = payload["step"]
        self.guards.load(state, self.step)
        self._truncate_metrics()  # noise is keyed by (seed, step): no RNG to restore

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
