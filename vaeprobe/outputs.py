"""One output policy for every command that writes (``vp.save``, ``compress``, ``decompress``,
``audit``, ``compare`` and the CLI's ``--out`` / ``--plot``):

1. an output path is never one of the command's inputs (the model's files and its run
   directory's checkpoints and configs, the data, the ``.vpbb`` being decoded);
2. an existing file is replaced only when vaeprobe wrote it (:func:`is_ours`: a netCDF result,
   a PNG figure, a ``.vpbb``, an ``.npz`` of decoded images, an HTML report), else only with
   ``overwrite=True`` (``--overwrite``);
3. the place is checked writable before any work, and files are written atomically (a
   temporary name beside the target, renamed on success: :func:`vaeprobe.io.atomic_path`).

Every check raises :class:`vaeprobe.io.OutputError` (an ``OSError``; the CLI's exit status 2)
naming the path and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaeprobe import io

HTML_MARK = "<meta name='generator' content='vaeprobe'>"  # in every HTML page vaeprobe writes
NPZ_MARK = "vaeprobe_version"  # an entry of every .npz vaeprobe writes


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file vaeprobe wrote (so a command may replace it)."""
    from vaeprobe.compressed_file import MAGIC

    path = Path(path)
    if io.is_result(path):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        if head.startswith(MAGIC):
            return True
        if head.startswith(b"PK") and path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as stored:
                return NPZ_MARK in stored.files
    except (OSError, ValueError):
        return False
    return HTML_MARK.encode() in head


def source_paths(*sources) -> list[Path]:
    """The existing paths a command reads, from its model and data arguments: a file, its
    folder when it is a checkpoint or weights file, a folder; ``npz:`` / ``folder:`` data
    names; a Probe's checkpoint. Lists and tuples are walked."""
    found = []
    for source in sources:
        if isinstance(source, (list, tuple)):
            found += source_paths(*source)
            continue
        checkpoint = getattr(source, "source", None)
        if isinstance(checkpoint, dict):  # a Probe: the checkpoint it was read from
            source = checkpoint.get("checkpoint")
        if not isinstance(source, (str, os.PathLike)) or not str(source):
            continue
        scheme, sep, rest = str(source).partition(":")
        path = Path(rest.split(",")[0] if sep and scheme in ("npz", "folder") else source)
        if not path.exists():
            continue
        found.append(path)
        if path.is_file() and path.suffix in (".pt", ".safetensors", ".th", ".pth", ".bin"):
            found.append(path.parent)  # the run directory or model folder of a checkpoint
    return found


def check_output(path: str | os.PathLike, what: str = "output", *, inputs=(),
                 overwrite: bool = False) -> Path:
    """Check before any work that ``path`` may be written under the policy above.

    Parameters
    ----------
    path : str or Path
        The file to be written.
    what : str
        How the message names it (the flag or the parameter).
    inputs : sequence of paths
        What the command reads (:func:`source_paths`): never written.
    overwrite : bool
        Replace an existing file that vaeprobe did not write.

    Examples
    --------
    >>> import tempfile
    >>> mine = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = mine.write_text("mine")
    >>> check_output(mine, "--out")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    OutputError: refusing to replace .../notes.txt (--out): it exists and is not a vaeprobe ...
    """
    return io.check_output(path, what, inputs=inputs,
                           overwrite=overwrite or (Path(path).is_file() and is_ours(path)))


def check_directory_files(folder: str | os.PathLike, names, what: str = "--out", *,
                          overwrite: bool = False) -> None:
    """The files a command writes into ``folder`` (e.g. ``audit.html``): each new, or one
    vaeprobe wrote, or ``overwrite``."""
    for name in names:
        target = Path(folder) / name
        if target.is_file() and not overwrite and not is_ours(target):
            raise io.OutputError(f"refusing to replace {target} ({what}): it exists and "
                                 f"vaeprobe did not write it; choose another {what} or pass "
                                 f"--overwrite (overwrite=True)")


def save_images_npz(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write uint8 images (array ``images``) to ``path`` atomically, marked as vaeprobe's."""
    from vaeprobe._version import __version__

    with io.atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, images=images, **{NPZ_MARK: np.array(__version__)})
    return Path(path)
