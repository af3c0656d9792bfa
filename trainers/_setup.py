"""Before :mod:`trainers.train` trains: the run directory (refused when it is another run's,
or a different config on --resume) and the model its config describes."""

from __future__ import annotations

import json

import torch

from trainers._runtime import TrainingError
from trainers.config import TrainConfig
from trainers.objectives import objectives
from vaeprobe import io
from vaeprobe.checkpoint import load_model
from vaeprobe.models import HVAE, TwoStageVAE, preset, secondary_config
from vaeprobe.models.hvae import Block, TopDownLayer
from vaeprobe.run import LOCK_NAME, Run


def prepare_run_dir(config: TrainConfig) -> Run:
    """Refuse another run's directory; on --resume, refuse a different config."""
    run = Run(config.out)
    out, stored = run.path, run.config
    io.check_writable(out / "config.json", "the run directory (--out)")
    if stored is not None:
        if not config.resume:
            raise TrainingError(f"{out} already holds a run; pass --resume to continue it or "
                                f"choose another --out (nothing was overwritten)")
        changed = config.differs_from(stored)
        if changed:
            raise TrainingError(f"refusing to resume {out}: its config differs in "
                                f"{json.dumps(changed)} (stored, requested)")
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise TrainingError(f"{out} exists and is not an empty vaeprobe run directory; choose "
                            f"another --out (nothing was overwritten)")
    return run


def decoder_likelihood(config: TrainConfig) -> str | None:
    """The decoder head: --likelihood; else the objective's (``optimal`` for the Lagrangian
    objectives) unless --sigma is set; else None (the preset's).

    The Lagrangian's loss never uses the decoder sigma, so the head changes no weight; with
    ``optimal`` the checkpoint evaluates at sigma^2 = MSE (sigma-VAE's optimum, calibrated on
    training images at every save) instead of a sigma = 1 that makes bits/dim 9.3 + rate.
    """
    if config.likelihood:
        return config.likelihood
    objective = objectives.get(config.objective)
    if objective.decoder and config.sigma == 1.0:
        return objective.decoder
    return None


def build_model(config: TrainConfig, image_shape) -> torch.nn.Module:
    overrides = {k: getattr(config, k) for k in ("merge",) if getattr(config, k) is not None}
    if decoder_likelihood(config):
        overrides["likelihood"] = decoder_likelihood(config)
    if config.likelihood == "fixed" or (not config.likelihood and config.sigma != 1.0):
        overrides["sigma"] = config.sigma
    if objectives.get(config.objective).needs_primary:
        primary, payload = _load_primary(config.primary)
        primary_gamma = Run.of(payload["path"]).gamma
        if primary_gamma is not None and not config.gamma < primary_gamma:
            raise ValueError(f"the secondary's gamma ({config.gamma:g}) must be below the "
                             f"primary's distortion target ({primary_gamma:g}): it models "
                             f"what the primary left out")
        if tuple(primary.image_shape) != tuple(image_shape):
            raise ValueError(f"the primary models images {primary.image_shape}, the data has "
                             f"{tuple(image_shape)}")
        model = TwoStageVAE(primary.config, secondary_config(primary.config, **overrides))
        model.primary.load_state_dict(primary.state_dict())
        return model
    model_config = preset(config.preset, **overrides)
    model = HVAE(model_config)
    if tuple(model.image_shape) != tuple(image_shape):
        raise ValueError(f"preset {config.preset!r} models images {model.image_shape} (C, H, W) "
                         f"but {config.data!r} has {tuple(image_shape)}; choose a preset that "
                         f"fits (e.g. tiny-8 for digits8, demo-cpu for patches32)")
    return model


def _load_primary(path: str):
    try:
        model, payload = load_model(path, ema=True)
    except (FileNotFoundError, NotADirectoryError, io.CheckpointError) as error:
        raise TrainingError(f"--primary {path} is not a vaeprobe run: {error}") from None
    if not isinstance(model, HVAE):
        raise TrainingError(f"--primary {path} holds a {payload['family']} model; the primary "
                            f"of a two-stage run must be an hvae run")
    return model, payload


def compile_regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``torch.compile`` the repeated blocks of ``model`` in place (regional compilation): every
    top-down layer, and the encoder's residual blocks outside them. All instances of a block
    share its code, so one compiled graph serves them all (a new one per distinct shape, e.g.
    per resolution), and compiling takes seconds where the whole model took minutes; the
    modules stay plain ``nn.Module`` s (state dicts, EMA copies and checkpoints unchanged).
    Returns the compiled modules."""
    inside = {id(block) for layer in model.modules() if isinstance(layer, TopDownLayer)
              for block in layer.modules()}
    regions = [m for m in model.modules() if isinstance(m, TopDownLayer) or
               (isinstance(m, Block) and id(m) not in inside)]
    for module in regions:
        module.compile()
    return regions
