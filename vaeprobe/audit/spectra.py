"""Section 6, spectra: vp.spectrum on the probe (reconstruction power relative to the data,
high-frequency fraction) and, for spatial latents, the radially averaged spectrum of the latent
channels (posterior means), on each layer's own grid."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vaeprobe._analysis import batches
from vaeprobe.audit._common import evaluation_images, restamp
from vaeprobe.probe import Probe
from vaeprobe.spectrum import _SpectrumAccumulator, high_frequency_fraction, spectrum

MIN_LATENT_SIDE = 8  # smaller latent grids have too few modes (and a Hann window leaves ~2 px)

PROTOCOL = ("vp.spectrum on the probe (one posterior draw per image); latent spectra: posterior "
            "means of every layer whose grid is at least {side}x{side}, with vp.spectrum's "
            "estimator (per image and channel mean removed, window, |FFT|^2 averaged over images "
            "and channels, radial bins of rounded radius) in cycles per latent pixel; "
            "latent_power_normalised divides by the layer's total non-DC power")


def spectra(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
            window: str = "hann", cutoff: float = 0.25, batch_size: int = 64,
            progress: bool = True) -> xr.Dataset:
    """Section 6: image-space spectra of reconstructions and, for spatial latents, of latents.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
    seed : int
    window : {"hann", "kaiser", "none"}
    cutoff : float
        High-frequency fraction: power above this many cycles per (image or latent) pixel.
    batch_size, progress

    Returns
    -------
    xarray.Dataset
        What :func:`vaeprobe.spectrum` returns for one model (dims ``step`` of size 1 and
        ``frequency``), plus, over dim ``latent_frequency`` (cycles per latent pixel; the union
        of the layers' grids) and ``layer``: ``latent_power``, ``latent_power_normalised`` (NaN
        where a layer has no such bin or is not spatial), ``latent_high_frequency_fraction``
        (layer) and the coord ``spatial`` (layer, 0/1).

    Examples
    --------
    >>> ds = spectra(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> float(ds["high_frequency_fraction"][0])  # doctest: +SKIP
    """
    ds = spectrum(probe, data, n_images=n_images, window=window, cutoff=cutoff,
                  batch_size=batch_size, seed=seed, progress=progress)
    ds = ds.merge(_latent_spectra(probe, data, n_images, seed, window, cutoff, batch_size,
                                  progress), combine_attrs="override")
    for name in ("preview_data", "preview_reconstruction"):
        if name in ds:
            ds[name].attrs.setdefault("units", "uint8 pixel values")
    source = dict(probe.source)  # vp.spectrum of several checkpoints records them along step
    source.setdefault("checkpoint", "in-memory model")
    return restamp(ds, "spectra", dict(n_images=n_images, window=window, cutoff=cutoff),
                   PROTOCOL.format(side=MIN_LATENT_SIDE), min_latent_side=MIN_LATENT_SIDE,
                   **source)


def _latent_spectra(probe, data, n_images, seed, window, cutoff, batch_size, progress
                    ) -> xr.Dataset:
    dataset, indices, _ = evaluation_images(probe, data, n_images, seed)
    spatial = [min(info.resolution) >= MIN_LATENT_SIDE for info in probe.layers]
    accumulators = {index: _SpectrumAccumulator(window, "per_channel")
                    for index, is_spatial in enumerate(spatial) if is_spatial}
    if accumulators:
        for x, _ in batches(dataset, indices, batch_size, seed, probe.device, progress,
                            "latent spectra"):
            latents = probe.encode(x, 1, None, posterior="mean")
            for index, accumulator in accumulators.items():
                draw = latents.draws[index]
                accumulator.update((draw.q_mean if draw.q_mean is not None else draw.z).double())
    profiles = {index: acc.compute() for index, acc in accumulators.items()}
    grid = sorted({float(f) for frequency, _, _ in profiles.values() for f in frequency[1:]})
    power = np.full((len(probe.layers), len(grid)), np.nan)
    normalised = np.full_like(power, np.nan)
    high = np.full(len(probe.layers), np.nan)
    position = {value: column for column, value in enumerate(grid)}
    for index, (frequency, values, counts) in profiles.items():
        columns = [position[float(f)] for f in frequency[1:]]
        energy = (values[1:] * counts[1:]).sum()
        power[index, columns] = values[1:]
        normalised[index, columns] = values[1:] * counts[1:] / energy if energy > 0 else np.nan
        high[index] = high_frequency_fraction(values[1:], counts[1:], frequency[1:], cutoff)
    ds = xr.Dataset(
        {
            "latent_power": (("layer", "latent_frequency"), power,
                             {"units": "mean |FFT|^2 per mode, latent units (orthonormal)"}),
            "latent_power_normalised": (("layer", "latent_frequency"), normalised,
                                        {"units": "1", "long_name": "share of non-DC energy"}),
            "latent_high_frequency_fraction": ("layer", high, {"units": "1"}),
        },
        coords={"latent_frequency": np.asarray(grid, dtype=np.float64),
                "layer": np.arange(len(probe.layers)),
                "layer_name": ("layer", [info.name for info in probe.layers]),
                "spatial": ("layer", np.asarray(spatial, dtype=np.int8))},
    )
    ds["latent_frequency"].attrs["units"] = "cycles/latent pixel"
    return ds
