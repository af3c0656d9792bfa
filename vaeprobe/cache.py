"""Where vaeprobe keeps what it can rebuild: one directory, read from the environment at call
time. A leaf module (it imports nothing of vaeprobe), so that every layer can use it, down to
:mod:`vaeprobe.digests`, which :mod:`vaeprobe.io` imports.

Under it: ``patches<N>-*.npz`` (the embedded datasets, :mod:`vaeprobe.data`), ``sha256/`` (file
digests, :mod:`vaeprobe.digests`) and ``fidelity/`` (FID reference statistics).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VAEPROBE_CACHE``, else ``$XDG_CACHE_HOME/vaeprobe``, else ``~/.cache/vaeprobe``.

    An empty variable counts as unset. The directory is not created here.

    Examples
    --------
    >>> cache_dir() / "sha256"  # doctest: +SKIP
    PosixPath('/home/me/.cache/vaeprobe/sha256')
    """
    if os.environ.get("VAEPROBE_CACHE"):
        return Path(os.environ["VAEPROBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaeprobe"


__all__ = ["cache_dir"]
