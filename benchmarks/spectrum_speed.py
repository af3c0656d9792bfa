"""vp.spectrum on 10,000 32x32 RGB images against a per-image loop radial profile, the way
Durall et al. (2020) compute it (per image: FFT, fftshift, azimuthal average by sorted radius).
Both use the same estimator (mean removed, no window, |FFT|^2 orthonormal, rounded radius), so
the profiles must agree.

    .venv/bin/python -m benchmarks.spectrum_speed [--n 10000]
"""

import argparse
import sys

import numpy as np

from benchmarks._common import timed


def azimuthal_average(power: np.ndarray) -> np.ndarray:
    """Mean power per rounded radius (centred spectrum), up to Nyquist, one image at a time."""
    height, width = power.shape
    y, x = np.indices(power.shape)
    radius = np.round(np.hypot(y - height // 2, x - width // 2)).astype(int).ravel()
    order = np.argsort(radius)
    radius, values = radius[order], power.ravel()[order]
    profile = []
    for r in range(min(height, width) // 2 + 1):
        profile.append(values[radius == r].mean())
    return np.array(profile)


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
    args = parser.parse_args(argv)
    images = vp.data.load("patches32:train").images[:args.n]
    fast, ds = timed(lambda: vp.spectrum(images, n_images=None, window="none",
                                         progress=False), repeats=3)
    slow, profile = timed(lambda: per_image_loop(images.numpy()))
    agree = np.allclose(ds["power_data"].values, profile[1:], rtol=1e-6)
    print(f"{args.n} images 3x32x32: vp.spectrum {fast:.3f} s | per-image loop {slow:.2f} s | "
          f"speed-up {slow / fast:.0f}x | profiles agree: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
