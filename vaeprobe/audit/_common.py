"""Shared plumbing of the audit sections: section attrs, skipped / failed placeholders, the
evaluation set, and the fidelity networks (built once per process, failures remembered)."""

from __future__ import annotations

import time
import traceback

import numpy as np
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import result_attrs
from vaeprobe.io import provenance
from vaeprobe.probe import Probe, UndefinedAnalysisError

MAX_PER_DIM = 512  # per-dimension views for one-layer models with at most this many dims


class _Plain:
    """Attributes by keyword (a SimpleNamespace whose ``__dict__`` can be copied)."""

    def __init__(self, **values):
        self.__dict__.update(values)


class ProbeFacts:
    """What a section's attrs and figures need of a Probe, without its networks: travels
    between ranks (accumulators hold this, not the Probe)."""

    def __init__(self, probe: Probe):
        self.source = dict(probe.source)
        self.layers = [_Plain(name=info.name, resolution=tuple(info.resolution),
                                       channels=info.channels, stage=info.stage)
                       for info in probe.layers]  # plain objects: they travel between ranks
        self.image_shape = tuple(probe.image_shape)
        self.likelihood_kind = str(probe.likelihood_kind)
        self.n_bits = int(probe.n_bits)
        self.name = probe.name
        self.device = str(getattr(probe, "device", "cpu"))
        from vaeprobe._analysis import decoder_head

        likelihood, sigma = decoder_head(probe)  # read by interpretation_warnings
        self.model = _Plain(config=_Plain(likelihood=likelihood, sigma=sigma))

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [(info.channels, *info.resolution) for info in self.layers]


class LocalHandle:
    """Holds an object (a Probe) for this process only: it does not travel to other ranks
    (pickled as an empty handle), so an accumulator can keep the networks its ``update`` runs."""

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value

    def __reduce__(self):
        return (LocalHandle, ())


class NamedData:
    """Stands for the dataset in provenance (its name only)."""

    def __init__(self, dataset):
        self.name = vdata.dataset_name(dataset)


def per_dimension(probe) -> bool:
    """Per-dimension views apply: one latent layer of at most :data:`MAX_PER_DIM` dims."""
    if len(probe.layers) != 1:
        return False
    channels, height, width = probe.latent_shapes()[0]
    return channels * height * width <= MAX_PER_DIM


def section_attrs(section: str, parameters: dict, probe: Probe, dataset, n_images: int,
                  seed: int, protocol: str, **facts) -> dict:
    """Provenance of one audit section (``analysis`` is ``audit.<section>``), status ok."""
    return result_attrs(f"audit.{section}", parameters, probe, dataset, n_images, seed,
                        section=section, status="ok", protocol=protocol, **facts)


def restamp(ds: xr.Dataset, section: str, parameters: dict, protocol: str, **facts
            ) -> xr.Dataset:
    """Re-label the Dataset of a wrapped analysis (vp.rate, vp.iwae ...) as an audit section,
    keeping its provenance; the wrapped analysis' name is kept in ``computed_by``."""
    import json

    inner = dict(ds.attrs)
    merged = {**json.loads(inner.get("parameters", "{}")), **parameters}
    inner.update(provenance(f"audit.{section}", merged, section=section, status="ok",
                            protocol=protocol, computed_by=f"vp.{inner.get('analysis', '?')}",
                            **facts))
    ds.attrs = inner
    return ds


def skipped(section: str, reason: str, probe: Probe | None = None) -> xr.Dataset:
    """An empty section that says why it was not computed (undefined for this model)."""
    ds = xr.Dataset()
    ds.attrs = provenance(f"audit.{section}", {}, section=section, status="skipped",
                          skipped=reason, **_source(probe))
    return ds


def failed(section: str, error: BaseException, probe: Probe | None = None) -> xr.Dataset:
    """An empty section that reports a failure: the error and a traceback summary."""
    frames = traceback.extract_tb(error.__traceback__)[-4:]
    summary = "".join(traceback.format_list(frames))
    ds = xr.Dataset()
    ds.attrs = provenance(f"audit.{section}", {}, section=section, status="failed",
                          error=f"{type(error).__name__}: {error}", traceback=summary,
                          **_source(probe))
    return ds


def fmt(value, digits: int = 3) -> str:
    """A number for a section's one-line summary: ``digits`` significant digits, or "nan"."""
    value = float(value)
    return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"


def guarded(name: str, probe: Probe | None, compute) -> xr.Dataset:
    """``compute()`` under the audit's one policy: a section undefined for the model
    (:class:`~vaeprobe.probe.UndefinedAnalysisError`) gives a skipped Dataset, any other error a
    failed one, so that the other sections still run; ``elapsed_seconds`` is stamped."""
    start = time.perf_counter()
    try:
        ds = compute()
    except UndefinedAnalysisError as error:
        ds = skipped(name, str(error), probe)
    except Exception as error:  # reported in its place; the other sections still run
        ds = failed(name, error, probe)
    ds.attrs["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    return ds


def _source(probe: Probe | None) -> dict:
    source = dict(probe.source) if probe is not None else {}
    source.setdefault("checkpoint", "in-memory model")
    return source


def layer_coords(probe: Probe) -> dict:
    """The ``layer`` dim's coordinates, as :func:`vaeprobe.rate` names them."""
    from vaeprobe.rate import resolution_label

    return {
        "layer": np.arange(len(probe.layers)),
        "name": ("layer", [info.name for info in probe.layers]),
        "layer_resolution": ("layer", [resolution_label(info.resolution)
                                       for info in probe.layers]),
        "channels": ("layer", [info.channels for info in probe.layers]),
        "stage": ("layer", [info.stage for info in probe.layers]),
    }


# ---------------------------------------------------------------------------------------------
# fidelity networks: built once per (kind, name, weights, device); a failure (e.g. a missing
# weights file) is remembered with its message, the skip reason of the metrics that need it

_NETWORKS: dict[tuple, tuple[object, str]] = {}
_NETWORK_ERRORS = (FileNotFoundError, OSError, ValueError, KeyError, ImportError, RuntimeError)


def feature_network(name: str, weights, device) -> tuple[object | None, str]:
    """(extractor, "") or (None, reason): a registered FID feature extractor."""
    from vaeprobe.fidelity import build_extractor

    return _cached(("extractor", name, str(weights), str(device)),
                   lambda: build_extractor(name, weights, device))


def lpips_network(trunk: str, weights, device) -> tuple[object | None, str]:
    """(LPIPS, "") or (None, reason)."""
    from vaeprobe.fidelity import LPIPS

    def build():
        from vaeprobe import weights as vweights
        from vaeprobe.fidelity.perceptual import lpips_trunks

        key = getattr(lpips_trunks.get(trunk), "weights_key", None) \
            if trunk in lpips_trunks.names() else None
        if key is not None:  # a missing file is refused before the trunk is built (seconds)
            vweights.resolve(key, weights)
        return LPIPS(trunk, weights, device)

    return _cached(("lpips", trunk, str(weights), str(device)), build)


def _cached(key: tuple, build) -> tuple[object | None, str]:
    import os

    # where weights are looked for is part of the key: a file put in place is found next time
    key += tuple(os.environ.get(name) for name in ("VAEPROBE_WEIGHTS_DIR", "VAEPROBE_OFFLINE",
                                                   "TORCH_HOME"))
    if key not in _NETWORKS:
        try:
            _NETWORKS[key] = (build(), "")
        except _NETWORK_ERRORS as error:
            _NETWORKS[key] = (None, f"{type(error).__name__}: {error}")
    return _NETWORKS[key]
