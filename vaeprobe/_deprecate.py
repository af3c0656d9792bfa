"""Renamed keyword parameters keep working (the API rule: add freely, rename never)."""

from __future__ import annotations

import functools
import warnings


def renamed(**old_to_new: str):
    """Accept each old keyword name of the decorated function as its new name, with a
    DeprecationWarning; passing both is a TypeError. ``inspect.signature`` shows the new names.

    Examples
    --------
    >>> @renamed(n="n_images")
    ... def draw(n_images=1):
    ...     return n_images
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     draw(n=3), caught[0].category.__name__
    (3, 'DeprecationWarning')
    """
    def wrap(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{function.__name__}() got both {new}= and its old name "
                                    f"{old}=; pass {new}= only")
                warnings.warn(f"{function.__name__}({old}=...) is now {new}=; {old}= still "
                              f"works but will be removed", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)
        return wrapper
    return wrap
