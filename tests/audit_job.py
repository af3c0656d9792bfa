"""``vp.audit`` of a tiny run in its own process (tests/test_audit_resume.py).

    python tests/audit_job.py RUN OUT [--stall]

``--stall``: the likelihood section's first pass of K > 1 draws sleeps for ten minutes,
so that the test can kill the process once the earlier sections are on disk.
"""

import sys
import time

import vaeprobe as vp

DATA = "digits8:test"
# the precision section times bfloat16 against float32 on CPU to decide whether to run it: under
# load two processes can decide differently, so the compared runs fix the decision (run it)
PRECISION = {"dtypes": ["bfloat16"], "cpu_slowdown_limit": 1e9}
OPTIONS = dict(n_images=12, batch_size=5, progress=False,
               settings={"likelihood": {"k": 3}, "progressive": {"n_images": 6},
                         "precision": PRECISION},
               feature_extractor="random-convnet-TEST-ONLY")  # LPIPS: skipped, no weights


def stalled(probe):
    """The probe, its importance-sampling passes (encode_chunks) stalled."""
    original = probe.encode_chunks

    def encode_chunks(x, n_samples, *args, **kwargs):
        if n_samples > 1:  # IWAE's K draws (every other section draws one)
            time.sleep(600)
        return original(x, n_samples, *args, **kwargs)

    probe.encode_chunks = encode_chunks
    return probe


def audit(run, out, stall: bool = False):
    probe = vp.load(run, device="cpu")
    return vp.audit(stalled(probe) if stall else probe, DATA, out=out, **OPTIONS)


if __name__ == "__main__":
    audit(sys.argv[1], sys.argv[2], stall="--stall" in sys.argv[3:])
    print("finished")
