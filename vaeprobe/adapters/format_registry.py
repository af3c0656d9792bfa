"""The registry of checkpoint formats: one :class:`Format` per format, registered by the
format's own module (its opener, its detection function, what its files look like).

How to add a format
-------------------
Write one module (and its test) with an opener ``open_x(path, *, device=None, **options) ->
Probe`` and a ``sniff(path) -> bool`` that recognises the files without reading weights, and
register them at import::

    from vaeprobe.adapters.format_registry import Format, formats

    formats.register("x", Format("mypackage.x:open_x", sniff, "an x folder: x.json + x.pt"))

Nothing else is edited: :func:`vaeprobe.load` sniffs it, ``--format`` offers it, and the
CLI's help (:func:`checkpoint_help`), the error that lists the known formats (:func:`known`)
and the docs' format page (:func:`describe`) are generated from the registry. The opener's
keyword parameters (other than ``path`` and ``device``) are the format's options; those without
a default are required. A format declared ``fallback=True`` (vaeprobe's own: any ``.pt`` /
``.safetensors`` file) claims only the paths that no other format claims.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaeprobe.probe import Probe
from vaeprobe.registry import Registry


@dataclass(frozen=True)
class Format:
    """One checkpoint format: its opener, how to recognise its files, and what they are."""

    opener: str  # "package.module:function", imported when the format is opened
    sniff: Callable[[Path], bool]  # does this path look like the format? (reads no weights)
    files: str  # what the format's files look like, for error messages and help
    fallback: bool = False  # claims a path only when no other format does

    def open_function(self) -> Callable[..., Probe]:
        module, _, function = self.opener.partition(":")
        return getattr(importlib.import_module(module), function)

    def __call__(self, path, **options) -> Probe:
        """Open ``path`` with this format's opener directly (no sniffing, no provenance of the
        options: :func:`vaeprobe.load` adds those)."""
        return self.open_function()(path, **options)

    def options(self) -> tuple[list[str], list[str]]:
        """(all option names, required option names) from the opener's signature."""
        parameters = list(inspect.signature(self.open_function()).parameters.values())[1:]
        names = [p.name for p in parameters if p.name != "device"
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        required = [p.name for p in parameters if p.name in names and p.default is p.empty]
        return names, required


def _check_format(name: str, entry) -> None:
    if not isinstance(entry, Format):
        raise TypeError(f"checkpoint format {name!r} must be registered as a Format(opener, "
                        f"sniff, files), got {type(entry).__name__}")
    if not re.fullmatch(r"[\w.]+:\w+", entry.opener):
        raise ValueError(f"checkpoint format {name!r}: opener must be 'package.module:function', "
                         f"got {entry.opener!r}")
    if not callable(entry.sniff):
        raise TypeError(f"checkpoint format {name!r}: sniff must be callable(path) -> bool")


formats = Registry("checkpoint format", check=_check_format)


class FormatError(ValueError):
    """A path whose format is unknown, ambiguous or not the one asked for, or bad options."""


def claimants(path: Path) -> list[str]:
    """The formats whose files ``path`` looks like: those that sniff it, and a fallback format
    only when no other does."""
    found = [name for name in formats.names() if formats.get(name).sniff(path)]
    claimed = [name for name in found if not formats.get(name).fallback]
    return claimed or found


def known() -> str:
    """Every registered format and its files, for the errors that list them."""
    return "; ".join(f"{name!r}: {formats.get(name).files}" for name in formats.names())


def describe() -> list[dict]:
    """A machine-readable description of every registered format (the docs render it): name,
    files, opener, options (name -> default, as text), required options, fallback."""
    described = []
    for name in formats.names():
        entry = formats.get(name)
        parameters = inspect.signature(entry.open_function()).parameters
        names, required = entry.options()
        described.append(dict(
            name=name, files=entry.files, opener=entry.opener, fallback=entry.fallback,
            options={option: (None if parameters[option].default is inspect.Parameter.empty
                              else repr(parameters[option].default)) for option in names},
            required=required))
    return described


def checkpoint_help() -> str:
    """The CLI's help for a CHECKPOINT argument, generated from the registered formats."""
    fallback = [formats.get(name).files for name in formats.names()
                if formats.get(name).fallback]
    others = [f"{name}: {formats.get(name).files}" for name in formats.names()
              if not formats.get(name).fallback]
    return "; ".join(fallback) + ", or a third-party model: " + "; ".join(others)
