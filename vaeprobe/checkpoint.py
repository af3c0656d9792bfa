"""vaeprobe's own checkpoints read into models: the stored config checked and sized before the
model is built, the weights checked against it.

Reading files is the loading layer's job, not the models': :mod:`vaeprobe.models` only builds
and checks (:mod:`vaeprobe.models.families`); the trainer (resuming, the primary of a two-stage
run) and the ``vaeprobe`` checkpoint format (:mod:`vaeprobe.adapters.native`) load through
:func:`load_model`.
"""

from __future__ import annotations

import os

from vaeprobe import io
from vaeprobe.models.families import build, check_stored_config
from vaeprobe.run import resolve_checkpoint


def load_model(path: str | os.PathLike, *, ema: bool = True):
    """(model, payload) from a vaeprobe checkpoint file or run directory (latest checkpoint).

    The stored config is checked and sized before the model is built
    (:func:`~vaeprobe.models.families.check_stored_config`), the weights against its shapes,
    dtypes and finiteness.

    Parameters
    ----------
    path : str or os.PathLike
        A ``ckpt_step*.pt`` / ``.safetensors`` file, or a run directory (its latest checkpoint).
    ema : bool
        Load the exponential moving average of the weights where the checkpoint has one.

    Returns
    -------
    (torch.nn.Module, dict)
        The model in eval mode, and the checkpoint's payload with ``path`` and ``used_ema``.
    """
    path = resolve_checkpoint(path)
    payload = io.read_checkpoint(path)
    check_stored_config(payload["family"], payload["config"], path)
    model = build(payload["family"], payload["config"])
    state = payload["ema_state_dict"] if ema and payload.get("ema_state_dict") else \
        payload["state_dict"]
    io.check_state_dict(model, state, path)
    model.load_state_dict(state)
    payload["path"] = path
    payload["used_ema"] = bool(ema and payload.get("ema_state_dict"))
    return model.eval(), payload
