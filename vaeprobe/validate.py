"""Checks on untrusted input, made before anything is allocated, unpickled or overwritten.

What a hostile or careless file can do to vaeprobe, and where it is stopped:

- **A torch that can be tricked into unpickling.** ``torch.load(weights_only=True)`` has
  published bypasses in old torch (:data:`KNOWN_BYPASSES`); :func:`require_safe_torch` refuses
  to read a torch file with such a torch, naming the CVEs.
- **A config that asks for the machine's memory.** Every format checks its config's keys
  (types, signs, ranges: :func:`check_fields`) and estimates the parameters and the activation
  memory of one image before building the network (:func:`check_budget`); past
  :func:`memory_limit` (``VAEPROBE_MAX_MEMORY``, ``vp.load(max_memory=...)``, CLI
  ``--max-memory``; default :data:`MEMORY_FRACTION` of the available memory) it refuses, naming
  the file, the key and the estimate.
- **Weights that would silently give wrong numbers.** Integer tensors where the network has
  floating-point ones are refused; non-finite values are counted per tensor and refused unless
  ``allow_nonfinite=True`` (:func:`check_weights`).
- **Numbers in arguments.** :func:`finite`, :func:`positive_int` name the argument and the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

# ---- torch -------------------------------------------------------------------------------------

TORCH_FLOOR = (2, 10)  # the first torch with no known torch.load(weights_only=True) bypass
KNOWN_BYPASSES = (
    ("CVE-2025-32434", "torch <= 2.5.1", (2, 5, 1)),  # (CVE, affected, last affected version)
    ("CVE-2026-24747", "torch < 2.10", (2, 9, 99)),
)


class UnsafeTorchError(ValueError):
    """The installed torch has known ways round ``torch.load(weights_only=True)`` (a ValueError,
    so the command line reports it in one line with exit code 2)."""


def torch_version(text: str | None = None) -> tuple[int, ...]:
    """``(major, minor, patch)`` of a torch version string ("2.14.1+cu130" -> (2, 14, 1)).

    Examples
    --------
    >>> torch_version("2.5.1+cpu"), torch_version("2.10.0a0+git1234")
    ((2, 5, 1), (2, 10, 0))
    """
    if text is None:
        import torch

        text = torch.__version__
    numbers = re.findall(r"\d+", str(text).split("+")[0])[:3]
    return tuple(int(n) for n in numbers) + (0,) * (3 - len(numbers))


def require_safe_torch(version: str | None = None) -> None:
    """Refuse to read untrusted torch files with a torch that has a known unpickling bypass.

    Called before every ``torch.load`` of a file (``vaeprobe.io``); safetensors files need no
    unpickling and are read with any torch.

    Examples
    --------
    >>> require_safe_torch("2.10.0")
    >>> require_safe_torch("2.5.1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vaeprobe.validate.UnsafeTorchError: torch 2.5.1 cannot be trusted ... (CVE-2025-32434: ...
    """
    found = torch_version(version)
    if found >= TORCH_FLOOR:
        return
    cves = [f"{cve}: {affected}" for cve, affected, last in KNOWN_BYPASSES if found <= last]
    shown = ".".join(str(n) for n in found)
    raise UnsafeTorchError(
        f"torch {shown} cannot be trusted to read untrusted checkpoints: "
        f"torch.load(weights_only=True) can be made to run code by a crafted file "
        f"({'; '.join(cves)}). Upgrade: pip install 'torch>={TORCH_FLOOR[0]}.{TORCH_FLOOR[1]}' "
        f"(or read .safetensors files, which need no unpickling)")


def refused_pickle_reason(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, without torch's advice to turn it off.

    Examples
    --------
    >>> refused_pickle_reason(Exception("Weights only load failed. Re-running torch.load with "
    ...     "weights_only set to False will likely succeed.\\n\\nTrying to load unsupported "
    ...     "GLOBAL posix.system whose module posix is blocked.\\n\\nCheck the docs."))
    'unsupported GLOBAL posix.system whose module posix is blocked'
    """
    for line in str(error).splitlines():
        match = re.search(r"(unsupported global.*|unsupported operand.*|Unsupported .*)",
                          line, flags=re.IGNORECASE)
        if match and "weights_only" not in match.group(1):
            return match.group(1).rstrip(".")
    return "objects other than tensors and plain containers"


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


# ---- config values -----------------------------------------------------------------------------

class ConfigError(ValueError):
    """A config value of the wrong type, sign or range (names the file and the key)."""


def _type_name(value) -> str:
    return "null" if value is None else {"bool": "a boolean", "str": "a string", "list":
                                          "a list", "dict": "an object", "int": "an integer",
                                          "float": "a number", "tuple": "a list"}.get(
        type(value).__name__, type(value).__name__)


def check_value(value, kind: str, where: str, key: str, low=None, high=None):
    """One config value: ``kind`` "int", "float", "bool", "str" or "ints" (a non-empty list of
    ints), within [low, high]; returns it (a tuple for "ints"). Raises ConfigError naming
    ``where`` (the file) and ``key``.

    Examples
    --------
    >>> check_value(4, "int", "config.json", "latent_channels", 1, 4096)
    4
    >>> check_value(-3, "int", "config.json", "latent_channels", 1, 4096)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vaeprobe.validate.ConfigError: config.json: latent_channels must be an integer ..., got -3
    """
    bounds = (f" in [{low}, {high}]" if low is not None and high is not None else
              f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    article = {"int": "an integer", "float": "a finite number", "bool": "true or false",
               "str": "a string", "ints": "a non-empty list of integers",
               "strs": "a non-empty list of strings"}[kind]

    def fail(shown=None):
        got = _type_name(value) if shown is None else shown
        raise ConfigError(f"{where}: {key} must be {article}{bounds}, got {got}")

    def in_range(number):
        if (low is not None and number < low) or (high is not None and number > high):
            fail(repr(value))
        return number

    if kind == "bool":
        return value if isinstance(value, bool) else fail()
    if kind == "str":
        return value if isinstance(value, str) else fail()
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return in_range(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        if not math.isfinite(value):
            fail(repr(value))
        return in_range(value)
    if not isinstance(value, (list, tuple)) or not value:
        fail(repr(value) if isinstance(value, (list, tuple)) else None)
    if kind == "strs":
        if not all(isinstance(item, str) for item in value):
            fail(repr(list(value)))
        return tuple(value)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            fail(repr(list(value)))
        if (low is not None and item < low) or (high is not None and item > high):
            fail(repr(list(value)))
    return tuple(value)


def check_fields(values: dict, spec: dict, where) -> None:
    """Check each key of ``values`` that ``spec`` names: ``spec[key] = (kind, low, high)``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must hold a JSON object of config keys, got "
                          f"{_type_name(values)}")
    for key, (kind, low, high) in spec.items():
        if key in values:
            check_value(values[key], kind, str(where), key, low, high)


def json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object; errors name the file."""
    import json

    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; expected the JSON {what}") from None
    except OSError as error:
        raise FileNotFoundError(f"cannot read {what} {path}: "
                                f"{error.strerror or error}") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); expected the {what}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object ({what}), got "
                          f"{_type_name(values)}")
    return values


# ---- weights -----------------------------------------------------------------------------------

class WeightsError(ValueError):
    """Weights of the wrong dtype, or with non-finite values that were not allowed."""


def allow_nonfinite() -> bool:
    """The non-finite policy of the load in progress (``vp.load(allow_nonfinite=...)``)."""
    return bool((_LOAD_POLICY.get() or {}).get("allow_nonfinite", False))


def nonfinite_counts(state: dict) -> dict[str, int]:
    """``{name: count}`` of the floating tensors of ``state`` that hold NaN or inf values."""
    import torch

    counts = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                counts[name] = bad
    return counts


def check_weights(state: dict, expected: dict, path, *, allow: bool | None = None) -> None:
    """Weights that fit the network's dtypes and are finite (unless allowed).

    ``expected``: the network's own state dict (its dtypes). A floating tensor of the network
    must come as a floating tensor (any precision: it is cast); an integer or boolean one is
    refused. Non-finite values are counted per tensor and refused unless ``allow`` (default:
    the load's ``allow_nonfinite``); when allowed, a warning names them.
    """
    import warnings

    import torch

    wrong = [f"{k} ({state[k].dtype}, expected floating point)" for k, v in expected.items()
             if k in state and isinstance(state[k], torch.Tensor) and v.is_floating_point()
             and not state[k].is_floating_point()]
    if wrong:
        raise WeightsError(f"{path}: {len(wrong)} tensor(s) are not floating point where the "
                           f"network's weights are: {'; '.join(wrong[:5])}"
                           + (" ..." if len(wrong) > 5 else "")
                           + "; the file is not a checkpoint of this architecture")
    counts = nonfinite_counts({k: v for k, v in state.items() if k in expected})
    if not counts:
        return
    total = sum(counts.values())
    listing = "; ".join(f"{k}: {n:,}" for k, n in list(counts.items())[:5]) + \
        (f" and {len(counts) - 5} more tensors" if len(counts) > 5 else "")
    message = (f"{path}: {total:,} non-finite (NaN or inf) weight values in {len(counts)} "
               f"tensor(s) ({listing})")
    if not (allow_nonfinite() if allow is None else allow):
        raise WeightsError(f"{message}; every result of this model would be NaN. Pass "
                           f"allow_nonfinite=True (CLI --allow-nonfinite) to open it anyway")
    warnings.warn(f"{message}; opened anyway (allow_nonfinite=True)", UserWarning, stacklevel=3)


# ---- image files -------------------------------------------------------------------------------

IMAGE_PIXELS_ENV = "VAEPROBE_MAX_IMAGE_PIXELS"
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (a 0.25 GiB RGB)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageFileError(ValueError):
    """An image file that cannot be read as 8-bit pixels (names the file and the reason)."""


def max_image_pixels() -> int:
    """The largest image (width x height) read: ``$VAEPROBE_MAX_IMAGE_PIXELS`` or 89,478,485."""
    value = os.environ.get(IMAGE_PIXELS_ENV)
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"${IMAGE_PIXELS_ENV} must be a positive integer, got {value!r}")
    return limit


def read_image(path):
    """An image file decoded as an 8-bit PIL image (loaded, file closed).

    16-bit greyscale (Pillow's ``I;16`` modes, and ``I`` from PNG) is scaled to 8 bits by
    ``round(v / 257)`` (65535 -> 255) instead of being clipped at 255; 16-bit colour PNGs are
    reduced by Pillow itself. Float (``F``) and 32-bit integer images (other than PNG) are
    refused with the reason, and so is an image of more than :func:`max_image_pixels` pixels
    (a decompression bomb), before its pixels are decoded. Every error names the file.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels()
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # our limit replaces Pillow's (checked from the header below, before any decoding)
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limit:
                raise ImageFileError(_bomb(path, width, height, limit))
            image.load()
            if image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format == "PNG"):
                pixels = np.asarray(image).astype(np.float64)
                return Image.fromarray(np.round(pixels / 257.0).clip(0, 255).astype(np.uint8),
                                       mode="L")
            if image.mode in ("I", "F"):
                kind = "32-bit integer" if image.mode == "I" else "floating-point"
                raise ImageFileError(f"{path}: {kind} pixels (mode {image.mode}) have no fixed "
                                     f"range to scale from; convert the file to 8- or 16-bit")
            return image.copy()
    except UnidentifiedImageError:
        raise ImageFileError(f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageFileError):
            raise
        raise ImageFileError(f"cannot decode image {path}: {error} (truncated or "
                             f"corrupt?)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _bomb(path, width: int, height: int, limit: int) -> str:
    return (f"{path}: {width} x {height} = {width * height:,} pixels, above the limit of "
            f"{limit:,} (a decompression bomb, or a very large image); set "
            f"${IMAGE_PIXELS_ENV} higher to read it")


# ---- numbers in arguments ----------------------------------------------------------------------

def finite(value, name: str, *, low=None, high=None, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite real number in a range, or a ValueError/TypeError naming the argument.

    Examples
    --------
    >>> finite(0.8, "temperature", low=0, low_open=True)
    0.8
    >>> finite(float("nan"), "temperature", low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number > 0, got nan
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(
            value, "__float__"):
        raise TypeError(f"{name} must be a number, got {_type_name(value)} ({value!r})")
    number = float(value)
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = f"{name} must be a finite number" + (" " + " and ".join(parts) if parts else "")
    if not math.isfinite(number):
        raise ValueError(f"{wanted}, got {value!r}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(f"{wanted}, got {value!r}")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{wanted}, got {value!r}")
    return number


def positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
    """A positive integer (not a bool, not a float), or a ValueError/TypeError naming it.

    Examples
    --------
    >>> positive_int(3, "n_images")
    3
    >>> positive_int(2.5, "n_images")
    Traceback (most recent call last):
    ...
    TypeError: n_images must be a positive integer, got a number (2.5)
    """
    import numbers

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {_type_name(value)} "
                        f"({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}")
    return int(value)


def temperatures(value, name: str = "temperature"):
    """A temperature or one per layer: each finite and > 0; returned as given."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers")
    for item in items:
        finite(item, name, low=0, low_open=True)
    return value


__all__ = ["BudgetError", "ConfigError", "KNOWN_BYPASSES", "MEMORY_ENV", "MEMORY_FRACTION",
           "TORCH_FLOOR", "UnsafeTorchError", "WeightsError", "check_budget", "check_fields",
           "check_value", "check_weights", "finite", "load_policy", "memory_limit",
           "positive_int", "require_safe_torch", "temperatures"]
