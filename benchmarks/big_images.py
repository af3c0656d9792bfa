"""Big images through a Stable-Diffusion-size AutoencoderKL: peak memory with and without tiling,
the tiling error, and Kodak at its native 768x512.

The model is the SD 1.x VAE's architecture (block_out_channels 128/256/512/512,
layers_per_block 2, 4 latent channels, 83.7 M parameters) with seeded random weights (no
download), written as a diffusers folder (config.json + safetensors) and opened by vaeprobe's
own reader. Each measured pass runs in a fresh child process, which reports its own peak
resident memory (``ru_maxrss``): what torch's allocator took included, unlike tracemalloc.

    .venv/bin/python -m benchmarks.big_images [--side 1024] [--tile 512] [--kodak 2]
        [--device cpu|cuda] [--quick]

``--quick``: 256 px, 128 px tiles, no Kodak (a smoke run). On CUDA the peak is
``torch.cuda.max_memory_allocated`` (the child's RSS is printed too).

Goal (issue 21): encode + decode of one 1024x1024 image under 8 GB with tiling.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT

REALWORLD = Path(os.environ.get("VAEPROBE_REALWORLD", Path(ROOT) / ".." / "shared" / "realworld"))
SD_CONFIG = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4,
                 block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu",
                 latent_channels=4, norm_num_groups=32, sample_size=512,
                 scaling_factor=0.18215)


def write_sd_vae(folder: Path, seed: int = 0) -> Path:
    """The SD-size AutoencoderKL with seeded random weights, as a diffusers folder."""
    import torch
    from safetensors.torch import save_file

    from vaeprobe.adapters.diffusers import AutoencoderKL, AutoencoderKLConfig

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "diffusion_pytorch_model.safetensors").is_file():
        return folder
    config = AutoencoderKLConfig.from_json(SD_CONFIG, folder / "config.json")
    torch.manual_seed(seed)
    model = AutoencoderKL(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(SD_CONFIG, indent=1))
    return folder


def test_image(side: int):
    """One uint8 (1, 3, side, side) image: kodim23 squashed to the side when Kodak is present
    (a natural image), else a smooth seeded pattern."""
    import torch

    kodak = REALWORLD / "kodak" / "kodim23.png"
    if kodak.is_file():
        from PIL import Image

        with Image.open(kodak) as image:
            pixels = np.array(image.convert("RGB").resize((side, side), Image.BICUBIC))
        return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
    grid = torch.linspace(0, 6.28, side)
    pattern = torch.stack([torch.sin(grid[:, None] * (c + 1) + grid[None]) for c in range(3)])
    return ((pattern * 0.5 + 0.5) * 255).round().to(torch.uint8)[None]


def child_pass(folder: str, side: int, tile: int, out: str, device: str) -> None:
    """In a child: open the model, encode + decode one image, print JSON facts, save the
    reconstruction (uint8 .npy would lose the difference: float32 instead)."""
    import torch

    import vaeprobe as vp

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    probe = vp.load(folder, device=device, tile_size=tile or None).at_image_size(side, side)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = test_image(side)
    start = time.perf_counter()
    latents = probe.encode(x, posterior="mean")
    encoded = time.perf_counter() - start
    mean = probe.decode(latents).mean
    total = time.perf_counter() - start
    np.save(out, mean.cpu().numpy().astype(np.float32))
    facts = dict(side=side, tile_size=tile, device=device, encode_s=round(encoded, 1),
                 encode_decode_s=round(total, 1), rss_after_load_mib=round(after_load),
                 peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if device == "cuda":
        facts["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    print(json.dumps(facts, sort_keys=True))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.big_images", "--child", *args],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(folder: Path, side: int, tiles: list[int], work: Path, device: str) -> None:
    results = {}
    for tile in tiles:
        out = work / f"recon_{tile}.npy"
        results[tile] = run_child(str(folder), str(side), str(tile), str(out), device)
        label = f"tiled {tile} px" if tile else "untiled"
        print(f"{side}x{side} {label}: {json.dumps(results[tile])}", flush=True)
    if 0 in results:
        whole = np.load(work / "recon_0.npy").astype(np.float64)
        for tile in (t for t in tiles if t):
            tiled = np.load(work / f"recon_{tile}.npy").astype(np.float64)
            mse = float(((tiled - whole) ** 2).mean())
            print(f"tiling error at {tile} px: max abs {np.abs(tiled - whole).max():.4f}, "
                  f"PSNR {-10 * np.log10(mse):.2f} dB (tiled against untiled, [0, 1] scale)")


def kodak(folder: Path, n_images: int, tile: int, device: str) -> None:
    """Kodak at native 768x512 (portraits turned): rate and the tiling error of a few."""
    import vaeprobe as vp

    path = REALWORLD / "kodak"
    if not path.is_dir():
        print(f"skipped Kodak: {path} is absent")
        return
    data = f"folder:{path},resize=none,orient=landscape"
    start = time.perf_counter()
    ds = vp.rate(vp.load(folder, device=device), data, n_images=n_images, progress=False)
    print(f"Kodak native {ds.attrs['image_size']} (HxW), {n_images} images: rate "
          f"{float(ds.total_rate):.0f} nats/image, latent {ds.layer_resolution.values[0]}, "
          f"{time.perf_counter() - start:.0f} s")
    err = vp.tiling_error(vp.load(folder, device=device, tile_size=tile), data,
                          n_images=n_images)
    print(f"Kodak tiling error at {tile} px ({err.attrs['n_tiles']} tiles): max abs "
          f"{float(err.max_abs_difference_max):.4f}, PSNR min {float(err.psnr_min):.2f} dB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--no-untiled", action="store_true", help="skip the untiled pass")
    parser.add_argument("--no-memory", action="store_true", help="only the Kodak part")
    parser.add_argument("--kodak", type=int, default=2, help="Kodak images (0: skip)")
    parser.add_argument("--model", default=None, help="folder of the SD-size model (cached)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="256 px, 128 px tiles, no Kodak")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder, side, tile, out, device = args.child
        child_pass(folder, int(side), int(tile), out, device)
        return 0
    if args.quick:
        args.side, args.tile, args.kodak = 256, 128, 0
    with tempfile.TemporaryDirectory() as work:
        folder = write_sd_vae(Path(args.model or Path(work) / "sd_vae"))
        print(f"threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        tiles = [args.tile] + ([] if args.no_untiled else [0])
        if not args.no_memory:
            memory(folder, args.side, tiles, Path(work), args.device)
        if args.kodak:
            kodak(folder, args.kodak, args.tile, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
