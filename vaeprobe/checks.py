"""Checks of values: config values read from files (type, sign, range, naming the file and the
key) and numbers given as arguments (naming the argument and the fix).

Re-exported by :mod:`vaeprobe.validate`.
"""

from __future__ import annotations

import math
from pathlib import Path

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
    vaeprobe.checks.ConfigError: config.json: latent_channels must be an integer ..., got -3
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
