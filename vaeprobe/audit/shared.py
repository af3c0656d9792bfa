"""The audit's shared pass: each image encoded once and decoded once per reconstruction kind;
every shared section's accumulator reads those tensors (see :mod:`vaeprobe.audit.registry`).

Per batch: one posterior draw per image (per-image generators keyed by (seed, index), as
:func:`vaeprobe.rate` draws it) and the posterior means. For a model with one Gaussian latent
layer the means are read off the draw's own pass (no second encode); a
:class:`~vaeprobe.probe.SharedEncoderProbe` runs its bottom-up encoder once for both; other
hierarchical models run their top-down pass once per kind (the posterior of a lower layer
depends on the draw above it, so the mean path is a pass of its own). Both are decoded once,
and log p(x|z) of the draw is evaluated once where the model has a likelihood.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe._analysis import progress_bar, resolve
from vaeprobe.chunking import images_per_pass
from vaeprobe.probe import LatentPass, LayerDraw, Probe, SharedEncoderProbe, encode
from vaeprobe.random import image_streams

KINDS = ("posterior_mean", "posterior_sample")


@dataclass
class SharedBatch:
    """What one batch of the shared pass gives every shared section."""

    x: torch.Tensor  # uint8 (B, C, H, W) on the probe's device
    positions: torch.Tensor  # (B,) positions in the evaluation subset (0: its first image)
    indices: torch.Tensor  # (B,) dataset indices
    generators: list  # per-image generators, after the draw and log p(x|z) consumed them
    sample: LatentPass  # one posterior draw per image
    mean: LatentPass  # the posterior means
    decoded: dict  # kind ("posterior_mean" / "posterior_sample") -> the decoder's output
    log_px: torch.Tensor | None = None  # (B,) log p(x|z) of the draw, nats; None: no likelihood
    log_px_error: str = ""  # why log p(x|z) could not be evaluated (e.g. grey levels, Bernoulli)

    def first(self, limit: int | None) -> torch.Tensor:
        """Boolean mask (B,) of the images among the subset's first ``limit`` (all: None)."""
        if limit is None:
            return torch.ones(len(self.positions), dtype=torch.bool)
        return self.positions < limit


@dataclass
class SectionContext:
    """What a shared section's accumulator factory is told about the audit."""

    dataset: object  # the resolved Dataset
    indices: torch.Tensor  # the evaluation subset (dataset indices, all ranks)
    seed: int
    networks: dict = field(default_factory=dict)  # feature_extractor, weights, lpips_...
    quick: bool = False

    @property
    def n_images(self) -> int:
        return len(self.indices)


@dataclass
class PassTiming:
    """Seconds of the shared pass: ``floor`` (one encode + one decode of every image, as
    measured inside the pass), ``total`` and ``first_batch`` (the floor of the first batch,
    per image), summed over this rank's images."""

    floor: float = 0.0
    total: float = 0.0
    images: int = 0
    floor_per_image_first_batch: float = float("nan")
    mean_path: str = ""
    update_seconds: dict = field(default_factory=dict)  # section -> seconds in its update

    @property
    def floor_per_image(self) -> float:
        return self.floor / max(self.images, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def encode_both(probe: Probe, x: torch.Tensor, generators) -> tuple[LatentPass, LatentPass, str]:
    """(posterior draw, posterior means, how the means were made) with the least encoder work.

    The draw equals ``probe.encode(x, 1, generators)``; the means equal
    ``probe.encode(x, 1, posterior="mean")``.
    """
    if len(probe.layers) == 1:
        sample = encode(probe, x, 1, generators, "sample")
        draw = sample.draws[0]
        if draw.q_mean is not None and draw.kl_analytic:
            mean = LayerDraw(draw.p_mean, draw.p_logstd, draw.q_mean, draw.q_mean,
                             draw.q_logstd, draw.kl, True)  # analytic KL: z does not enter
            return sample, LatentPass([mean], 1), "read off the draw's pass (one layer)"
        return sample, encode(probe, x, 1, None, "mean"), "a second encode"
    if isinstance(probe, SharedEncoderProbe):
        x = probe.check_images(x)
        shared = probe._shared(x)  # the deterministic bottom-up work, once
        sample = probe._draw(shared, 1, probe.noise(x.shape[0], 1, generators, "sample"))
        mean = probe._draw(shared, 1, probe.noise(x.shape[0], 1, None, "mean"))
        return sample, mean, "one bottom-up pass, one top-down pass per kind"
    return (encode(probe, x, 1, generators, "sample"), encode(probe, x, 1, None, "mean"),
            "one encode per kind (the probe does not share its bottom-up pass)")


@torch.no_grad()
def _batch(probe: Probe, x, positions, indices, seed, timing: PassTiming, monitors
           ) -> SharedBatch:
    generators = image_streams(seed, indices, probe.device)
    with contextlib.ExitStack() as stack:
        for monitor in monitors:
            stack.enter_context(monitor())
        start = time.perf_counter()
        sample, mean, how = encode_both(probe, x, generators)
        decoded_sample = probe.decode(sample)
        _ = decoded_sample.mean
        _sync(probe.device)
        floor = time.perf_counter() - start
        decoded = {"posterior_mean": probe.decode(mean), "posterior_sample": decoded_sample}
    log_px, log_px_error = None, ""
    if probe.likelihood_kind != "none":  # E_q log p(x|z) at the draw, as vp.rate takes it
        try:
            log_px = decoded_sample.log_prob(x, kind=probe.likelihood_kind,
                                             generator=generators).double().cpu()
        except ValueError as error:  # e.g. a Bernoulli decoder given grey levels
            log_px_error = str(error)
    if timing.images == 0:
        timing.floor_per_image_first_batch = floor / len(x)
    timing.floor += floor
    timing.images += len(x)
    timing.mean_path = how
    return SharedBatch(x, positions, indices, generators, sample, mean, decoded, log_px,
                       log_px_error)


def run_pass(probe: Probe, dataset, indices: torch.Tensor, accumulators: dict, *,
             batch_size: int, seed: int, progress: bool = True, on_first_batch=None
             ) -> tuple[dict, dict, PassTiming]:
    """Stream this rank's block of ``indices`` once through every accumulator.

    Returns (name -> merged accumulator, name -> the exception that stopped it, timing). An
    accumulator whose update raises is dropped (its error kept); the others go on.
    ``on_first_batch(floor seconds per image)`` is called once the first batch is timed.
    Batches hold at most ``batch_size`` images and at most :meth:`Probe.rows_per_pass` (on
    CPU: a few MiB of image values, which keeps the pass in the caches); no result depends
    on the batch.
    """
    batch_size = images_per_pass(probe, batch_size)
    positions = distributed.shard(torch.arange(len(indices)), probe.device)
    live, errors, timing = dict(accumulators), {}, PassTiming()
    bar = progress_bar(len(positions), "audit: shared pass", progress, unit="img")
    start_total = time.perf_counter()
    for chunk in positions.split(batch_size):
        local = indices[chunk]
        x = vdata.gather(dataset, local).to(probe.device)
        monitors = [acc.monitor for acc in live.values() if hasattr(acc, "monitor")]
        batch = _batch(probe, x, chunk, local, seed, timing, monitors)
        for name, acc in list(live.items()):
            start = time.perf_counter()
            try:
                acc.update(batch)
            except Exception as error:  # reported as the section's failure
                errors[name] = error
                del live[name]
            timing.update_seconds[name] = (timing.update_seconds.get(name, 0.0)
                                           + time.perf_counter() - start)
        if on_first_batch is not None and timing.images == len(x):
            on_first_batch(timing.floor_per_image_first_batch)
        bar.update(len(x))
    bar.close()
    timing.total = time.perf_counter() - start_total
    merged = {name: distributed.merge(acc) for name, acc in live.items()}
    return merged, errors, timing


def run_shared(name: str, probe, data, *, n_images: int | None = 256, seed: int = 0,
               batch_size: int = 64, progress: bool = True, networks: dict | None = None,
               **options):
    """One shared section on its own: resolve the model and data once
    (:func:`vaeprobe._analysis.resolve`), then :func:`shared_core`."""
    return shared_core(name, resolve(probe, data, n_images=n_images, seed=seed),
                       batch_size=batch_size, progress=progress, networks=networks, **options)


def shared_core(name: str, evaluation, *, batch_size: int = 64, progress: bool = True,
                networks: dict | None = None, **options):
    """Shared section ``name`` on images already chosen (an
    :class:`~vaeprobe._analysis.Evaluation`): its accumulator alone through the pass."""
    from vaeprobe.audit.registry import get

    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    context = SectionContext(dataset, indices, evaluation.seed, dict(networks or {}))
    accumulator = get(name).accumulator(probe, context, **options)
    merged, errors, _ = run_pass(probe, dataset, indices, {name: accumulator},
                                 batch_size=batch_size, seed=evaluation.seed, progress=progress)
    if name in errors:
        raise errors[name]
    return merged[name].compute()
