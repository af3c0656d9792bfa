"""How ``vp.audit`` runs its sections: resolve the model and data once, one shared pass for the
cheap sections, then the costly ones sized to the measured floor, each written as it is done."""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe._analysis import Evaluation, fit_probe, resolve_source
from vaeprobe.audit._common import failed, guarded, skipped
from vaeprobe.audit.registry import Section
from vaeprobe.audit.registry import sections as registered
from vaeprobe.audit.report import AuditReport, write_report
from vaeprobe.audit.shared import SectionContext, run_pass
from vaeprobe.audit.store import (
    AuditStore,
    data_fingerprint,
    load_section,
    model_fingerprint,
)
from vaeprobe.audit.subset import ImageSubset, choose_subset
from vaeprobe.io import provenance
from vaeprobe.probe import UndefinedAnalysisError

QUICK_IMAGES = 32  # --quick: at most this many images
MIN_IMAGES = 2  # a costly section sized by its budget uses at least this many images
AUDIT_KEYS = ("n_images", "budget")  # settings every own-work section takes beside its options
CALL_KEYS = ("probe", "data", "seed", "progress")  # given by the audit itself


def _accepted(section: Section) -> set[str]:
    if section.shared:
        return set(section.options)
    parameters = set(inspect.signature(section.compute).parameters) - set(CALL_KEYS)
    return (parameters | set(section.options) | set(AUDIT_KEYS)) - set(section.networks)


def resolve_settings(registry: dict, chosen: list[str], settings: dict | None,
                     quick: bool) -> dict[str, dict]:
    """Per chosen section: its options (defaults, then ``quick``'s, then ``settings``')."""
    settings = dict(settings or {})
    for name, values in settings.items():
        if name not in registry:
            raise ValueError(f"settings for unknown section {name!r}; sections: "
                             f"{', '.join(registry)}")
        accepted = _accepted(registry[name])
        unknown = set(values) - accepted
        if unknown:
            hint = (" (shared-pass sections use the audit's n_images)"
                    if registry[name].shared and "n_images" in unknown else "")
            raise ValueError(f"section {name!r} takes no {sorted(unknown)}; it takes "
                             f"{sorted(accepted)}{hint}")
    resolved = {}
    for name in chosen:
        section = registry[name]
        values = dict(section.options)
        if quick:
            values.update(section.quick)
        values.update(settings.get(name, {}))
        resolved[name] = {key: list(v) if isinstance(v, tuple) else v
                          for key, v in values.items()}
    return resolved


def _say(progress: bool, text: str) -> None:
    if progress and distributed.is_main():
        print(f"audit: {text}", file=sys.stderr, flush=True)


def _sized(section: Section, probe, n_audit: int, options: dict) -> int:
    """Images for a costly section, at most the audit's n_audit (it takes the first that many
    drawn): its own n_images, else what its budget (floor multiples of the audit's n_audit
    images) allows, within its image limit."""
    limit = min(n_audit, section.limit(probe, options) or n_audit)
    if options.get("n_images") is not None:
        return min(int(options["n_images"]), n_audit)
    if section.cost is None or "budget" not in options:
        return limit
    per_image = section.cost(probe, 1, options)
    return max(min(MIN_IMAGES, limit), min(limit, math.floor(options["budget"] * n_audit
                                                               / per_image)))


def _shared_sections(names, registry, probe, context, resolved, results, timing, progress,
                     batch_size, seed, estimate) -> list[str]:
    """Run the shared pass for ``names``; put each section's Dataset in ``results``."""
    accumulators = {}
    for name in names:
        try:
            accumulators[name] = registry[name].accumulator(probe, context, **resolved[name])
        except UndefinedAnalysisError as error:
            results[name] = skipped(name, str(error), probe)
        except Exception as error:  # reported in its place
            results[name] = failed(name, error, probe)
    merged, errors, pass_timing = run_pass(
        probe, context.dataset, context.indices, accumulators, batch_size=batch_size,
        seed=seed, progress=progress, on_first_batch=estimate)
    for name, error in errors.items():
        results[name] = (skipped(name, str(error), probe)
                         if isinstance(error, UndefinedAnalysisError) else
                         failed(name, error, probe))
    for name, acc in merged.items():
        start = time.perf_counter()
        try:
            results[name] = acc.compute()
        except Exception as error:  # reported in its place
            results[name] = failed(name, error, probe)
        seconds = pass_timing.update_seconds.get(name, 0.0) + time.perf_counter() - start
        results[name].attrs["elapsed_seconds"] = round(seconds, 3)
    timing.update(floor_seconds=pass_timing.floor, shared_pass_seconds=pass_timing.total,
                  floor_seconds_per_image=pass_timing.floor_per_image,
                  mean_path=pass_timing.mean_path)
    return list(names)


def _own_section(plan: AuditPlan, name: str, progress: bool):
    """Section ``name`` by its own work: its core on the first ``plan.sizes[name]`` images of
    the plan's subset (a section without a core: its public function, given the count)."""
    section, probe = plan.registry[name], plan.probe
    kwargs = {key: value for key, value in plan.resolved[name].items() if key not in AUDIT_KEYS}
    kwargs.update({key: plan.networks[key] for key in section.networks})
    if not section.needs_images:
        return guarded(name, probe, lambda: section.compute(probe, plan.dataset,
                                                            progress=progress, **kwargs))
    n = plan.sizes[name]
    if section.core is not None:
        images = Evaluation(probe, plan.dataset, plan.subset.first(n), n, plan.seed)
        return guarded(name, probe, lambda: section.core(images, progress=progress, **kwargs))
    return guarded(name, probe, lambda: section.compute(
        probe, plan.dataset, n_images=n, seed=plan.seed, progress=progress, **kwargs))


@dataclass
class AuditPlan:
    """What an audit will do, decided before any section runs: the model, data and image subset
    (resolved once), the sections chosen and their settings, what is on disk already, and the
    image count of each costly section. :func:`execute` fills ``results`` and ``timing``.

    ``subset`` is drawn once (:func:`~vaeprobe.audit.subset.choose_subset`): the shared pass
    reads all of it (``indices``), a costly section of ``sizes[name]`` images the first that
    many drawn (``subset.first(n)``); nothing else draws images."""

    registry: dict[str, Section]
    chosen: list[str]  # report order
    resolved: dict[str, dict]  # section -> its options
    probe: object
    dataset: object
    subset: ImageSubset  # the audit's images, drawn once
    n_images: int  # as asked, capped under --quick
    seed: int
    quick: bool
    networks: dict[str, str | None]
    store: AuditStore | None = None
    results: dict = field(default_factory=dict)  # section -> Dataset (resumed ones included)
    resumed: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    costly: list[str] = field(default_factory=list)  # own work on images, defined here
    sizes: dict[str, int] = field(default_factory=dict)  # costly section -> its images
    timing: dict = field(default_factory=dict)

    @property
    def indices(self) -> torch.Tensor:
        """The audit's images (sorted dataset indices): what the shared pass reads."""
        return self.subset.indices


def choose_sections(registry: dict, sections) -> list[str]:
    """The sections to run, in report order: the default ones when ``sections`` is None."""
    chosen = [name for name, section in registry.items() if section.default] \
        if sections is None else list(sections)
    unknown = [name for name in chosen if name not in registry]
    if unknown or not chosen:
        raise ValueError(f"unknown or no sections {unknown}; sections: {', '.join(registry)}")
    return [name for name in registry if name in chosen]


def plan_audit(source, data, *, n_images, seed, sections, device, out, format, options,
               settings, quick, overwrite, networks, progress=False) -> AuditPlan:
    """Resolve the model, the data and the image subset once, choose and configure the
    sections, resume what is on disk, and size the costly sections (nothing is computed)."""
    registry = registered()
    chosen = choose_sections(registry, sections)
    resolved = resolve_settings(registry, chosen, settings, quick)
    probe = resolve_source(source, format, device=device, **(options or {}))
    # resolved (and decoded) once; a convolutional model takes the data's own size
    probe, dataset = fit_probe(probe, data)
    n_images = min(n_images, QUICK_IMAGES) if quick else n_images
    subset = choose_subset(dataset, n_images, seed)  # the only draw of images in an audit
    networks = {key: str(value) if value is not None else None
                for key, value in networks.items()}
    plan = AuditPlan(registry, chosen, resolved, probe, dataset, subset, n_images, seed, quick,
                     networks)
    if out is not None:
        _resume(plan, out, settings, overwrite)
    plan.todo = [name for name in chosen if name not in plan.results]
    if plan.resumed:
        _say(progress, f"resuming {out}: {len(plan.resumed)} section(s) on disk "
             f"({', '.join(plan.resumed)}); computing {', '.join(plan.todo) or 'nothing'}")
    plan.timing = dict(plan.store.facts().get("timing", {})) if plan.store else {}
    plan.costly = [name for name in plan.todo
                   if not registry[name].shared and registry[name].needs_images]
    for name in list(plan.costly):  # undefined for this model: skipped now, not estimated
        try:
            if registry[name].check is not None:
                registry[name].check(probe)
        except UndefinedAnalysisError as error:
            plan.results[name] = skipped(name, str(error), probe)
            plan.results[name].attrs["elapsed_seconds"] = 0.0
            plan.costly.remove(name)
    plan.sizes = {name: _sized(registry[name], probe, len(subset), resolved[name])
                  for name in plan.costly}
    return plan


def _resume(plan: AuditPlan, out, settings, overwrite) -> None:
    """Open the audit's store and load the sections already on disk for this very audit."""
    registry = plan.registry
    fingerprint = dict(model=model_fingerprint(plan.probe),
                       data=dict(data_fingerprint(plan.dataset, plan.indices),
                                 subset_sha256=plan.subset.digest),
                       options=dict(seed=plan.seed, quick=int(plan.quick),
                                    networks=plan.networks,
                                    sections=resolve_settings(registry, list(registry),
                                                              settings, plan.quick)))
    plan.store = AuditStore(out, fingerprint, overwrite)
    on_disk = distributed.gather(sorted(plan.store.finished(plan.chosen)))[0]  # rank 0 decides
    plan.results = {name: load_section(plan.store.path(name)) for name in on_disk}
    plan.resumed = [name for name in plan.chosen if name in plan.results]
    _warn_stale(plan.store.stale, out)


def execute(plan: AuditPlan, *, progress: bool, batch_size: int) -> None:
    """Compute every section of ``plan.todo``: those without images, then the shared pass,
    then the costly sections on their sizes; each is written to the store as it is done."""
    registry, probe, results, timing = plan.registry, plan.probe, plan.results, plan.timing

    def save(name):
        if plan.store is not None:
            plan.store.save(name, results[name])

    def estimate(floor_per_image: float, when: str):
        if plan.costly:
            _say_estimate(plan, floor_per_image, when, progress)

    for name in [n for n in plan.todo if n in results]:  # skipped by their check
        save(name)
    for name in [n for n in plan.todo if not registry[n].needs_images]:
        results[name] = _own_section(plan, name, progress)
        save(name)
    shared = [name for name in plan.todo if registry[name].shared]
    if shared:
        context = SectionContext(plan.dataset, plan.indices, plan.seed, plan.networks,
                                 plan.quick)
        _shared_sections(shared, registry, probe, context, plan.resolved, results, timing,
                         progress, batch_size, plan.seed,
                         lambda floor: estimate(floor, "first batch of the shared pass"))
        for name in shared:
            save(name)
        if plan.store is not None:
            plan.store.write_manifest(timing=timing)
    if plan.costly and timing.get("floor_seconds_per_image"):
        estimate(timing["floor_seconds_per_image"], "shared pass done")
    for name in plan.costly:
        _say(progress, f"{name} on {plan.sizes[name]} images")
        results[name] = _own_section(plan, name, progress)
        timing[f"{name}_seconds"] = results[name].attrs["elapsed_seconds"]
        save(name)


def _say_estimate(plan: AuditPlan, floor_per_image: float, when: str, progress: bool) -> None:
    seconds = {name: _cost_seconds(plan.registry[name], plan.probe, plan.sizes[name],
                                   plan.resolved[name], floor_per_image)
               for name in plan.costly}
    parts = [f"{name} {plan.sizes[name]} images ~{seconds[name]:.0f} s" for name in plan.costly]
    _say(progress, f"{when}: floor {floor_per_image:.3g} s per image (one encode + one "
         f"decode); estimated remaining for the costly sections ~{sum(seconds.values()):.0f} s "
         f"on this device ({'; '.join(parts)})")


def assemble(plan: AuditPlan) -> AuditReport:
    """The report: every chosen section (and, from the store, earlier ones not chosen now),
    its timing and the audit's provenance; written beside the sections when there is a store."""
    registry, results, store, chosen = plan.registry, plan.results, plan.store, plan.chosen
    shown = chosen
    if store is not None:  # rendered from what is on disk; a partial run never shrinks it
        earlier = store.finished([name for name in registry if name not in chosen])
        shown = [name for name in registry if name in chosen or name in earlier]
        results = {name: load_section(store.path(name)) if store.path(name).is_file()
                   else results[name] for name in shown}
    report = AuditReport({name: results[name] for name in shown})
    report.timing = {**plan.timing, "sections_seconds": {
        name: float(ds.attrs.get("elapsed_seconds", 0.0)) for name, ds in report.items()}}
    source_facts = dict(plan.probe.source)
    source_facts.setdefault("checkpoint", "in-memory model")
    report.attrs = provenance(
        "audit", dict(n_images=plan.n_images, seed=plan.seed, sections=chosen,
                      settings=plan.resolved, quick=int(plan.quick), **plan.networks),
        dataset=vdata.dataset_name(plan.dataset), n_images=len(plan.subset), seed=plan.seed,
        subset_sha256=plan.subset.digest,
        **source_facts, status={name: ds.attrs.get("status") for name, ds in report.items()},
        computed_sections=json.dumps([name for name in chosen if name in plan.todo]),
        resumed_sections=json.dumps(plan.resumed), quick=int(plan.quick),
        timing=json.dumps(report.timing, default=float),
        device=str(getattr(plan.probe, "device", "cpu")), torch_threads=torch.get_num_threads())
    computed = [name for name in chosen if name in plan.todo]
    if store is not None and distributed.is_main() and not _report_is_current(store, computed,
                                                                              shown):
        write_report(report, store.out)
    return report


def _report_is_current(store, computed: list, shown: list) -> bool:
    """Nothing computed now, and audit.nc / .png / .html are newer than every section file
    shown: rewriting them would only restamp the same report (a resumed audit with nothing
    to do then costs the checks and the reads, not a re-rendering)."""
    outputs = [Path(store.out) / f"audit.{suffix}" for suffix in ("nc", "png", "html")]
    if computed or not all(path.is_file() for path in outputs):
        return False
    sections = [store.path(name) for name in shown if store.path(name).is_file()]
    newest = max((path.stat().st_mtime_ns for path in sections), default=0)
    return min(path.stat().st_mtime_ns for path in outputs) >= newest


def run_audit(source, data, *, n_images, seed, sections, device, progress, out, format,
              options, settings, quick, batch_size, overwrite, networks) -> AuditReport:
    """The body of :func:`vaeprobe.audit.audit` (see there): plan, execute, assemble."""
    plan = plan_audit(source, data, n_images=n_images, seed=seed, sections=sections,
                      device=device, out=out, format=format, options=options,
                      settings=settings, quick=quick, overwrite=overwrite, networks=networks,
                      progress=progress)
    execute(plan, progress=progress, batch_size=batch_size)
    return assemble(plan)


def _warn_stale(stale: dict[str, str], out) -> None:
    """Say which section files on disk were not trusted, and why (they are recomputed)."""
    if stale and distributed.is_main():
        import warnings

        warnings.warn(f"{out}: recomputing section(s) whose files do not match this audit: "
                      + "; ".join(f"{name} ({why})" for name, why in stale.items()),
                      stacklevel=3)


def _cost_seconds(section, probe, n_images, options, floor_per_image) -> float:
    if section.cost is None:
        return 0.0
    return section.cost(probe, n_images, options) * floor_per_image
