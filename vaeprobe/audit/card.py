"""Section 1, the model card: what the checkpoint is, its latent layers and what it defines."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import xarray as xr
from torch import nn

from vaeprobe.audit._common import layer_coords
from vaeprobe.audit.registry import Section, register
from vaeprobe.io import provenance
from vaeprobe.probe import Probe, UndefinedAnalysisError

PROTOCOL = ("facts of the Probe and its checkpoint: source (format, files and their sha256, "
            "options), latent layers top to bottom, likelihood kind and bits, whether the prior "
            "is generative; parameters counted over the probe's nn.Modules (shared ones once)")


def _modules(probe: Probe) -> list[nn.Module]:
    """The nn.Modules a probe holds as attributes (the wrapped model, usually ``model``)."""
    return [value for value in vars(probe).values() if isinstance(value, nn.Module)]


def _parameter_facts(probe: Probe) -> tuple[int, int, list[str]]:
    """(number of parameters, bytes, dtypes) over the probe's modules, shared tensors once."""
    seen, count, size, dtypes = set(), 0, 0, set()
    for module in _modules(probe):
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            size += tensor.numel() * tensor.element_size()
            if isinstance(tensor, nn.Parameter):
                count += tensor.numel()
                dtypes.add(str(tensor.dtype).replace("torch.", ""))
    return count, size, sorted(dtypes)


def _model_config(probe: Probe) -> str:
    """The wrapped model's own config as JSON, where it has one (else "")."""
    config = None
    for module in _modules(probe):
        config = getattr(module, "config", None)
        if config is not None:
            break
    if config is None:
        return ""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.dumps(config, default=str, sort_keys=True)


def _defines_progressive(probe: Probe) -> bool:
    return type(probe).sample_prior_given is not Probe.sample_prior_given


def model_card(probe: Probe, data=None, *, n_images: int | None = None, seed: int = 0,
               progress: bool = True) -> xr.Dataset:
    """Section 1: format, file hashes, parameters, latent layers, likelihood and prior facts.

    Parameters
    ----------
    probe : Probe
    data, n_images, seed, progress
        Unused (the card needs no images); accepted so every section is called alike.

    Returns
    -------
    xarray.Dataset
        Dim ``layer`` (coords ``name``, ``layer_resolution``, ``channels``, ``stage``):
        ``latent_dims``; scalars ``n_layers``, ``latent_dims_total``, ``image_dims``,
        ``n_parameters``, ``parameter_bytes`` (-1 when the probe holds no nn.Module). Attrs:
        the probe's source (format, checkpoint, sha256 ...), ``probe_class``,
        ``likelihood_kind``, ``n_bits``, ``prior_is_generative``, ``image_shape``,
        ``model_config`` (JSON), ``parameter_dtypes``, ``device``, ``defines`` (which
        analyses the probe defines, JSON).

    Examples
    --------
    >>> ds = model_card(vp.load("runs/demo"))  # doctest: +SKIP
    >>> ds["name"].values  # doctest: +SKIP
    """
    shapes = [(info.channels, *info.resolution) for info in probe.layers]
    latent_dims = np.array([int(np.prod(shape)) for shape in shapes], dtype=np.int64)
    n_parameters, parameter_bytes, dtypes = _parameter_facts(probe)
    if not _modules(probe):
        n_parameters = parameter_bytes = -1
    defines = {}
    for name, kwargs in (("vp.iwae", dict(likelihood=True)), ("prior samples", dict(prior=True)),
                         ("stochastic samples", dict(likelihood=True))):
        try:
            probe.require(name, **kwargs)
            defines[name] = "yes"
        except UndefinedAnalysisError as error:
            defines[name] = f"no: {error}"
    defines["progressive coding"] = "yes" if _defines_progressive(probe) else \
        "no: the probe does not implement sample_prior_given"
    counts = {"units": "1"}
    ds = xr.Dataset(
        {
            "latent_dims": ("layer", latent_dims, {"units": "latent dimensions"}),
            "n_layers": ((), len(probe.layers), counts),
            "latent_dims_total": ((), int(latent_dims.sum()), {"units": "latent dimensions"}),
            "image_dims": ((), int(np.prod(probe.image_shape)), {"units": "pixels x channels"}),
            "n_parameters": ((), int(n_parameters), {"units": "parameters"}),
            "parameter_bytes": ((), int(parameter_bytes), {"units": "bytes"}),
        },
        coords=layer_coords(probe),
    )
    source = dict(probe.source)
    source.setdefault("checkpoint", "in-memory model")
    ds.attrs = provenance(
        "audit.model_card", {}, section="model_card", status="ok", protocol=PROTOCOL,
        **source, probe_class=f"{type(probe).__module__}.{type(probe).__name__}",
        likelihood_kind=str(probe.likelihood_kind), n_bits=int(probe.n_bits),
        likelihood=likelihood_name(probe),
        prior_is_generative=bool(probe.prior_is_generative),
        image_shape=json.dumps(list(probe.image_shape)), model_config=_model_config(probe),
        parameter_dtypes=json.dumps(dtypes), device=str(getattr(probe, "device", "cpu")),
        defines=json.dumps(defines), torch_version=str(torch.__version__))
    return ds


def likelihood_name(probe: Probe) -> str:
    """The decoder likelihood in words, exactly: Bernoulli, a Gaussian with its sigma, a
    discretized or dequantized family, or none."""
    from vaeprobe._analysis import decoder_head

    kind, levels = probe.likelihood_kind, 2 ** int(probe.n_bits)
    chosen = getattr(probe, "likelihood", None)  # from_module, disvae, jointvae say
    if kind == "none" or chosen == "none":
        return "none (the decoder gives a mean image only)"
    if chosen == "bernoulli":
        return "Bernoulli (binary images only: levels 0 and 255)"
    head, sigma = decoder_head(probe)
    if chosen == "gaussian" and sigma is None:  # from_module: sigma on its output scale
        low, high = getattr(probe, "output_range", (0.0, 1.0))
        sigma = float(probe.sigma) / (high - low)
    if chosen == "gaussian" or head == "fixed":
        return f"Gaussian of fixed sigma {sigma:g} on [0, 1], discretized over {levels} levels"
    if kind == "dequantized":
        return f"{head or 'a'} density on uniformly dequantized {probe.n_bits}-bit data"
    return f"{head + ' ' if head else ''}discretized over {levels} levels ({probe.n_bits} bits)"


def summary(ds: xr.Dataset) -> str:
    a = ds.attrs
    return (f"{a.get('format', '?')} {a.get('checkpoint', '')}; {int(ds['n_layers'])} latent "
            f"layers, {int(ds['latent_dims_total'])} dims, {int(ds['n_parameters']):,} "
            f"parameters; likelihood {a.get('likelihood', a.get('likelihood_kind'))}"
            + f"; prior generative: {'yes' if int(a.get('prior_is_generative', 0)) else 'no'}")


SECTION = register(Section(
    name="model_card", title="Model card", order=10, summary=summary, figure="audit_card",
    compute=model_card, needs_images=False))
