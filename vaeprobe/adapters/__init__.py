"""Checkpoint formats -> Probe. vaeprobe's own format first; third-party formats register here."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vaeprobe import io
from vaeprobe.models import build, decoder_facts
from vaeprobe.probe import Probe, probe_for
from vaeprobe.registry import Registry

formats = Registry("checkpoint format")


def _check_state_dict(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Raise a CheckpointError that lists missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [f"{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f"state dict of {path} does not fit its config:"]
        for title, rows in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if rows:
                lines.append(f"  {title} ({len(rows)}): " + "; ".join(rows[:10])
                             + (" ..." if len(rows) > 10 else ""))
        raise io.CheckpointError("\n".join(lines))


def load_model(path: str | os.PathLike, *, ema: bool = True):
    """(model, payload) from a vaeprobe checkpoint file or run directory (latest checkpoint)."""
    path = io.resolve_checkpoint(path)
    payload = io.read_checkpoint(path)
    model = build(payload["family"], payload["config"])
    state = payload["ema_state_dict"] if ema and payload.get("ema_state_dict") else \
        payload["state_dict"]
    _check_state_dict(model, state, path)
    model.load_state_dict(state)
    payload["path"] = path
    payload["used_ema"] = bool(ema and payload.get("ema_state_dict"))
    return model.eval(), payload


@formats.register("vaeprobe")
def _native(path: Path, device=None, ema: bool = True) -> Probe:
    model, payload = load_model(path, ema=ema)
    source = dict(checkpoint=str(payload["path"]), checkpoint_sha256=io.sha256_file(
        payload["path"]), step=payload["step"], family=payload["family"],
        ema=int(payload["used_ema"]), **decoder_facts(model))
    return probe_for(model, device=device, source=source)


def load(path: str | os.PathLike, device=None, ema: bool = True, format: str = "vaeprobe"
         ) -> Probe:
    """Load a checkpoint (or a run directory's latest checkpoint) as a Probe.

    Parameters
    ----------
    path : str or Path
        A ``ckpt_step*.pt`` file or a run directory.
    device : str or torch.device, optional
        CUDA when available, else CPU.
    ema : bool
        Use the EMA weights when the checkpoint has them (the default for analyses).
    format : str
        A registered checkpoint format.

    Examples
    --------
    >>> probe = load("runs/demo")  # doctest: +SKIP
    >>> probe.layers[0].name  # doctest: +SKIP
    'z00_r1'
    """
    return formats.get(format)(io.resolve_checkpoint(path), device=device, ema=ema)
