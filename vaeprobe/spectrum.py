"""Radially averaged power spectra of images, reconstructions and residuals, across checkpoints.

Loading apart from the maths: a source (run directory, checkpoint, Probe) becomes (step, Probe)
pairs (``_load``, through ``vaeprobe.Run``), and ``_spectra`` computes on the pairs, one
model at a time with the public core :func:`checkpoint_spectra`.

The estimator: float64; per-image (per-channel) mean removed; a separable window scaled to
mean square 1 (so white noise of variance s^2 has flat power s^2); |FFT|^2 with orthonormal
scaling averaged over images and channels before any log; radial bins by rounded radius
(in units of 1 / min(H, W) cycles per pixel) up to Nyquist, the DC bin kept apart. Power in a
bin is the mean over its Fourier modes; ``n_modes`` counts them.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe import distributed, io
from vaeprobe._analysis import (
    batches,
    evaluation_of,
    flag_nonfinite,
    progress_bar,
    resolve_source,
    result_attrs,
    squared_error,
)
from vaeprobe._fourier import (
    CHANNEL_MODES,
    WINDOWS,
    band_energies,
    high_frequency_fraction,
    power_2d,
    radial_bins,
    radial_profile,
    ratio_standard_error,
    window_2d,
)
from vaeprobe.accumulate import Reducing
from vaeprobe.probe import Probe
from vaeprobe.run import Run

# vp.spectrum, and the estimator it is made of (defined in vaeprobe._fourier) for analyses
__all__ = ["CHANNEL_MODES", "WINDOWS", "band_energies", "checkpoint_spectra",
           "high_frequency_fraction", "power_2d", "radial_bins", "radial_profile",
           "ratio_standard_error", "spectrum", "window_2d"]


class SpectrumAccumulator(Reducing):
    """Streaming sums of 2-D power maps: update per batch, compute once (torchmetrics style)."""

    states = {"total": "sum", "count": "sum"}
    must_match = ("window", "channels")

    def __init__(self, window: str, channels: str):
        self.window, self.channels = window, channels
        self.total, self.count = None, 0

    def update(self, images: torch.Tensor) -> None:
        power = power_2d(images, self.window, self.channels)
        self.total = power if self.total is None else self.total + power
        c = 1 if self.channels == "luminance" else images.shape[1]
        self.count += images.shape[0] * c

    def compute(self):
        return radial_profile(self.total / self.count)


def _load(source, device) -> tuple[list[tuple[int, Probe]] | Iterator, int, Run | None]:
    """Loading, apart from the maths: (the (step, Probe) pairs, their number, the run or None).

    A run directory gives one pair per checkpoint, each Probe loaded when reached; a checkpoint
    file or a Probe gives one pair, at the step its provenance names (0 when none does).
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() \
            and Run(source).checkpoints():  # a run directory: every checkpoint
        run = Run(source)
        return _run_probes(run, device), len(run.checkpoints()), run
    probe = resolve_source(source, device=device)  # a Probe, or one model of any format
    return [(int(probe.source.get("step", 0)), probe)], 1, None


def _run_probes(run: Run, device) -> Iterator[tuple[int, Probe | Exception]]:
    """(step, Probe) per checkpoint of a run, or (step, the error) for one that cannot be
    loaded, so that one bad file does not throw away the spectra of the others."""
    from vaeprobe.adapters import load

    for step, path in run.checkpoints():
        try:
            yield step, load(path, device=device)
        except (ValueError, RuntimeError, KeyError, OSError) as error:
            yield step, _Unloadable(path, error)


class _Unloadable(Exception):
    """A checkpoint of a run that could not be loaded (kept to be reported)."""

    def __init__(self, path, error: Exception):
        super().__init__(str(error))
        self.path, self.error = Path(path), error


def _default_data(source) -> str:
    """The test split of the data a run was trained on (from its stored config)."""
    if isinstance(source, (str, os.PathLike)):
        trained_on = Run.of(source).data
        if trained_on is not None:
            return f"{trained_on}:test"
    raise ValueError("pass data= (e.g. 'patches32:test'): it cannot be read from this source")


def spectrum(source, data=None, *, n_images: int = 512, window: str = "hann",
             channels: str = "per_channel", cutoff: float = 0.25, batch_size: int = 128,
             n_preview: int = 8, seed: int = 0, device=None, progress: bool = True
             ) -> xr.Dataset:
    """Power spectra of reconstructions, residuals and data at every checkpoint of a run.

    Parameters
    ----------
    source : run directory, checkpoint path, Probe, or images
        A run directory analyses every checkpoint (loaded through ``vaeprobe.Run``); a
        checkpoint or a Probe is one step. Images (a uint8 tensor or Dataset) give the data
        spectrum alone (no ``step`` dim).
    data : str, Dataset or uint8 tensor, optional
        Evaluation images; default the test split of the run's training data.
    n_images : int
        A seeded random subset; the same images for every checkpoint.
    window : {"hann", "kaiser", "none"}
        "hann" needs images wider and taller than 2 px (it is zero at both ends).
    channels : {"per_channel", "luminance"}
    cutoff : float
        ``high_frequency_fraction`` is the share of power above this many cycles/pixel.
    batch_size : int
        Images per model pass (a data-only spectrum uses batches of at least 2048).
    n_preview : int
        Keep this many data images and their reconstructions (for figures).
    device : str, optional
        Where models are loaded and data-only spectra computed (default CUDA when available,
        ``cuda:LOCAL_RANK`` under torchrun). Under torchrun the images are sharded across
        ranks and every rank returns the same Dataset (:mod:`vaeprobe.distributed`).

    Returns
    -------
    xarray.Dataset
        Dims ``step`` (length 1 for one checkpoint or Probe) and ``frequency`` (cycles/pixel,
        coord ``n_modes``). Each model's provenance (``checkpoint``, ``checkpoint_sha256``,
        ``family``...) is a coordinate along ``step``. Variables:
        ``power_reconstruction``, ``power_residual``, ``relative_power``, ``power_data``,
        ``high_frequency_fraction`` (+ ``_se``, its standard error over images, ``_residual``,
        ``_data``), ``mse``, ``distortion``,
        ``rate``; ``preview_data`` and ``preview_reconstruction``.

    Examples
    --------
    >>> import vaeprobe
    >>> ds = vaeprobe.spectrum("runs/demo")  # doctest: +SKIP
    >>> ds["high_frequency_fraction"].to_series()  # doctest: +SKIP
    """
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles/pixel, got {cutoff}")
    window_2d(4, 4, window)  # validate early
    if isinstance(source, (torch.Tensor, np.ndarray, torch.utils.data.Dataset)):
        return _data_spectrum(source, n_images, window, channels, cutoff, batch_size, seed,
                              device)
    pairs, count, run = _load(source, device)
    data = data if data is not None else _default_data(source)
    parameters = dict(n_images=n_images, window=window, channels=channels, cutoff=cutoff,
                      batch_size=batch_size, seed=seed,
                      source=str(source) if not isinstance(source, Probe) else "probe")
    rows, dataset, indices, single, skipped = _spectra(pairs, count, data, n_images, window,
                                                       channels, cutoff, batch_size, seed,
                                                       n_preview, progress)
    ds = assemble_spectra(rows, cutoff)
    # one model probed: its checkpoint and sha256 in attrs too; a run: the run directory
    ds.attrs = result_attrs("spectrum", parameters, single, dataset, len(indices), seed,
                            window=window, channels=channels, cutoff=cutoff,
                            **({} if run is None else {"run": str(run.path)}))
    if skipped:  # said in attrs too, so a saved result shows what it is missing
        ds.attrs["skipped_checkpoints"] = json.dumps(skipped)
        ds.attrs["warning"] = (f"{len(skipped)} checkpoint(s) could not be loaded and were "
                               f"skipped: steps {[item['step'] for item in skipped]}")
    if single is None:
        ds.attrs.pop("checkpoint", None)
    return flag_nonfinite(ds)


def _spectra(pairs, count: int, data, n_images, window, channels, cutoff, batch_size, seed,
             n_preview, progress) -> tuple[list[dict], object, torch.Tensor, Probe | None, list]:
    """The maths over (step, Probe) pairs: a row of spectra per pair, on the same images.

    A pair whose Probe is an :class:`_Unloadable` is reported (a warning) and skipped.
    Returns (rows, dataset, indices, the Probe when there was exactly one, else None, the
    skipped checkpoints).
    """
    rows, dataset, indices, single, skipped = [], None, None, None, []
    bar = progress_bar(count, "spectrum: checkpoints", progress, unit="ckpt")
    for step, probe in pairs:
        if isinstance(probe, _Unloadable):
            warnings.warn(f"spectrum: skipped the checkpoint of step {step}, which cannot be "
                          f"loaded ({probe}); the other checkpoints are analysed",
                          UserWarning, stacklevel=3)
            skipped.append(dict(step=int(step), checkpoint=str(probe.path),
                                error=str(probe.error)))
            bar.update(1)
            continue
        if dataset is None:  # the first model fixes the evaluation images for all
            evaluation = evaluation_of(probe, data, n_images, seed)
            probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
            window_2d(*probe.image_shape[1:], window)  # refuse a window before any pass
            single = probe if count == 1 else None
        probe = probe.at_image_size(*dataset[0].shape[1:])  # later checkpoints: the same size
        row = checkpoint_spectra(probe, dataset, indices, window=window, channels=channels,
                                 cutoff=cutoff, batch_size=batch_size, seed=seed,
                                 n_preview=n_preview, with_data=not rows)
        row.update(step=int(step), source=dict(probe.source))
        rows.append(row)
        bar.update(1)
    bar.close()
    if not rows:
        raise io.CheckpointError("no checkpoint of the run could be loaded: " + "; ".join(
            f"step {item['step']}: {item['error']}" for item in skipped))
    return rows, dataset, indices, single, skipped


def _coord_values(values: list) -> np.ndarray:
    """One provenance fact per step as a netCDF-safe array: ints, floats, or strings."""
    def is_int(value):
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if all(isinstance(v, bool | np.bool_) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(is_int(v) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(is_int(v) or isinstance(v, float | np.floating) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([v if isinstance(v, str) else "" if v is None else
                       json.dumps(v, default=str, sort_keys=True) for v in values], dtype=str)


def _provenance_coords(sources: list[dict], taken) -> dict:
    """Each Probe's own provenance (checkpoint, checkpoint_sha256, format...) along ``step``.

    A Probe built in memory, with no checkpoint in its provenance, says so in ``checkpoint``.
    """
    sources = [{"checkpoint": "in-memory model", **source} for source in sources]
    keys = dict.fromkeys(key for source in sources for key in source)
    return {key: ("step", _coord_values([source.get(key) for source in sources]))
            for key in keys if key != "step" and key not in taken}


@torch.no_grad()
def checkpoint_spectra(probe: Probe, dataset, indices: torch.Tensor, *, window: str = "hann",
                       channels: str = "per_channel", cutoff: float = 0.25,
                       batch_size: int = 128, seed: int = 0, n_preview: int = 8,
                       with_data: bool = True) -> dict:
    """The core of :func:`spectrum` for one model: its spectra on already resolved images.

    Parameters
    ----------
    probe : Probe
        A resolved Probe, fitted to the images' size.
    dataset : Dataset
        The images (uint8 ``(C, H, W)`` items).
    indices : torch.Tensor
        The evaluated subset's dataset indices (sharded across ranks under torchrun).
    window, channels, cutoff, batch_size, seed, n_preview
        As in :func:`spectrum` (``seed`` keys the per-image posterior draws).
    with_data : bool
        Also the data's own spectrum (the same images for every checkpoint: the first only).

    Returns
    -------
    dict
        One row of :func:`assemble_spectra`: ``frequency``, ``n_modes``,
        ``power_reconstruction``, ``power_residual``, ``power_data`` (None without
        ``with_data``), ``high_frequency_fraction_se``, ``distortion``, ``rate``, ``mse``,
        ``preview_data``, ``preview_reconstruction``.
    """
    recon, residual, data_power = (SpectrumAccumulator(window, channels) for _ in range(3))
    distortion, rate, count, previews, energies = 0.0, 0.0, 0, [], []
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, False, "",
                                 shard=True):
        latents = probe.encode(x, 1, generators)
        mean = probe.decode(latents).mean.double()
        target = x.double() / 255.0
        recon.update(mean)
        energies.append(band_energies(mean, window, channels, cutoff))
        residual.update(target - mean)
        if with_data:
            data_power.update(x)
        distortion += float(squared_error(x, mean).sum())
        # a deterministic autoencoder (point posterior) has no rate: NaN
        rate += (float("nan") if probe.point_posterior
                 else float(latents.kl_per_layer().double().sum()))
        count += x.shape[0]
        if sum(len(p[0]) for p in previews) < n_preview:
            previews.append((x.cpu(), vdata.to_uint8(mean.float().cpu(), clip=True)))
    # under torchrun: every rank's sums, in rank order (one process: unchanged)
    recon, residual, data_power = (distributed.merge(acc) for acc in (recon, residual,
                                                                      data_power))
    distortion, rate, count = (distributed.total(value) for value in (distortion, rate, count))
    previews = [part for parts in distributed.gather(previews) for part in parts]
    frequency, power_recon, n_modes = recon.compute()
    preview_x = torch.cat([p[0] for p in previews])[:n_preview].numpy()
    preview_r = torch.cat([p[1] for p in previews])[:n_preview].numpy()
    energies = torch.cat(energies).cpu() if energies else torch.empty(0, 2, dtype=torch.float64)
    energies = distributed.cat(energies).numpy()  # every rank's images, in image order
    return dict(frequency=frequency, n_modes=n_modes, power_reconstruction=power_recon,
                high_frequency_fraction_se=ratio_standard_error(energies[:, 0], energies[:, 1]),
                power_residual=residual.compute()[1],
                power_data=data_power.compute()[1] if with_data else None,
                distortion=distortion / count, rate=rate / count,
                mse=distortion / count / int(np.prod(probe.image_shape)),
                preview_data=preview_x, preview_reconstruction=preview_r)


def assemble_spectra(rows: list[dict], cutoff: float) -> xr.Dataset:
    frequency, n_modes = rows[0]["frequency"][1:], rows[0]["n_modes"][1:]  # DC kept apart
    def stack(key):
        return np.stack([row[key] for row in rows])
    power_recon, power_residual = stack("power_reconstruction"), stack("power_residual")
    power_data = rows[0]["power_data"]
    def hff(power):
        return high_frequency_fraction(power[..., 1:], n_modes, frequency, cutoff)
    power = {"units": "mean |FFT|^2 per mode, [0, 1] scale (orthonormal)"}
    variables = {
        "power_reconstruction": (("step", "frequency"), power_recon[:, 1:], power),
        "power_residual": (("step", "frequency"), power_residual[:, 1:], power),
        "power_data": ("frequency", power_data[1:], power),
        "relative_power": (("step", "frequency"), power_recon[:, 1:] / power_data[1:],
                           {"units": "1", "long_name": "reconstruction / data"}),
        "power_dc_reconstruction": ("step", power_recon[:, 0], power),
        "high_frequency_fraction": ("step", hff(power_recon), {"units": "1"}),
        "high_frequency_fraction_se": ("step", stack("high_frequency_fraction_se"),
                                       {"units": "1", "long_name": "standard error over "
                                        "images of high_frequency_fraction (delta method)"}),
        "high_frequency_fraction_residual": ("step", hff(power_residual), {"units": "1"}),
        "high_frequency_fraction_data": ((), float(hff(power_data)), {"units": "1"}),
        "distortion": ("step", stack("distortion"), {"units": "sum of squares on [0, 1]"}),
        "mse": ("step", stack("mse"), {"units": "mean square on [0, 1]"}),
        "rate": ("step", stack("rate"), {"units": "nats"}),
        "preview_data": (("image", "channel", "y", "x"), rows[0]["preview_data"]),
        "preview_reconstruction": (("step", "image", "channel", "y", "x"),
                                   stack("preview_reconstruction")),
    }
    coords = {"step": stack("step").astype(np.int64), "frequency": frequency,
              "n_modes": ("frequency", n_modes.astype(np.int64))}
    taken = set(variables) | set(coords) | {"image", "channel", "y", "x"}
    coords.update(_provenance_coords([row["source"] for row in rows], taken))
    ds = xr.Dataset(variables, coords=coords)
    ds["frequency"].attrs["units"] = "cycles/pixel"
    return ds


def _data_spectrum(images, n_images, window, channels, cutoff, batch_size, seed,
                   device=None) -> xr.Dataset:
    dataset = vdata.as_dataset(images)
    indices = vdata.select(dataset, n_images, seed)
    accumulator = SpectrumAccumulator(window, channels)
    device = distributed.resolve_device(device)
    # no model to run: batches only bound memory, and bigger ones keep the FFT threads busy
    local = distributed.shard(indices, device)  # this rank's block under torchrun
    for x in vdata.iterate_batches(dataset, max(batch_size, 2048), local, device=device):
        accumulator.update(x.to(device))  # uint8: put on [0, 1] inside
    frequency, power, n_modes = distributed.merge(accumulator).compute()
    power_attrs = {"units": "mean |FFT|^2 per mode, [0, 1] scale (orthonormal)"}
    ds = xr.Dataset(
        {"power_data": ("frequency", power[1:], power_attrs),
         "power_dc_data": ((), float(power[0]), power_attrs),
         "high_frequency_fraction_data": ((), float(high_frequency_fraction(
             power[1:], n_modes[1:], frequency[1:], cutoff)), {"units": "1"})},
        coords={"frequency": frequency[1:], "n_modes": ("frequency", n_modes[1:].astype(int))},
    )
    ds["frequency"].attrs["units"] = "cycles/pixel"
    ds.attrs = result_attrs("spectrum", dict(n_images=n_images, window=window,
                            channels=channels, cutoff=cutoff, seed=seed), None, dataset,
                            len(indices), seed, window=window, channels=channels, cutoff=cutoff)
    return ds
