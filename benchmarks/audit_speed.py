"""The default ``vp.audit``: its time against the floor (one encode + one decode of the same
images through the same model), per-section times and peak memory.

    python -m benchmarks.audit_speed --null --size 256 --n-images 64   # the audit's own cost
    python -m benchmarks.audit_speed --sd --device cuda --size 512 --n-images 64 --resume-check
    python -m benchmarks.audit_speed --sd       # SD-1.x-size AutoencoderKL, 8 Kodak images
    python -m benchmarks.audit_speed --vdvae    # CIFAR-10-size VDVAE, 32 CIFAR-10 test images
    python -m benchmarks.audit_speed [--run runs/demo] [--n-images 256]   # a vaeprobe run

``--sd`` builds diffusers' ``AutoencoderKL`` with the SD 1.x config (block_out_channels
128/256/512/512, layers_per_block 2, 83.7 M parameters) from seeded random weights (no
download), saves it with diffusers and audits 8 Kodak images, each a 256x256 centre crop at
native scale, from ``../shared/realworld/kodak``. ``--vdvae`` saves a VDVAE of VDVAE's
``hparams=cifar10`` (39 M parameters) from seeded random weights and audits the first 32
CIFAR-10 test images from ``../shared/realworld/cifar10``. Goals on 2 CPU cores (issue 21):
the SD audit within 2.5x the floor and under 4 minutes, its numerics section within 0.5x the
floor; the whole default VDVAE audit (likelihood and progressive coding included) under 10
minutes. ``--null`` audits :class:`NullVAE` (8x average pooling to a 4-channel latent, nearest
upsampling back, a Gaussian decoder): its floor is nearly free, so the printed ms per image is
the audit's own cost (issue 29's goal on CPU, one thread: <= 250 ms per image at 256 px).
``--device cuda`` runs everything on the GPU; ``--resume-check`` reruns the audit into the same
directory (nothing to compute; the sections read before are forgotten, as in a new process) and
prints its time as ``resume_s``. Weights for LPIPS /
Inception are not downloaded: those metrics are skipped with
their reason. The process CPU time and the load average are printed beside the wall time:
the machine may be shared.
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

from benchmarks._common import ROOT, peak_rss_mib


def _realworld() -> Path:
    """../shared/realworld beside the clone (or one level up), or $VAEPROBE_REALWORLD."""
    if os.environ.get("VAEPROBE_REALWORLD"):
        return Path(os.environ["VAEPROBE_REALWORLD"])
    candidates = [Path(ROOT).parent / "shared" / "realworld",
                  Path(ROOT).parent.parent / "shared" / "realworld"]
    return next((path for path in candidates if path.is_dir()), candidates[0])


REALWORLD = _realworld()
SD_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                 block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sd_model(folder: Path, size: int, n_images: int, device: str = "cpu"):
    """(Probe, uint8 images): the SD-size AutoencoderKL saved by diffusers, Kodak crops."""
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    import vaeprobe as vp

    torch.manual_seed(0)
    AutoencoderKL(**SD_CONFIG).save_pretrained(folder, safe_serialization=True)
    files = sorted((REALWORLD / "kodak").glob("kodim*.png"))[:n_images]
    if not files:
        sys.exit(f"no Kodak images in {REALWORLD / 'kodak'} (set VAEPROBE_REALWORLD)")
    crops = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(image[top:top + size, left:left + size].transpose(2, 0, 1))
    probe = vp.load(folder, device=device, image_size=size)
    return probe, torch.from_numpy(np.stack(crops).copy())


class NullVAE:
    """A near-free VAE: 8x average pooling to a 4-channel latent (the three colour means and
    their grey mean), nearest upsampling of the colour channels back, a Gaussian decoder
    (sigma 0.1 on [0, 1]). Its floor is a few milliseconds per image, so an audit of it
    measures the audit's own cost."""

    def __new__(cls):
        import torch
        import torch.nn.functional as F
        from torch import nn

        class _Null(nn.Module):
            def encode(self, x):
                pooled = F.avg_pool2d(x, 8)
                mean = torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)
                return mean, torch.full_like(mean, -6.0)

            def decode(self, z):
                return F.interpolate(z[:, :3], scale_factor=8, mode="nearest")

        return _Null()


def null_model(size: int, n_images: int, device: str = "cpu"):
    """(Probe, uint8 images): :class:`NullVAE` as a Probe, Kodak crops of ``size`` px (random
    images where Kodak is absent)."""
    import torch

    import vaeprobe as vp

    probe = vp.Probe.from_module(NullVAE(), (3, size, size), likelihood="gaussian", sigma=0.1,
                                 size_multiple=8, device=device)
    files = sorted((REALWORLD / "kodak").glob("kodim*.png"))
    if not files:
        generator = torch.Generator().manual_seed(0)
        return probe, torch.randint(0, 256, (n_images, 3, size, size), dtype=torch.uint8,
                                    generator=generator)
    return probe, kodak_crops(files, size, n_images)


def kodak_crops(files, size: int, n_images: int):
    """uint8 (n_images, 3, size, size): centre crops at native scale, then shifted crops."""
    import torch
    from PIL import Image

    crops = []
    for index in range(n_images):
        image = np.asarray(Image.open(files[index % len(files)]).convert("RGB"))
        shift = (index // len(files)) * 16
        top = min((image.shape[0] - size) // 2 + shift, image.shape[0] - size)
        left = (image.shape[1] - size) // 2
        crops.append(image[top:top + size, left:left + size].transpose(2, 0, 1))
    return torch.from_numpy(np.stack(crops).copy())


def vdvae_model(folder: Path, n_images: int, device: str = "cpu"):
    """(Probe, uint8 images): VDVAE hparams=cifar10 with seeded random weights, CIFAR-10."""
    import torch

    import vaeprobe as vp
    from vaeprobe.models.vdvae import VDVAE, hparams_from

    torch.manual_seed(0)
    path = folder / "latest-model-ema.th"
    torch.save(VDVAE(hparams_from("cifar10")).state_dict(), path)
    data = np.load(REALWORLD / "cifar10" / "cifar10_test_jpeg.npz")["images"][:n_images]
    probe = vp.load(path, device=device, hparams="cifar10")
    return probe, torch.from_numpy(np.ascontiguousarray(data))


def floor_seconds(probe, images, batch_size: int = 64, warm: bool = True
                  ) -> tuple[float, float]:
    """(wall, CPU) seconds of one encode (a posterior draw) + one decode of every image."""
    import torch

    from vaeprobe.random import image_streams

    device = probe.device
    with torch.no_grad():
        if warm:
            _ = probe.decode(probe.encode(images[:1].to(device), 1,
                                          image_streams(0, [0], device))).mean
        _sync(str(device))
        start, cpu = time.perf_counter(), cpu_seconds()
        for first in range(0, len(images), batch_size):
            x = images[first:first + batch_size].to(device)
            latents = probe.encode(x, 1, image_streams(0, range(first, first + len(x)), device))
            _ = probe.decode(latents).mean
        _sync(str(device))
        return time.perf_counter() - start, cpu_seconds() - cpu


def audit_and_report(label: str, probe, images, args) -> int:
    import torch

    import vaeprobe as vp

    floor_before, floor_cpu_before = floor_seconds(probe, images)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), cpu_seconds()
        report = vp.audit(probe, images, n_images=len(images), device=args.device,
                          progress=True, out=out, quick=args.quick, **args.networks)
        _sync(args.device)
        audit_wall, audit_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        resume = float("nan")
        if args.resume_check:  # the same audit into the same directory: nothing to compute
            sys.modules["vaeprobe.audit.store"].forget_loaded()  # as a new process: cold
            start = time.perf_counter()
            vp.audit(probe, images, n_images=len(images), device=args.device, progress=False,
                     out=out, quick=args.quick, **args.networks)
            resume = time.perf_counter() - start
        html = Path(out, "audit.html").stat().st_size
        if args.keep:
            subprocess.run(["cp", "-r", out, args.keep], check=True)
    # the floor again after the audit: on a shared machine the fairer of the two is the smaller
    floor_after, floor_cpu_after = floor_seconds(probe, images, warm=False)
    floor, floor_cpu = min(floor_before, floor_after), min(floor_cpu_before, floor_cpu_after)
    timing = report.timing
    sections = timing["sections_seconds"]
    hooks = max(0.0, timing.get("floor_seconds", 0.0) - floor)  # the hooks ride on the pass
    numerics = sections.get("precision", 0.0) + hooks
    print(report.summary())
    print(f"\n{label}: {len(images)} images {tuple(images.shape[1:])}, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average (1 min) "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"floor (one encode + one decode, outside the audit): {floor:.1f} s wall (before "
          f"{floor_before:.1f}, after {floor_after:.1f}), {floor_cpu:.1f} s CPU")
    print(f"shared pass: {timing.get('shared_pass_seconds', 0.0):.1f} s (means: "
          f"{timing.get('mean_path', '')}); its encode + decode with activation hooks "
          f"{timing.get('floor_seconds', 0.0):.1f} s")
    print(f"{'section':<18}{'wall s':>8}{'x floor':>9}")
    for name, seconds in sections.items():
        print(f"{name:<18}{seconds:>8.1f}{seconds / floor:>9.2f}")
    print(f"{'numerics (+hooks)':<18}{numerics:>8.1f}{numerics / floor:>9.2f}")
    print(f"audit: {audit_wall:.1f} s wall = {audit_wall / floor:.2f} x floor, {audit_cpu:.1f} s "
          f"CPU = {audit_cpu / floor_cpu:.2f} x floor CPU; peak RSS {peak_rss_mib():.0f} MiB; "
          f"audit.html {html / 1e6:.1f} MB")
    print(json.dumps(dict(model=label, n_images=len(images), floor_s=round(floor, 2),
                          audit_wall_s=round(audit_wall, 2), audit_cpu_s=round(audit_cpu, 2),
                          ratio=round(audit_wall / floor, 3), floor_cpu_s=round(floor_cpu, 2),
                          cpu_ratio=round(audit_cpu / floor_cpu, 3),
                          numerics_s=round(numerics, 2),
                          numerics_ratio=round(numerics / floor, 3),
                          sections_s=sections, peak_rss_mib=round(peak_rss_mib()),
                          ms_per_image=round(1000 * audit_wall / len(images), 1),
                          resume_s=round(resume, 3), device=args.device,
                          load_average=round(load_before, 2), quick=int(args.quick),
                          settings=json.loads(report.attrs.get("parameters", "{}")).get(
                              "settings", {}),
                          threads=torch.get_num_threads())))
    return 0


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def demo_run(path: str | None) -> Path:
    if path:
        return Path(path)
    if (Path(ROOT) / "runs" / "demo").is_dir():
        return Path(ROOT) / "runs" / "demo"
    run = Path("/tmp/auditrun")
    if not list(run.glob("ckpt_step*.pt")):
        subprocess.run([sys.executable, "-m", "trainers.train", "--preset", "demo-cpu",
                        "--steps", "200", "--out", str(run), "--no-progress"], cwd=ROOT,
                       check=True)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sd", action="store_true", help="SD-1.x-size AutoencoderKL on Kodak")
    which.add_argument("--vdvae", action="store_true", help="CIFAR-10-size VDVAE on CIFAR-10")
    which.add_argument("--null", action="store_true",
                       help="a near-free VAE on Kodak crops: the audit's own cost per image")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--resume-check", action="store_true",
                        help="rerun into the same directory and time it (nothing to compute)")
    parser.add_argument("--stand-ins", action="store_true",
                        help="random-init LPIPS / feature networks (no weights needed)")
    parser.add_argument("--run", default=None, help="a vaeprobe run (neither --sd nor --vdvae)")
    parser.add_argument("--data", default="patches32:test")
    parser.add_argument("--n-images", type=int, default=None,
                        help="default: 8 (--sd), 32 (--vdvae), 256 (a run)")
    parser.add_argument("--size", type=int, default=256, help="--sd, --null: crop side")
    parser.add_argument("--quick", action="store_true", help="the audit's --quick profile")
    parser.add_argument("--keep", default=None, help="copy the audit directory here")
    args = parser.parse_args(argv)
    args.networks = dict(feature_extractor="random-convnet-TEST-ONLY",
                         lpips_trunk="random-TEST-ONLY") if args.stand_ins else {}
    import torch

    torch.manual_seed(0)
    if args.null:
        probe, images = null_model(args.size, args.n_images or 64, args.device)
        return audit_and_report(f"null VAE at {args.size} px", probe, images, args)
    with tempfile.TemporaryDirectory() as folder:
        if args.sd:
            probe, images = sd_model(Path(folder), args.size, args.n_images or 8, args.device)
            return audit_and_report(f"SD-size AutoencoderKL at {args.size} px", probe, images,
                                    args)
        if args.vdvae:
            probe, images = vdvae_model(Path(folder), args.n_images or 32, args.device)
            return audit_and_report("VDVAE hparams=cifar10", probe, images, args)
    import vaeprobe as vp

    run = demo_run(args.run)
    probe = vp.load(run, device=args.device)
    images = vp.data.gather(vp.data.load(args.data.split(":")[0], split="test"),
                            vp.data.select(vp.data.load(args.data.split(":")[0], split="test"),
                                           args.n_images or 256, 0))
    return audit_and_report(f"run {run}", probe, images, args)


if __name__ == "__main__":
    sys.exit(main())
