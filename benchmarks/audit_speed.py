"""The default ``vp.audit`` on the demo run: wall and CPU seconds, per section and in all.

Target (issue 13): under 2 minutes on 2 CPU cores for 256 images. Wall time on a shared machine
depends on its load, so the process CPU time (user + sys) and the 1-minute load average are
printed beside it: on an otherwise idle machine, wall time is about CPU time / threads.

    .venv/bin/python -m benchmarks.audit_speed [--run runs/demo] [--n-images 256]

Without ``--run``: ``runs/demo`` if it exists, else a short demo run is trained into
``/tmp/auditrun`` (``python -m trainers.train --preset demo-cpu --steps 200``).
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

from benchmarks._common import ROOT, peak_rss_mib


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument("--run", default=None)
    parser.add_argument("--data", default="patches32:test")
    parser.add_argument("--n-images", type=int, default=256)
    args = parser.parse_args(argv)
    run = demo_run(args.run)
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    import torch

    import vaeprobe as vp

    import_wall, import_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    wall, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        report = vp.audit(run, args.data, n_images=args.n_images, device="cpu", progress=False,
                          out=out)
        audit_wall, audit_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    sections = {name: float(ds.attrs["elapsed_seconds"]) for name, ds in report.items()}
    print(report.summary())
    print(f"\nrun {run}, {args.n_images} images of {args.data}, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average (1 min) "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'section':<16}{'wall s':>8}")
    for name, seconds in sections.items():
        print(f"{name:<16}{seconds:>8.1f}")
    print(f"{'(files)':<16}{audit_wall - sum(sections.values()):>8.1f}")
    print(f"audit: {audit_wall:.1f} s wall, {audit_cpu:.1f} s CPU; imports: {import_wall:.1f} s "
          f"wall, {import_cpu:.1f} s CPU; peak RSS {peak_rss_mib():.0f} MiB")
    print(json.dumps(dict(audit_wall_s=round(audit_wall, 2), audit_cpu_s=round(audit_cpu, 2),
                          import_wall_s=round(import_wall, 2), import_cpu_s=round(import_cpu, 2),
                          sections_wall_s=sections, load_average=round(load_before, 2),
                          threads=torch.get_num_threads(), n_images=args.n_images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
