"""``vp.audit``: one report on any VAE checkpoint, every defined section of it.

Sections (each also callable on its own, e.g. ``vaeprobe.audit.model_card(probe)``; each
returns an ``xr.Dataset`` whose attrs carry its provenance and protocol, ``status`` "ok",
"skipped" (with the reason in ``skipped``) or "failed" (``error`` and ``traceback``)):

1. ``model_card``: format, file hashes, parameters, latent layers, likelihood and prior facts
2. ``bits`` (:func:`where_bits_go`): rate per layer / resolution / channel, active units,
   collapsed layers
3. ``reconstructions``: distortion, MSE, PSNR, SSIM, LPIPS, rFID from the posterior mean and a
   posterior sample
4. ``latents`` (:func:`latent_statistics`): per-channel statistics, the scale and shift a
   latent-diffusion model should use
5. ``progressive`` (:func:`progressive_coding`): first k layers from the posterior, the rest
   from the prior
6. ``spectra``: reconstruction spectra relative to the data; latent spectra
7. ``likelihood``: IWAE bits/dim, convergence in K, effective sample size
8. ``samples``: prior samples at several temperatures, FID
9. ``precision`` (:func:`numerical_health`): bfloat16 / float16 against float32
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import xarray as xr

from vaeprobe._analysis import fit_probe, progress_bar
from vaeprobe.audit._common import TITLES, failed, skipped
from vaeprobe.audit.bits import where_bits_go
from vaeprobe.audit.card import model_card
from vaeprobe.audit.generative import likelihood, samples
from vaeprobe.audit.latents import latent_statistics
from vaeprobe.audit.precision import numerical_health
from vaeprobe.audit.progressive import progressive_coding
from vaeprobe.audit.reconstruction import reconstructions
from vaeprobe.audit.report import AuditReport, open_audit, summary, write_report
from vaeprobe.audit.spectra import spectra
from vaeprobe.data import dataset_name
from vaeprobe.io import provenance
from vaeprobe.probe import Probe, UndefinedAnalysisError

SECTIONS = {
    "model_card": model_card,
    "bits": where_bits_go,
    "reconstructions": reconstructions,
    "latents": latent_statistics,
    "progressive": progressive_coding,
    "spectra": spectra,
    "likelihood": likelihood,
    "samples": samples,
    "precision": numerical_health,
}
assert list(SECTIONS) == list(TITLES)

# at most this many images where a section costs many passes per image (the rest use n_images)
IMAGE_LIMITS = {"likelihood": 32, "progressive": 128, "precision": 32}
NETWORK_OPTIONS = {"reconstructions": ("feature_extractor", "weights", "lpips_trunk",
                                       "lpips_weights"),
                   "samples": ("feature_extractor", "weights")}


def _check_settings(chosen: list[str], settings: dict | None) -> dict:
    settings = dict(settings or {})
    for name, values in settings.items():
        if name not in SECTIONS:
            raise ValueError(f"settings for unknown section {name!r}; sections: "
                             f"{', '.join(SECTIONS)}")
        accepted = set(inspect.signature(SECTIONS[name]).parameters) - {"probe", "data"}
        unknown = set(values) - accepted
        if unknown:
            raise ValueError(f"section {name!r} takes no {sorted(unknown)}; it takes "
                             f"{sorted(accepted)}")
    return settings


def run_section(name: str, probe: Probe, data, **kwargs) -> xr.Dataset:
    """One section by name; undefined -> a skipped Dataset, an error -> a failed one."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
    start = time.perf_counter()
    try:
        ds = SECTIONS[name](probe, data, **kwargs)
    except UndefinedAnalysisError as error:
        ds = skipped(name, str(error), probe)
    except Exception as error:  # reported in its place; the other sections still run
        ds = failed(name, error, probe)
    ds.attrs["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    return ds


def audit(source, data, *, n_images: int = 256, seed: int = 0, sections=None, device=None,
          progress: bool = True, out: str | os.PathLike | None = None, format: str | None = None,
          options: dict | None = None, feature_extractor: str = "inception-v3-compat",
          weights=None, lpips_trunk: str = "alexnet", lpips_weights=None,
          settings: dict | None = None) -> AuditReport:
    """Audit one VAE: every section that is defined for it, one Dataset per section.

    Parameters
    ----------
    source : Probe, or path of a checkpoint / run directory / third-party model folder
    data : str, Dataset or uint8 tensor
        Evaluation images, e.g. ``"patches32:test"``.
    n_images : int
        A seeded random subset of this many images for every section (likelihood and
        precision use at most :data:`IMAGE_LIMITS` of them unless ``settings`` says otherwise).
    seed : int
    sections : sequence of str, optional
        A subset of :data:`SECTIONS` (default: all, in report order).
    device : str or torch.device, optional
        Where a checkpoint is opened (CUDA when available).
    progress : bool
        A progress bar over sections, and each section's own.
    out : path, optional
        A directory: ``audit.nc``, ``audit.png`` and ``audit.html`` are written there.
    format, options : optional
        How ``source`` is opened (``vp.load(source, format=..., **options)``).
    feature_extractor, weights : optional
        The network of rFID and sample FID (``"random-convnet-TEST-ONLY"``: a flagged
        stand-in) and its weights file.
    lpips_trunk, lpips_weights : optional
        The LPIPS trunk (``"random-TEST-ONLY"``: a flagged stand-in) and its weights file.
    settings : dict, optional
        Per-section keyword arguments, e.g. ``{"likelihood": {"k": 256, "n_images": 128}}``.

    Returns
    -------
    AuditReport
        A dict of section name -> ``xr.Dataset`` (``status`` "ok", "skipped" or "failed" in
        each one's attrs), with ``attrs`` (the audit's provenance), ``summary()`` and
        ``save(out)``.

    Examples
    --------
    >>> report = vp.audit("runs/demo", "patches32:test", out="audit/")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    chosen = list(SECTIONS) if sections is None else list(sections)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ValueError(f"unknown or no sections {unknown}; sections: {', '.join(SECTIONS)}")
    settings = _check_settings(chosen, settings)
    from vaeprobe.adapters import as_probe

    probe = as_probe(source, format, device=device, **(options or {}))
    # resolved (and decoded) once; a convolutional model takes the data's own size
    probe, data = fit_probe(probe, data)
    networks = dict(feature_extractor=feature_extractor, weights=weights,
                    lpips_trunk=lpips_trunk, lpips_weights=lpips_weights)
    report = AuditReport()
    bar = progress_bar(len(chosen), "audit", progress, unit="section")
    for name in chosen:
        bar.set_description(f"audit: {name}")
        kwargs = dict(n_images=min(n_images, IMAGE_LIMITS.get(name, n_images)), seed=seed,
                      progress=progress)
        kwargs.update({key: networks[key] for key in NETWORK_OPTIONS.get(name, ())})
        kwargs.update(settings.get(name, {}))
        report[name] = run_section(name, probe, data, **kwargs)
        bar.update(1)
    bar.close()
    source_facts = dict(probe.source)
    source_facts.setdefault("checkpoint", "in-memory model")
    report.attrs = provenance(
        "audit", dict(n_images=n_images, seed=seed, sections=chosen, settings=settings,
                      **{k: str(v) if v is not None else None for k, v in networks.items()}),
        dataset=dataset_name(data), n_images=n_images, seed=seed, **source_facts,
        status={name: ds.attrs.get("status") for name, ds in report.items()})
    if out is not None:
        write_report(report, Path(out))
    return report


# ``vaeprobe.audit`` is this package, but ``vp.audit`` (the function) shadows it as an
# attribute of vaeprobe; the sections are attached to the function too, so that
# ``vaeprobe.audit.model_card(probe)`` works either way.
for _function in (*SECTIONS.values(), open_audit, summary, write_report, run_section):
    setattr(audit, _function.__name__, _function)
audit.SECTIONS = SECTIONS

__all__ = ["SECTIONS", "AuditReport", "audit", "latent_statistics", "likelihood", "model_card",
           "numerical_health", "open_audit", "progressive_coding", "reconstructions",
           "run_section", "samples", "spectra", "summary", "where_bits_go", "write_report"]
