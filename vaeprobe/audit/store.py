"""The audit's output directory: one netCDF file per section, written atomically as soon as the
section is computed, beside ``audit.json`` (what the audit is of: model, data, options).

``out/``
    ``audit.json``   the fingerprint: model sha256, data (name, images, their sha256), options
    ``sections/<name>.nc``   one finished section each (written to a temporary name, renamed)
    ``audit.nc``, ``audit.png``, ``audit.html``   rendered from the section files at the end

A killed audit keeps its finished sections. Run again into the same ``out`` it computes only the
missing (or failed) ones, after checking that the fingerprint is the same; where it differs it
says what differs and refuses, unless ``overwrite`` (which removes the old sections).

Nothing on disk is trusted unchecked: every section file carries the fingerprint it was
computed under (``attrs["audit_fingerprint"]``: the model's sha256, the data's digest, the
audit's options and that section's own); on resume a section whose stamp differs from this
run's (copied from another model's audit, left by other options, or unstamped) is recomputed,
and the message says what differed. A directory that is not an audit but holds ``audit.nc``,
``audit.png`` or ``audit.html`` that vaeprobe did not write is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe.io import atomic_path

MANIFEST = "audit.json"
SECTIONS_DIR = "sections"
REPORT_FILES = ("audit.nc", "audit.png", "audit.html")
STAMP = "audit_fingerprint"  # attrs of a section file: the sha256 of what it was computed under
STAMP_MODEL = "audit_fingerprint_model"  # ... and the model's sha256, to say what differs


class AuditMismatchError(ValueError):
    """An existing audit directory was made for another model, data or options."""


def model_fingerprint(probe) -> str:
    """The checkpoint's sha256, or (a model built in memory) a sha256 of its tensors."""
    sha = probe.source.get("checkpoint_sha256")
    if sha:
        return str(sha)
    digest = hashlib.sha256()
    for value in vars(probe).values():
        if isinstance(value, torch.nn.Module):
            for name, tensor in value.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
                              .tobytes() if tensor.numel() else b"")
    digest.update(repr(sorted((k, str(v)) for k, v in probe.source.items())).encode())
    return "tensors:" + digest.hexdigest()


def data_fingerprint(dataset, indices: torch.Tensor) -> dict:
    """Name, size and a sha256 of the evaluation images themselves."""
    digest = hashlib.sha256()
    for batch in vdata.iterate_batches(dataset, 256, indices):
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.contiguous().numpy().tobytes())
    return {"name": vdata.dataset_name(dataset), "size": len(dataset),
            "n_images": len(indices), "images_sha256": digest.hexdigest()}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    said = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if prefix == "options.sections." and "(absent)" in (a, b):
            continue  # a section registered since (or no longer): its options do not differ
        if isinstance(a, dict) and isinstance(b, dict):
            said += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            said.append(f"{prefix}{key}: {a!r} before, {b!r} now")
    return said


class AuditStore:
    """Section files under ``out`` for one fingerprint (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict, overwrite: bool = False):
        self.out = Path(out)
        self.fingerprint = _jsonable(fingerprint)
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"--out {self.out} is a file; the audit writes a directory "
                                  f"(name a new or an existing directory)")
        manifest = self.out / MANIFEST
        self.stale: dict[str, str] = {}  # section -> why its file on disk was not used
        if not manifest.is_file():
            from vaeprobe.outputs import check_directory_files

            check_directory_files(self.out, REPORT_FILES, "--out", overwrite=overwrite)
        if manifest.is_file():
            old = read_manifest(manifest).get("fingerprint", {})
            differences = _differences(old, self.fingerprint)
            if differences and not overwrite:
                raise AuditMismatchError(
                    f"{self.out} holds an audit of another model, data or options ("
                    + "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
                    + "); pass overwrite=True (--overwrite) to replace it, or name another "
                    "--out")
            if differences and distributed.is_main():
                shutil.rmtree(self.out / SECTIONS_DIR, ignore_errors=True)
        elif overwrite and distributed.is_main():
            shutil.rmtree(self.out / SECTIONS_DIR, ignore_errors=True)
        if distributed.is_main():
            (self.out / SECTIONS_DIR).mkdir(parents=True, exist_ok=True)
            self.write_manifest()

    def write_manifest(self, **facts) -> None:
        if not distributed.is_main():
            return
        manifest = self.out / MANIFEST
        previous = read_manifest(manifest) if manifest.is_file() else {}
        content = {**previous, **facts, "fingerprint": self.fingerprint}
        with atomic_path(manifest, ".json.tmp") as tmp:
            tmp.write_text(json.dumps(content, indent=1, sort_keys=True))

    def facts(self) -> dict:
        manifest = self.out / MANIFEST
        return read_manifest(manifest) if manifest.is_file() else {}

    def stamp(self, name: str) -> str:
        """The fingerprint a section file of ``name`` must carry: this run's model, data,
        common options and that section's options."""
        options = dict(self.fingerprint.get("options", {}))
        own = options.pop("sections", {}).get(name)
        text = json.dumps(dict(model=self.fingerprint.get("model"), section=name, own=own,
                               data=self.fingerprint.get("data"), options=options),
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, name: str) -> Path:
        return self.out / SECTIONS_DIR / f"{name}.nc"

    def finished(self, names) -> dict[str, xr.Dataset]:
        """The sections of ``names`` on disk, not failed, and stamped with this run's
        fingerprint. Unreadable ones count as missing; foreign or stale ones (another model,
        data or options; no stamp) are listed in ``self.stale`` with the reason and recomputed."""
        done = {}
        for name in names:
            if not self.path(name).is_file():
                continue
            try:
                ds = load_section(self.path(name), keep_stamp=True)
            except (OSError, ValueError):
                continue
            stamp = ds.attrs.pop(STAMP, None)
            model = ds.attrs.pop(STAMP_MODEL, None)
            if stamp != self.stamp(name):
                self.stale[name] = (
                    "written by an older vaeprobe (no fingerprint)" if stamp is None else
                    f"computed for another model (sha256 {model})"
                    if model != self.fingerprint.get("model") else
                    "computed on other data or with other options")
                continue
            if ds.attrs.get("status") in ("ok", "skipped"):
                done[name] = ds
        return done

    def save(self, name: str, ds: xr.Dataset) -> None:
        """Write one section atomically (rank 0 only), stamped with this run's fingerprint."""
        if distributed.is_main():
            stamped = ds.copy()
            stamped.attrs = {**ds.attrs, STAMP: self.stamp(name),
                             STAMP_MODEL: str(self.fingerprint.get("model"))}
            save_section(stamped, self.path(name))


def read_manifest(path: Path) -> dict:
    """``audit.json`` as a dict; anything else is an :class:`AuditMismatchError` naming it."""
    try:
        content = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise AuditMismatchError(f"{path} is not an audit manifest (unreadable JSON: {error}); "
                                 f"remove it, or name another --out") from None
    if not isinstance(content, dict) or not isinstance(content.get("fingerprint", {}), dict):
        raise AuditMismatchError(f"{path} is not an audit manifest (a JSON "
                                 f"{type(content).__name__}, not the object vp.audit writes); "
                                 f"remove it, or name another --out")
    return content


def save_section(ds: xr.Dataset, path: Path) -> Path:
    from vaeprobe.audit.report import netcdf_ready

    clean, encoding = netcdf_ready(ds)
    with atomic_path(path, ".nc.tmp") as tmp:
        clean.to_netcdf(tmp, engine="h5netcdf", mode="w", encoding=encoding)
    return path


_LOADED: dict[tuple, xr.Dataset] = {}  # (path, inode, size, mtime) -> the section as read
_LOADED_MAX = 64


def forget_loaded() -> None:
    """Forget every section read so far (the next :func:`load_section` reads the file)."""
    _LOADED.clear()


def load_section(path: Path, keep_stamp: bool = False) -> xr.Dataset:
    """A section file as written; its fingerprint stamp removed unless ``keep_stamp``.

    A file read before and not changed since (same inode, size and modification time: the
    store replaces files by renaming) is not read again: a resumed audit checks, plans and
    assembles from one read of each section."""
    status = os.stat(path)
    key = (str(Path(path).resolve()), status.st_ino, status.st_size, status.st_mtime_ns)
    if key not in _LOADED:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if len(_LOADED) >= _LOADED_MAX:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = ds.load()
    ds = _LOADED[key].copy(deep=False)
    ds.attrs = dict(ds.attrs)
    if not keep_stamp:
        ds.attrs.pop(STAMP, None)
        ds.attrs.pop(STAMP_MODEL, None)
    return ds
