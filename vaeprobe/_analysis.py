"""Shared plumbing of the analyses: evaluation sets, provenance, progress bars.

Resolve at the edge, compute in a core: a noun (``vp.rate``, ``vp.iwae``...) turns what the
user gave into an :class:`Evaluation` once, with :func:`resolve` (the model through
:func:`resolve_source`, the one caller of ``vaeprobe.as_probe`` among the nouns; the data
through :func:`evaluation_of`), and then calls its public core (``compute_rate``,
``compute_iwae``...), which takes the resolved :class:`Evaluation` and never resolves again.
The audit's sections call the same cores on the images they already hold.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from vaeprobe import data as vdata
from vaeprobe import data_checks, distributed
from vaeprobe.io import provenance
from vaeprobe.probe import Probe
from vaeprobe.random import image_streams


def fit_probe(probe: Probe, data) -> tuple[Probe, object]:
    """(probe, dataset): ``data`` resolved at the probe's image size, and the probe fitted to it.

    A ``folder:`` name is read at the probe's size and channels unless it says
    ``,resize=none``; a convolutional probe (``size_multiple`` set: diffusers, TAESD) then
    takes the data's own height and width (:meth:`Probe.at_image_size`: sizes its
    downsampling factor does not divide are refused with the nearest valid ones, or padded when
    the model was opened with ``pad="reflect"``). A fixed-size probe refuses other sizes.
    """
    dataset = vdata.as_dataset(data, image_shape=probe.image_shape, check=False)
    data_checks.report(data_checks.scale_changes(dataset[0]), vdata.dataset_name(dataset))
    shape = tuple(dataset[0].shape)
    if shape[0] != probe.image_shape[0] or (probe.size_multiple is None
                                            and shape != tuple(probe.image_shape)):
        raise ValueError(
            f"images of {vdata.dataset_name(dataset)!r} have shape {shape} but the model "
            f"expects {tuple(probe.image_shape)} (C, H, W) ({probe.accepted_sizes()}); use "
            f"data of that size and channel count (a folder is resized to it unless "
            f",resize=none)")
    return probe.at_image_size(*shape[1:]), dataset


def evaluation_set(probe: Probe, data, n_images: int | None, seed: int):
    """(dataset, indices): ``data`` checked against the probe's image shape, a seeded subset.

    ``indices`` are all the subset's images, on every rank; :func:`batches` evaluates this
    rank's block of them (:func:`vaeprobe.distributed.shard`).
    """
    dataset = vdata.as_dataset(data, image_shape=probe.image_shape)
    return dataset, vdata.select(dataset, n_images, seed)


@dataclass(frozen=True)
class Evaluation:
    """What a noun evaluates, resolved once: the model, the images, the seeded subset.

    Attributes
    ----------
    probe : Probe
        The model, fitted to the images' size (:func:`fit_probe`).
    dataset : Dataset
        The images (uint8 ``(C, H, W)`` items), checked against the probe's image shape.
    indices : torch.Tensor
        The dataset indices of the evaluated subset (int64, sorted), on every rank.
    n_images : int or None
        The subset's size as it was asked for (None: all images); recorded in provenance.
    seed : int
        The seed that drew the subset; the cores also key their per-image draws by it.
    """

    probe: Probe
    dataset: object
    indices: torch.Tensor
    n_images: int | None
    seed: int


def resolve_source(source, *args, **options) -> Probe:
    """A Probe from what a noun was given: :func:`vaeprobe.as_probe` (a Probe as it is, a run
    directory, a checkpoint file or a model folder; ``args`` / ``options`` are its format and
    loading options). The nouns resolve their model here and nowhere else."""
    from vaeprobe.adapters import as_probe  # adapters sit above the analyses' plumbing

    return as_probe(source, *args, **options)


def evaluation_of(probe: Probe, data, n_images: int | None, seed: int, *,
                  strict_data: bool = False, cycle: bool = False) -> Evaluation:
    """An :class:`Evaluation` of a resolved ``probe``: ``data`` resolved at its image size
    (:func:`fit_probe`; a convolutional model takes the data's size) and a seeded subset of
    ``n_images`` (:func:`evaluation_set`). ``strict_data``: refuse data changed to fit the
    model instead of warning (:func:`vaeprobe.data_checks.strict_data`). ``cycle``: an
    ``n_images`` above the dataset's size takes all its images, silently (for a caller that
    cycles through them, as :func:`vaeprobe.samples` does)."""
    with data_checks.strict_data() if strict_data else contextlib.nullcontext():
        probe, dataset = fit_probe(probe, data)
        subset = min(n_images, len(dataset)) if cycle and n_images is not None else n_images
        dataset, indices = evaluation_set(probe, dataset, subset, seed)
    return Evaluation(probe, dataset, indices, n_images, seed)


def resolve(source, data, *, n_images: int | None, seed: int, check=None,
            strict_data: bool = False, **options) -> Evaluation:
    """The edge of a noun: its model (:func:`resolve_source`, with ``options``), checked by
    ``check(probe)`` before any image is read (the noun's refusals come first), then its
    images (:func:`evaluation_of`). Everything after works on the returned Evaluation."""
    probe = resolve_source(source, **options)
    if check is not None:
        check(probe)
    return evaluation_of(probe, data, n_images, seed, strict_data=strict_data)


def batches(dataset, indices: torch.Tensor, batch_size: int, seed: int, device,
            progress: bool, desc: str, shard: bool = False):
    """Yield (images on device, per-image streams) with a progress bar over images.

    The streams (:func:`vaeprobe.random.image_streams`) are keyed by (``seed``, dataset index).

    ``shard``: under torchrun only this rank's contiguous block of ``indices`` is evaluated
    (:func:`vaeprobe.distributed.shard`); the caller must then reduce its results with
    ``distributed.merge`` / ``distributed.cat``. Off by default, so that a caller that does not
    reduce stays correct (every rank evaluating every image).
    """
    local = distributed.shard(indices, device) if shard else indices
    bar = progress_bar(len(local), desc, progress, unit="img")
    start = 0
    for x in vdata.iterate_batches(dataset, batch_size, local, device=device):
        chunk = local[start:start + len(x)]
        start += len(x)
        yield x.to(device), image_streams(seed, chunk, device)
        bar.update(len(x))
    bar.close()


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar (rank 0 only); when not ``enabled``, a disabled one whose update/close do
    nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
                disable=not enabled or not distributed.is_main())


def result_attrs(analysis: str, parameters: dict, probe: Probe | None, dataset, n_images: int,
                 seed: int, **facts) -> dict:
    """Provenance of one analysis of one model: parameters, checkpoint, dataset (None: "none",
    e.g. prior samples), seed."""
    source = dict(probe.source) if probe is not None else {}
    source.setdefault("checkpoint", "in-memory model")
    name = vdata.dataset_name(dataset) if dataset is not None else "none"
    if getattr(dataset, "binarize", None):  # binarized images: which protocol
        facts.setdefault("binarize", dataset.binarize)
    return provenance(analysis, parameters, dataset=name,
                      n_images=int(n_images), seed=int(seed), **source, **facts)


def image_dims(probe: Probe) -> int:
    channels, height, width = probe.image_shape
    return channels * height * width


def squared_error(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per-image sum of squared error on the [0, 1] scale: the trainer's distortion (B,)."""
    return ((x.double() / 255.0 - mean.double()) ** 2).flatten(1).sum(1)


# ---- reading results: warnings a number needs beside it -------------------------------------
UNIFORM_BPD = 8.0  # bits/dim of a uniform guess over 256 levels
ESS_FRACTION = 0.01  # mean ESS below this share of K (and below 2 draws at most) is "tiny"


def decoder_head(probe: Probe) -> tuple[str | None, float | None]:
    """(likelihood kind of the decoder head, its fixed sigma or None) when the probe says."""
    if "decoder_likelihood" in probe.source:
        return probe.source["decoder_likelihood"], probe.source.get("decoder_sigma")
    model = getattr(probe, "model", None)
    config = getattr(getattr(model, "secondary", model), "config", None)
    likelihood = getattr(config, "likelihood", None)
    sigma = getattr(config, "sigma", None) if likelihood == "fixed" else None
    return likelihood, sigma


def interpretation_warnings(probe: Probe | None = None, *, bpd: float | None = None,
                            ess_mean: float | None = None, k: int | None = None) -> list[str]:
    """Sentences a reader needs beside the numbers: bits/dim worse than a uniform guess, a
    mean effective sample size tiny next to K, a fixed-sigma decoder (bits/dim then measure the
    chosen sigma, not the model)."""
    said = []
    if bpd is not None and bpd > UNIFORM_BPD:
        said.append(f"{bpd:.3f} bits/dim is worse than a uniform guess over 256 levels "
                    f"({UNIFORM_BPD:g} bits/dim): the decoder's likelihood is badly calibrated")
    if ess_mean is not None and k is not None and k > 1 and \
            ess_mean < max(2.0, ESS_FRACTION * k):
        said.append(f"mean effective sample size {ess_mean:.1f} of K={k} draws (below "
                    f"{max(2.0, ESS_FRACTION * k):g}): a few draws carry the bound, so L_K may "
                    f"be far below log p(x); treat it as loose or raise K")
    if probe is not None and (bpd is not None or ess_mean is not None):
        likelihood, sigma = decoder_head(probe)
        if likelihood == "fixed":
            said.append(f"the decoder is a Gaussian with a fixed sigma ({sigma:g} on [0, 1]): "
                        f"its bits/dim measure that chosen sigma, not the model (compare rate "
                        f"and distortion instead, or train with --likelihood learned|optimal)")
    return said


def with_warnings(attrs: dict, said: list[str]) -> dict:
    """attrs plus ``warning``: the sentences joined by "; " ("" when there are none)."""
    previous = attrs.get("warning", "")
    attrs["warning"] = "; ".join([previous] * bool(previous) + said)
    return attrs


def flag_nonfinite(ds, names=None):
    """Say in ``attrs`` which variables (of ``names``, default all) hold NaN or inf, so that no
    NaN passes unnoticed: ``attrs["nonfinite"]`` (JSON {variable: count}, "{}" when none) and
    one ``warning`` sentence per variable. Returns ``ds`` (changed in place)."""
    import json

    import numpy as np

    if "nonfinite" in ds.attrs:  # already flagged
        return ds
    counts = {}
    for name, variable in ds.data_vars.items():
        if variable.dtype.kind in "fc" and (names is None or name in names):
            bad = int(np.count_nonzero(~np.isfinite(variable.values)))
            if bad:
                counts[str(name)] = bad
    ds.attrs["nonfinite"] = json.dumps(counts, sort_keys=True)
    said = [f"{name} holds {bad} NaN or infinite value(s) of {ds[name].size}: the model's "
            f"numbers overflowed or its weights are not finite, so {name} means nothing"
            for name, bad in counts.items()]
    if said:
        ds.attrs.update(with_warnings(dict(ds.attrs), said))
    return ds
