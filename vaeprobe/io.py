"""Results (netCDF) and checkpoint payloads (weights-only torch files), both written atomically.

What a run directory holds and how its files are named is ``vaeprobe.run``'s.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)`` (or
safetensors), so a file whose unpickling would run code is refused without running it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import pickle
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from vaeprobe import validate
from vaeprobe._version import __version__

CHECKPOINT_FORMAT = "vaeprobe-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, unsafe or mismatched."""


# ---------------------------------------------------------------------------------------------
# provenance and results


def _attr_value(value):
    """A netCDF-safe version of an attribute: bool -> 0/1, None/dict/list-of-mixed -> JSON."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, str | int | float | np.integer | np.floating):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.ndim == 1:
        return value
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return np.asarray(value)
    return json.dumps(value, default=str, sort_keys=True)


def clean_attrs(attrs: dict) -> dict:
    """Convert every attribute into a value netCDF can hold and give back unchanged."""
    return {str(key): _attr_value(value) for key, value in attrs.items()}


def provenance(analysis: str, parameters: dict, **facts) -> dict:
    """Attributes every result carries: how to recompute it.

    Examples
    --------
    >>> attrs = provenance("rate", {"n_images": 10}, dataset="patches32:test", seed=0)
    >>> attrs["analysis"], json.loads(attrs["parameters"])
    ('rate', {'n_images': 10})
    """
    attrs = dict(
        vaeprobe_version=__version__,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        analysis=analysis,
        parameters=json.dumps(parameters, default=str, sort_keys=True),
    )
    attrs.update(facts)
    return clean_attrs(attrs)


# Temporary files are named ``.<target>.<host>-<pid>-<random><suffix>`` beside their target, so
# that one left by a killed writer (SIGKILL skips every cleanup) can be told apart and removed by
# the next write to the same directory: only names of this shape, and only when the writing
# process is gone (same host) or the file is older than STALE_AFTER_S.
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z_]{8}\.[a-z0-9.]*tmp$")
_LEGACY_TEMP_NAME = re.compile(r"^\..+\.[0-9a-z_]{8}\.(nc|pt|png)\.tmp$")  # mkstemp's names
STALE_AFTER_S = 3600.0


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove temporary files that killed writers left in ``directory``; return them.

    Only vaeprobe's own temporary names are touched (``.<target>.<host>-<pid>-<random>.*tmp``,
    and the older ``.<target>.<random>.nc.tmp`` / ``.pt.tmp`` / ``.png.tmp``), and only when
    the process that wrote one is gone (same host) or the file is older than an hour.
    """
    directory, now = Path(directory), time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match and not _LEGACY_TEMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            orphan = bool(match) and match["host"] == host and not _pid_alive(int(match["pid"]))
            if old or orphan:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # raced with its owner or another cleaner: leave it
            continue
    return removed


def _create_temporary(directory: Path, name: str, suffix: str) -> Path:
    """Create an empty temporary file with the user's umask (mkstemp would make it 0600)."""
    stem = f".{name}.{_host_tag()}-{os.getpid()}-"
    for _ in range(100):
        candidate = directory / (stem + secrets.token_hex(4) + suffix)
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


class OutputError(OSError):
    """A result, figure or checkpoint cannot be written where it was asked to go."""


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before any work that ``path`` can be written (its directory made if missing).

    Creates and removes a probe file in the nearest existing directory, so read-only mounts,
    permissions and a file standing where a directory should be are all caught.
    Raises :class:`OutputError` naming the path and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory; name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a directory; "
                          f"choose another path")
    try:
        probe = _create_temporary(parent, "write-check", ".tmp")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {parent} is not writable "
                          f"({error.strerror or error}); choose another path") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The file gets the user's umask (like ``open``). Stale temporaries of killed writers in the
    same directory are removed first (:func:`clean_stale_temporaries`). A failure to create,
    write or rename is an :class:`OutputError` naming ``path``, not the hidden temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        tmp = _create_temporary(path.parent, path.name, suffix)
    except OSError as error:
        raise OutputError(f"could not write {path}: {error.strerror or error} "
                          f"(directory {path.parent})") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"could not write {path}: {error.strerror or error}") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# names a run directory or model folder keeps for its inputs: never an output's name there
_INPUT_NAMES = re.compile(r"^(ckpt_step\d+\.(pt|safetensors)|config\.json|metrics\.jsonl|"
                          r"model_config\.json|.*\.(pt|pth|th|ckpt|safetensors|bin|pkl))$")


def is_result(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file vaeprobe wrote: a netCDF result (``vaeprobe_version`` attr)
    or a figure (PNG ``Software: vaeprobe``)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head.startswith(b"\x89HDF"):
            import h5py

            with h5py.File(path, "r") as stored:
                return "vaeprobe_version" in stored.attrs
        if head.startswith(b"\x89PNG"):
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith("vaeprobe")
    except (OSError, ValueError):
        return False
    return False


def check_output(path: str | os.PathLike, what: str = "output", *, inputs=(),
                 overwrite: bool = False) -> Path:
    """Check before any work that ``path`` may be written: not one of ``inputs`` (files, or
    run directories / model folders, whose checkpoints, configs and weights are protected),
    an existing file replaced only when it is a vaeprobe result or ``overwrite``, and a
    writable place (:func:`check_writable`). Raises :class:`OutputError` naming the path."""
    path = Path(path)
    target = path.resolve()
    for source in inputs:
        source = Path(source)
        if not source.exists():
            continue
        resolved = source.resolve()
        if resolved == target or (resolved.is_dir() and target.is_relative_to(resolved)
                                  and target.is_dir()):
            raise OutputError(f"refusing to write {what} {path}: it is an input of this command "
                              f"({source}); choose another path")
        folder = resolved if resolved.is_dir() else resolved.parent
        if target.parent == folder and _INPUT_NAMES.match(target.name):
            raise OutputError(f"refusing to write {what} {path}: {folder} holds the model being "
                              f"read and that name is one of its inputs' names (checkpoints, "
                              f"configs, weights); choose another name")
    if path.is_file() and not overwrite and not is_result(path):
        raise OutputError(f"refusing to replace {path} ({what}): it exists and is not a "
                          f"vaeprobe result; choose another path or pass --overwrite "
                          f"(overwrite=True)")
    return check_writable(path, what)


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a results Dataset to netCDF (h5netcdf, gzip), atomically.

    An existing file is replaced only when it is a vaeprobe result (:func:`is_result`) or
    with ``overwrite=True``. Raises :class:`OutputError` (an ``OSError``) naming ``path`` when
    it cannot be written (a full disk included): nothing is left half-written, and ``ds``
    itself is untouched, so it can be saved elsewhere.

    Examples
    --------
    >>> import tempfile, xarray as xr
    >>> path = save(xr.Dataset({"a": ("x", [1.0, 2.0])}), tempfile.mkdtemp() + "/a.nc")
    >>> float(open_results(path)["a"].sum())
    3.0
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"save expects an xarray.Dataset, got {type(ds).__name__}")
    ds = ds.copy()
    ds.attrs = clean_attrs(ds.attrs)
    encoding = {}
    for name, variable in ds.variables.items():
        variable.attrs = clean_attrs(variable.attrs)
        if variable.dtype.kind in "fiub" and variable.ndim > 0:
            encoding[name] = {"compression": "gzip", "compression_opts": 4}
        if variable.dtype == bool:
            ds[name] = variable.astype(np.uint8)
    if Path(path).is_file() and not overwrite and not is_result(path):
        raise OutputError(f"refusing to replace {path}: it exists and is not a vaeprobe result; "
                          f"choose another path or pass overwrite=True")
    try:
        with atomic_path(path, ".nc.tmp") as tmp:
            try:
                ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding, invalid_netcdf=False)
            except (RuntimeError, ValueError) as error:  # h5py's own write failures
                if not _disk_error(error):
                    raise
                raise OSError(errno.ENOSPC, str(error)) from None
    except OutputError as error:
        raise OutputError(f"{error}; nothing was written, the Dataset is unchanged in memory "
                          f"(save it elsewhere)") from None
    return Path(path)


def open_results(path: str | os.PathLike) -> xr.Dataset:
    """Read a results file written by :func:`save` (fully loaded, file closed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file not found: {path}")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def parameters(ds: xr.Dataset) -> dict:
    """The parameters a result was computed with (decoded from its ``parameters`` attr)."""
    return json.loads(ds.attrs.get("parameters", "{}"))


# ---------------------------------------------------------------------------------------------
# checkpoints


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's sha256, cached against its size and mtime (:mod:`vaeprobe.digests`)."""
    from vaeprobe.digests import file_sha256

    return file_sha256(path)


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
            raise OSError(errno.ENOSPC if _disk_error(error) else errno.EIO,
                          str(error).splitlines()[0]) from None
    return Path(path)


def _disk_error(error: BaseException) -> bool:
    """Whether a library's error text says the disk is full or the write failed."""
    text = str(error).lower()
    return any(words in text for words in ("no space", "disk full", "quota", "errno = 28",
                                           "failed writing", "can't write", "unable to write",
                                           "write failed"))


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
        head = handle.read(4)
    if not any(head.startswith(magic) for magic in _TORCH_MAGIC):
        what = "it is empty" if not head else f"it starts with {head!r}"
        raise CheckpointError(f"{path} is not a checkpoint: {what}, not a torch.save archive "
                              f"(zip) or a safetensors file; pass a ckpt_step*.pt file written "
                              f"by vaeprobe's trainer, or a run directory")


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
