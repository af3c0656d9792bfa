"""vaeprobe's checkpoint file format: a weights-only torch file (or safetensors) holding a
dict of tensors and a JSON config under a ``format`` header, written atomically and read
without running anything in it (checkpoints are untrusted input). Loading one into a model is
:func:`vaeprobe.checkpoint.load_model`. Re-exported by :mod:`vaeprobe.io`."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import torch

from vaeprobe import validate
from vaeprobe._version import __version__
from vaeprobe.atomic import atomic_path, disk_error

CHECKPOINT_FORMAT = "vaeprobe-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, unsafe or mismatched."""


def save_checkpoint(path: str | os.PathLike, *, family: str, config: dict, state_dict: dict,
                    step: int, ema_state_dict: dict | None = None,
                    trainer_state: dict | None = None) -> Path:
    """Write a self-describing checkpoint (tensors + JSON-able config), atomically."""
    json.dumps(config)  # the config must be JSON-able: fail before writing anything
    payload = dict(
        format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_FORMAT_VERSION, family=family,
        config_json=json.dumps(config, sort_keys=True), state_dict=state_dict,
        ema_state_dict=ema_state_dict, step=int(step), vaeprobe_version=__version__,
        trainer_state=trainer_state,
    )
    with atomic_path(path, ".pt.tmp") as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:  # torch's C++ writer: a full disk is a RuntimeError
            import shutil

            free = shutil.disk_usage(tmp.parent).free
            if disk_error(error) or free < (1 << 20):  # its text may only say "pos"
                raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free in "
                              f"{tmp.parent}; torch: {str(error).splitlines()[0]})") from None
            raise OSError(errno.EIO, str(error).splitlines()[0]) from None
    return Path(path)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    validate.check_file_size(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        format_version, step = int(metadata.get("format_version", 0)), \
            int(metadata.get("step", 0))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: corrupt or "
                              f"truncated ({str(error)[:200]})") from None
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    return dict(
        format=metadata.get("format"), format_version=format_version,
        family=metadata.get("family"), config_json=metadata.get("config_json", "{}"),
        state_dict=state, ema_state_dict=ema or None, step=step,
        vaeprobe_version=metadata.get("vaeprobe_version"), trainer_state=None,
    )


# what a torch.save file starts with: a zip archive (torch >= 1.6), or a pickle (protocol 2+)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check_torch_file(path: Path) -> None:
    """Refuse a file that is not a torch checkpoint at all (text, an image, empty...)."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not any(head.startswith(magic) for magic in _TORCH_MAGIC):
        if head.startswith(b"version https://git-lfs"):
            raise CheckpointError(f"{path} is a git-LFS pointer (a small text file standing for "
                                  f"the weights), not the weights: fetch them with `git lfs "
                                  f"pull` in its repository, or download the file itself")
        text = head.isascii() and all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        what = ("it is empty" if not head else "it is a text file" if text else
                f"it starts with {head[:4]!r}")
        fix = ("pass a ckpt_step*.pt file written by vaeprobe's trainer, or a run directory"
               if path.name.startswith("ckpt_step") else "download or copy the weights again "
               "(a failed or partial download looks like this)")
        raise CheckpointError(f"{path} is not a checkpoint: {what}, not a torch.save archive "
                              f"(zip) or a safetensors file; {fix}")


def load_torch_file(path: Path, what: str = "torch file"):
    """``torch.load(weights_only=True)`` of an untrusted file, with every failure a
    :class:`CheckpointError` naming the file.

    Refuses first a torch with a known weights-only bypass
    (:func:`vaeprobe.validate.require_safe_torch`) and a file that is not a torch archive at
    all. A pickle that asks for other objects is refused without running anything, and the
    message never suggests turning the protection off.
    """
    validate.require_safe_torch()
    _check_torch_file(path)
    validate.check_file_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it asks to unpickle {validate.refused_pickle_reason(error)}"
            f", which could run code. vaeprobe reads tensors and plain containers only and "
            f"never unpickles arbitrary objects; re-save the weights as a state dict of tensors "
            f"(or as .safetensors) from code you trust") from None
    except (EOFError, RuntimeError, OSError, KeyError, IndexError, ValueError, TypeError,
            AttributeError, MemoryError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read {what} {path}: truncated, corrupt or not a torch "
                              f"file ({reason[:200]})") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without executing anything in it; validate its header.

    Returns the payload dict with ``config`` decoded from JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        payload = _read_safetensors(path)
    else:
        payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a vaeprobe checkpoint (no format={CHECKPOINT_FORMAT!r} header); for "
            f"third-party weights use a vaeprobe.adapters loader"
        )
    version = payload.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} has a corrupt vaeprobe header: format_version is "
                              f"{version!r}, not an integer")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this "
                              f"vaeprobe reads up to {CHECKPOINT_FORMAT_VERSION}: upgrade vaeprobe")
    payload["config"] = _checkpoint_config(payload, path)
    return payload


def _checkpoint_config(payload: dict, path: Path) -> dict:
    """The header of a vaeprobe checkpoint checked (types, not values: those are the family's),
    and its config decoded; a hand-edited or corrupt header is a CheckpointError naming the
    key."""
    def tensors(value) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())

    problems = []
    if not isinstance(payload.get("family"), str):
        problems.append(f"family is {type(payload.get('family')).__name__}, not a name")
    if not tensors(payload.get("state_dict")):
        problems.append("state_dict is not a dict of named tensors")
    if payload.get("ema_state_dict") is not None and not tensors(payload["ema_state_dict"]):
        problems.append("ema_state_dict is not a dict of named tensors")
    step = payload.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        problems.append(f"step is {step!r}, not an integer >= 0")
    try:
        config = json.loads(payload.pop("config_json", None) or "null")
    except (TypeError, ValueError) as error:
        config = None
        problems.append(f"config_json is not JSON ({error})")
    if not isinstance(config, dict):
        problems.append("config_json does not hold a JSON object")
    if problems:
        raise CheckpointError(f"{path} has a corrupt vaeprobe header: {'; '.join(problems)}")
    return config


def check_state_dict(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Raise a CheckpointError listing missing / unexpected keys and shape mismatches."""
    expected = model.state_dict()
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a dict of named tensors)")
    missing = [f"{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(getattr(v, 'shape', ()))}" for k, v in state.items()
                  if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f"state dict of {path} does not fit its config:"]
        for title, rows in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if rows:
                lines.append(f"  {title} ({len(rows)}): " + "; ".join(rows[:10])
                             + (" ..." if len(rows) > 10 else ""))
        raise CheckpointError("\n".join(lines))
    validate.check_weights(state, expected, path)  # floating, finite (unless allowed)
