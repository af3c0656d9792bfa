"""Data that does not match the model, said before any number is computed on it.

Reading images for a model may change them: a ``folder:`` of colour photographs converted to
grey for an MNIST model, images resized to the model's size, an alpha channel dropped, 16-bit
images scaled to 8 bits; and uint8 data may sit on the wrong scale (binary images stored as
0/1 instead of 0/255). Each is a :class:`DataMismatchWarning` naming what was changed, emitted
when the data is read, before the analysis runs. Under :func:`strict_data` (``strict_data=True``
of :func:`vaeprobe.rate`, ``--strict-data`` on the command line) each is a
:class:`DataMismatchError` instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections import Counter
from pathlib import Path

import torch

_STRICT = contextvars.ContextVar("vaeprobe_strict_data", default=False)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # more than 8 bits per pixel


class DataMismatchWarning(UserWarning):
    """The data was changed to fit the model (channels, size, bit depth) or looks mis-scaled."""


class DataMismatchError(ValueError):
    """A data mismatch under ``strict_data``: the data must fit the model as it is."""


@contextlib.contextmanager
def strict_data(enabled: bool = True):
    """Within this block, a data mismatch is a :class:`DataMismatchError`, not a warning.

    Examples
    --------
    >>> from vaeprobe.data_checks import strict_data, report
    >>> with strict_data():
    ...     report(["12 colour images converted to grey"], "folder:faces")
    Traceback (most recent call last):
    ...
    vaeprobe.data_checks.DataMismatchError: the data 'folder:faces' does not match the model...
    """
    token = _STRICT.set(bool(enabled))
    try:
        yield
    finally:
        _STRICT.reset(token)


def report(changes: list[str], name: str) -> None:
    """Warn (or, under :func:`strict_data`, refuse) naming every change made to the data."""
    if not changes:
        return
    text = (f"the data {name!r} does not match the model and was changed to fit it: "
            f"{'; '.join(changes)}; every number computed on it describes the changed images")
    if _STRICT.get():
        raise DataMismatchError(f"{text}. strict_data=True (--strict-data) refuses this: give "
                                f"images of the model's channels, size and scale")
    warnings.warn(f"{text} (strict_data=True or --strict-data makes this an error)",
                  DataMismatchWarning, stacklevel=3)


def folder_changes(files: list[Path], size: tuple[int, int], grey: bool, resize: str,
                   turned) -> list[str]:
    """What reading ``files`` as (1 if ``grey`` else 3, *size) images changes, from their
    headers alone: channel conversions, alpha dropped, bit depth, resizing (``resize`` "none"
    keeps the size). ``turned(size, ...)`` says whether an image is turned a quarter first."""
    from PIL import Image

    modes, sizes = Counter(), Counter()
    for file in files:
        try:
            with Image.open(file) as image:  # the header only
                mode, (width, height) = image.mode, image.size
        except (OSError, ValueError):  # unreadable: decoding it names the file
            continue
        modes[mode] += 1
        sizes[(width, height) if not turned((width, height)) else (height, width)] += 1
    count = lambda keep: sum(n for mode, n in modes.items() if keep(mode))  # noqa: E731
    changes = []
    if grey and (colour := count(lambda m: m not in GREY_MODES)):
        changes.append(f"{colour} colour image(s) converted to grey (the model takes 1 channel)")
    if not grey and (mono := count(lambda m: m in GREY_MODES)):
        changes.append(f"{mono} grey image(s) converted to RGB (the model takes 3 channels; "
                       f"the grey level copied into each)")
    if alpha := count(lambda m: "A" in m):
        changes.append(f"{alpha} image(s) with an alpha channel: the alpha dropped")
    if wide := count(lambda m: m in WIDE_MODES):
        changes.append(f"{wide} image(s) of more than 8 bits scaled to 8 bits")
    other = {s: n for s, n in sizes.items() if (s[1], s[0]) != tuple(size)}
    if resize != "none" and other:
        shown = ", ".join(f"{h}x{w}" for w, h in list(other)[:3]) + (", ..." if len(other) > 3
                                                                   else "")
        changes.append(f"{sum(other.values())} image(s) resized from {shown} to "
                       f"{size[0]}x{size[1]} (HxW; resize={resize})")
    return changes


def scale_changes(first: torch.Tensor) -> list[str]:
    """A first image whose levels stop at 1: binary data stored as 0/1, not 0/255."""
    top = int(first.max())
    if top == 1:
        return ["its levels are 0 and 1 only (of 0..255): binary images stored as 0/1? "
                "vaeprobe reads uint8 levels, so multiply by 255"]
    return []


__all__ = ["DataMismatchError", "DataMismatchWarning", "folder_changes", "report",
           "scale_changes", "strict_data"]
