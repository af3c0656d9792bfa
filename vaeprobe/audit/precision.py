"""Section 9, numerical health: encode and decode in bfloat16 and float16 against float32.

Low precision is applied with ``torch.autocast`` (the model and the probe's own preprocessing
unchanged); where autocast refuses (a device without that dtype), the model's modules are cast
instead, and a failure there is the recorded skip reason. The float32 pass also records the
largest activation of every module (forward hooks), so a layer beyond float16's range (65504)
is named.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
import xarray as xr
from torch import nn

from vaeprobe._analysis import batches
from vaeprobe.audit._common import evaluation_images, section_attrs
from vaeprobe.probe import LatentPass, Probe, encode

DTYPES = ("float32", "bfloat16", "float16")
STAGES = ("encode", "decode", "roundtrip")
FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65504
N_MODULES = 10  # modules with the largest activations kept in the Dataset

PROTOCOL = ("posterior means (posterior='mean', no noise) and decoder means; stage 'encode': "
            "the posterior means of every layer encoded in the dtype; 'decode': the float32 "
            "posterior means decoded in the dtype (the decoder rerun from z); 'roundtrip': "
            "both in the dtype; against the same stages in float32: counts of NaN and inf, and "
            "the largest absolute deviation over entries finite in both; method 'autocast' "
            "(torch.autocast) or 'cast' (the modules cast) per dtype; max_activation: largest "
            "|output| of each module in the float32 pass (forward hooks)")


def _modules(probe: Probe) -> list[nn.Module]:
    return [value for value in vars(probe).values() if isinstance(value, nn.Module)]


def _posterior_means(latents: LatentPass) -> torch.Tensor:
    """Every layer's posterior mean (z where a draw has none), flattened per row: (B, D)."""
    return torch.cat([(d.q_mean if d.q_mean is not None else d.z).flatten(1).double()
                      for d in latents.draws], 1)


@torch.no_grad()
def _stages(probe: Probe, x: torch.Tensor, reference: LatentPass | None = None) -> dict:
    """The three stages' outputs (float64, CPU) under the current precision context."""
    latents = encode(probe, x, 1, None, "mean")
    given = reference if reference is not None else latents
    rerun = LatentPass(given.draws, given.n_samples)  # no context: the decoder reruns from z
    return {"encode": _posterior_means(latents).cpu(),
            "decode": probe.decode(rerun).mean.double().flatten(1).cpu(),
            "roundtrip": probe.decode(latents).mean.double().flatten(1).cpu(), "_latents": latents}


class _ActivationMonitor:
    """While active (``with``), the largest |output| of every leaf module, by module name,
    folded into ``largest`` (forward hooks, removed on exit)."""

    def __init__(self, probe: Probe, largest: dict[str, float]):
        self.probe, self.largest, self.handles = probe, largest, []

    def __enter__(self):
        roots = _modules(self.probe)
        for index, root in enumerate(roots):
            for name, module in root.named_modules():
                if not list(module.children()):
                    label = f"{index}.{name}" if len(roots) > 1 else name
                    self.handles.append(module.register_forward_hook(self._hook(label)))
        return self

    def _hook(self, label: str):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                value = float(output.detach().abs().max())
                self.largest[label] = max(self.largest.get(label, 0.0), value)
        return record

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _cast(probe: Probe, dtype: torch.dtype) -> Probe:
    """A shallow copy of the probe whose nn.Modules are deep copies cast to ``dtype``."""
    clone = copy.copy(probe)
    for name, value in vars(probe).items():
        if isinstance(value, nn.Module):
            setattr(clone, name, copy.deepcopy(value).to(dtype))
    return clone


def _low_precision(probe: Probe, x, reference: LatentPass, dtype: torch.dtype
                   ) -> tuple[dict | None, str, str]:
    """(stages, method, skip reason): autocast first, then cast modules."""
    try:
        with torch.autocast(probe.device.type, dtype=dtype):
            return _stages(probe, x, reference), "autocast", ""
    except RuntimeError as autocast_error:
        try:
            return _stages(_cast(probe, dtype), x, reference), "cast", ""
        except RuntimeError as cast_error:
            return None, "none", (f"autocast: {str(autocast_error).splitlines()[0]}; cast "
                                  f"modules: {str(cast_error).splitlines()[0]}")


def _compare(low: torch.Tensor, high: torch.Tensor) -> tuple[int, int, float]:
    """(NaN count, inf count, largest |low - high| over entries finite in both)."""
    finite = torch.isfinite(low) & torch.isfinite(high)
    deviation = float((low - high).abs()[finite].max()) if bool(finite.any()) else float("nan")
    return int(torch.isnan(low).sum()), int(torch.isinf(low).sum()), deviation


def numerical_health(probe: Probe, data, *, n_images: int | None = 64, seed: int = 0,
                     dtypes=("bfloat16", "float16"), batch_size: int = 64,
                     progress: bool = True) -> xr.Dataset:
    """Section 9: NaN/inf counts and deviations of encode and decode in low precision.

    Parameters
    ----------
    probe : Probe
    data : str, Dataset or uint8 tensor
    n_images : int, optional
    seed : int
    dtypes : sequence of {"bfloat16", "float16"}
    batch_size, progress

    Returns
    -------
    xarray.Dataset
        Dims ``dtype`` (float32 first: the reference's own counts) and ``stage`` (encode,
        decode, roundtrip): ``nan_count``, ``inf_count``, ``max_abs_deviation``; ``method``
        and ``skipped`` per dtype in attrs (JSON); dim ``module`` (the largest activations of
        the float32 pass): ``max_activation``, ``exceeds_float16`` (0/1);
        ``n_modules_exceeding_float16``.

    Examples
    --------
    >>> ds = numerical_health(vp.load("runs/demo"), "patches32:test")  # doctest: +SKIP
    >>> ds["nan_count"].sel(stage="roundtrip").to_series()  # doctest: +SKIP
    """
    unknown = set(dtypes) - set(DTYPES[1:])
    if unknown:
        raise ValueError(f"dtypes must be among {DTYPES[1:]}, got {sorted(unknown)}")
    names = ["float32", *dtypes]
    dataset, indices, _ = evaluation_images(probe, data, n_images, seed)
    counts = np.zeros((len(names), len(STAGES), 2), dtype=np.int64)
    deviation = np.zeros((len(names), len(STAGES)))
    methods, skips = {"float32": "reference"}, {}
    largest: dict[str, float] = {}
    for x, _ in batches(dataset, indices, batch_size, seed, probe.device, progress,
                        "numerical health"):
        with _ActivationMonitor(probe, largest):
            reference = _stages(probe, x)
        for row, name in enumerate(names):
            if row == 0:
                result = reference
            else:
                result, methods[name], reason = _low_precision(
                    probe, x, reference["_latents"], getattr(torch, name))
                if result is None:
                    skips[name] = reason
                    deviation[row] = np.nan
                    counts[row] = -1
                    continue
            for column, stage in enumerate(STAGES):
                nan, inf, worst = _compare(result[stage], reference[stage])
                counts[row, column] += (nan, inf)
                deviation[row, column] = np.nanmax([deviation[row, column], worst])
    return _dataset(probe, names, counts, deviation, largest, methods, skips, dataset,
                    indices, seed, dict(n_images=n_images, seed=seed, dtypes=list(dtypes),
                                        batch_size=batch_size))


def _dataset(probe, names, counts, deviation, largest, methods, skips, dataset, indices, seed,
             parameters) -> xr.Dataset:
    top = sorted(largest.items(), key=lambda item: -item[1])[:N_MODULES]
    values = np.array([value for _, value in top], dtype=np.float64)
    exceeding = sorted(name for name, value in largest.items() if value > FLOAT16_MAX)
    pair = ("dtype", "stage")
    ds = xr.Dataset(
        {
            "nan_count": (pair, counts[..., 0], {"units": "entries", "long_name":
                                                 "-1: dtype skipped"}),
            "inf_count": (pair, counts[..., 1], {"units": "entries"}),
            "max_abs_deviation": (pair, deviation, {"units": "latent units (encode) or [0, 1] "
                                                    "pixel scale (decode, roundtrip)"}),
            "max_activation": ("module", values, {"units": "activation units"}),
            "exceeds_float16": ("module", (values > FLOAT16_MAX).astype(np.int8),
                                {"units": "1", "long_name": f"above {FLOAT16_MAX:g}"}),
            "n_modules_exceeding_float16": ((), len(exceeding), {"units": "modules"}),
        },
        coords={"dtype": names, "stage": list(STAGES),
                "module": [name for name, _ in top]},
    )
    ds.attrs = section_attrs(
        "precision", parameters, probe, dataset, len(indices), seed, PROTOCOL,
        methods=json.dumps(methods), dtype_skipped=json.dumps(skips),
        modules_exceeding_float16=json.dumps(exceeding), float16_max=FLOAT16_MAX)
    return ds
