"""Checkpoint formats -> Probe, registered by name. vaeprobe's own format is in ``native``;
third-party formats register here with the same :data:`formats` registry."""

from __future__ import annotations

import os
from pathlib import Path

from vaeprobe.adapters.native import load_model, open_native, probe_for
from vaeprobe.probe import Probe
from vaeprobe.registry import Registry


def _check_opener(name: str, opener) -> None:
    if not callable(opener):
        raise TypeError(f"checkpoint format {name!r} must register a callable "
                        f"opener(path, device=None, **options) -> Probe")


formats = Registry("checkpoint format", check=_check_opener)
formats.register("vaeprobe", open_native)


def load(path: str | os.PathLike, device=None, ema: bool = True, format: str = "vaeprobe"
         ) -> Probe:
    """Load a checkpoint (or a run directory's latest checkpoint) as a Probe.

    The format is chosen first; its opener then resolves the path.

    Parameters
    ----------
    path : str or Path
        A ``ckpt_step*.pt`` file or a run directory.
    device : str or torch.device, optional
        CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
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
    from vaeprobe.distributed import default_device

    device = device if device is not None else default_device()  # cuda:LOCAL_RANK (torchrun)
    return formats.get(format)(Path(path), device=device, ema=ema)


# third-party formats
from vaeprobe.adapters.vdvae import open_vdvae  # noqa: E402

formats.register("vdvae", open_vdvae)

__all__ = ["formats", "load", "load_model", "probe_for"]
