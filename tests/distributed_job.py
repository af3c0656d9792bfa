"""Every analysis on a tiny run, in each process of a torchrun job; each rank saves its results.

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_job.py RUN OUT

Used by tests/test_distributed.py, which runs :func:`analyses` in one process and compares.
"""

import json
import sys
from pathlib import Path

import torch

import vaeprobe as vp

DATA = "digits8:test"
TEST_NETS = dict(feature_extractor="random-convnet-TEST-ONLY",
                 prc_extractor="random-convnet-TEST-ONLY", lpips_trunk="random-TEST-ONLY")


def analyses(run: Path) -> dict:
    """name -> Dataset of every noun on ``run`` (odd sizes: blocks of unequal length)."""
    probe = vp.load(run, device="cpu")
    images = vp.data.load(DATA).images
    return {
        "rate": vp.rate(probe, DATA, n_images=21, batch_size=4, per_image=True,
                        progress=False),
        "iwae": vp.iwae(probe, DATA, k=5, n_images=11, batch_size=3, progress=False),
        "spectrum": vp.spectrum(run, DATA, n_images=13, batch_size=4, n_preview=9,
                                progress=False),
        "spectrum_data": vp.spectrum(images, n_images=51, progress=False),
        "pca": vp.pca_baseline(DATA, n_images=101, batch_size=16, spectrum_distortion=4.0,
                               n_spectrum_images=31, progress=False),
        "sample_quality": vp.sample_quality(probe, DATA, n_images=12, batch_size=5, n_preview=7,
                                            kid_subset_size=5, kid_subsets=10,
                                            n_diversity_pairs=3, progress=False, **TEST_NETS),
        "samples": vp.samples(probe, 9, kind="reconstruction_stochastic", data=DATA,
                              batch_size=4, progress=False),
    }


def main(run: str, out: str) -> int:
    from vaeprobe import distributed
    from vaeprobe.cli import main as cli

    out = Path(out)
    results = analyses(Path(run))
    rank, world = distributed.init()
    block = distributed.shard(torch.arange(21)).tolist()  # rate's images, by position
    (out / f"world-rank{rank}.json").write_text(json.dumps(dict(world=world, block=block)))
    for name, ds in results.items():
        vp.save(ds, out / f"{name}-rank{rank}.nc")
    # the command line under torchrun: rank 0 alone prints and writes
    return cli(["rate", run, "--data", DATA, "--n-images", "20", "--device", "cpu",
                "--out", str(out / "cli-rate.nc")])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
