"""The estimator of :mod:`vaeprobe.spectrum`: windows, 2-D power maps, radial bins and profiles,
high-frequency fractions and their standard errors (pure tensor / array functions)."""

from __future__ import annotations

import numpy as np
import torch

WINDOWS = ("none", "hann", "kaiser")
CHANNEL_MODES = ("per_channel", "luminance")
_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def window_2d(height: int, width: int, window: str = "hann", device=None) -> torch.Tensor:
    """A separable window (H, W), float64, scaled so that its mean square is 1."""
    def one(n):
        if window == "none":
            return torch.ones(n, dtype=torch.float64, device=device)
        if window == "hann":
            return torch.hann_window(n, periodic=False, dtype=torch.float64, device=device)
        return torch.kaiser_window(n, periodic=False, beta=8.0, dtype=torch.float64,
                                   device=device)

    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    if window == "hann" and min(height, width) <= 2:
        raise ValueError(f"the Hann window is zero at both ends, so on images of {height}x"
                         f"{width} px it leaves no signal (every power would be NaN); pass "
                         f"window='none' (or 'kaiser') for images with a side of 2 px or less")
    w = torch.outer(one(height), one(width))
    return w / w.pow(2).mean().sqrt()


def power_2d(images: torch.Tensor, window: str = "hann", channels: str = "per_channel"
             ) -> torch.Tensor:
    """Summed (over images and channels) |FFT|^2 of mean-removed, windowed images: (H, W).

    ``images``: (N, C, H, W); uint8 is put on the [0, 1] scale, floats are taken as they are.
    Returns the sum, not the mean, so batches can be accumulated; divide by N * C'.
    Real input: ``rfft2`` gives half the spectrum, Hermitian symmetry the other half.
    """
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
    height, width = images.shape[-2:]
    w = window_2d(height, width, window, images.device)
    windowed, uint8 = window != "none", images.dtype == torch.uint8
    if channels == "luminance" and images.shape[1] == 3:
        images = (images.double() * _LUMA.to(images.device)[None, :, None, None]).sum(1)
    planes = images.reshape(-1, height, width)
    half = torch.zeros(height, width // 2 + 1, dtype=torch.float64, device=images.device)
    # transforms in groups of planes: on CPU one big batched FFT is ~10x slower per plane
    # than groups that stay in cache (benchmarks/spectrum_speed.py)
    step = max(1, (2 ** 26 if images.device.type == "cuda" else 2 ** 18) // (height * width))
    for start in range(0, planes.shape[0], step):
        x = planes[start:start + step].to(torch.float64, copy=True)
        if windowed:
            x -= x.mean(dim=(1, 2), keepdim=True)
            x *= w
        spectrum = torch.fft.rfft2(x, norm="ortho")
        if not windowed:  # unwindowed, removing the mean only zeroes the DC mode
            spectrum[:, 0, 0] = 0
        half += spectrum.real.square().sum(0) + spectrum.imag.square().sum(0)
    if uint8:
        half /= 255.0 ** 2  # the [0, 1] scale, applied once to the power
    return _unfold_half_spectrum(half, width)


def _unfold_half_spectrum(half: torch.Tensor, width: int) -> torch.Tensor:
    """Full (H, W) power map from the rfft half: P[k, l] = P[-k mod H, W - l]."""
    height, kept = half.shape
    full = half.new_empty(height, width)
    full[:, :kept] = half
    if width > kept:
        rows = (-torch.arange(height, device=half.device)) % height
        columns = width - torch.arange(kept, width, device=half.device)
        full[:, kept:] = half[rows][:, columns]
    return full


def radial_bins(height: int, width: int) -> tuple[torch.Tensor, int]:
    """Bin index of every Fourier mode (H, W) by rounded radius; -1 beyond Nyquist."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    side = min(height, width)
    index = torch.round(torch.sqrt(fy ** 2 + fx ** 2) * side).long()
    n_bins = side // 2 + 1  # 0 (DC) .. Nyquist
    return torch.where(index < n_bins, index, torch.full_like(index, -1)), n_bins


def radial_profile(power: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequency in cycles/pixel, mean power per bin, modes per bin) from a 2-D power map.

    Bin 0 is DC. Modes beyond Nyquist (the corners) are left out.
    """
    height, width = power.shape
    index, n_bins = radial_bins(height, width)
    inside = index >= 0
    flat_index, flat_power = index[inside].cpu(), power[inside].double().cpu()
    counts = torch.bincount(flat_index, minlength=n_bins).double()
    sums = torch.bincount(flat_index, weights=flat_power, minlength=n_bins)
    frequency = np.arange(n_bins) / min(height, width)
    return frequency, (sums / counts.clamp(min=1)).numpy(), counts.numpy()


def high_frequency_fraction(power: np.ndarray, counts: np.ndarray, frequency: np.ndarray,
                            cutoff: float) -> np.ndarray:
    """Share of (non-DC) power in bins above ``cutoff`` cycles/pixel; works along the last axis."""
    energy = np.asarray(power) * counts
    return energy[..., frequency > cutoff].sum(-1) / energy[..., frequency > 0].sum(-1)


def band_energies(images: torch.Tensor, window: str, channels: str, cutoff: float
                  ) -> torch.Tensor:
    """Per image: (power above ``cutoff`` cycles/pixel, all non-DC power), float64 (N, 2).

    The same estimator as :func:`power_2d` and :func:`high_frequency_fraction` (window, mean
    removed, orthonormal FFT, radial bins up to Nyquist), kept per image so that the
    high-frequency fraction, a ratio of sums over images, gets a standard error.
    """
    height, width = images.shape[-2:]
    w = window_2d(height, width, window, images.device)
    if channels == "luminance" and images.shape[1] == 3:
        images = (images.double() * _LUMA.to(images.device)[None, :, None, None]).sum(1,
                                                                                 keepdim=True)
    index, n_bins = radial_bins(height, width)
    kept = width // 2 + 1
    # rfft's half spectrum: every column but DC (and Nyquist, for an even width) stands for two
    # modes of the same radius
    multiplicity = torch.full((kept,), 2.0, dtype=torch.float64)
    multiplicity[0] = 1.0
    if width % 2 == 0:
        multiplicity[-1] = 1.0
    half_index = index[:, :kept]
    frequency = half_index.double() / min(height, width)
    inside = (half_index >= 1).double() * multiplicity
    high = inside * (frequency > cutoff).double()
    masks = torch.stack([high, inside]).to(images.device)  # (2, H, W//2+1)
    x = images.to(torch.float64, copy=True)
    if window != "none":
        x -= x.mean(dim=(-2, -1), keepdim=True)
        x *= w
    spectrum = torch.fft.rfft2(x, norm="ortho")
    power = spectrum.real.square() + spectrum.imag.square()  # (N, C, H, W//2+1)
    return torch.einsum("nchw,bhw->nb", power, masks).cpu()


def ratio_standard_error(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Standard error of sum(numerator) / sum(denominator) over n units (the delta method)."""
    n = len(numerator)
    if n < 2:
        return float("nan")
    ratio = numerator.sum() / denominator.sum()
    residual = numerator - ratio * denominator
    return float(np.sqrt((residual ** 2).sum() / (n * (n - 1))) / denominator.mean())
