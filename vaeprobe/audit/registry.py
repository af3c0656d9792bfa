"""The registry of audit sections: one :class:`Section` per file, registered by name.

How to add a section
--------------------
Write one module ``vaeprobe/audit/<name>.py`` (and its test) that

1. computes a Dataset, in one of two ways:

   - **from the shared pass** (cheap sections: anything that needs only the images, one
     posterior draw, the posterior mean and their decodes): give ``accumulator``, a factory
     ``accumulator(probe, context, **options) -> acc``. ``acc.update(batch)`` receives every
     :class:`~vaeprobe.audit.shared.SharedBatch` (images, per-image generators, the latents of
     the posterior draw and of the posterior mean, both decoder outputs, log p(x|z) of the
     draw); ``acc.merge(other)`` folds another rank's accumulator in (rank order);
     ``acc.compute() -> xr.Dataset`` gives the section (use
     :func:`~vaeprobe.audit._common.section_attrs` for its attrs). Optionally
     ``acc.monitor()`` returns a context manager entered around each batch's float32 pass
     (forward hooks). Its public function is then one line:
     ``return run_shared("<name>", probe, data, n_images=..., seed=..., **options)``;
   - **by its own extra work** (IWAE, progressive coding, prior samples): give ``compute``,
     the public function ``compute(probe, data, *, n_images, seed, progress, **options)``,
     and ``core``, ``core(evaluation, *, progress, **options)``, the same work on images
     already chosen: ``evaluation`` is a :class:`vaeprobe._analysis.Evaluation` (the probe,
     the dataset, ``indices``, the dataset indices to evaluate, ``n_images``, their count,
     and ``seed``). The audit calls ``core`` with its own images (the first ``n`` it drew,
     :mod:`vaeprobe.audit.subset`); ``compute`` resolves what a user gives into an
     Evaluation (:func:`vaeprobe._analysis.resolve`) and calls ``core``. A section without
     ``core`` is called through ``compute`` on the audit's dataset with ``n_images`` and
     ``seed`` (which select the same images). Give ``cost`` too, ``cost(probe, n_images,
     options) -> floor multiples`` (the work in units of one encode + decode of one image),
     so the audit can print its estimate first,
     and ``check(probe)``, which raises UndefinedAnalysisError at once where the section is
     undefined (so that no estimate counts it);

2. calls :func:`register` with a :class:`Section`: ``name`` (the key in ``audit.nc`` and in
   ``settings``; the same as the module's public function where possible), ``title``,
   ``order`` (report position: existing sections use 10, 20, ... 90; pick a number in between),
   ``summary`` (ds -> one line), ``figure`` (the name of a ``vaeprobe.plot`` function
   ``f(ds, ax=None)``, a tuple of names for several panels, main panel first, or "" for
   none; a function with a ``needs`` attribute, a tuple of variable names, is drawn only
   where the Dataset has them: see :func:`vaeprobe.plot.audit_panels`), ``image_limit`` (at
   most this many of the audit's images; or a function ``(probe, options) -> int | None``
   when the limit depends on the model), ``networks`` (the audit options it needs, e.g.
   ``("feature_extractor", "weights")``), ``options`` (defaults of its own keyword options,
   settable through ``settings={"<name>": {...}}`` and ``--settings``; ``quick`` overrides
   them under ``--quick``), ``default`` (False: an opt-in section, run only when ``sections`` /
   ``--sections`` names it);

3. is imported by ``vaeprobe/audit/__init__.py`` (import order does not matter: ``order``
   does).

Sections raise :class:`~vaeprobe.probe.UndefinedAnalysisError` where they are undefined for a
model (the audit writes a "skipped" Dataset with the reason); any other error becomes a
"failed" Dataset and the other sections still run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import xarray as xr


@dataclass(frozen=True)
class Section:
    """One audit section (see the module docstring for how to write one)."""

    name: str  # key in audit.nc, settings and --sections
    title: str  # heading in the report, numbered by order
    order: float  # position in the report (10, 20, ... for the built-in sections)
    summary: Callable[[xr.Dataset], str]  # the headline line of the printed summary
    figure: str | tuple[str, ...] = ""  # vaeprobe.plot function(s) drawing its panel(s)
    accumulator: Callable | None = None  # shared pass: (probe, context, **options) -> acc
    compute: Callable | None = None  # own work: (probe, data, *, n_images, seed, ...) -> ds
    core: Callable | None = None  # own work on chosen images: (evaluation, *, ...) -> ds
    cost: Callable | None = None  # (probe, n_images, options) -> floor multiples (own work)
    check: Callable | None = None  # (probe) -> None, or raise UndefinedAnalysisError (fast)
    image_limit: int | Callable | None = None  # at most this many images; or (probe, options)
    networks: tuple[str, ...] = ()  # audit options passed to it (feature_extractor ...)
    options: dict = field(default_factory=dict)  # its own options and their defaults
    quick: dict = field(default_factory=dict)  # options under --quick
    needs_images: bool = True  # False: the model card
    default: bool = True  # run when no sections are named (False: only when asked for)
    function: Callable | None = None  # shared pass: its public function (probe, data, ...)

    def __post_init__(self):
        if (self.accumulator is None) == (self.compute is None):
            raise ValueError(f"section {self.name!r}: give exactly one of accumulator= (the "
                             f"shared pass) or compute= (its own work)")
        if self.core is not None and self.compute is None:
            raise ValueError(f"section {self.name!r}: core= is the own-work section's core; "
                             f"give compute= (its public function) too")
        unknown = set(self.quick) - set(self.options)
        if unknown:
            raise ValueError(f"section {self.name!r}: quick options {sorted(unknown)} are not "
                             f"among its options {sorted(self.options)}")

    @property
    def public(self) -> Callable | None:
        """The section's public function ``f(probe, data, **options) -> Dataset``: ``compute``,
        or for a shared-pass section its ``function``."""
        return self.compute if self.compute is not None else self.function

    def limit(self, probe, options: dict) -> int | None:
        """At most this many of the audit's images for ``probe`` (None: no limit)."""
        if callable(self.image_limit):
            return self.image_limit(probe, options)
        return self.image_limit

    @property
    def shared(self) -> bool:
        """True when computed from the shared pass."""
        return self.accumulator is not None


_REGISTRY: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add ``section`` to the registry (a name registered twice is an error)."""
    if not isinstance(section, Section):
        raise TypeError(f"register a vaeprobe.audit.registry.Section, got "
                        f"{type(section).__name__}")
    if section.name in _REGISTRY and _REGISTRY[section.name] is not section:
        raise ValueError(f"audit section {section.name!r} is registered already")
    _REGISTRY[section.name] = section
    return section


def sections() -> dict[str, Section]:
    """Every registered section by name, in report order."""
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))


def get(name: str) -> Section:
    """The section called ``name`` (ValueError naming the sections otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown audit section {name!r}; sections: {', '.join(sections())}")
    return _REGISTRY[name]


def titles() -> dict[str, str]:
    """Section name -> numbered title ("1. Model card"), in report order."""
    return {name: f"{number}. {section.title}"
            for number, (name, section) in enumerate(sections().items(), start=1)}
