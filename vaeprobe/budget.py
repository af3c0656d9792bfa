"""The memory budget of a load: the limit (``vp.load(max_memory=)``, ``$VAEPROBE_MAX_MEMORY``, or a
fraction of the available memory), the policy of the load in progress, and the refusal of a
model or file that would not fit, before anything is allocated.

Re-exported by :mod:`vaeprobe.validate`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

# ---- memory ------------------------------------------------------------------------------------

MEMORY_ENV = "VAEPROBE_MAX_MEMORY"
MEMORY_FRACTION = 0.5  # of the available memory, when neither the option nor the env var is set
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "KB": 10 ** 3, "KIB": 2 ** 10, "M": 2 ** 20,
          "MB": 10 ** 6, "MIB": 2 ** 20, "G": 2 ** 30, "GB": 10 ** 9, "GIB": 2 ** 30,
          "T": 2 ** 40, "TB": 10 ** 12, "TIB": 2 ** 40}


class BudgetError(ValueError):
    """A model (or image) that would need more memory than the limit allows."""


def parse_bytes(value, what: str = MEMORY_ENV) -> int:
    """Bytes from an int or a string such as ``"8GB"``, ``"512MiB"``, ``"1e9"``.

    Examples
    --------
    >>> parse_bytes("8GiB"), parse_bytes("1.5 GB"), parse_bytes(1024)
    (8589934592, 1500000000, 1024)
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of bytes (e.g. 8GB), got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"{what} must be a number of bytes with an optional unit "
                             f"(e.g. 8GB, 512MiB), got {value!r}")
        try:
            number = float(match.group(1))
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a number of bytes") from None
        unit = match.group(2).upper()
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a positive, finite number of bytes, got {value!r}")
    return int(number * _UNITS[unit])


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``), or the physical memory, or 8 GiB."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


# the limit and the non-finite policy of the load in progress (vp.load sets them)
_LOAD_POLICY: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "vaeprobe_load_policy", default=None)


@contextlib.contextmanager
def load_policy(*, max_memory=None, allow_nonfinite: bool = False) -> Iterator[None]:
    """Within the block, formats use this memory limit and non-finite policy."""
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"allow_nonfinite must be True or False, got {allow_nonfinite!r}")
    if max_memory is not None:
        parse_bytes(max_memory, "max_memory")
    token = _LOAD_POLICY.set(dict(max_memory=max_memory, allow_nonfinite=allow_nonfinite))
    try:
        yield
    finally:
        _LOAD_POLICY.reset(token)


def memory_limit() -> tuple[int, str]:
    """(bytes, where the limit comes from): ``vp.load(max_memory=)``, then ``$VAEPROBE_MAX_MEMORY``,
    then :data:`MEMORY_FRACTION` of :func:`available_memory`."""
    option = (_LOAD_POLICY.get() or {}).get("max_memory")
    if option is not None:
        return parse_bytes(option, "max_memory"), "max_memory"
    if os.environ.get(MEMORY_ENV):
        return parse_bytes(os.environ[MEMORY_ENV]), f"${MEMORY_ENV}"
    return int(MEMORY_FRACTION * available_memory()), \
        f"{MEMORY_FRACTION:g} of the available memory"


def human_bytes(n: float) -> str:
    """Examples
    --------
    >>> human_bytes(3.6e11), human_bytes(2048)
    ('335.3 GiB', '2.0 KiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_budget(*, parameters: int, activations: int, file, key: str,
                 bytes_per_value: int = 4) -> None:
    """Refuse a model whose float32 weights plus the activations of one image exceed the limit.

    ``parameters``: the parameter count; ``activations``: values alive at once for one image;
    ``file`` and ``key``: the config file and the key that sizes the model, for the message.
    """
    need = (parameters + activations) * bytes_per_value
    limit, origin = memory_limit()
    if need > limit:
        raise BudgetError(
            f"{file}: {key} asks for about {human_bytes(need)} ({parameters:,} parameters, "
            f"{activations:,} activation values per image), above the limit of "
            f"{human_bytes(limit)} ({origin}); nothing was allocated. If the file is trusted "
            f"and the machine has the memory, raise the limit: vp.load(..., max_memory='64GB'), "
            f"--max-memory 64GB or {MEMORY_ENV}=64GB")


def check_file_size(path) -> None:
    """Refuse a weights file larger than the memory limit before reading it."""
    size = Path(path).stat().st_size
    limit, origin = memory_limit()
    if size > limit:
        raise BudgetError(f"{path} is {human_bytes(size)}, above the memory limit of "
                          f"{human_bytes(limit)} ({origin}); raise it with max_memory= / "
                          f"--max-memory / {MEMORY_ENV} if the file is trusted")


def count_parameters(build) -> int:
    """The parameter count of ``build()`` built on the meta device (no memory allocated)."""
    import torch

    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def allow_nonfinite() -> bool:
    """The non-finite policy of the load in progress (``vp.load(allow_nonfinite=...)``)."""
    return bool((_LOAD_POLICY.get() or {}).get("allow_nonfinite", False))
