"""Safety of untrusted files: a torch that cannot be tricked into unpickling, weights that would
silently give wrong numbers, image files that would decode into wrong pixels or exhaust memory.

Re-exported by :mod:`vaeprobe.validate`.
"""

from __future__ import annotations

import os
import re

from vaeprobe.budget import allow_nonfinite

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
    vaeprobe.safety.UnsafeTorchError: torch 2.5.1 cannot be trusted ... (CVE-2025-32434: ...
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


# ---- weights -----------------------------------------------------------------------------------

class WeightsError(ValueError):
    """Weights of the wrong dtype, or with non-finite values that were not allowed."""


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
