"""Results (netCDF) and checkpoint payloads (weights-only torch files), both written atomically.

What a run directory holds and how its files are named is ``vaeprobe.run``'s. The atomic writes
live in :mod:`vaeprobe.atomic` and the checkpoint file format in
:mod:`vaeprobe.checkpoint_format`; their names are re-exported here.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)`` (or
safetensors), so a file whose unpickling would run code is refused without running it.
"""

from __future__ import annotations

import datetime
import io as _io
import json
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from vaeprobe._version import __version__
from vaeprobe.atomic import (  # noqa: F401 (re-exported: vaeprobe.io's names are kept)
    STALE_AFTER_S,
    OutputError,
    atomic_path,
    check_writable,
    clean_stale_temporaries,
    disk_error,
    sha256_file,
)
from vaeprobe.checkpoint_format import (  # noqa: F401 (re-exported)
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    check_state_dict,
    load_torch_file,
    read_checkpoint,
    save_checkpoint,
)

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


# names a run directory or model folder keeps for its inputs: never an output's name there
_INPUT_NAMES = re.compile(r"^(ckpt_step\d+\.(pt|safetensors)|config\.json|metrics\.jsonl|"
                          r"model_config\.json|.*\.(pt|pth|th|ckpt|safetensors|bin|pkl))$")


# the PNG "Software" tag of every figure vaeprobe writes (is_result knows its own by it)
PNG_SOFTWARE = f"vaeprobe {__version__}"


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
                return str(image.info.get("Software", "")).startswith("vaeprobe")  # any version
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
    # encoded in memory, then written with plain file I/O: a full disk is then an OSError of
    # ours, never an HDF5 file left half-open (which crashed the interpreter at exit)
    buffer = _io.BytesIO()
    ds.to_netcdf(buffer, engine="h5netcdf", encoding=encoding, invalid_netcdf=False)
    try:
        with atomic_path(path, ".nc.tmp") as tmp:
            tmp.write_bytes(buffer.getvalue())
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


