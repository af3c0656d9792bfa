"""The run directory: one owner of its file names, its stored config and its training log.

A run directory, as the trainer writes it::

    config.json              {"train": the TrainConfig fields, "family", "model",
                              "vaeprobe_version", "world_size"}
    ckpt_step00002000.pt     checkpoints (io.save_checkpoint payloads; .safetensors also read)
    metrics.jsonl            one JSON object per logged step: {"step", "rate", "distortion", ...}

Every name above is written and parsed here and nowhere else: the trainer writes through
:class:`Run`; ``vp.spectrum``, ``vp.load`` (through ``vp.checkpoints``) and the analyses read
through it. The checkpoint payload itself (what is inside a ``.pt``) is ``vaeprobe.io``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import xarray as xr

from vaeprobe import io
from vaeprobe._version import __version__
from vaeprobe.atomic import pid_alive

CONFIG_NAME = "config.json"
LOG_NAME = "metrics.jsonl"
CHECKPOINT_PATTERN = re.compile(r"^ckpt_step(\d+)\.(pt|safetensors)$")
CHECKPOINT_GLOB = "ckpt_step*.pt"

# units of the trainer's metrics (batch means); the log Dataset carries them per variable
LOG_UNITS = {
    "loss": "objective per dimension",
    "elbo": "nats",
    "elbo_bpd": "bits/dim",
    "rate": "nats",
    "rate_primary": "nats",
    "rate_secondary": "nats",
    "distortion": "sum of squares on [0, 1]",
    "mse": "mean square on [0, 1]",
    "sigma": "[0, 1] scale",
    "grad_norm": "1",
    "lambda": "1",
    "skipped": "updates",
    "images_per_s": "images/s",
    "threads": "CPU threads per process",
}


LOCK_NAME = ".lock"  # held by the trainer writing the run (host and pid)
LOCK_GRACE_S = 5.0  # an empty or garbage lock older than this was left by a killed writer


class RunBusyError(io.OutputError):
    """Another live process holds the run directory's lock."""


def checkpoint_name(step: int, suffix: str = ".pt") -> str:
    """The file name of the checkpoint at ``step``: ``ckpt_step00002000.pt``.

    Examples
    --------
    >>> checkpoint_name(2000)
    'ckpt_step00002000.pt'
    >>> checkpoint_step(checkpoint_name(2000))
    2000
    """
    if int(step) < 0:
        raise ValueError(f"a checkpoint step must be >= 0, got {step}")
    return f"ckpt_step{int(step):08d}{suffix}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint file name, or None when the name is not a checkpoint's."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


class Run:
    """A run directory: checkpoints by step, the stored training config, the training log.

    Parameters
    ----------
    path : str or Path
        The run directory (it need not exist yet when a trainer is about to write it).

    Examples
    --------
    >>> import tempfile
    >>> run = Run(tempfile.mkdtemp())
    >>> run.write_config(train=dict(objective="distortion", gamma=8.0, data="patches32"))
    True
    >>> run.objective, run.gamma, run.checkpoints()
    ('distortion', 8.0, [])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def of(cls, path: str | os.PathLike) -> Run:
        """The run a path belongs to: the directory itself, or the one holding a checkpoint."""
        path = Path(path)
        return cls(path if path.is_dir() else path.parent)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        """Where the trainer writes the checkpoint of ``step``."""
        return self.path / checkpoint_name(step)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``[(step, path)]`` of the checkpoints in the run, sorted by step."""
        if not self.path.is_dir():
            raise NotADirectoryError(f"run directory not found: {self.path}")
        found = [(checkpoint_step(path), path) for path in self.path.iterdir()]
        return sorted((step, path) for step, path in found if step is not None)

    def latest_checkpoint(self) -> Path:
        """The checkpoint of the highest step; FileNotFoundError when there is none."""
        found = self.checkpoints()
        if not found:
            raise FileNotFoundError(f"no checkpoints ({CHECKPOINT_GLOB}) in run directory "
                                    f"{self.path}")
        return found[-1][1]

    def save_checkpoint(self, step: int, **payload) -> Path:
        """Write the checkpoint of ``step`` (``io.save_checkpoint``'s keywords), atomically."""
        return io.save_checkpoint(self.checkpoint_path(step), step=step, **payload)

    # -- the writer's lock ----------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def lock(self) -> str:
        """Take the run's lock (``.lock``: host and pid of the writer) for this process.

        A second writer refuses with :class:`RunBusyError`; a lock left by a process that is
        gone (same host), or one that is empty or unreadable and older than
        :data:`LOCK_GRACE_S` (a writer killed between creating and writing it), is taken
        over. Returns what was done ("taken" or a sentence saying
        whose stale lock was taken over). Release it with :meth:`unlock`.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        mine = f"{socket.gethostname()} {os.getpid()}\n"
        said = "taken"
        for _ in range(3):
            try:
                descriptor = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                host, pid = self._lock_owner()
                if pid == os.getpid() and host == socket.gethostname():
                    return "held"
                if host == socket.gethostname() and pid is not None and not pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path)
                    said = f"took over the stale lock of process {pid}, which is gone"
                    continue
                age = self._lock_age()
                if pid is None and age > LOCK_GRACE_S:  # a writer killed before writing it
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path)
                    said = (f"took over an unreadable lock ({self.lock_path}: empty or not "
                            f"'host pid', {age:.0f} s old)")
                    continue
                raise RunBusyError(
                    f"{self.path} is being written by another trainer (process {pid} on "
                    f"{host}, {self.lock_path}); wait for it to finish or choose another "
                    f"--out. If that process is gone from another machine, remove "
                    f"{self.lock_path}") from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(mine)
            return said
        raise RunBusyError(f"could not take the lock {self.lock_path}: other processes keep "
                           f"taking it")

    def _lock_age(self) -> float:
        try:
            return time.time() - self.lock_path.stat().st_mtime
        except OSError:
            return 0.0

    def _lock_owner(self) -> tuple[str, int | None]:
        try:
            host, pid = self.lock_path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return "an unknown host", None

    def unlock(self) -> None:
        """Release the lock if this process holds it."""
        host, pid = self._lock_owner()
        if pid == os.getpid() and host == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)

    # -- the stored config --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def stored(self) -> dict | None:
        """The whole ``config.json`` (train, family, model, versions), or None without one."""
        if not self.config_path.is_file():
            return None
        from vaeprobe.validate import ConfigError, json_object

        stored = json_object(self.config_path, "run config")
        if not isinstance(stored.get("train"), dict):
            raise ConfigError(f"{self.config_path}: 'train' must be a JSON object of training "
                              f"settings, got {type(stored.get('train')).__name__}; the file "
                              f"was edited or is not a vaeprobe run's config")
        train = stored["train"]
        for key, kind in (("objective", str), ("data", str), ("gamma", (int, float))):
            if key in train and (not isinstance(train[key], kind)
                                 or isinstance(train[key], bool)):
                raise ConfigError(f"{self.config_path}: train.{key} is "
                                  f"{type(train[key]).__name__} {train[key]!r}"[:160]
                                  + "; the file was edited or is corrupt")
        return stored

    @property
    def config(self) -> dict | None:
        """The training config the run was made with (its ``train`` section), or None."""
        stored = self.stored()
        return None if stored is None else stored["train"]

    @property
    def objective(self) -> str | None:
        """``elbo``, ``distortion`` or ``two-stage``; None for bare checkpoints."""
        config = self.config
        return None if config is None else config.get("objective")

    @property
    def gamma(self) -> float | None:
        """The distortion target (sum of squares on [0, 1]) the run was trained towards; None
        when its objective has none (elbo) or without ``config.json``.

        The trainer records the objective's target as ``distortion_target``; runs written
        before it did were elbo (no target) or Lagrangian towards ``gamma``.
        """
        stored = self.stored()
        if stored is None:
            return None
        if "distortion_target" in stored:
            target = stored["distortion_target"]
            if target is not None and (isinstance(target, bool)
                                       or not isinstance(target, (int, float))):
                raise ValueError(f"{self.config_path}: distortion_target is {target!r}, not a "
                                 f"number; the file was edited or is corrupt")
            return None if target is None else float(target)
        train = stored["train"]
        if train.get("objective", "elbo") == "elbo":
            return None
        if "gamma" not in train:
            raise ValueError(f"{self.config_path}: a {train['objective']} run's config has no "
                             f"train.gamma")
        return float(train["gamma"])

    @property
    def data(self) -> str | None:
        """The name of the data the run was trained on, or None."""
        config = self.config
        return None if config is None else config.get("data")

    def write_config(self, *, train: dict, **facts) -> bool:
        """Write ``config.json`` (``train`` plus ``facts``) unless the run already has one.

        Returns whether it was written. The stored config is never overwritten: a resumed run
        keeps the one it started with.
        """
        if self.config_path.exists():
            return False
        content = dict(train=train, **facts, vaeprobe_version=__version__)
        text = json.dumps(content, indent=2)
        self.path.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(self.config_path) as tmp:
            tmp.write_text(text)
        return True

    # -- the training log ---------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    def append_log(self, row: dict) -> None:
        """Append one row (a JSON object with a ``step``) to the training log, flushed."""
        if "step" not in row:
            raise ValueError(f"a training-log row needs a 'step', got keys {sorted(row)}")
        line = json.dumps(row) + "\n"
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            with open(self.log_path, "a") as handle:
                handle.write(line)
        except OSError as error:
            with contextlib.suppress(OSError):  # no torn line left behind (e.g. disk full)
                os.truncate(self.log_path, size)
            raise io.OutputError(f"could not append to the training log {self.log_path}: "
                                 f"{error.strerror or error}") from None

    def log_rows(self) -> list[dict]:
        """The training log's rows in file order; a torn last line (a killed writer) is
        skipped."""
        if not self.log_path.is_file():
            return []
        lines = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    break
                raise ValueError(f"{self.log_path} line {number + 1} is not JSON: "
                                 f"{line[:80]!r}") from None
        return rows

    def truncate_log(self, step: int) -> None:
        """Keep only the rows of steps <= ``step`` (a resume redoes the later ones)."""
        if not self.log_path.exists():
            return
        kept = [row for row in self.log_rows() if row["step"] <= step]
        with io.atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def training_log(self) -> xr.Dataset:
        """The training log as a Dataset: ``train_<metric>`` along ``train_step``, with units.

        Rows missing a metric hold NaN there. No log: no variables, ``train_step`` of length 0.
        """
        rows = self.log_rows()
        keys = list(dict.fromkeys(key for row in rows for key in row if key != "step"))
        variables = {
            f"train_{key}": ("train_step", np.asarray([row.get(key, np.nan) for row in rows],
                                                      dtype=np.float64),
                             {"units": LOG_UNITS.get(key, "unknown")})
            for key in keys
        }
        steps = np.asarray([row["step"] for row in rows], dtype=np.int64)
        ds = xr.Dataset(variables, coords={"train_step": steps})
        ds["train_step"].attrs["units"] = "optimizer steps"
        gamma = self.gamma
        ds.attrs = io.provenance("training_log", {}, run=str(self.path),
                                 objective=self.objective or "unknown",
                                 gamma=float("nan") if gamma is None else gamma)
        return ds


def checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the checkpoints in a run directory, sorted by step.

    Examples
    --------
    >>> import tempfile
    >>> checkpoints(tempfile.mkdtemp())
    []
    """
    return Run(run_dir).checkpoints()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        return Run(path).latest_checkpoint()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or run directory not found: {path}")
    return path
