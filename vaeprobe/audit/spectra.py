"""Section 6, spectra: vp.spectrum on the probe (reconstruction power relative to the data,
high-frequency fraction) and, for spatial latents, the radially averaged spectrum of the latent
channels (posterior means), on each layer's own grid."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import squared_error
from vaeprobe._fourier import band_energies, ratio_standard_error, window_2d
from vaeprobe.audit._common import NamedData, ProbeFacts, fmt, section_attrs
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import run_shared
from vaeprobe.probe import Probe
from vaeprobe.spectrum import SpectrumAccumulator, assemble_spectra, high_frequency_fraction

MIN_LATENT_SIDE = 8  # smaller latent grids have too few modes (and a Hann window leaves ~2 px)

PROTOCOL = ("vp.spectrum's estimator on the shared pass (one posterior draw per image, its "
            "decoder mean); latent spectra: posterior "
            "means of every layer whose grid is at least {side}x{side}, with vp.spectrum's "
            "estimator (per image and channel mean removed, window, |FFT|^2 averaged over images "
            "and channels, radial bins of rounded radius) in cycles per latent pixel; "
            "latent_power_normalised divides by the layer's total non-DC power")


class SpectraAccumulator:
    """vp.spectrum's sums for the posterior draw's reconstructions (shared pass), and the
    latent spectra of the posterior means of every spatial layer."""

    def __init__(self, probe: Probe, context, *, window: str = "hann", cutoff: float = 0.25,
                 n_preview: int = 8):
        if not 0 < cutoff < 0.5:
            raise ValueError(f"cutoff must be in (0, 0.5) cycles/pixel, got {cutoff}")
        window_2d(*probe.image_shape[1:], window)  # refuse a window before any pass
        self.window, self.cutoff, self.n_preview = window, cutoff, n_preview
        self.recon, self.residual, self.data_power = (
            SpectrumAccumulator(window, "per_channel") for _ in range(3))
        self.distortion, self.rate, self.count, self.previews, self.energies = 0.0, 0.0, 0, [], []
        self.spatial = [min(info.resolution) >= MIN_LATENT_SIDE for info in probe.layers]
        self.latent = {index: SpectrumAccumulator(window, "per_channel")
                       for index, is_spatial in enumerate(self.spatial) if is_spatial}
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images = context.seed, context.n_images

    def update(self, batch) -> None:
        x = batch.x
        mean = batch.decoded["posterior_sample"].mean.double()
        self.recon.update(mean)
        self.energies.append(band_energies(mean, self.window, "per_channel", self.cutoff).cpu())
        self.residual.update(x.double() / 255.0 - mean)
        self.data_power.update(x)
        # sums stay on the device (no host read per batch), read once in compute
        self.distortion = self.distortion + squared_error(x, mean).sum()
        if batch.sample.from_posterior:  # a deterministic autoencoder has no rate
            self.rate = self.rate + batch.sample.kl_per_layer().double().sum()
        self.count += x.shape[0]
        if sum(len(p[0]) for p in self.previews) < self.n_preview:
            n = self.n_preview  # only the previews come back from the device
            self.previews.append((x[:n].cpu(), vdata.to_uint8(mean[:n].float(), clip=True).cpu()))
        for index, accumulator in self.latent.items():
            draw = batch.mean.draws[index]
            accumulator.update((draw.q_mean if draw.q_mean is not None else draw.z).double())

    def merge(self, other: SpectraAccumulator) -> SpectraAccumulator:
        for name in ("recon", "residual", "data_power"):
            getattr(self, name).merge(getattr(other, name))
        for index, accumulator in self.latent.items():
            accumulator.merge(other.latent[index])
        self.distortion += other.distortion
        self.rate += other.rate
        self.count += other.count
        self.previews += other.previews
        self.energies += other.energies
        return self

    def compute(self) -> xr.Dataset:
        probe, n = self.probe, self.count
        self.distortion, self.rate = float(self.distortion), float(self.rate)
        frequency, power_recon, n_modes = self.recon.compute()
        energies = torch.cat(self.energies).numpy()
        row = dict(frequency=frequency, n_modes=n_modes, power_reconstruction=power_recon,
                   high_frequency_fraction_se=ratio_standard_error(energies[:, 0],
                                                                   energies[:, 1]),
                   power_residual=self.residual.compute()[1],
                   power_data=self.data_power.compute()[1], distortion=self.distortion / n,
                   rate=self.rate / n, mse=self.distortion / n / int(np.prod(probe.image_shape)),
                   preview_data=torch.cat([p[0] for p in self.previews])[:self.n_preview].numpy(),
                   preview_reconstruction=torch.cat([p[1] for p in self.previews]
                                                    )[:self.n_preview].numpy(),
                   step=int(probe.source.get("step", 0)), source=dict(probe.source))
        ds = assemble_spectra([row], self.cutoff)
        ds = ds.merge(_latent_dataset(probe, self.spatial, self.latent, self.cutoff),
                      combine_attrs="override")
        for name in ("preview_data", "preview_reconstruction"):
            ds[name].attrs.setdefault("units", "uint8 pixel values")
        parameters = dict(n_images=self.n_images, window=self.window, cutoff=self.cutoff,
                          n_preview=self.n_preview)
        ds.attrs = section_attrs("spectra", parameters, probe, self.data, self.n_images,
                                 self.seed, PROTOCOL.format(side=MIN_LATENT_SIDE),
                                 computed_by="vp.spectrum's estimator (shared pass)",
                                 window=self.window, channels="per_channel", cutoff=self.cutoff,
                                 min_latent_side=MIN_LATENT_SIDE)
        return ds


def spectra(probe: Probe, data, *, n_images: int | None = 256, seed: int = 0,
            window: str = "hann", cutoff: float = 0.25, batch_size: int = 64,
            progress: bool = True) -> xr.Dataset:
    """Section "spectra": image-space spectra of reconstructions and, for spatial latents, of
    latents.

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
    return run_shared("spectra", probe, data, n_images=n_images, seed=seed,
                      batch_size=batch_size, progress=progress, window=window, cutoff=cutoff)


def _latent_dataset(probe, spatial, accumulators, cutoff) -> xr.Dataset:
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


def summary(ds: xr.Dataset) -> str:
    return (f"high-frequency fraction {fmt(ds['high_frequency_fraction'].values.ravel()[0])} "
            f"(data {fmt(ds['high_frequency_fraction_data'])}); relative power at Nyquist "
            f"{fmt(np.ravel(ds['relative_power'].values)[-1])}")


SECTION = register(Section(
    name="spectra", title="Spectra", order=60, summary=summary, figure="audit_spectra",
    function=spectra, accumulator=SpectraAccumulator,
    options=dict(window="hann", cutoff=0.25, n_preview=8)))
