"""Section "precision", numerical health: predicted and measured float16 / bfloat16 failures.

Prediction (every image, no extra pass): during the audit's float32 shared pass, forward hooks
record every leaf module's largest ``|activation|``, how many values exceed float16's largest
finite value (65504: they would become inf) and the share of non-zero values below float16's
smallest normal (6.1e-5: they lose precision or flush to zero). A
module beyond a dtype's range predicts a failure in that dtype.

Measurement (a bounded subset): the actual low-precision passes run where the device runs them
at usable speed: on CUDA every dtype on up to ``image_limit`` images; on CPU only the dtypes
whose convolutions run within :data:`CPU_SLOWDOWN_LIMIT` x float32 (timed once per process on
a small convolution: on many CPUs float16 convolutions are ~100x slower, bfloat16 ones fast),
on the first ``cpu_images`` images. What ran, and why the rest did not, is in attrs.
Low precision is applied with ``torch.autocast`` (the model unchanged); where autocast
refuses, the modules are cast. The model's own declaration (diffusers' ``force_upcast``) is
compared with what was predicted.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr
from torch import nn

from vaeprobe.audit._common import LocalHandle, NamedData, ProbeFacts, section_attrs
from vaeprobe.audit.lowprecision import (
    CPU_SLOWDOWN_LIMIT,
    FLOAT16_MAX,
    FLOAT16_TINY,
    ActivationRange,
    compare_outputs,
    cpu_slowdown,
    crop_probe,
    crop_reference,
    low_precision_pass,
    posterior_means,
    select_rows,
)
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.shared import run_shared
from vaeprobe.probe import Probe

DTYPES = ("float32", "bfloat16", "float16")
STAGES = ("encode", "decode", "roundtrip")
BFLOAT16_MAX = float(torch.finfo(torch.bfloat16).max)
N_MODULES = 10  # modules with the largest activations kept in the Dataset
CPU_CROP = 128  # on CPU, low precision runs on a centre crop of this side where the model allows

PROTOCOL = ("prediction: forward hooks on every leaf module during the float32 shared pass "
            "(all images) record max |output|, the count above float16's largest finite value "
            "(65504) and, in a systematic sample of <= 65536 values per call, the share of "
            "non-zero |values| below float16's "
            "smallest normal (6.1e-5); a module above a dtype's largest value predicts inf/NaN "
            "in that dtype. Measurement: posterior means (no noise) and decoder means in the "
            "dtype (torch.autocast, else modules cast) against the shared pass's float32 "
            "tensors: stage 'encode' (posterior means), 'decode' (float32 means decoded in the "
            "dtype), 'roundtrip' (both in the dtype); NaN and inf counts and the largest "
            "|deviation| over entries finite in both; on CPU only dtypes whose convolutions run "
            "within {limit:g}x float32, on the first {cpu_images} image(s) (a centre crop of "
            "cpu_crop px for one-layer convolutional models, its float32 reference rerun on "
            "it); on CUDA every dtype on up to {limit_images} whole images")


def _modules(probe: Probe) -> list[nn.Module]:
    return [value for value in vars(probe).values() if isinstance(value, nn.Module)]


class PrecisionAccumulator:
    """Activation ranges over the shared pass; low-precision passes on a bounded subset."""

    def __init__(self, probe: Probe, context, *, dtypes=("bfloat16", "float16"),
                 cpu_images: int = 1, image_limit: int = 32, run_low_precision: bool = True,
                 cpu_slowdown_limit: float = CPU_SLOWDOWN_LIMIT, cpu_crop: int | None = CPU_CROP):
        unknown = set(dtypes) - set(DTYPES[1:])
        if unknown:
            raise ValueError(f"dtypes must be among {DTYPES[1:]}, got {sorted(unknown)}")
        self.names = ["float32", *dtypes]
        self.runner = LocalHandle(probe)  # stays on this rank (only update runs it)
        self.ranges = ActivationRange()
        self.counts = np.zeros((len(self.names), len(STAGES), 2), dtype=np.int64)
        self.deviation = np.zeros((len(self.names), len(STAGES)))
        self.methods, self.skips, self.measured = {"float32": "reference"}, {}, 0
        cuda = probe.device.type == "cuda"
        self.limit = image_limit if cuda else cpu_images
        self.crop = None if cuda or cpu_crop is None else int(cpu_crop)
        self.crop_used = "the whole image"
        self.run_dtypes = []
        for name in dtypes:
            slowdown = 1.0 if cuda else cpu_slowdown(name)
            if not run_low_precision:
                self.skips[name] = "not run (run_low_precision=False): predicted only"
            elif cuda or slowdown <= cpu_slowdown_limit:
                self.run_dtypes.append(name)
            else:
                self.skips[name] = (f"not run on this CPU: its {name} convolutions are "
                                    f"{slowdown:.0f}x slower than float32 (limit "
                                    f"{cpu_slowdown_limit:g}x); predicted from activation "
                                    f"ranges only")
        self.slowdown = {name: (1.0 if cuda else round(cpu_slowdown(name), 2))
                         for name in dtypes}
        self.settings = dict(dtypes=list(dtypes), cpu_images=cpu_images, image_limit=image_limit,
                             run_low_precision=int(run_low_precision),
                             cpu_slowdown_limit=float(cpu_slowdown_limit),
                             cpu_crop=-1 if cpu_crop is None else int(cpu_crop))
        self.force_upcast = _declared_force_upcast(probe)
        self.probe, self.data = ProbeFacts(probe), NamedData(context.dataset)
        self.seed, self.n_images, self.cuda = context.seed, context.n_images, cuda

    def monitor(self):
        """Forward hooks on every leaf module while the float32 pass runs."""
        return _Hooks(self.runner.value, self.ranges)

    def update(self, batch) -> None:
        keep = batch.first(self.limit)
        if not self.run_dtypes or not bool(keep.any()):
            return
        x = batch.x[keep.to(batch.x.device)]
        runner = self.runner.value
        reference_latents = select_rows(batch.mean, keep)
        reference = {"encode": posterior_means(reference_latents).cpu(),
                     "decode": batch.decoded["posterior_mean"].mean[keep.to(batch.x.device)]
                     .double().flatten(1).cpu()}
        if self.crop:  # a smaller problem for the slow device: the reference reruns on it
            cropped = crop_probe(runner, self.crop)
            if cropped is not None:
                try:
                    x, reference_latents, reference = crop_reference(cropped, x, self.crop)
                    runner, self.crop_used = cropped, f"a {self.crop}x{self.crop} centre crop"
                except (RuntimeError, ValueError):  # not fully convolutional: full size
                    pass
        reference["roundtrip"] = reference["decode"]
        self.measured += len(x)
        for row, name in enumerate(self.names):
            if name != "float32" and name not in self.run_dtypes:
                continue
            if name == "float32":
                result = reference
            else:
                result, self.methods[name], reason = low_precision_pass(
                    runner, x, reference_latents, getattr(torch, name))
                if result is None:
                    self.skips[name] = reason
                    self.run_dtypes.remove(name)
                    continue
            for column, stage in enumerate(STAGES):
                nan, inf, worst = compare_outputs(result[stage], reference[stage])
                self.counts[row, column] += (nan, inf)
                self.deviation[row, column] = np.nanmax([self.deviation[row, column], worst])

    def merge(self, other: PrecisionAccumulator) -> PrecisionAccumulator:
        self.ranges.merge(other.ranges)
        self.counts += other.counts
        self.deviation = np.fmax(self.deviation, other.deviation)
        self.measured += other.measured
        self.methods.update(other.methods)
        self.skips.update(other.skips)
        return self

    def compute(self) -> xr.Dataset:
        return _dataset(self)


class _Hooks:
    def __init__(self, probe, ranges: ActivationRange):
        self.probe, self.ranges, self.handles = probe, ranges, []

    def __enter__(self):
        roots = _modules(self.probe)
        for index, root in enumerate(roots):
            for name, module in root.named_modules():
                if not list(module.children()):
                    label = f"{index}.{name}" if len(roots) > 1 else name
                    self.handles.append(module.register_forward_hook(self.ranges.hook(label)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _declared_force_upcast(probe: Probe) -> int:
    """The model's own force_upcast (diffusers' AutoencoderKL config): 1, 0, or -1 (none)."""
    if "force_upcast" in probe.source:
        return int(bool(probe.source["force_upcast"]))
    for module in _modules(probe):
        value = getattr(getattr(module, "config", None), "force_upcast", None)
        if value is not None:
            return int(bool(value))
    return -1


def _prediction(acc: PrecisionAccumulator) -> dict:
    """Per dtype: "ok" or what fails, from the activation ranges."""
    largest = acc.ranges.largest
    said = {}
    for name, limit in (("float16", FLOAT16_MAX), ("bfloat16", BFLOAT16_MAX)):
        over = sorted(label for label, value in largest.items() if value > limit)
        said[name] = (f"overflow (inf/NaN) predicted: {len(over)} module(s) above {limit:.4g}"
                      if over else "no overflow predicted")
    return said


def _dataset(acc: PrecisionAccumulator) -> xr.Dataset:
    largest = acc.ranges.largest
    top = sorted(largest.items(), key=lambda item: -item[1])[:N_MODULES]
    values = np.array([value for _, value in top], dtype=np.float64)
    exceeding = sorted(name for name, value in largest.items() if value > FLOAT16_MAX)
    small = {label: below / nonzero for label, (below, nonzero) in acc.ranges.small.items()
             if nonzero}
    counts, deviation = acc.counts.copy(), acc.deviation.copy()
    for row, name in enumerate(acc.names):
        if name in acc.skips:
            counts[row], deviation[row] = -1, np.nan
    prediction = _prediction(acc)
    predicted_fp16_fails = bool(exceeding)
    agreement = ("no declaration" if acc.force_upcast < 0 else
                 "agrees" if bool(acc.force_upcast) == predicted_fp16_fails else
                 "declares upcasting; no float16 overflow measured on these images"
                 if acc.force_upcast else "float16 overflow measured but not declared")
    pair = ("dtype", "stage")
    ds = xr.Dataset(
        {
            "nan_count": (pair, counts[..., 0], {"units": "entries", "long_name":
                                                 "-1: dtype not run"}),
            "inf_count": (pair, counts[..., 1], {"units": "entries"}),
            "max_abs_deviation": (pair, deviation, {"units": "latent units (encode) or [0, 1] "
                                                    "pixel scale (decode, roundtrip)"}),
            "max_activation": ("module", values, {"units": "activation units"}),
            "exceeds_float16": ("module", (values > FLOAT16_MAX).astype(np.int8),
                                {"units": "1", "long_name": f"above {FLOAT16_MAX:g}"}),
            "below_float16_normal_fraction": (
                "module", np.array([small.get(name, np.nan) for name, _ in top]),
                {"units": "1", "long_name": "share of non-zero |values| under 6.1e-5"}),
            "n_modules_exceeding_float16": ((), len(exceeding), {"units": "modules"}),
            "n_modules_monitored": ((), len(largest), {"units": "modules"}),
            "largest_activation": ((), max(largest.values(), default=np.nan),
                                   {"units": "activation units"}),
            "n_images_measured": ((), int(acc.measured), {"units": "images"}),
        },
        coords={"dtype": acc.names, "stage": list(STAGES), "module": [name for name, _ in top]},
    )
    ran = [name for name in acc.names[1:] if name not in acc.skips]
    protocol = PROTOCOL.format(limit=acc.settings["cpu_slowdown_limit"],
                               cpu_images=acc.settings["cpu_images"],
                               limit_images=acc.settings["image_limit"])
    ds.attrs = section_attrs(
        "precision", acc.settings, acc.probe, acc.data, acc.n_images, acc.seed, protocol,
        methods=json.dumps(acc.methods), dtype_skipped=json.dumps(acc.skips),
        dtypes_run=json.dumps(ran), measured_on=f"{acc.measured} image(s) on "
        f"{'CUDA' if acc.cuda else 'CPU'}" + (f", {acc.crop_used}" if acc.measured else ""),
        cpu_slowdown=json.dumps(acc.slowdown),
        prediction=json.dumps(prediction), modules_exceeding_float16=json.dumps(exceeding),
        float16_max=FLOAT16_MAX, float16_smallest_normal=FLOAT16_TINY,
        declared_force_upcast=acc.force_upcast, force_upcast_vs_prediction=agreement)
    return ds


def numerical_health(probe: Probe, data, *, n_images: int | None = 64, seed: int = 0,
                     dtypes=("bfloat16", "float16"), cpu_images: int = 1,
                     image_limit: int = 32, run_low_precision: bool = True,
                     cpu_slowdown_limit: float = CPU_SLOWDOWN_LIMIT,
                     cpu_crop: int | None = CPU_CROP, batch_size: int = 64,
                     progress: bool = True) -> xr.Dataset:
    """Section "precision": predicted and measured float16 / bfloat16 failures.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
        Images of the float32 pass (activation ranges: the prediction).
    seed : int
    dtypes : sequence of {"bfloat16", "float16"}
    cpu_images : int
        On CPU, the low-precision passes run on this many images (the first of the subset),
        and only for dtypes whose convolutions are within 4x float32's speed here.
    image_limit : int
        On CUDA, the low-precision passes run on up to this many images.
    run_low_precision : bool
        False: prediction only.
    cpu_slowdown_limit : float
        On CPU, run a dtype only when a small convolution in it is at most this many times
        slower than in float32 (``inf``: always).
    cpu_crop : int, optional
        On CPU, a one-layer convolutional model runs its low-precision passes (and a float32
        reference) on a centre crop of this side (None: the whole image).
    batch_size, progress

    Returns
    -------
    xarray.Dataset
        Dims ``dtype`` (float32 first) and ``stage`` (encode, decode, roundtrip):
        ``nan_count``, ``inf_count`` (-1 where the dtype was not run), ``max_abs_deviation``;
        dim ``module`` (largest activations of the float32 pass): ``max_activation``,
        ``exceeds_float16`` (0/1), ``below_float16_normal_fraction``; scalars
        ``n_modules_exceeding_float16``, ``n_modules_monitored``, ``largest_activation``,
        ``n_images_measured``. Attrs: ``prediction`` (per dtype, JSON), ``dtypes_run``,
        ``dtype_skipped`` (why not, JSON), ``methods``, ``cpu_slowdown``, ``measured_on``,
        ``declared_force_upcast`` (1/0/-1: none) and ``force_upcast_vs_prediction``.

    Examples
    --------
    >>> ds = numerical_health(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["nan_count"].sel(stage="roundtrip").to_series()  # doctest: +SKIP
    """
    return run_shared("precision", probe, data, n_images=n_images, seed=seed,
                      batch_size=batch_size, progress=progress, dtypes=dtypes,
                      cpu_images=cpu_images, image_limit=image_limit,
                      run_low_precision=run_low_precision,
                      cpu_slowdown_limit=cpu_slowdown_limit, cpu_crop=cpu_crop)


def summary(ds: xr.Dataset) -> str:
    a, parts = ds.attrs, []
    prediction = json.loads(a.get("prediction", "{}"))
    for dtype in ds["dtype"].values[1:]:
        cell = ds.sel(dtype=dtype)
        said = prediction.get(str(dtype), "")
        if int(cell["nan_count"].min()) < 0:
            parts.append(f"{dtype}: {said} (not run)")
            continue
        bad = int(cell["nan_count"].sum() + cell["inf_count"].sum())
        worst = float(cell["max_abs_deviation"].sel(stage="roundtrip"))
        parts.append(f"{dtype}: {said}; measured {bad} NaN/inf, max deviation of "
                     f"reconstruction {worst:.3g}")
    text = "; ".join(parts) + (f"; {int(ds['n_modules_exceeding_float16'])} module(s) beyond "
                               f"float16 range ({a.get('measured_on', '')} measured)")
    if int(a.get("declared_force_upcast", -1)) >= 0:
        text += (f"; model's force_upcast={a.get('declared_force_upcast')}: "
                 f"{a.get('force_upcast_vs_prediction')}")
    return text


SECTION = register(Section(
    name="precision", title="Numerical health", order=90, summary=summary,
    figure="audit_precision", function=numerical_health, accumulator=PrecisionAccumulator,
    options=dict(dtypes=("bfloat16", "float16"), cpu_images=1, image_limit=32,
                 run_low_precision=True, cpu_slowdown_limit=CPU_SLOWDOWN_LIMIT,
                 cpu_crop=CPU_CROP),
    quick=dict(run_low_precision=False)))
