"""How ``vp.audit`` runs its sections: resolve the model and data once, one shared pass for the
cheap sections, then the costly ones sized to the measured floor, each written as it is done."""

from __future__ import annotations

import inspect
import json
import math
import sys
import time

import torch

from vaeprobe import data as vdata
from vaeprobe import distributed
from vaeprobe.audit._common import failed, skipped
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
    """Images for a costly section: its own n_images, else what its budget (floor multiples
    of the audit's n_audit images) allows, within its image limit."""
    limit = min(n_audit, section.image_limit or n_audit)
    if options.get("n_images") is not None:
        return int(options["n_images"])
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


def _own_section(name, section, probe, dataset, options, n_images, seed, progress, networks):
    kwargs = {key: value for key, value in options.items() if key not in AUDIT_KEYS}
    kwargs.update({key: networks[key] for key in section.networks})
    if section.needs_images:
        kwargs.update(n_images=n_images, seed=seed)
    start = time.perf_counter()
    try:
        ds = section.compute(probe, dataset, progress=progress, **kwargs)
    except UndefinedAnalysisError as error:
        ds = skipped(name, str(error), probe)
    except Exception as error:  # reported in its place; the other sections still run
        ds = failed(name, error, probe)
    ds.attrs["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    return ds


def run_audit(source, data, *, n_images, seed, sections, device, progress, out, format,
              options, settings, quick, batch_size, overwrite, networks) -> AuditReport:
    """The body of :func:`vaeprobe.audit.audit` (see there)."""
    registry = registered()
    chosen = [name for name, section in registry.items() if section.default] \
        if sections is None else list(sections)
    unknown = [name for name in chosen if name not in registry]
    if unknown or not chosen:
        raise ValueError(f"unknown or no sections {unknown}; sections: {', '.join(registry)}")
    chosen = [name for name in registry if name in chosen]  # report order
    resolved = resolve_settings(registry, chosen, settings, quick)
    from vaeprobe._analysis import fit_probe
    from vaeprobe.adapters import as_probe

    probe = as_probe(source, format, device=device, **(options or {}))
    # resolved (and decoded) once; a convolutional model takes the data's own size
    probe, dataset = fit_probe(probe, data)
    n_images = min(n_images, QUICK_IMAGES) if quick else n_images
    indices = vdata.select(dataset, n_images, seed)
    networks = {key: str(value) if value is not None else None
                for key, value in networks.items()}
    store, results = None, {}
    if out is not None:
        fingerprint = dict(model=model_fingerprint(probe), data=data_fingerprint(dataset, indices),
                           options=dict(seed=seed, quick=int(quick), networks=networks,
                                        sections=resolve_settings(registry, list(registry),
                                                                  settings, quick)))
        store = AuditStore(out, fingerprint, overwrite)
        on_disk = distributed.gather(sorted(store.finished(chosen)))[0]  # rank 0 decides
        results = {name: load_section(store.path(name)) for name in on_disk}
        _warn_stale(store.stale, out)
    resumed = [name for name in chosen if name in results]
    todo_skipped = []
    todo = [name for name in chosen if name not in results]
    if resumed:
        _say(progress, f"resuming {out}: {len(resumed)} section(s) on disk ({', '.join(resumed)})"
             f"; computing {', '.join(todo) or 'nothing'}")
    timing = dict(store.facts().get("timing", {})) if store else {}
    context = SectionContext(dataset, indices, seed, networks, quick)
    costly = [name for name in todo if not registry[name].shared and registry[name].needs_images]
    for name in list(costly):  # undefined for this model: skipped now, not estimated
        check = registry[name].check
        try:
            if check is not None:
                check(probe)
        except UndefinedAnalysisError as error:
            results[name] = skipped(name, str(error), probe)
            results[name].attrs["elapsed_seconds"] = 0.0
            costly.remove(name)
            todo_skipped.append(name)
    sizes = {name: _sized(registry[name], probe, len(indices), resolved[name])
             for name in costly}

    def save(name):
        if store is not None:
            store.save(name, results[name])

    def estimate(floor_per_image: float, when: str):
        if not costly:
            return
        parts = [f"{name} {sizes[name]} images ~{_cost_seconds(registry[name], probe, sizes[name], resolved[name], floor_per_image):.0f} s"  # noqa: E501
                 for name in costly]
        total = sum(_cost_seconds(registry[name], probe, sizes[name], resolved[name],
                                  floor_per_image) for name in costly)
        _say(progress, f"{when}: floor {floor_per_image:.3g} s per image (one encode + one "
             f"decode); estimated remaining for the costly sections ~{total:.0f} s on this "
             f"device ({'; '.join(parts)})")

    for name in todo_skipped:
        save(name)
    for name in [n for n in todo if not registry[n].needs_images]:
        results[name] = _own_section(name, registry[name], probe, dataset, resolved[name],
                                     None, seed, progress, networks)
        save(name)
    shared = [name for name in todo if registry[name].shared]
    if shared:
        _shared_sections(shared, registry, probe, context, resolved, results, timing, progress,
                         batch_size, seed,
                         lambda floor: estimate(floor, "first batch of the shared pass"))
        for name in shared:
            save(name)
        if store is not None:
            store.write_manifest(timing=timing)
    if costly and timing.get("floor_seconds_per_image"):
        estimate(timing["floor_seconds_per_image"], "shared pass done")
    for name in costly:
        _say(progress, f"{name} on {sizes[name]} images")
        results[name] = _own_section(name, registry[name], probe, dataset, resolved[name],
                                     sizes[name], seed, progress, networks)
        timing[f"{name}_seconds"] = results[name].attrs["elapsed_seconds"]
        save(name)
    shown = chosen
    if store is not None:  # rendered from what is on disk; a partial run never shrinks it
        earlier = store.finished([name for name in registry if name not in chosen])
        shown = [name for name in registry if name in chosen or name in earlier]
        results = {name: load_section(store.path(name)) if store.path(name).is_file()
                   else results[name] for name in shown}
    report = AuditReport({name: results[name] for name in shown})
    report.timing = {**timing, "sections_seconds": {
        name: float(ds.attrs.get("elapsed_seconds", 0.0)) for name, ds in report.items()}}
    source_facts = dict(probe.source)
    source_facts.setdefault("checkpoint", "in-memory model")
    report.attrs = provenance(
        "audit", dict(n_images=n_images, seed=seed, sections=chosen, settings=resolved,
                      quick=int(quick), **networks),
        dataset=vdata.dataset_name(dataset), n_images=len(indices), seed=seed, **source_facts,
        status={name: ds.attrs.get("status") for name, ds in report.items()},
        computed_sections=json.dumps([name for name in chosen if name in todo]),
        resumed_sections=json.dumps(resumed), quick=int(quick),
        timing=json.dumps(report.timing, default=float),
        device=str(getattr(probe, "device", "cpu")), torch_threads=torch.get_num_threads())
    if store is not None and distributed.is_main():
        write_report(report, store.out)
    return report


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
