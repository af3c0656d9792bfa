"""What the paper's analyses share: the data, the cache of trained runs, evaluation settings,
and the claims table.

The cache: every run lives in ``<runs>/<name>`` (e.g. ``runs/paper/distortion-gamma8``) and is
trained once through ``python -m trainers.train``: a finished run is reused, an interrupted one
resumed, and a directory holding a different config is an error (never retrained, never
overwritten). Independent runs train side by side, ``workers`` processes at a time, each with
``cores // workers`` intra-op threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

import vaeprobe as vp
from vaeprobe.run import Run

ROOT = Path(__file__).resolve().parent.parent  # the repository: trainers/ is importable here

# settings per mode: ``--quick`` is the CI-sized run (tiny model, tiny data, few steps); the
# default is the 2-core patches32 run; ``--preset paper-svhn --data svhn`` the paper's scale
MODES = {
    "quick": dict(data="digits8", preset="tiny-8", steps=150, n_images=64, k=8,
                  pca_images=1500, n_show=8, spectrum_images=64),
    "default": dict(data="patches32", preset="demo-cpu", steps=1000, n_images=256, k=64,
                    pca_images=10000, n_show=8, spectrum_images=256),
}


@dataclass(frozen=True)
class Setup:
    """Settings every analysis of one paper run shares."""

    data: str = "patches32"  # dataset name (train split for training, test for evaluation)
    root: str = ""  # directory of a torchvision dataset (svhn, celeba64 ...)
    preset: str = "demo-cpu"  # model preset of every run
    steps: int = 1000  # optimizer steps per run
    runs: str = "runs/paper"  # the cache of trained runs
    n_images: int = 256  # test images for rate, IWAE and distortion
    k: int = 64  # importance samples of the IWAE bound
    pca_images: int = 10000  # training images for the PCA
    n_show: int = 8  # images per row in the grids
    spectrum_images: int = 256  # images per checkpoint for spectra
    seed: int = 0
    device: str = ""  # empty: CUDA when available
    workers: int = 2  # trainings side by side
    progress: bool = False

    def load(self, split: str):
        """The data of ``split`` as a Dataset of uint8 (C, H, W) images."""
        return vp.data.load(self.data, split=split, root=self.root or None)

    @property
    def device_or_none(self):
        return self.device or None

    def run_dir(self, name: str) -> Path:
        return Path(self.runs) / name

    def train_values(self, name: str, **values) -> dict:
        """The trainer config of run ``name``: the shared settings under ``values``."""
        base = dict(preset=self.preset, data=self.data, data_root=self.root or None,
                    steps=self.steps, seed=self.seed, out=str(self.run_dir(name)),
                    progress=False)
        if self.device:
            base["device"] = self.device
        base.update(values)
        return base

    def parameters(self) -> dict:
        return dataclasses.asdict(self)


def add_setup_arguments(parser: argparse.ArgumentParser, runs: str = "runs/paper") -> None:
    """The flags of :class:`Setup` (defaults: the patches32 mode; ``--quick`` the CI mode)."""
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: tiny-8 on digits8, 150 steps, few images (minutes)")
    parser.add_argument("--data", default=None, help="dataset name (default patches32)")
    parser.add_argument("--root", default="", help="directory of a torchvision dataset")
    parser.add_argument("--preset", default=None, help="model preset (default demo-cpu)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--runs", default=None, help=f"cache of trained runs (default {runs}; "
                        f"{runs}-quick with --quick)")
    parser.add_argument("--n-images", type=int, default=None, help="test images evaluated")
    parser.add_argument("-k", type=int, default=None, help="importance samples (IWAE)")
    parser.add_argument("--pca-images", type=int, default=None, help="images for the PCA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=None,
                        help="trainings side by side (default: 2 on CPU, 1 on CUDA); each gets "
                             "cores / workers intra-op threads unless OMP_NUM_THREADS is set")
    parser.add_argument("--progress", action="store_true", help="progress bars")


def setup_from_args(args: argparse.Namespace, runs: str = "runs/paper") -> Setup:
    """A Setup from parsed flags: the mode's values under the explicit flags."""
    values = dict(MODES["quick" if args.quick else "default"])
    values["runs"] = runs + ("-quick" if args.quick else "")
    explicit = dict(data=args.data, preset=args.preset, steps=args.steps, runs=args.runs,
                    n_images=args.n_images, k=args.k, pca_images=args.pca_images)
    values.update({key: value for key, value in explicit.items() if value is not None})
    workers = args.workers
    if workers is None:
        workers = 1 if _uses_cuda(args.device) else 2
    return Setup(**values, root=args.root, seed=args.seed, device=args.device,
                 workers=max(1, workers), progress=args.progress)


def _uses_cuda(device: str) -> bool:
    if device:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


# ---- the cache of trained runs ---------------------------------------------------------------
def run_state(values: dict) -> str:
    """``reuse`` (finished), ``resume`` (interrupted) or ``train`` (absent) for a run config;
    SystemExit when its directory holds a different run."""
    from trainers.config import make

    config = make(**values)
    run = Run(config.out)
    stored = run.config
    if stored is None:
        if run.path.exists() and any(run.path.iterdir()):
            raise SystemExit(f"{run.path} exists but holds no run; move it away or pass --runs "
                             f"elsewhere (nothing was overwritten)")
        return "train"
    changed = config.differs_from(stored)
    if changed:
        raise SystemExit(f"{run.path} holds a different run ({json.dumps(changed)}: stored, "
                         f"wanted); pass --runs elsewhere or delete it to retrain")
    found = run.checkpoints()
    return "reuse" if found and found[-1][0] >= config.steps else "resume"


def command_line(values: dict) -> list[str]:
    """``python -m trainers.train`` flags for a config dict."""
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is None:  # unset: the flag absent
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def thread_count(workers: int, environ=os.environ) -> int:
    """Intra-op threads per training process: OMP_NUM_THREADS when set, else cores / workers."""
    if environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


@dataclass(frozen=True)
class Job:
    """One run of the cache: its name, its trainer config (or a function giving it once the
    runs it ``needs`` exist, e.g. a gamma read from another run's log), and those needs."""

    name: str
    values: dict | Callable[[], dict]
    needs: tuple[str, ...] = ()

    def config(self) -> dict:
        return self.values() if callable(self.values) else self.values


def jobs_of(runs: dict[str, dict]) -> list[Job]:
    """Independent jobs from name -> trainer config."""
    return [Job(name, values) for name, values in runs.items()]


def ensure_runs(setup: Setup, jobs: list[Job] | dict[str, dict]) -> dict[str, Path]:
    """Train, resume or reuse every run; returns name -> run directory.

    A job starts once the runs it needs are finished; runs that need training go
    ``setup.workers`` at a time, each in its own ``python -m trainers.train`` process (its
    output in ``<runs>/<name>.log``).
    """
    queue = jobs_of(jobs) if isinstance(jobs, dict) else list(jobs)
    environ = dict(os.environ, OMP_NUM_THREADS=str(thread_count(setup.workers)))
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                          environ.get("PYTHONPATH", "")]))
    paths: dict[str, Path] = {}
    running: list[tuple[str, subprocess.Popen, Path]] = []
    while queue or running:
        started = True
        while started and len(running) < setup.workers:
            started = False
            ready = [job for job in queue if all(need in paths for need in job.needs)]
            for job in ready:
                queue.remove(job)
                values = job.config()
                state = run_state(values)
                print(f"  {job.name}: {'reusing the finished run' if state == 'reuse' else state}",
                      flush=True)
                if state == "reuse":
                    paths[job.name] = Path(values["out"])
                else:
                    running.append(_start(setup, job.name, dict(values,
                                                                resume=state == "resume"),
                                          environ) + (Path(values["out"]),))
                started = True
                break
        if not running:
            if queue:
                raise ValueError(f"jobs {[job.name for job in queue]} need runs that are not "
                                 f"among the jobs: {[job.needs for job in queue]}")
            break
        finished = _wait_any(running)
        name, process, log, out = finished
        running.remove(finished)
        if process.returncode != 0:
            for _, other, _, _ in running:
                other.wait()
            raise SystemExit(f"training {name} failed (exit {process.returncode}); the end of "
                             f"{log}:\n{log.read_text()[-2000:]}")
        print(f"  {name}: trained", flush=True)
        paths[name] = out
    return paths


def _start(setup: Setup, name: str, values: dict, environ: dict):
    log = Path(setup.runs) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        process = subprocess.Popen([sys.executable, "-m", "trainers.train",
                                    *command_line(values)], stdout=handle,
                                   stderr=subprocess.STDOUT, env=environ, cwd=os.getcwd())
    return name, process, log


def _wait_any(running: list):
    """The first of the running trainings to finish (polled: no busy CPU)."""
    while True:
        for entry in running:
            if entry[1].poll() is not None:
                return entry
        time.sleep(0.5)


# ---- shared measurements ---------------------------------------------------------------------
def tail_mean(log: xr.Dataset, variable: str, fraction: float = 0.1) -> float:
    """Mean of a training-log variable over the last ``fraction`` of its logged rows."""
    if variable not in log:
        return float("nan")
    values = log[variable].values
    n = max(1, int(round(len(values) * fraction)))
    tail = values[-n:]
    return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def log_px_terms(bound: xr.Dataset, rate: xr.Dataset) -> tuple[float, float]:
    """E_q log p(x|z) (nats per image) and its standard error: ``vp.iwae``'s ``log_px_mean``
    where it reports one, else the identity E log p(x|z) = ELBO + KL (the IWAE draws' ELBO
    plus ``vp.rate``'s analytic KL)."""
    if "log_px_mean" in bound:
        return float(bound["log_px_mean"]), float(bound["log_px_se"])
    elbo, n = bound["elbo"].values, bound.sizes["image"]
    se = float(np.hypot(np.std(elbo, ddof=1) / np.sqrt(n), float(rate["total_rate_se"])))
    return float(elbo.mean() + float(rate["total_rate"])), se


_EVALUATED: dict[tuple, dict] = {}  # one process's evaluations, by checkpoint and settings


def evaluate(probe, test, setup: Setup) -> dict:
    """One model's test numbers: rate, distortion, E log p(x|z), ELBO and IWAE (nats and
    bits/dim, each with its standard error) on the same ``setup.n_images`` images.

    A checkpoint evaluated before in this process with the same settings is not evaluated
    again (``analyses.paper`` evaluates shared runs once for every figure).
    """
    sha = probe.source.get("checkpoint_sha256")
    key = (sha, setup.data, setup.root, setup.n_images, setup.k, setup.seed)
    if sha is None or key not in _EVALUATED:
        row = _evaluate(probe, test, setup)
        if sha is None:
            return row
        _EVALUATED[key] = row
    return dict(_EVALUATED[key])


def _evaluate(probe, test, setup: Setup) -> dict:
    rate = vp.rate(probe, test, n_images=setup.n_images, seed=setup.seed,
                   progress=setup.progress)
    bound = vp.iwae(probe, test, k=setup.k, n_images=setup.n_images, seed=setup.seed,
                    progress=setup.progress)
    dims = int(np.prod(probe.image_shape))
    to_bpd = 1.0 / (dims * np.log(2))
    log_px, log_px_se = log_px_terms(bound, rate)
    return dict(
        rate=float(rate["total_rate"]), rate_se=float(rate["total_rate_se"]),
        distortion=float(rate["distortion"]), distortion_se=float(rate["distortion_se"]),
        mse=float(rate["mse"]), log_px=log_px, log_px_se=log_px_se,
        log_px_bpd=-log_px * to_bpd, log_px_bpd_se=log_px_se * to_bpd,
        elbo=float(bound["elbo"].mean()), elbo_se=float(bound["elbo_bpd_se"]) / to_bpd,
        iwae=float(bound["log_likelihood_mean"]), iwae_se=float(bound["log_likelihood_se"]),
        bpd=float(bound["bpd_mean"]), bpd_se=float(bound["bpd_se"]),
        elbo_bpd=float(bound["elbo_bpd_mean"]), elbo_bpd_se=float(bound["elbo_bpd_se"]),
        decoder_sigma=float(probe.source.get("decoder_sigma", np.nan)),
        checkpoint_step=int(probe.source.get("step", -1)),
        bpd_per_image=bound["bpd"].values,
        stage_rate=stage_rates(rate),
    )


def stage_rates(rate: xr.Dataset) -> dict[str, float]:
    """Rate per stage (nats): a two-stage model's primary and secondary latents; a
    single-stage model's whole rate as its ``primary``."""
    if "rate_by_stage" in rate:
        return {str(stage): float(value) for stage, value in
                zip(rate["stage_name"].values, rate["rate_by_stage"].values, strict=True)}
    return {"primary": float(rate["total_rate"])}


UNITS = {
    "rate": ("nats", "rate KL(q || p)"), "distortion": ("sum of squares on [0, 1]", "distortion"),
    "mse": ("mean square on [0, 1]", "mean squared error"),
    "log_px": ("nats", "E_q log p(x|z)"), "log_px_bpd": ("bits/dim", "-E_q log p(x|z)"),
    "elbo": ("nats", "ELBO"), "iwae": ("nats", "IWAE bound L_K"),
    "bpd": ("bits/dim", "IWAE bound"), "elbo_bpd": ("bits/dim", "ELBO"),
    "decoder_sigma": ("[0, 1] scale", "decoder sigma evaluated with"),
    "decoder_sigma_squared": ("mean square on [0, 1]", "decoder sigma^2"),
    "checkpoint_step": ("optimizer steps", "step of the evaluated checkpoint"),
    "train_distortion_final": ("sum of squares on [0, 1]",
                               "training distortion, mean of the last 10% of logged steps"),
}


def variables_along(dim: str, rows: list[dict], names) -> dict:
    """Dataset variables (with ``_se`` partners and units) along ``dim`` from per-run rows."""
    out = {}
    for name in names:
        units, long_name = UNITS[name]
        out[name] = (dim, np.array([row[name] for row in rows], dtype=np.float64),
                     {"units": units, "long_name": long_name})
        if f"{name}_se" in rows[0]:
            out[f"{name}_se"] = (dim, np.array([row[f"{name}_se"] for row in rows]),
                                 {"units": units, "long_name": f"standard error of {name}"})
    return out


def image_variable(images: np.ndarray, leading: tuple[str, ...]) -> tuple:
    """A uint8 images variable with dims ``leading + (image, channel, y, x)``."""
    dims = leading + ("image", "channel", "y", "x")
    return dims, np.asarray(images, dtype=np.uint8), {"units": "uint8 pixel values"}


def figure_axes(rows: int, columns: int, size=(4.2, 3.6)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows),
                            squeeze=False)
    return fig, axs


def finish_figure(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    vp.plot.save_figure(fig, path)
    plt.close(fig)


def publish(ds: xr.Dataset, out: Path, name: str, figure, summary) -> xr.Dataset:
    """Save ``out/name.nc``, draw ``out/name.png`` with ``figure(ds, path)``, print
    ``summary(ds)`` and what was written."""
    vp.save(ds, out / f"{name}.nc")
    figure(ds, out / f"{name}.png")
    print(summary(ds))
    print(f"wrote {out / f'{name}.nc'} and {out / f'{name}.png'}")
    return ds
