"""The release note's numbers for the real published models in ../shared/realworld: the three
disentangling-vae MNIST VAEs, the JointVAE MNIST model and TAEF2.

Per MNIST model (32x32, as they were trained): the rate (nats per image, analytic KL) with its
active dimensions on grey-level test images; IWAE bits/dim on binarized test images under both
protocols (threshold at 128, dynamic seeded per image); PSNR / SSIM of the posterior-mean
reconstruction of the grey-level images (the audit's reconstructions section). For TAEF2 (a
deterministic autoencoder: no rate, no IWAE): PSNR / SSIM on Kodak photographs at full size.

    VAEPROBE_REALWORLD=../shared/realworld OMP_NUM_THREADS=1 \
        python -m benchmarks.realworld_models [--n-rate 1000] [--n-iwae 200] [-k 256] [--n-kodak 4]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import vaeprobe as vp

REALWORLD = Path(os.environ.get("VAEPROBE_REALWORLD")
                 or Path(__file__).resolve().parents[1] / ".." / "shared" / "realworld")
MNIST_MODELS = {"disvae VAE": "models/disentangling-vae/VAE_mnist",
                "disvae beta-VAE (B=4)": "models/disentangling-vae/betaH_mnist",
                "disvae beta-TCVAE": "models/disentangling-vae/btcvae_mnist",
                "JointVAE": "models/joint-vae/mnist"}


def reconstruction(probe, data, n_images: int) -> dict:
    ds = vp.audit(probe, data, n_images=n_images, sections=["reconstructions"],
                  progress=False)["reconstructions"].sel(kind="posterior_mean")
    return dict(psnr_db=round(float(ds["psnr_mean"]), 2), ssim=round(float(ds["ssim_mean"]), 3))


def mnist_model(path: Path, args) -> dict:
    probe = vp.load(path, device="cpu")
    grey = f"npz:{REALWORLD / 'mnist' / 'mnist_test_32.npz'}"
    rate = vp.rate(probe, grey, n_images=args.n_rate, posterior="mean", progress=False)
    active = [f"{str(rate['name'].values[layer])}[{channel}]"
              for layer, channel in zip(*np.nonzero(rate["active"].values), strict=True)]
    row = dict(rate_nats=round(float(rate["total_rate"]), 2),
               rate_per_layer={str(n): round(float(r), 2) for n, r in
                               zip(rate["name"].values, rate["rate"].values, strict=True)},
               active_units=f"{int(rate['active_units'])} of "
                            f"{sum(layer.channels for layer in probe.layers)}",
               active=active)
    for protocol in ("threshold", "dynamic"):
        bound = vp.iwae(probe, f"{grey},binarize={protocol}", k=args.k, n_images=args.n_iwae,
                        progress=False)
        row[f"iwae_bpd_{protocol}"] = (f"{float(bound['bpd_mean']):.4f} +- "
                                       f"{float(bound['bpd_se']):.4f} (ELBO "
                                       f"{float(bound['elbo_bpd_mean']):.4f}, nats "
                                       f"{-float(bound['log_likelihood_mean']):.1f})")
    row.update(reconstruction(probe, grey, args.n_rate))
    return row


def kodak(n_images: int) -> torch.Tensor:
    from PIL import Image

    photos = []
    for path in sorted((REALWORLD / "kodak").glob("kodim*.png")):
        pixels = np.array(Image.open(path).convert("RGB"))
        if pixels.shape[:2] == (512, 768):  # landscape: the model's input size
            photos.append(torch.from_numpy(pixels).permute(2, 0, 1))
    return torch.stack(photos[:n_images]).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rate", type=int, default=1000)
    parser.add_argument("--n-iwae", type=int, default=200)
    parser.add_argument("-k", type=int, default=256)
    parser.add_argument("--n-kodak", type=int, default=4)
    args = parser.parse_args()
    results = {}
    for name, relative in MNIST_MODELS.items():
        start = time.perf_counter()
        results[name] = mnist_model(REALWORLD / relative, args)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results[name]), flush=True)
    start = time.perf_counter()
    taef2 = vp.load(REALWORLD / "models" / "taef2", image_size=(512, 768), device="cpu")
    results["TAEF2"] = reconstruction(taef2, kodak(args.n_kodak), args.n_kodak)
    results["TAEF2"]["seconds"] = round(time.perf_counter() - start, 1)
    print("TAEF2", json.dumps(results["TAEF2"]), flush=True)
    print(json.dumps(dict(vars(args)), sort_keys=True))


if __name__ == "__main__":
    main()
