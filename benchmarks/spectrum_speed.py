"""vp.spectrum on 10,000 32x32 RGB images against a per-image loop radial profile, the way
Durall et al. (2020) compute it (per image: FFT, fftshift, azimuthal average by sorted radius).
Both use the same estimator (mean removed, no window, |FFT|^2 orthonormal, rounded radius), so
the profiles must agree.

With ``--preset``, also vp.spectrum of a (randomly initialised) model of that preset on the same
images: reconstructions and residuals, the model passes included.

    .venv/bin/python -m benchmarks.spectrum_speed [--n 10000] [--device cpu|cuda]
        [--preset paper-svhn] [--quick]

On a GPU (the issue's run: 50,000 images, paper-svhn):
    python -m benchmarks.spectrum_speed --device cuda --n 50000 --preset paper-svhn
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

from benchmarks._common import timed


def azimuthal_average(power: np.ndarray) -> np.ndarray:
    """Durall et al.'s ``radialProfile.azimuthalAverage``, one image at a time: sort the modes
    by radius, cumulative sums cut where the integer radius changes. Two changes so that it bins
    like vp.spectrum: the radius is rounded (not truncated) about the fftshift DC pixel, and
    every bin from DC to Nyquist is kept (theirs drops the first and the last).
    """
    y, x = np.indices(power.shape)
    radius = np.hypot(y - power.shape[0] // 2, x - power.shape[1] // 2)
    order = np.argsort(radius.flat)
    radius_int = np.round(radius.flat[order]).astype(int)
    sums = np.concatenate([[0.0], np.cumsum(power.flat[order], dtype=float)])
    edges = np.concatenate([[0], np.where(np.diff(radius_int))[0] + 1, [radius_int.size]])
    profile = np.diff(sums[edges]) / np.diff(edges)
    return profile[:min(power.shape) // 2 + 1]


def per_image_loop(images: np.ndarray) -> np.ndarray:
    profiles = []
    for image in images.astype(np.float64) / 255.0:
        for channel in image:
            centred = channel - channel.mean()
            spectrum = np.fft.fftshift(np.fft.fft2(centred, norm="ortho"))
            profiles.append(azimuthal_average(np.abs(spectrum) ** 2))
    return np.mean(profiles, axis=0)


def main(argv=None) -> int:
    import vaeprobe as vp

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="also a model's reconstruction spectra")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 images, tiny")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 500
    images = vp.data.load("patches32:train").images
    images = torch.cat([images] * math.ceil(args.n / len(images)))[:args.n]  # tiled to n
    fast, ds = timed(_synchronized(lambda: vp.spectrum(images, n_images=None, window="none",
                                                       device=args.device, progress=False),
                                   args.device), repeats=3)
    slow, profile = timed(lambda: per_image_loop(images.numpy()))
    # the floor: float64 rfft2 of every plane, in cache-resident groups of 256 as vp.spectrum
    # does, with no conversion, windowing or binning
    n_planes = images.shape[0] * images.shape[1]
    group = images[:86].double().reshape(-1, *images.shape[-2:])[:256]
    fft_only, _ = timed(lambda: [torch.fft.rfft2(group, norm="ortho")
                                 for _ in range(math.ceil(n_planes / 256))], repeats=5)
    agree = np.allclose(ds["power_data"].values, profile[1:], rtol=1e-6)
    print(f"device {args.device}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{args.n} images 3x32x32: vp.spectrum {fast:.3f} s | per-image loop {slow:.2f} s | "
          f"speed-up {slow / fast:.0f}x | profiles agree: {agree} | the float64 rfft2 of "
          f"the {n_planes} planes alone takes {fft_only:.3f} s (CPU): at most "
          f"{slow / fft_only:.0f}x on the CPU")
    if args.preset:
        model_spectrum(args.preset, images, args.device)
    return 0 if agree else 1


def _synchronized(function, device: str):
    def run():
        result = function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return result
    return run


def model_spectrum(preset: str, images: torch.Tensor, device: str) -> None:
    """vp.spectrum of a randomly initialised ``preset`` model on ``images``: its passes and
    the spectra of reconstructions, residuals and data."""
    import vaeprobe as vp
    from vaeprobe.adapters.native import probe_for
    from vaeprobe.models import HVAE
    from vaeprobe.models import preset as model_preset

    torch.manual_seed(0)
    probe = probe_for(HVAE(model_preset(preset)), device)
    if tuple(probe.image_shape) != tuple(images.shape[1:]):
        raise SystemExit(f"preset {preset} models {probe.image_shape}, not 3x32x32 patches")
    batch = 512 if device.startswith("cuda") else 64
    seconds, _ = timed(_synchronized(lambda: vp.spectrum(
        probe, images, n_images=None, batch_size=batch, progress=False), device))
    print(f"vp.spectrum of a {preset} model on {len(images)} images ({device}, batch {batch}): "
          f"{seconds:.2f} s, {len(images) / seconds:.0f} images/s")


if __name__ == "__main__":
    sys.exit(main())
