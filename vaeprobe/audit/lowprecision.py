"""The low-precision machinery of the numerics section (:mod:`vaeprobe.audit.precision`):
activation ranges recorded by forward hooks, the CPU autocast slowdown probe, probes cast to a
dtype, the three stages (encode, decode, roundtrip) run under a precision context, and the
centre crops that keep a CPU measurement affordable."""

from __future__ import annotations

import contextlib
import copy
import functools
import time

import torch
from torch import nn

from vaeprobe.probe import LatentPass, Probe, encode

FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65504
FLOAT16_TINY = float(torch.finfo(torch.float16).tiny)  # 6.1e-5, smallest normal
CPU_SLOWDOWN_LIMIT = 4.0  # on CPU, run a dtype only when its convolutions are within this
UNDERFLOW_SAMPLE = 65536  # values per module call behind the below-normal share


def posterior_means(latents: LatentPass) -> torch.Tensor:
    """Every layer's posterior mean (z where a draw has none), flattened per row: (B, D)."""
    return torch.cat([(d.q_mean if d.q_mean is not None else d.z).flatten(1).double()
                      for d in latents.draws], 1)


class ActivationRange:
    """Per leaf module: largest |output|, count above float16's max, non-zero and
    below-normal counts; folded over every forward call."""

    def __init__(self):
        self.largest: dict[str, float] = {}
        self.overflow: dict[str, int] = {}
        self.small: dict[str, list[int]] = {}  # name -> [below float16 normal, non-zero]

    def hook(self, label: str):
        def record(module, inputs, output):
            if not (isinstance(output, torch.Tensor) and output.is_floating_point()):
                return
            flat = output.detach().reshape(-1)
            low, high = torch.aminmax(flat)  # one pass over every value
            value = max(-float(low), float(high))
            self.largest[label] = max(self.largest.get(label, 0.0), value)
            if value > FLOAT16_MAX:
                over = int((flat.abs() > FLOAT16_MAX).sum())
                self.overflow[label] = self.overflow.get(label, 0) + over
            # the share of tiny values: a systematic sample of at most UNDERFLOW_SAMPLE values
            magnitude = flat[::max(1, flat.numel() // UNDERFLOW_SAMPLE)].abs()
            nonzero = int(torch.count_nonzero(magnitude))
            counts = self.small.setdefault(label, [0, 0])
            counts[0] += nonzero - int(torch.count_nonzero(magnitude >= FLOAT16_TINY))
            counts[1] += nonzero
        return record

    def merge(self, other: ActivationRange) -> None:
        for label, value in other.largest.items():
            self.largest[label] = max(self.largest.get(label, 0.0), value)
        for label, value in other.overflow.items():
            self.overflow[label] = self.overflow.get(label, 0) + value
        for label, (below, nonzero) in other.small.items():
            counts = self.small.setdefault(label, [0, 0])
            counts[0] += below
            counts[1] += nonzero


@functools.cache
def cpu_slowdown(dtype_name: str) -> float:
    """How many times slower a 3x3 convolution (32 channels, 64x64) runs under CPU autocast
    to ``dtype_name`` than in float32 (timed once per process; inf where it fails)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 64, 64)

    def timed(context) -> float:
        with torch.no_grad(), context:
            start = time.perf_counter()
            conv(x)
            return time.perf_counter() - start

    fast = contextlib.nullcontext
    try:
        low_context = functools.partial(torch.autocast, "cpu", dtype=getattr(torch, dtype_name))
        timed(fast()), timed(low_context())  # warm-up
        reference, low = [], []
        for _ in range(3):  # interleaved, fastest of each: a busy machine's preemptions drop out
            reference.append(timed(fast()))
            low.append(timed(low_context()))
            if min(low) > 4 * CPU_SLOWDOWN_LIMIT * min(reference):
                break  # clearly slow: no need to wait for more
        reference, low = min(reference), min(low)
    except RuntimeError:
        return float("inf")
    return low / max(reference, 1e-6)


def cast_probe(probe: Probe, dtype: torch.dtype) -> Probe:
    """A shallow copy of the probe whose nn.Modules are deep copies cast to ``dtype``."""
    clone = copy.copy(probe)
    for name, value in vars(probe).items():
        if isinstance(value, nn.Module):
            setattr(clone, name, copy.deepcopy(value).to(dtype))
    return clone


@torch.no_grad()
def precision_stages(probe: Probe, x: torch.Tensor, reference: LatentPass) -> dict:
    """The three stages' outputs (float64, CPU) under the current precision context."""
    latents = encode(probe, x, 1, None, "mean")
    rerun = LatentPass(reference.draws, reference.n_samples)  # no context: decoder reruns
    return {"encode": posterior_means(latents).cpu(),
            "decode": probe.decode(rerun).mean.double().flatten(1).cpu(),
            "roundtrip": probe.decode(latents).mean.double().flatten(1).cpu()}


def low_precision_pass(probe: Probe, x, reference: LatentPass, dtype: torch.dtype
                   ) -> tuple[dict | None, str, str]:
    """(stages, method, skip reason): autocast first, then cast modules."""
    try:
        with torch.autocast(probe.device.type, dtype=dtype):
            return precision_stages(probe, x, reference), "autocast", ""
    except RuntimeError as autocast_error:
        try:
            return precision_stages(cast_probe(probe, dtype), x, reference), "cast", ""
        except RuntimeError as cast_error:
            return None, "none", (f"autocast: {str(autocast_error).splitlines()[0]}; cast "
                                  f"modules: {str(cast_error).splitlines()[0]}")


def compare_outputs(low: torch.Tensor, high: torch.Tensor) -> tuple[int, int, float]:
    """(NaN count, inf count, largest |low - high| over entries finite in both)."""
    finite = torch.isfinite(low) & torch.isfinite(high)
    deviation = float((low - high).abs()[finite].max()) if bool(finite.any()) else float("nan")
    return int(torch.isnan(low).sum()), int(torch.isinf(low).sum()), deviation


def select_rows(latents: LatentPass, keep: torch.Tensor) -> LatentPass:
    """The rows ``keep`` (bool mask) of a one-draw-per-image pass (no decoder context)."""
    import dataclasses

    def take(value):
        return value[keep.to(value.device)] if isinstance(value, torch.Tensor) else value

    draws = [dataclasses.replace(d, **{f.name: take(getattr(d, f.name))
                                       for f in dataclasses.fields(d)}) for d in latents.draws]
    return LatentPass(draws, latents.n_samples)


def crop_probe(probe: Probe, side: int) -> Probe | None:
    """A shallow copy of a one-layer probe for ``side`` x ``side`` images (its latent grid
    scaled alike), or None where the images are no bigger or the grid does not divide."""
    import dataclasses

    channels, height, width = probe.image_shape
    if side >= min(height, width):
        return None
    multiple = getattr(probe, "size_multiple", None)
    if multiple:  # a convolutional probe says which sizes it takes
        return probe.at_image_size(side, side) if side % multiple == 0 else None
    if len(probe.layers) != 1:
        return None
    info = probe.layers[0]
    factor = height // info.resolution[0]
    if factor * info.resolution[0] != height or width // factor != info.resolution[1] \
            or side % factor:
        return None
    clone = copy.copy(probe)
    clone.image_shape = (channels, side, side)
    clone.layers = [dataclasses.replace(info, resolution=(side // factor, side // factor))]
    return clone


@torch.no_grad()
def crop_reference(probe: Probe, x: torch.Tensor, side: int):
    """(centre-cropped images, their float32 posterior means, the float32 reference)."""
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    x = x[..., top:top + side, left:left + side].contiguous()
    latents = encode(probe, x, 1, None, "mean")
    decoded = probe.decode(LatentPass(latents.draws, latents.n_samples)).mean
    return x, latents, {"encode": posterior_means(latents).cpu(),
                        "decode": decoded.double().flatten(1).cpu()}
