"""``vp.audit``: one report on any VAE checkpoint, every defined section of it.

Sections are entries of one registry (:mod:`vaeprobe.audit.registry`, whose docstring says how
to add one); each also has a public function (e.g. ``vaeprobe.audit.model_card(probe)``)
returning an ``xr.Dataset`` whose attrs carry its provenance and protocol, ``status`` "ok",
"skipped" (with the reason in ``skipped``) or "failed" (``error`` and ``traceback``). In
report order:

- ``model_card``: format, file hashes, parameters, latent layers, likelihood and prior facts
- ``bits`` (:func:`where_bits_go`): rate per layer / resolution / channel (and per dimension
  for small one-layer models), active units, collapsed layers
- ``reconstructions``: distortion, MSE, PSNR, SSIM, MS-SSIM, LPIPS, rFID from the posterior
  mean and a posterior sample
- ``latents`` (:func:`latent_statistics`): per-channel (and per-dimension) statistics, the
  scale and shift a latent-diffusion model should use
- ``progressive`` (:func:`progressive_coding`): first k layers from the posterior, the rest
  from the prior, at <= 8 values of k
- ``spectra``: reconstruction spectra relative to the data; latent spectra
- ``likelihood``: IWAE bits/dim, convergence in K, effective sample size
- ``samples``: prior samples at several temperatures, FID
- ``precision`` (:func:`numerical_health`): float16 / bfloat16 failures predicted from
  activation ranges, measured where the device runs them fast
- ``information`` (:func:`information_split`, opt-in: name it in ``sections``): rate =
  I(x; z) + KL(q(z) || p(z)) per layer (:func:`vaeprobe.information`), hierarchical models on
  at most 32 images

The audit streams the images once (:mod:`vaeprobe.audit.shared`): every image is encoded once
and decoded once per reconstruction kind, and bits, reconstructions, latents, spectra and
precision read that pass; progressive coding, likelihood and samples then do only their own
extra work, each sized to a stated multiple of the measured floor (one encode + one decode).
With ``out`` every section is written as soon as it is computed (:mod:`vaeprobe.audit.store`)
and a rerun into the same directory computes only what is missing.
"""

from __future__ import annotations

import os

import xarray as xr

# the sections register themselves on import (order in the report: their ``order``)
from vaeprobe.audit import bits as _bits  # noqa: F401
from vaeprobe.audit import card as _card  # noqa: F401
from vaeprobe.audit import generative as _generative  # noqa: F401
from vaeprobe.audit import information as _information  # noqa: F401
from vaeprobe.audit import latents as _latents  # noqa: F401
from vaeprobe.audit import precision as _precision  # noqa: F401
from vaeprobe.audit import progressive as _progressive  # noqa: F401
from vaeprobe.audit import reconstruction as _reconstruction  # noqa: F401
from vaeprobe.audit import spectra as _spectra  # noqa: F401
from vaeprobe.audit._common import guarded
from vaeprobe.audit.bits import where_bits_go
from vaeprobe.audit.card import model_card
from vaeprobe.audit.generative import likelihood, samples
from vaeprobe.audit.information import information_split
from vaeprobe.audit.latents import latent_statistics
from vaeprobe.audit.precision import numerical_health
from vaeprobe.audit.progressive import progressive_coding
from vaeprobe.audit.reconstruction import reconstructions
from vaeprobe.audit.registry import Section, register
from vaeprobe.audit.registry import sections as registered
from vaeprobe.audit.report import AuditReport, open_audit, summary, write_report
from vaeprobe.audit.run import run_audit
from vaeprobe.audit.spectra import spectra
from vaeprobe.audit.store import AuditMismatchError
from vaeprobe.probe import Probe, UndefinedAnalysisError  # noqa: F401 (vaeprobe.audit.UndefinedAnalysisError)

# section name -> its public function, for every default section in report order (generated
# from the registry; an opt-in section, or one registered later, is found by vp.audit and
# run_section through the registry all the same)
SECTIONS = {name: section.public for name, section in registered().items() if section.default}


def run_section(name: str, probe: Probe, data, **kwargs) -> xr.Dataset:
    """One section by name through its public function; undefined -> a skipped Dataset, an
    error -> a failed one."""
    section = registered().get(name)
    if section is None:
        raise ValueError(f"unknown section {name!r}; sections: {', '.join(registered())}")
    function = section.public
    return guarded(name, probe, lambda: function(probe, data, **kwargs))


def audit(source, data, *, n_images: int = 256, seed: int = 0, sections=None, device=None,
          progress: bool = True, out: str | os.PathLike | None = None, format: str | None = None,
          options: dict | None = None, feature_extractor: str = "inception-v3-compat",
          weights=None, lpips_trunk: str = "alexnet", lpips_weights=None,
          settings: dict | None = None, quick: bool = False, batch_size: int = 64,
          overwrite: bool = False) -> AuditReport:
    """Audit one VAE: every section that is defined for it, one Dataset per section.

    Parameters
    ----------
    source : Probe, or path of a checkpoint / run directory / third-party model folder
    data : str, Dataset or uint8 tensor
        Evaluation images, e.g. ``"patches32:test"``.
    n_images : int
        A seeded random subset of this many images, drawn once (its sha256 is in the attrs,
        ``subset_sha256``, and in a resumed audit's fingerprint): the shared pass reads all of
        them; a costly section reads the first k drawn (a seeded random subset of them, the
        images ``vp.data.select(data, k, seed)`` gives), k sized to its ``budget`` (a
        multiple of the floor, one encode + one decode of these images) and its
        ``image_limit``, or its ``n_images`` in ``settings``, and never above ``n_images``.
    seed : int
    sections : sequence of str, optional
        A subset of the registered sections (default: all, in report order).
    device : str or torch.device, optional
        Where a checkpoint is opened (CUDA when available).
    progress : bool
        Progress bars, and the estimate of the remaining time before the costly sections.
    out : path, optional
        A directory (new or existing): ``sections/<name>.nc`` written as each section is
        computed, then ``audit.nc``, ``audit.png`` and ``audit.html`` rendered from them. An
        existing audit there of the same model, data and options is resumed (only missing or
        failed sections are computed); of another, refused (see ``overwrite``).
    format, options : optional
        How ``source`` is opened (``vp.load(source, format=..., **options)``).
    feature_extractor, weights : optional
        The network of rFID and sample FID (``"random-convnet-TEST-ONLY"``: a flagged
        stand-in) and its weights file.
    lpips_trunk, lpips_weights : optional
        The LPIPS trunk (``"random-TEST-ONLY"``: a flagged stand-in) and its weights file.
    settings : dict, optional
        Per-section options, e.g. ``{"likelihood": {"k": 256, "n_images": 128}}``; each
        section's defaults are ``vaeprobe.audit.registry.get(name).options``.
    quick : bool
        A small profile: at most 32 images, and each section's ``quick`` options (progressive
        coding at 4 points within 1x the floor, IWAE K=16 within 2x, one sample temperature,
        precision predicted from activation ranges only); recorded in attrs.
    batch_size : int
        Images per batch of the shared pass.
    overwrite : bool
        Replace an audit in ``out`` made for another model, data or options.

    Returns
    -------
    AuditReport
        A dict of section name -> ``xr.Dataset`` (``status`` "ok", "skipped" or "failed" in
        each one's attrs), with ``attrs`` (the audit's provenance, ``computed_sections`` and
        ``resumed_sections``), ``timing``, ``summary()`` and ``save(out)``.

    Examples
    --------
    >>> report = vp.audit("runs/demo", "patches32:test", out="audit/")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    from vaeprobe.checks import positive_int

    positive_int(batch_size, "batch_size", allow_none=True)  # before the model is opened
    return run_audit(source, data, n_images=n_images, seed=seed, sections=sections,
                     device=device, progress=progress, out=out, format=format,
                     options=options, settings=settings, quick=quick, batch_size=batch_size,
                     overwrite=overwrite,
                     networks=dict(feature_extractor=feature_extractor, weights=weights,
                                   lpips_trunk=lpips_trunk, lpips_weights=lpips_weights))


# ``vaeprobe.audit`` is this package, but ``vp.audit`` (the function) shadows it as an
# attribute of vaeprobe; the sections are attached to the function too, so that
# ``vaeprobe.audit.model_card(probe)`` works either way.
for _function in (*SECTIONS.values(), open_audit, summary, write_report, run_section):
    setattr(audit, _function.__name__, _function)
audit.SECTIONS = SECTIONS
audit.register, audit.Section = register, Section

__all__ = ["SECTIONS", "AuditMismatchError", "AuditReport", "Section", "audit",
           "information_split",
           "latent_statistics", "likelihood", "model_card", "numerical_health", "open_audit",
           "progressive_coding", "reconstructions", "register", "run_section", "samples",
           "spectra", "summary", "where_bits_go", "write_report"]
